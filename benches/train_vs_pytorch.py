#!/usr/bin/env python3
"""What users see: `modelc train`'s own logged samples/s against PyTorch eager
(and JAX jit when installed: benches/jax_speed.py), on the same workloads, in
one run.

Usage (PyTorch, and optionally JAX, in a virtual environment outside the
repository):

    /path/to/venv/bin/python benches/train_vs_pytorch.py
    /path/to/venv/bin/python benches/train_vs_pytorch.py --rounds 3 --only cnn_wide

--rounds R measures each workload R times, every side back to back in each
round, and reports the round with the median PyTorch ratio and the range of
the ratios (this machine is shared: PyTorch's cnn_wide figure moved 44%
between two single runs); --only takes a comma-separated list of workloads.

modelc: `modelc train SPEC --set epochs=4 --test-limit 1000` (release build,
RAYON_NUM_THREADS=2); the figure is the median of epochs 2-4 of the log's
`samples_per_second`, which times each epoch's training loop as the trainer
runs it (shuffle, batch gathering, steps; not the evaluation after it).
PyTorch: benches/vs_pytorch.py's protocol (a warm-up epoch, then three timed,
the median; 2 threads). The batch sizes and optimizers are the specs'.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vs_pytorch import CONFIGS, THREADS, machine, torch_speed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modelc_train(name):
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS))
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [os.path.join(ROOT, "target/release/modelc"), "train", f"specs/{name}.model",
             "--set", "epochs=4", "--test-limit", "1000", "--out", out],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        lines = [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))]
    return statistics.median(l["samples_per_second"] for l in lines[1:])


def main():
    torch.set_num_threads(THREADS)
    try:
        import jax
        from jax_speed import jax_speed
    except ImportError:
        jax = None
        print("JAX is not installed: no JAX column", flush=True)
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 1
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else list(CONFIGS)
    rows, spread = [], {}
    for name in (n for n in CONFIGS if n in only):
        runs = []
        for _ in range(rounds):
            ours = modelc_train(name)
            theirs = torch_speed(name)["samples_per_s"]
            jx = jax_speed(name)["samples_per_s"] if jax else None
            runs.append((ours / theirs, ours, theirs, jx))
            also = f", JAX jit {jx:,.0f}/s" if jx else ""
            print(f"  {name}: modelc train {ours:,.0f}/s, PyTorch eager {theirs:,.0f}/s{also}", flush=True)
        runs.sort()
        _, ours, theirs, jx = runs[len(runs) // 2]
        rows.append((name, CONFIGS[name][1], ours, theirs, jx))
        spread[name] = (runs[0][0], runs[-1][0])
    jv = f" and JAX {jax.__version__} jit" if jax else ""
    print(f"\n`modelc train` (its log, median of epochs 2-4) vs PyTorch {torch.__version__} eager{jv}, "
          f"{THREADS} threads each, samples/s, on {machine()}")
    if jax:
        print("| workload | modelc train | PyTorch eager | ratio | JAX jit | ratio |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
    else:
        print("| workload | modelc train | PyTorch eager | ratio |")
        print("| --- | ---: | ---: | ---: |")
    for name, batch, ours, theirs, jx in rows:
        tail = f" {jx:,.0f} | {ours / jx:.2f}x |" if jx else ""
        print(f"| {name}, batch {batch} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x |{tail}")
    if rounds > 1:
        print(f"\nMedian of {rounds} rounds; PyTorch ratios ranged: "
              + ", ".join(f"{n} {lo:.2f}-{hi:.2f}x" for n, (lo, hi) in spread.items()))


if __name__ == "__main__":
    main()
