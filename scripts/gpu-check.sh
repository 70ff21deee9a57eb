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
work="$(mktemp -d)"
# Unpack with python (always there beside torch), not xz/tar (not always installed).
"$py" - "$here" "$work" <<'PY'
import lzma, os, shutil, sys, tarfile
here, work = sys.argv[1:]
for name in os.listdir(here):
    if name.endswith(".xz") and not name.endswith(".tar.xz"):
        out = os.path.join(work, name[:-3])
        with lzma.open(os.path.join(here, name)) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(out, 0o755)
if os.path.exists(os.path.join(here, "fixtures.tar.xz")):
    with tarfile.open(os.path.join(here, "fixtures.tar.xz"), "r:xz") as t:
        t.extractall(os.path.join(work, "fixtures"))
PY
export MTPATH_FIXTURES="${MTPATH_FIXTURES:-$work/fixtures}"
mtpath="$work/mtpath"
status=0
echo "== parity on the GPU (MTPATH_TEST_DEVICE=cuda, fixtures $MTPATH_FIXTURES)"
for t in "$work"/test-*; do
  [ -x "$t" ] || continue
  # ResNet-50's fixture (51 MB) does not travel: its tests are skipped by name.
  MTPATH_TEST_DEVICE=cuda "$t" --test-threads 1 --skip resnet50 || status=1
done
echo "== training images/s, mtpath vs PyTorch (same GPU, same shapes)"
printf '%-12s %-6s %-5s %-6s %10s %10s %7s\n' arch batch size prec mtpath torch ratio
rate() { awk '$1 == "train:" {print $2}'; }
for arch in resnet50 densenet121; do
  for batch in 64 256; do
    for prec in f32 tf32; do
      flag=""; [ "$prec" = tf32 ] && flag="--tf32"
      ours=$("$mtpath" bench --device cuda --arch "$arch" --mode train --batch "$batch" \
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
