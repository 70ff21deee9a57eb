#!/usr/bin/env bash
# Build the CUDA mtpath (and the GPU parity tests) here, for a GPU machine without Rust.
# Output: dist/cuda/ (ignored by git): mtpath and the GPU test binaries, stripped and
# xz-compressed (57 MB → 7 MB: the kernels' PTX is text), the fixtures the GPU tests read
# (ResNet-18, DenseNet-121, multi-task; fixtures.tar.xz), and the scripts the GPU side runs:
# about 40 MB, under the device's 64 MiB carry limit. Carry dist/cuda to the GPU machine,
# then there:
#   LD_LIBRARY_PATH=<its python env>/nvidia/cu13/lib bash dist/cuda/gpu-check.sh
# Needs the toolkit of scripts/cuda-setup.sh (run first). CUDA_COMPUTE_CAP defaults to 90
# (H100/H200). FEATURES=cudnn adds cuDNN.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .cuda/env.sh ] || bash scripts/cuda-setup.sh
# shellcheck disable=SC1091
source .cuda/env.sh
features="${FEATURES:-cuda}"
target=target-cuda
cargo build --release -p mtpath --features "$features" --target-dir "$target"
cargo test --release -p mtpath-integration-tests --features "$features" --target-dir "$target" \
  --no-run --test parity --test multitask --test conv_shapes --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' > "$target/test-binaries.txt"
rm -rf dist/cuda
mkdir -p dist/cuda
cp "$target/release/mtpath" dist/cuda/mtpath
while read -r name exe; do cp "$exe" "dist/cuda/test-$name"; done < "$target/test-binaries.txt"
strip dist/cuda/mtpath dist/cuda/test-*
xz -T0 -6 dist/cuda/mtpath dist/cuda/test-*
fixtures="${MTPATH_FIXTURES:-../shared/fixtures}"
tar -C "$fixtures" -cJf dist/cuda/fixtures.tar.xz \
  resnet18.safetensors resnet18_expected.safetensors densenet121.safetensors \
  densenet121_expected.safetensors multitask_init.safetensors multitask_expected.safetensors \
  preprocess.safetensors
cp scripts/gpu-check.sh scripts/bench_torch.py dist/cuda/
du -sh dist/cuda/* | sed 's/^/  /'
echo "dist/cuda: $(du -sh dist/cuda | cut -f1) (carry limit 64 MiB)"
