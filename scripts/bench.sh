#!/usr/bin/env bash
# Side-by-side CPU benchmark: mtpath vs PyTorch, same shapes, same thread count, one after the
# other in one run; prints images/s and the ratio mtpath / PyTorch. Not part of CI.
#
# PyTorch comes from a throwaway venv (default /tmp/mtpath-bench-venv; BENCH_VENV overrides),
# created from PyPI on first use together with onnx + onnxruntime, so inference cases also
# report onnxruntime's CPU session. THREADS (default 2), ITERS (timed steps per run, default 5;
# inference at batch B runs ITERS·32/B batches),
# ROUNDS (default 3): each case runs mtpath and PyTorch alternately ROUNDS times and reports
# the median of each, which keeps a noisy machine's bursts out of the ratio. CASES overrides
# the case list ("arch mode batch size" per line), e.g. CASES="resnet18 infer 1 224".
# Training cases also report each process's peak resident memory (MB; PyTorch's includes
# its interpreter and libraries, about 0.3 GB here).
# SIMD=avx2 measures what a CPU without AVX-512 runs, on a machine that has it: mtpath built
# without gemm's AVX-512 kernels (--no-default-features, in target/avx2) and run with
# MTPATH_SIMD=avx2 (its direct kernels' AVX2 variant), PyTorch with ATEN_CPU_CAPABILITY=avx2
# and ONEDNN_MAX_CPU_ISA=AVX2; onnxruntime has no such switch and keeps its AVX-512 kernels
# (its column is the stricter peer). The first line names the CPU (/proc/cpuinfo).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
iters=${ITERS:-5}
rounds=${ROUNDS:-3}
venv=${BENCH_VENV:-/tmp/mtpath-bench-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch torchvision onnx onnxscript onnxruntime
fi
simd=${SIMD:-native}
case $simd in
  native)
    cargo build -q --release -p mtpath
    bin=target/release/mtpath
    ;;
  avx2)
    cargo build -q --release -p mtpath --no-default-features --target-dir target/avx2
    bin=target/avx2/release/mtpath
    export MTPATH_SIMD=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
    ;;
  *)
    echo "SIMD must be native or avx2, not '$simd'" >&2
    exit 2
    ;;
esac
export RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
flags=$(grep -m1 -o -w 'avx512f\|avx2\|fma\|asimd' /proc/cpuinfo 2>/dev/null | tr '\n' ' ' || true)
echo "host: ${cpu:-unknown CPU} (${flags% }); $threads threads; SIMD=$simd"
py=$venv/bin/python
rate() { awk -v m="$1" '$1 == m":" {print $2}'; }
# Run a command, print its output, then "peak-rss: MB" of the process.
with_rss() {
  "$py" -c 'import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
print(r.stdout)
print("peak-rss:", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
sys.exit(r.returncode)' "$@"
}
median() { sort -g | awk '{v[NR] = $1} END {if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
printf '%-12s %-6s %-5s %-5s %9s %9s %6s %9s %7s %9s %9s\n' \
  arch mode batch size mtpath torch ratio onnxrt "vs ort" "RSS ours" "RSS torch"
default_cases='resnet18 infer 1 224
resnet50 infer 1 224
densenet121 infer 1 224
resnet18 infer 32 224
resnet50 infer 32 224
densenet121 infer 32 224
resnet18 train 32 112
resnet18 train 32 224
resnet50 train 32 112
resnet50 train 16 224
densenet121 train 16 224'
while read -r arch mode batch size; do
  # Inference at small batches times as many images as at batch 32: five 15 ms batch-1
  # passes were dominated by noise.
  n=$iters
  if [ "$mode" = infer ]; then n=$((iters * 32 / batch)); fi
  ort_flag=""
  if [ "$mode" = infer ] && "$py" -c "import onnxruntime, onnx" 2>/dev/null; then ort_flag=--ort; fi
  ours=() theirs=() onnxrt=() rss_ours=0 rss_theirs=0
  for _ in $(seq "$rounds"); do
    out=$(with_rss "$bin" bench --arch "$arch" --mode "$mode" --batch "$batch" \
      --size "$size" --iters "$n" --threads "$threads")
    ours+=("$(rate "$mode" <<<"$out")")
    rss_ours=$(awk -v m="$rss_ours" '$1 == "peak-rss:" {print ($2 > m ? $2 : m)}' <<<"$out")
    out=$(with_rss "$py" scripts/bench_torch.py --arch "$arch" --mode "$mode" --batch "$batch" \
      --size "$size" --iters "$n" --threads "$threads" $ort_flag)
    theirs+=("$(rate "$mode" <<<"$out")")
    onnxrt+=("$(rate ort-infer <<<"$out")")
    rss_theirs=$(awk -v m="$rss_theirs" '$1 == "peak-rss:" {print ($2 > m ? $2 : m)}' <<<"$out")
  done
  a=$(printf '%s\n' "${ours[@]}" | median)
  b=$(printf '%s\n' "${theirs[@]}" | median)
  o=$(printf '%s\n' "${onnxrt[@]}" | grep . | median || true)
  ratio=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}')
  vs_ort=$([ -n "$o" ] && awk -v a="$a" -v b="$o" 'BEGIN {printf "%.2f", a / b}' || echo -)
  if [ "$mode" = train ]; then ro=$rss_ours rt=$rss_theirs; else ro=- rt=-; fi
  printf '%-12s %-6s %-5s %-5s %9s %9s %6s %9s %7s %9s %9s\n' "$arch" "$mode" "$batch" "$size" \
    "$a" "$b" "$ratio" "${o:--}" "$vs_ort" "$ro" "$rt"
done <<<"${CASES:-$default_cases}"
# The training data pipeline alone (decode + augment on 2 worker threads, real tasks from
# MTPATH_DATA, default ../shared/data; skipped without them).
data=${MTPATH_DATA:-../shared/data}
if [ -z "${CASES:-}" ] && [ -d "$data" ]; then
  for size in 112 224; do
    "$bin" bench --mode pipeline --batch 32 --size "$size" --iters 20 --workers 2 --data "$data" \
      | awk -v s="$size" '/^pipeline:/ {printf "pipeline     %-6s %-5s %-5s %9s\n", "-", 32, s, $2}'
  done
fi
