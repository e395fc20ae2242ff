#!/usr/bin/env python3
"""char_gpt: modelc's trainer against PyTorch eager on the same architecture,
side by side in one run on CPU.

Usage (PyTorch in a virtual environment outside the repository):

    /path/to/venv/bin/python benches/char_gpt_torch.py            # params + speed
    /path/to/venv/bin/python benches/char_gpt_torch.py --params   # parameter count only
    /path/to/venv/bin/python benches/char_gpt_torch.py --rounds 5 # the median of 5 rounds

The PyTorch model is specs/char_gpt.model written by hand: token embedding
(96 × 128), learned positions (128 × 128), 4 pre-norm blocks of
nn.MultiheadAttention (4 heads, causal mask, batch first) and a
Linear(128, 512)-GELU-Linear(512, 128) MLP, a final LayerNorm and
Linear(128, 96); AdamW(lr 3e-4, weight decay 0.1), gradient clipping at 1.0,
cross-entropy over every position.

Protocol, the same on both sides: the first WINDOWS windows of 128
characters of Tiny Shakespeare (data/tinyshakespeare/input.txt, the `text`
source's disjoint windows, `chars` vocabulary), batch 32, 2 threads each
(torch.set_num_threads(2); RAYON_NUM_THREADS=2), EPOCHS epochs of which the
first is a warm-up; the figure is the median over the others of training
tokens per second (modelc: its own log's samples_per_second × 128, which
times the training loop of the epoch and not its evaluation; PyTorch: the
training loop, shuffling outside the timer).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vs_pytorch import machine  # noqa: E402

THREADS = 2
T, D, HEADS, LAYERS, HIDDEN, VOCAB = 128, 128, 4, 4, 512, 96
BATCH = 32
WINDOWS = 1024
EPOCHS = 3


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.ln2 = nn.LayerNorm(D)
        self.fc1 = nn.Linear(D, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, D)

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class CharGpt(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.positions = nn.Parameter(torch.randn(T, D) * 0.02)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(D)
        self.logits = nn.Linear(D, VOCAB)
        self.register_buffer("mask", torch.triu(torch.full((T, T), float("-inf")), diagonal=1))

    def forward(self, tokens):
        x = self.embed(tokens) + self.positions
        for b in self.blocks:
            x = b(x, self.mask)
        return self.logits(self.ln(x))


def windows():
    text = open(os.path.join(ROOT, "data/tinyshakespeare/input.txt"), "rb").read()
    ids = np.array([0 if c == 10 else c - 31 for c in text], dtype=np.int64)
    n = (len(ids) - 1) // T
    x = ids[: n * T].reshape(n, T)
    y = ids[1 : n * T + 1].reshape(n, T)
    return torch.from_numpy(x[:WINDOWS].copy()), torch.from_numpy(y[:WINDOWS].copy())


def torch_speed():
    torch.manual_seed(0)
    model = CharGpt()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    x, y = windows()
    rates = []
    for epoch in range(EPOCHS):
        order = torch.randperm(len(x))
        xs, ys = x[order], y[order]
        t = time.perf_counter()
        for i in range(0, len(xs), BATCH):
            logits = model(xs[i : i + BATCH])
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), ys[i : i + BATCH].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        rates.append(len(xs) * T / (time.perf_counter() - t))
        print(f"  PyTorch epoch {epoch + 1}: {rates[-1]:.0f} tokens/s, loss {loss.item():.3f}", flush=True)
    return float(np.median(rates[1:]))


def modelc_speed(exe):
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS))
    with tempfile.TemporaryDirectory() as out:
        # --limit takes the first training windows after the test and
        # validation hold-outs; the set has WINDOWS windows like PyTorch's.
        subprocess.run(
            [exe, "train", "specs/char_gpt.model", "--limit", str(WINDOWS), "--test-limit", "32",
             "--set", f"epochs={EPOCHS}", "--out", out],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        lines = [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))]
    rates = [l["samples_per_second"] * T for l in lines]
    for i, r in enumerate(rates):
        print(f"  modelc epoch {i + 1}: {r:.0f} tokens/s, loss {lines[i]['train_loss']:.3f}", flush=True)
    return float(np.median(rates[1:]))


def main():
    torch.set_num_threads(THREADS)
    model = CharGpt()
    params = sum(p.numel() for p in model.parameters())
    print(f"PyTorch {torch.__version__}: char_gpt has {params:,} parameters")
    if "--params" in sys.argv:
        return
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 1
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target/release/modelc")
    # Each round measures both sides back to back, so that a change in the
    # machine's load between rounds moves both; the ratio is per round.
    results = []
    for r in range(rounds):
        ours = modelc_speed(exe)
        theirs = torch_speed()
        results.append((ours / theirs, ours, theirs))
        if rounds > 1:
            print(f"round {r + 1}: modelc {ours:,.0f}, PyTorch {theirs:,.0f} tokens/s: {ours / theirs:.2f}×", flush=True)
    results.sort()
    ratio, ours, theirs = results[len(results) // 2]
    print(f"\nchar_gpt training, batch {BATCH}, {T}-character windows, {THREADS} threads each, "
          f"median of epochs 2-{EPOCHS} over {WINDOWS} windows, on {machine()}")
    spread = f" (median of {rounds} rounds, {results[0][0]:.2f}–{results[-1][0]:.2f}×)" if rounds > 1 else ""
    print(f"modelc {ours:,.0f} tokens/s, PyTorch {torch.__version__} eager {theirs:,.0f} tokens/s: {ratio:.2f}×{spread}")


if __name__ == "__main__":
    main()
