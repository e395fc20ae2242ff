#!/usr/bin/env python3
"""The workloads of benches/vs_pytorch.py in JAX (jit-compiled training step),
for benches/train_vs_pytorch.py's JAX column. Run alone:

    /path/to/venv/bin/python benches/jax_speed.py [mnist_mlp lenet5 mlp_large cnn_wide]

Protocol, as vs_pytorch.torch_speed: real MNIST, a shuffled copy of the
training set, batches as contiguous slices of it (the last partial batch
included), one warm-up epoch (which also compiles both batch shapes), then
three timed epochs, the median. The whole step (forward, gradients, optimizer
update) is one `jax.jit` function; the epoch waits for its last result. The
optimizers are written out with torch.optim's formulas (Adam with bias
correction; SGD with momentum and L2 weight decay added to the gradient), as
the specs' train blocks say; optax is not needed. XLA's CPU backend uses the
machine's cores (two here).
"""
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vs_pytorch import mnist  # noqa: E402


def dense(key, i, o):
    k1, _ = jax.random.split(key)
    bound = 1.0 / np.sqrt(i)
    return {"w": jax.random.uniform(k1, (i, o), minval=-bound, maxval=bound), "b": jnp.zeros((o,))}


def conv(key, cin, cout, k):
    bound = 1.0 / np.sqrt(cin * k * k)
    return {"w": jax.random.uniform(key, (cout, cin, k, k), minval=-bound, maxval=bound), "b": jnp.zeros((cout,))}


def conv_apply(p, x, pad):
    y = jax.lax.conv_general_dilated(x, p["w"], (1, 1), pad, dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + p["b"][None, :, None, None]


def maxpool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def mlp_params(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [dense(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp_apply(ps, x):
    for p in ps[:-1]:
        x = jax.nn.relu(x @ p["w"] + p["b"])
    return x @ ps[-1]["w"] + ps[-1]["b"]


def lenet5_params(key):
    k = jax.random.split(key, 5)
    return {"c1": conv(k[0], 1, 6, 5), "c2": conv(k[1], 6, 16, 5),
            "f": mlp_params(k[2], [256, 120, 84, 10])}


def lenet5_apply(p, x):
    x = x.reshape(-1, 1, 28, 28)
    x = maxpool(jax.nn.relu(conv_apply(p["c1"], x, "VALID")))
    x = maxpool(jax.nn.relu(conv_apply(p["c2"], x, "VALID")))
    return mlp_apply(p["f"], x.reshape(x.shape[0], -1))


def cnn_wide_params(key):
    k = jax.random.split(key, 3)
    return {"c1": conv(k[0], 1, 32, 3), "c2": conv(k[1], 32, 64, 3), "f": mlp_params(k[2], [64 * 7 * 7, 128, 10])}


def cnn_wide_apply(p, x):
    x = x.reshape(-1, 1, 28, 28)
    x = maxpool(jax.nn.relu(conv_apply(p["c1"], x, "SAME")))
    x = maxpool(jax.nn.relu(conv_apply(p["c2"], x, "SAME")))
    return mlp_apply(p["f"], x.reshape(x.shape[0], -1))


def adam(lr, b1=0.9, b2=0.999, eps=1e-8):
    def init(params):
        z = jax.tree_util.tree_map(jnp.zeros_like, params)
        return (z, z, jnp.zeros((), jnp.int32))

    def update(params, grads, state):
        m, v, t = state
        t = t + 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        params = jax.tree_util.tree_map(lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, m, v)
        return params, (m, v, t)
    return init, update


def sgd(lr, momentum, weight_decay=0.0):
    def init(params):
        return jax.tree_util.tree_map(jnp.zeros_like, params)

    def update(params, grads, buf):
        grads = jax.tree_util.tree_map(lambda g, p: g + weight_decay * p, grads, params)
        buf = jax.tree_util.tree_map(lambda b, g: momentum * b + g, buf, grads)
        params = jax.tree_util.tree_map(lambda p, b: p - lr * b, params, buf)
        return params, buf
    return init, update


CONFIGS = {
    "mnist_mlp": (lambda k: mlp_params(k, [784, 128, 10]), mlp_apply, 64, adam(3e-3)),
    "lenet5": (lenet5_params, lenet5_apply, 64, sgd(0.01, 0.9, 5e-4)),
    "mlp_large": (lambda k: mlp_params(k, [784, 1024, 1024, 10]), mlp_apply, 256, adam(1e-3)),
    "cnn_wide": (cnn_wide_params, cnn_wide_apply, 64, sgd(0.01, 0.9)),
}


def jax_speed(name):
    make, apply, batch, (opt_init, opt_update) = CONFIGS[name]
    params = make(jax.random.PRNGKey(42))
    state = opt_init(params)

    def loss_fn(p, x, y):
        logits = apply(p, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    @jax.jit
    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        p, s = opt_update(p, g, s)
        return p, s, loss

    x, y = mnist("train")
    x, y = x.numpy(), y.numpy().astype(np.int32)
    perm = np.random.default_rng(42).permutation(x.shape[0])
    x, y = jnp.asarray(x[perm]), jnp.asarray(y[perm])

    def epoch(p, s):
        loss = None
        for i in range(0, x.shape[0], batch):
            p, s, loss = step(p, s, x[i:i + batch], y[i:i + batch])
        loss.block_until_ready()
        return p, s, float(loss)

    params, state, _ = epoch(params, state)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        params, state, loss = epoch(params, state)
        runs.append((time.perf_counter() - t, loss))
    secs, loss = sorted(runs)[1]
    return {"samples_per_s": x.shape[0] / secs, "seconds": secs, "last_loss": loss}


if __name__ == "__main__":
    for name in sys.argv[1:] or list(CONFIGS):
        r = jax_speed(name)
        print(f"{name}: JAX {jax.__version__} jit {r['samples_per_s']:,.0f} samples/s (loss {r['last_loss']:.4f})", flush=True)
