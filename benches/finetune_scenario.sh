#!/usr/bin/env bash
# The fine-tuning scenario on real MNIST, end to end with `modelc train`:
#   1. specs/lenet5_lower.model: LeNet-5 on the digits 0-4 (early stopping
#      on validation accuracy keeps runs/lenet5_lower/best.safetensors);
#   2. specs/lenet5_finetune.model: a fresh 5-way head on the digits 5-9
#      with everything else frozen (stage `head`), then fc1, fc2 and conv2
#      unfrozen (stage `all`);
#   3. the same network on 5-9 from scratch, for the same number of steps
#      (5 epochs of the same samples, batch 64), with the base's recipe.
# Prints the test accuracy on 5-9 after each stage and of the scratch run.
# Usage: bash benches/finetune_scenario.sh [OUT_DIR]   (release build)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/scenario}"
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/modelc
acc() { python3 -c "import json,sys; [print(f\"{l.get('stage') or '-':>6}  epoch {l['epoch']}  test accuracy {100*l['test_accuracy']:.2f}%\") for l in map(json.loads, open(sys.argv[1]))]" "$1"; }

$bin train specs/lenet5_lower.model --out runs/lenet5_lower | tail -4
$bin train specs/lenet5_finetune.model --out "$out/finetune" | grep -E "^(training|weights|stage|early)"
echo "fine-tuned from 0-4 (test set: digits 5-9):"
acc "$out/finetune/log.jsonl"

# From scratch: lenet5_lower's network and recipe on 5-9, 5 epochs with the
# finetune's validation split and seed.
sed -e 's/classes: 0..4/classes: 5..9/' -e 's/epochs       5/epochs       5/' \
    -e 's/seed         42/seed         7/' -e '/early_stop/d' specs/lenet5_lower.model > "$out/scratch.model"
$bin train "$out/scratch.model" --out "$out/scratch" | tail -2
echo "from scratch on 5-9:"
acc "$out/scratch/log.jsonl"
