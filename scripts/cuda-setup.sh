#!/usr/bin/env bash
# Set up the CUDA 13.0 toolkit from PyPI wheels (no system CUDA, no root) and print the
# environment that builds mtpath with `--features cuda`.
#
#   bash scripts/cuda-setup.sh            # toolkit into .cuda/ (ignored by git)
#   source .cuda/env.sh                   # CUDA_HOME, PATH, CUDA_COMPUTE_CAP=90
#   cargo build --release -p mtpath --features cuda
#
# The toolkit has nvcc, the headers, cudart/cublas/curand/nvrtc and a libcuda.so *stub*
# generated from cuda.h: the linker needs every driver symbol, but the real libcuda comes
# with the NVIDIA driver of the machine that runs the binary. MTPATH_CUDA_DIR moves the
# folder; MTPATH_CUDNN=1 adds cuDNN 9 (for `--features cudnn`), MTPATH_NCCL=1 adds NCCL 2 (for
# `--features nccl`, data-parallel training on several GPUs).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${MTPATH_CUDA_DIR:-$root/.cuda}"
wheels="$dest/wheels"
unpacked="$dest/unpacked"
tk="$dest/toolkit"
mkdir -p "$wheels"

py="${PYTHON:-python3}"
if ! "$py" -m pip --version >/dev/null 2>&1; then
  echo "cuda-setup: no pip for $py; making a throwaway venv in $dest/venv" >&2
  "$py" -m venv "$dest/venv"
  py="$dest/venv/bin/python"
fi

packages=(
  "nvidia-cuda-nvcc==13.0.*"
  "nvidia-cuda-crt==13.0.*"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
  "nvidia-cuda-nvrtc==13.0.*"
  "nvidia-cublas==13.0.*"
  "nvidia-curand==10.4.0.*"
)
if [ "${MTPATH_CUDNN:-0}" = 1 ]; then
  packages+=("nvidia-cudnn-cu13==9.*")
fi
if [ "${MTPATH_NCCL:-0}" = 1 ]; then
  packages+=("nvidia-nccl-cu13==2.*")
fi
echo "cuda-setup: downloading ${#packages[@]} wheels into $wheels" >&2
"$py" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
  --platform manylinux_2_12_x86_64 --python-version 3.11 \
  -d "$wheels" "${packages[@]}"

rm -rf "$unpacked" "$tk"
mkdir -p "$unpacked" "$tk/lib64/stubs"
for w in "$wheels"/*.whl; do
  "$py" - "$w" "$unpacked" <<'PY'
import sys, zipfile
zf = zipfile.ZipFile(sys.argv[1])
for info in zf.infolist():
    if info.filename.startswith("nvidia/"):
        path = zf.extract(info, sys.argv[2])
        # zipfile drops the permission bits; keep executables executable.
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            import os
            os.chmod(path, mode)
PY
done
cu="$unpacked/nvidia/cu13"
[ -x "$cu/bin/nvcc" ] || { echo "cuda-setup: nvcc missing from the wheels ($cu/bin)" >&2; exit 1; }

# A CUDA_HOME layout: bin/, nvvm/, include/ (the runtime's headers plus cccl's), lib64/.
ln -s "$cu/bin" "$tk/bin"
ln -s "$cu/nvvm" "$tk/nvvm"
ln -s "$cu/include" "$tk/include"
[ -d "$unpacked/nvidia/cudnn" ] && cp -rs "$unpacked/nvidia/cudnn/include/." "$cu/include/" 2>/dev/null || true
for lib in "$cu"/lib/lib*.so.* "$unpacked"/nvidia/cudnn/lib/lib*.so.* \
  "$unpacked"/nvidia/nccl/lib/lib*.so.* ; do
  [ -e "$lib" ] || continue
  base="$(basename "$lib")"
  ln -sf "$lib" "$tk/lib64/$base"
  ln -sf "$lib" "$tk/lib64/${base%%.so.*}.so"
done
for a in "$cu"/lib/*.a; do ln -sf "$a" "$tk/lib64/$(basename "$a")"; done
# nvcc looks for its host-side libraries next to itself (../lib64).
[ -e "$cu/lib64" ] || ln -s "$tk/lib64" "$cu/lib64"

# libcuda stub: every driver entry point cuda.h declares (after its versioning macros), as an
# empty function in a library named libcuda.so.1 — enough for the linker, never run.
stub_c="$dest/libcuda-stub.c"
echo '#include <cuda.h>' | cc -E -P -I "$cu/include" - \
  | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | sed 's/[[:space:](]//g' | sort -u \
  | awk '{ printf "void %s(void) {}\n", $1 }' > "$stub_c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tk/lib64/stubs/libcuda.so" "$stub_c"
ln -sf libcuda.so "$tk/lib64/stubs/libcuda.so.1"
echo "cuda-setup: libcuda stub with $(wc -l < "$stub_c") symbols" >&2

cat > "$dest/env.sh" <<ENV
# Source me before \`cargo build --features cuda\` (written by scripts/cuda-setup.sh).
export CUDA_HOME="$tk"
export CUDA_PATH="$tk"
export PATH="$tk/bin:\$PATH"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
export LIBRARY_PATH="$tk/lib64:$tk/lib64/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
ENV
"$tk/bin/nvcc" --version | tail -2
echo "cuda-setup: done. Now: source $dest/env.sh && cargo build --release -p mtpath --features cuda" >&2
