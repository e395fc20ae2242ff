#!/usr/bin/env bash
# The GPU checks and figures of the CUDA backend, as one script for a machine
# with an NVIDIA GPU and no Rust toolchain (binaries built elsewhere).
#
#   bash benches/gpu_check.sh --prepare DIR   # here: build, strip the modelc
#                                             # binary and the test binary into DIR
#   bash benches/gpu_check.sh DIR [--compile] # there, from the repository root:
#       the GPU tests (MODELC_REQUIRE_CUDA=1: a missing GPU fails them), LeNet-5
#       in f32 and bf16 and the MNIST MLP trained to accuracy, a profile of
#       char_gpt and LeNet-5 by CUDA events, and benches/gpu_vs_pytorch.py
#       (PyTorch eager, and torch.compile with --compile).
#
# cuBLAS (libcublas.so.12 or .13) and libcuda.so.1 are looked up under /opt,
# /usr and /usr/local/nvidia and put on LD_LIBRARY_PATH.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  dir=${2:?a folder}
  set -e
  mkdir -p "$dir"
  cargo build --release -q
  exe=$(cargo test --release --test main --no-run --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)
  strip -o "$dir/modelc" target/release/modelc
  strip -o "$dir/main" "$exe"
  ls -la "$dir"
  exit 0
fi
bin=${1:?the folder --prepare filled}
nvidia-smi -L
cublas=$(find /opt /usr -name 'libcublas.so.1[23]*' 2>/dev/null | grep -v Lt | head -n 1)
cuda=$(ldconfig -p | awk '/libcuda.so.1 /{print $NF; exit}')
[ -z "$cuda" ] && cuda=$(find /usr/local/nvidia /usr/lib /usr/lib64 -name 'libcuda.so.1' 2>/dev/null | head -n 1)
echo "cuBLAS: $cublas; driver: $cuda"
export LD_LIBRARY_PATH=$(dirname "$cublas"):$(dirname "$cuda"):${LD_LIBRARY_PATH:-}
echo "== GPU tests"
MODELC_REQUIRE_CUDA=1 timeout 300 "$bin/main" cuda:: --nocapture --test-threads 1 2>&1 | grep -v '^specs/\|^tests/zoo/'
for spec in mnist_mlp lenet5 lenet5_bf16; do
  echo "== modelc train specs/$spec.model --device cuda"
  timeout 120 "$bin/modelc" train "specs/$spec.model" --device cuda --out "/tmp/gpu-check-$spec" 2>&1 | tail -n 13
done
echo "== profiles (MODELC_PROFILE=1)"
MODELC_PROFILE=1 MODELC_PROFILE_ROWS=20 timeout 60 "$bin/modelc" train specs/char_gpt.model --device cuda \
  --limit 320 --test-limit 32 --set epochs=1 --out /tmp/gpu-check-p1 2>&1 | tail -n 24
MODELC_PROFILE=1 MODELC_PROFILE_ROWS=12 timeout 60 "$bin/modelc" train specs/lenet5.model --device cuda \
  --limit 6400 --test-limit 100 --set epochs=1 --out /tmp/gpu-check-p2 2>&1 | tail -n 16
echo "== benches/gpu_vs_pytorch.py"
PYTHONUNBUFFERED=1 timeout 400 python3 benches/gpu_vs_pytorch.py --modelc "$bin/modelc" "${@:2}"
