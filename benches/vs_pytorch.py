#!/usr/bin/env python3
"""modelc's compiled CPU trainer against PyTorch eager, side by side, in one run.

Usage (PyTorch in a virtual environment outside the repository):

    /path/to/venv/bin/python benches/vs_pytorch.py            # speed table
    /path/to/venv/bin/python benches/vs_pytorch.py --accuracy # PyTorch's 5-epoch test accuracy

Protocol, the same on both sides (see benches/train_speed.rs): real MNIST
(data/mnist), one warm-up epoch then three timed epochs (the median
reported: the machine is shared and noisy), the shuffle (a permuted
copy of the training set) outside the timer, contiguous batches with the last
partial one, 2 threads each (torch.set_num_threads(2); RAYON_NUM_THREADS=2).
Time to first step: process start to the end of the first training step of
lenet5 (batch 64, zeros: data loading excluded), as a whole process each.
"""
import gzip
import math
import json
import os
import struct
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREADS = 2


def machine():
    """The CPU the figures were measured on (its model name and core count):
    ratios against PyTorch depend on it as much as on modelc."""
    name = None
    try:
        with open("/proc/cpuinfo") as f:
            name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    import platform
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows * cols).astype(np.float32) / 255.0
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


def mnist(split):
    stem = "train" if split == "train" else "t10k"
    x = idx(os.path.join(ROOT, "data/mnist", f"{stem}-images-idx3-ubyte.gz"))
    y = idx(os.path.join(ROOT, "data/mnist", f"{stem}-labels-idx1-ubyte.gz"))
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def mnist_mlp():
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def lenet5():
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def mlp_large():
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def cnn_wide():
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


# As the specs' train blocks say.
CONFIGS = {
    "mnist_mlp": (mnist_mlp, 64, lambda p: torch.optim.Adam(p, lr=3e-3)),
    "lenet5": (lenet5, 64, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, weight_decay=5e-4)),
    "mlp_large": (mlp_large, 256, lambda p: torch.optim.Adam(p, lr=1e-3)),
    "cnn_wide": (cnn_wide, 64, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)),
}


def epoch(model, opt, x, y, batch, sched=None):
    last = 0.0
    for s in range(0, x.shape[0], batch):
        xb, yb = x[s:s + batch], y[s:s + batch]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        last = loss.item()
    return last


def torch_speed(name):
    make, batch, optim = CONFIGS[name]
    torch.manual_seed(42)
    x, y = mnist("train")
    perm = torch.randperm(x.shape[0])
    x, y = x[perm].contiguous(), y[perm].contiguous()
    model = make()
    opt = optim(model.parameters())
    epoch(model, opt, x, y, batch)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        loss = epoch(model, opt, x, y, batch)
        runs.append((time.perf_counter() - t, loss))
    secs, loss = sorted(runs)[1]
    return {"samples_per_s": x.shape[0] / secs, "seconds": secs, "last_loss": loss}


def torch_accuracy(name, epochs=5, seed=42):
    make, batch, optim = CONFIGS[name]
    torch.manual_seed(seed)
    x, y = mnist("train")
    tx, ty = mnist("test")
    model = make()
    opt = optim(model.parameters())
    sched = None
    if name == "mnist_mlp":  # cosine() per step, to 0 at the end, as the spec
        total = epochs * -(-x.shape[0] // batch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 + math.cos(math.pi * min(s, total) / total)) / 2)
    for e in range(epochs):
        perm = torch.randperm(x.shape[0])
        if name == "lenet5" and e == 5:  # step(every: 5 epochs, gamma: 0.1)
            for g in opt.param_groups:
                g["lr"] *= 0.1
        epoch(model, opt, x[perm], y[perm], batch, sched)
    with torch.no_grad():
        acc = (model(tx).argmax(1) == ty).float().mean().item()
    return acc


FIRST_STEP = r"""
import torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(2)
m = nn.Sequential(nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(),
    nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
x, y = torch.zeros(64, 784), torch.zeros(64, dtype=torch.long)
opt.zero_grad(); F.cross_entropy(m(x), y).backward(); opt.step()
"""


def wall(cmd, **kw):
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    return time.perf_counter() - t, out.stdout


def main():
    torch.set_num_threads(THREADS)
    if "--accuracy" in sys.argv:
        for name, epochs in [("mnist_mlp", 5), ("lenet5", 5), ("lenet5", 10)]:
            print(f"PyTorch {torch.__version__} {name}: {epochs} epochs, seed 42: test accuracy {100 * torch_accuracy(name, epochs):.2f}%")
        return
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS))
    subprocess.run(["cargo", "bench", "--bench", "train_speed", "--no-run"], cwd=ROOT, check=True, env=env)
    rows = []
    for name in CONFIGS:
        pt = torch_speed(name)
        _, out = wall(["cargo", "bench", "-q", "--bench", "train_speed", "--", name], cwd=ROOT, env=env)
        ours = json.loads(out.strip().splitlines()[-1])
        rows.append((name, CONFIGS[name][1], ours["samples_per_s"], pt["samples_per_s"]))
    print(f"\nPyTorch {torch.__version__} eager vs modelc (compiled CPU), {THREADS} threads each, samples/s, median of 3 epochs after a warm-up epoch")
    print(f"{'model':<12} {'batch':>5} {'modelc':>10} {'PyTorch':>10} {'ratio':>7}")
    for name, batch, ours, pt in rows:
        print(f"{name:<12} {batch:>5} {ours:>10.0f} {pt:>10.0f} {ours / pt:>6.2f}×")
    flops = 9.56e6  # per sample and step, mlp_large (forward, weight gradients, input gradients but the first layer's)
    big = [r for r in rows if r[0] == "mlp_large"][0]
    print(f"mlp_large: modelc {big[2] * flops / 1e9:.0f} GFLOP/s, PyTorch {big[3] * flops / 1e9:.0f} GFLOP/s")
    # Time to first step, whole processes.
    bench = subprocess.run(["cargo", "bench", "--bench", "train_speed", "--no-run", "--message-format=json"], cwd=ROOT,
                           check=True, capture_output=True, text=True, env=env).stdout
    exe = [json.loads(l)["executable"] for l in bench.splitlines() if '"executable":"' in l and "train_speed" in l][-1]
    ours = min(wall([exe, "--first-step", "specs/lenet5.model"], cwd=ROOT, env=env)[0] for _ in range(5))
    theirs = min(wall([sys.executable, "-c", FIRST_STEP])[0] for _ in range(3))
    print(f"time to first step, lenet5: modelc {ours:.3f} s, PyTorch eager {theirs:.3f} s (best of 5 and 3 processes)")


if __name__ == "__main__":
    main()
