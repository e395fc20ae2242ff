#!/usr/bin/env python3
"""modelc on an NVIDIA GPU (`modelc train --device cuda`) against PyTorch eager
and torch.compile on the same GPU, the same workloads, in one run.

Usage, on a machine with a GPU and PyTorch (CUDA build):

    python3 benches/gpu_vs_pytorch.py [--modelc PATH] [--compile] [--only mnist_mlp,lenet5]

modelc: `modelc train SPEC --device cuda --set epochs=3 --test-limit 1000`;
the figure is the median of epochs 2-3 of its log's `samples_per_second`
(the training loop as the trainer runs it: shuffle, batch gathering and
upload, the step, the loss read back every step). char_gpt as in
benches/char_gpt_torch.py (the first 1,024 windows, batch 32; tokens/s).
PyTorch: the same models, batch sizes and optimizers as benches/vs_pytorch.py
and benches/char_gpt_torch.py, data on the GPU, `loss.item()` every step
(as modelc reads its loss), one warm-up epoch then two timed, the median;
TF32 off (modelc multiplies in full f32). --compile adds torch.compile
(default mode; its compilation falls in the warm-up epoch).

The cuBLAS bound of mlp_large: the step's eight products (forward, weight
gradients, input gradients but the first layer's) timed alone through
torch.mm with CUDA events; batch / that time is the samples/s a step made of
nothing else would reach.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vs_pytorch import CONFIGS, mnist  # noqa: E402
import char_gpt_torch as gpt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = ["mnist_mlp", "lenet5", "mlp_large", "char_gpt"]


def arg(name, default=None):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def modelc_speed(exe, name):
    with tempfile.TemporaryDirectory() as out:
        if name == "char_gpt":
            extra = ["--limit", str(gpt.WINDOWS), "--test-limit", "32"]
        else:
            extra = ["--test-limit", "1000"]
        r = subprocess.run([exe, "train", f"specs/{name}.model", "--device", "cuda", "--set", "epochs=3",
                            "--out", out] + extra, cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-3000:], flush=True)
            return None
        lines = [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))]
    scale = gpt.T if name == "char_gpt" else 1
    return statistics.median(l["samples_per_second"] * scale for l in lines[1:])


def timed_epochs(step, batches, epochs=3):
    rates = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        t = time.perf_counter()
        n = 0
        for xb, yb in batches():
            step(xb, yb)
            n += xb.shape[0]
        torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates[1:])


def torch_speed(name, compiled):
    dev = torch.device("cuda")
    torch.manual_seed(42)
    if name == "char_gpt":
        x, y = gpt.windows()
        model = gpt.CharGpt().to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
        batch, scale = gpt.BATCH, gpt.T

        def loss_of(m, xb, yb):
            return F.cross_entropy(m(xb).reshape(-1, gpt.VOCAB), yb.reshape(-1))
    else:
        make, batch, optim = CONFIGS[name]
        x, y = mnist("train")
        model = make().to(dev)
        opt = optim(model.parameters())
        scale = 1

        def loss_of(m, xb, yb):
            return F.cross_entropy(m(xb), yb)
    x, y = x.to(dev), y.to(dev)
    run = torch.compile(model) if compiled else model

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(run, xb, yb)
        loss.backward()
        if name == "char_gpt":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()

    def batches():
        perm = torch.randperm(x.shape[0], device=dev)
        xs, ys = x[perm], y[perm]
        return ((xs[s:s + batch], ys[s:s + batch]) for s in range(0, xs.shape[0], batch))
    return timed_epochs(step, batches) * scale


def cublas_bound_mlp_large(batch=256):
    dev = torch.device("cuda")
    shapes = [  # (m, k, n) of each product of one step
        (batch, 784, 1024), (batch, 1024, 1024), (batch, 1024, 10),  # forward
        (10, batch, 1024), (1024, batch, 1024), (1024, batch, 784),  # weight gradients
        (batch, 10, 1024), (batch, 1024, 1024),  # input gradients (not the first layer's)
    ]
    ops = [(torch.randn(m, k, device=dev), torch.randn(k, n, device=dev)) for m, k, n in shapes]
    for a, b in ops:
        torch.mm(a, b)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 200
    start.record()
    for _ in range(reps):
        for a, b in ops:
            torch.mm(a, b)
    end.record()
    torch.cuda.synchronize()
    per_step = start.elapsed_time(end) / 1e3 / reps
    return batch / per_step, per_step


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    exe = arg("--modelc", os.path.join(ROOT, "target/release/modelc"))
    only = arg("--only", ",".join(WORKLOADS)).split(",")
    compiled = "--compile" in sys.argv
    gpu = torch.cuda.get_device_name(0)
    rows = []
    for name in (w for w in WORKLOADS if w in only):
        ours = modelc_speed(exe, name)
        eager = torch_speed(name, False)
        comp = torch_speed(name, True) if compiled else None
        unit = "tokens/s" if name == "char_gpt" else "samples/s"
        c = f", torch.compile {comp:,.0f}" if comp else ""
        print(f"  {name}: modelc {ours or 0:,.0f}, PyTorch eager {eager:,.0f}{c} {unit}", flush=True)
        rows.append((name, ours, eager, comp))
    print(f"\nmodelc train --device cuda (its log, median of epochs 2-3) vs PyTorch {torch.__version__}, "
          f"f32 (no TF32), on {gpu}")
    print("| workload | modelc | PyTorch eager | ratio | torch.compile | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, ours, eager, comp in rows:
        o = ours or float("nan")
        batch = gpt.BATCH if name == "char_gpt" else CONFIGS[name][1]
        cc = f"{comp:,.0f} | {o / comp:.2f}x" if comp else "- | -"
        unit = " (tokens/s)" if name == "char_gpt" else ""
        print(f"| {name}, batch {batch}{unit} | {o:,.0f} | {eager:,.0f} | {o / eager:.2f}x | {cc} |")
    if "mlp_large" in only:
        bound, t = cublas_bound_mlp_large()
        big = [r for r in rows if r[0] == "mlp_large"][0][1] or float("nan")
        print(f"mlp_large's products alone through cuBLAS: {t * 1e6:.0f} us a step = {bound:,.0f} samples/s; "
              f"modelc reaches {100 * big / bound:.0f}% of that bound")


if __name__ == "__main__":
    main()
