#!/usr/bin/env bash
# Side-by-side CPU benchmark: mtpath vs PyTorch, same shapes, same thread count, one after the
# other in one run; prints images/s and the ratio mtpath / PyTorch. Not part of CI.
#
# PyTorch comes from a throwaway venv (default /tmp/mtpath-bench-venv; BENCH_VENV overrides),
# created from PyPI on first use (with onnx + onnxruntime installed there, inference cases also
# report onnxruntime's CPU session: `pip install onnx onnxscript onnxruntime`). THREADS (default 2), ITERS (default 5); CASES overrides the
# case list ("arch mode batch size" per line), e.g. CASES="resnet18 infer 1 224".
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
iters=${ITERS:-5}
venv=${BENCH_VENV:-/tmp/mtpath-bench-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch torchvision
fi
cargo build -q --release -p mtpath
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
rate() { awk -v m="$1" '$1 == m":" {print $2}'; }
printf '%-12s %-6s %-5s %-5s %10s %10s %7s %10s %9s\n' arch mode batch size mtpath torch ratio onnxrt "vs ort"
default_cases='resnet18 infer 1 224
resnet50 infer 1 224
resnet18 train 32 112
resnet18 train 32 224
resnet50 train 32 112
resnet50 train 16 224
densenet121 train 16 224
densenet121 infer 1 224
resnet18 infer 32 224'
# arch mode batch size
while read -r arch mode batch size; do
  ours=$(target/release/mtpath bench --arch "$arch" --mode "$mode" --batch "$batch" --size "$size" \
    --iters "$iters" --threads "$threads" | rate "$mode")
  ort_flag=""
  if [ "$mode" = infer ] && "$venv/bin/python" -c "import onnxruntime, onnx" 2>/dev/null; then ort_flag=--ort; fi
  torch_out=$("$venv/bin/python" scripts/bench_torch.py --arch "$arch" --mode "$mode" --batch "$batch" \
    --size "$size" --iters "$iters" --threads "$threads" $ort_flag 2>/dev/null)
  theirs=$(rate "$mode" <<<"$torch_out")
  onnxrt=$(rate ort-infer <<<"$torch_out")
  ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN {printf "%.2f", a / b}')
  vs_ort=$([ -n "$onnxrt" ] && awk -v a="$ours" -v b="$onnxrt" 'BEGIN {printf "%.2f", a / b}' || echo -)
  printf '%-12s %-6s %-5s %-5s %10s %10s %7s %10s %9s\n' "$arch" "$mode" "$batch" "$size" "$ours" "$theirs" "$ratio" "${onnxrt:--}" "$vs_ort"
done <<<"${CASES:-$default_cases}"
# The training data pipeline alone (decode + augment on 2 worker threads, real tasks).
for size in 112 224; do
  target/release/mtpath bench --mode pipeline --batch 32 --size "$size" --iters 20 --workers 2 \
    | awk -v s="$size" '/^pipeline:/ {printf "pipeline     %-6s %-5s %-5s %10s\n", "-", 32, s, $2}'
done
