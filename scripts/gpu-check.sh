#!/usr/bin/env bash
# On a GPU machine (no Rust needed), from dist/cuda/ built by scripts/build-cuda.sh:
# 1. the fixtures' parity tests and the multi-task SGD step on the GPU (TF32 off);
# 2. training throughput of mtpath vs the machine's PyTorch, side by side in one run.
# MTPATH_FIXTURES must point at the fixtures (../shared/fixtures by default); PYTHON at a
# python with torch and torchvision (default python3); LD_LIBRARY_PATH at the CUDA 13
# libraries (e.g. that python's site-packages/nvidia/cu13/lib).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
status=0
echo "== parity on the GPU (MTPATH_TEST_DEVICE=cuda)"
for t in "$here"/test-*; do
  [ -x "$t" ] || continue
  MTPATH_TEST_DEVICE=cuda "$t" --test-threads 1 || status=1
done
echo "== training images/s, mtpath vs PyTorch (same GPU, same shapes)"
printf '%-12s %-6s %-5s %-6s %10s %10s %7s\n' arch batch size prec mtpath torch ratio
rate() { awk '$1 == "train:" {print $2}'; }
for arch in resnet50 densenet121; do
  for batch in 64 256; do
    for prec in f32 tf32; do
      flag=""; [ "$prec" = tf32 ] && flag="--tf32"
      ours=$("$here/mtpath" bench --device cuda --arch "$arch" --mode train --batch "$batch" \
        --size 224 --iters 10 --warmup 3 $flag 2>/dev/null | rate)
      theirs=$("$py" "$here/bench_torch.py" --device cuda --arch "$arch" --mode train \
        --batch "$batch" --size 224 --iters 10 --warmup 3 $flag 2>/dev/null | rate)
      ratio=$(awk -v a="${ours:-0}" -v b="${theirs:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
      printf '%-12s %-6s %-5s %-6s %10s %10s %7s\n' "$arch" "$batch" 224 "$prec" "${ours:--}" "${theirs:--}" "$ratio"
    done
    theirs=$("$py" "$here/bench_torch.py" --device cuda --arch "$arch" --mode train \
      --batch "$batch" --size 224 --iters 10 --warmup 3 --amp bf16 2>/dev/null | rate)
    printf '%-12s %-6s %-5s %-6s %10s %10s %7s\n' "$arch" "$batch" 224 bf16 "-" "${theirs:--}" "-"
  done
done
exit $status
