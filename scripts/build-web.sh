#!/usr/bin/env bash
# Build the browser explorer: the `web` crate to wasm32, its JavaScript bindings into
# www/pkg/, then wasm-opt (binaryen from npm, installed into .tools/ when missing).
#
#   bash scripts/build-web.sh            # release build, optimised
#   MTPATH_WASM_OPT=0 bash scripts/build-web.sh   # skip wasm-opt (faster)
#
# The module is compiled with wasm SIMD (`+simd128`) throughout: gemm's kernels use it in any
# case (so a browser without wasm SIMD cannot load the module either way), and LLVM's
# vectorisation of everything else made ResNet-18 and ResNet-50 features 8-11% faster
# (scripts/bench-web.sh). CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS, when set (even
# empty), replaces the flag.
set -euo pipefail
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="${CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS--C target-feature=+simd128}"
cd "$(dirname "$0")/.."
root=$(pwd)
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
wb_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -q " $wb_version\b"; then
  cargo install wasm-bindgen-cli --version "$wb_version"
fi
cargo build --release -p mtpath-web --target wasm32-unknown-unknown
rm -rf www/pkg.tmp
wasm-bindgen --target web --no-typescript --out-dir www/pkg.tmp \
  target/wasm32-unknown-unknown/release/mtpath_web.wasm
if [ "${MTPATH_WASM_OPT:-1}" != 0 ]; then
  wasm_opt="$root/.tools/node_modules/.bin/wasm-opt"
  if [ ! -x "$wasm_opt" ]; then
    mkdir -p .tools
    (cd .tools && npm install --silent --no-audit --no-fund binaryen@132.0.0 >/dev/null)
  fi
  "$wasm_opt" -O3 --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals --enable-simd \
    www/pkg.tmp/mtpath_web_bg.wasm -o www/pkg.tmp/mtpath_web_bg.opt.wasm
  mv www/pkg.tmp/mtpath_web_bg.opt.wasm www/pkg.tmp/mtpath_web_bg.wasm
fi
rm -rf www/pkg && mv www/pkg.tmp www/pkg
printf 'www/pkg/mtpath_web_bg.wasm: %s bytes\n' "$(stat -c %s www/pkg/mtpath_web_bg.wasm)"
