#!/usr/bin/env bash
# mtpath's test command: installs what a fresh machine lacks, then runs formatting, lints,
# native tests (parity with the PyTorch fixtures in ../shared/fixtures, real tiles from
# ../shared/data) and the browser tests (wasm-bindgen-test in headless Chromium).
#
# Environment: MTPATH_DATA / MTPATH_FIXTURES override ../shared/data and ../shared/fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export MTPATH_DATA=${MTPATH_DATA:-$root/../shared/data}
export MTPATH_FIXTURES=${MTPATH_FIXTURES:-$root/../shared/fixtures}

step() { printf '\n== %s (at %dm%02ds)\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }

step "toolchain and browser"
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# wasm-bindgen-cli must equal the wasm-bindgen version in Cargo.lock.
wb_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
if ! wasm-bindgen-test-runner --version 2>/dev/null | grep -q " $wb_version\b"; then
  cargo install wasm-bindgen-cli --version "$wb_version"
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  fi
fi

# OpenMPI (mpirun, and the library the `mpi` feature links) and libclang (rsmpi's bindgen):
# the data-parallel tests run `mpirun -n 2 mtpath train ...`.
if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null \
  || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
  sudo_=""
  [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenmpi-dev openmpi-bin libclang-dev
fi
# tifffile (imagecodecs: libjpeg-turbo, zlib), Pillow (libtiff) and OpenSlide (its wheel
# bundles the library): the independent readers the slide tests compare decoded tiles with
# (trainer/tests/slide_cli.rs).
if ! python3 -c "import tifffile, imagecodecs, PIL, numpy, openslide" 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check tifffile imagecodecs pillow numpy \
    openslide-bin openslide-python
fi
export MTPATH_SLIDE_CHECK=1
# Every native build below has the same features, so each crate is compiled once.
features="mtpath/mpi"

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --features "$features" -- -D warnings

step "native tests"
cargo test --workspace --features "$features"
# What a CPU without AVX-512 runs: the direct kernels' AVX2 variant, and gemm alone (same
# build; the AVX2 kernel's tests skip where the CPU lacks AVX2).
MTPATH_SIMD=avx2 cargo test --workspace --features "$features" --lib -- layers::conv export::tests
MTPATH_SIMD=avx2 MTPATH_DIRECT_AVX2=0 \
  cargo test --workspace --features "$features" --lib -- layers::conv export::tests

step "browser tests (headless Chromium)"
bundle="$root/target/wasm-parity/bundle.safetensors"
mkdir -p "$(dirname "$bundle")"
# The binary the native tests built (same features: `cargo run -p` alone would unify
# features differently and recompile some 70 crates, four minutes here).
cargo build -q --workspace --features "$features" --bin make-wasm-parity-bundle
target/debug/make-wasm-parity-bundle "$bundle"
export MTPATH_WASM_PARITY_BUNDLE="$bundle"
export CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-600}
(cd web && cargo test --target wasm32-unknown-unknown --test browser)

step "explorer end to end (mtpath serve + headless Chromium via chromedriver)"
bash scripts/build-web.sh
# --workspace keeps the feature set of the native tests above: nothing is rebuilt, and
# target/debug/mtpath is the binary they built.
MTPATH_E2E=1 MTPATH_BIN="$root/target/debug/mtpath" \
  cargo test --workspace --features "$features" --test browser_e2e --test browser_slide_e2e -- --nocapture
step "all tests passed"
