#!/usr/bin/env bash
# Build the browser explorer: the `web` crate to wasm32, its JavaScript bindings into
# www/pkg/ (single-threaded) and www/pkg-threads/ (threaded), then wasm-opt (binaryen from npm,
# installed into .tools/ when missing).
#
#   bash scripts/build-web.sh                       # both modules, optimised
#   MTPATH_WASM_OPT=0 bash scripts/build-web.sh     # skip wasm-opt (faster)
#   MTPATH_WEB_THREADS=0 bash scripts/build-web.sh  # the single-threaded module only
#
# The modules are compiled with wasm SIMD (`+simd128`) throughout: gemm's kernels use it in any
# case (so a browser without wasm SIMD cannot load the module either way), and LLVM's
# vectorisation of everything else made ResNet-18 and ResNet-50 features 8-11% faster
# (scripts/bench-web.sh). CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS, when set (even
# empty), replaces the flag for the single-threaded module.
#
# The threaded module (feature `threads`: wasm-bindgen-rayon) needs shared memory, so its
# standard library is rebuilt with atomics: `-Z build-std` on this repository's stable
# toolchain with RUSTC_BOOTSTRAP=1 (pinned: the same compiler as every other build here, no
# nightly to install or drift; rustup's `rust-src` component, added when missing), in its own
# target directory (target/wasm-threads). Its memory may grow to 4 GiB, as the single-threaded
# module's. The page loads it only when cross-origin isolated (extract-worker.js); the
# single-threaded module is the fallback.
set -euo pipefail
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="${CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS--C target-feature=+simd128}"
cd "$(dirname "$0")/.."
root=$(pwd)
threads=${MTPATH_WEB_THREADS:-1}
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
wb_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -q " $wb_version\b"; then
  cargo install wasm-bindgen-cli --version "$wb_version"
fi

wasm_opt="$root/.tools/node_modules/.bin/wasm-opt"
if [ "${MTPATH_WASM_OPT:-1}" != 0 ] && [ ! -x "$wasm_opt" ]; then
  mkdir -p .tools
  (cd .tools && npm install --silent --no-audit --no-fund binaryen@132.0.0 >/dev/null)
fi

# bindgen RAW OUT [wasm-opt flags...]: wasm-bindgen RAW into OUT (replaced whole), then
# wasm-opt; skipped when OUT/.source says OUT was made from this very RAW the same way.
bindgen() {
  local raw=$1 out=$2
  shift 2
  local source
  source="$(sha256sum "$raw" | cut -d' ' -f1) opt=${MTPATH_WASM_OPT:-1} $*"
  if [ "$(cat "$out/.source" 2>/dev/null)" = "$source" ]; then
    printf '%s/mtpath_web_bg.wasm: %s bytes (up to date)\n' "$out" "$(stat -c %s "$out/mtpath_web_bg.wasm")"
    return
  fi
  rm -rf "$out.tmp"
  wasm-bindgen --target web --no-typescript --out-dir "$out.tmp" "$raw"
  if [ "${MTPATH_WASM_OPT:-1}" != 0 ]; then
    "$wasm_opt" -O3 --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
      --enable-mutable-globals --enable-simd "$@" \
      "$out.tmp/mtpath_web_bg.wasm" -o "$out.tmp/mtpath_web_bg.opt.wasm"
    mv "$out.tmp/mtpath_web_bg.opt.wasm" "$out.tmp/mtpath_web_bg.wasm"
  fi
  printf '%s\n' "$source" > "$out.tmp/.source"
  rm -rf "$out" && mv "$out.tmp" "$out"
  printf '%s/mtpath_web_bg.wasm: %s bytes\n' "$out" "$(stat -c %s "$out/mtpath_web_bg.wasm")"
}

# binaryen's wasm-opt (npm's build of it) is single-threaded and takes minutes a module: the
# single-threaded module's runs while the threaded one compiles, then beside the threaded
# one's. (Each runs in a background subshell, where `set -e` still stops it at its first
# failure; `wait` hands back its status.)
cargo build --release -p mtpath-web --target wasm32-unknown-unknown
bindgen target/wasm32-unknown-unknown/release/mtpath_web.wasm www/pkg &
jobs_=($!)

if [ "$threads" != 0 ]; then
  # Atomics no longer imply shared memory (rust-lang/rust#147225): the linker is asked for it,
  # imported (wasm-bindgen hands the one memory to every thread), with the thread-local
  # storage symbols wasm-bindgen's thread start-up calls.
  threads_flags="-C target-feature=+atomics,+bulk-memory,+mutable-globals,+simd128"
  for arg in --shared-memory --max-memory=4294967296 --import-memory --export=__wasm_init_tls \
    --export=__tls_size --export=__tls_align --export=__tls_base; do
    threads_flags+=" -C link-arg=$arg"
  done
  toolchain=$(rustup show active-toolchain | cut -d' ' -f1)
  rustup component list --installed --toolchain "$toolchain" | grep -q '^rust-src' \
    || rustup component add rust-src --toolchain "$toolchain"
  RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/wasm-threads \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="$threads_flags" \
    cargo build --release -p mtpath-web --target wasm32-unknown-unknown --features threads \
    -Z build-std=panic_abort,std
  bindgen target/wasm-threads/wasm32-unknown-unknown/release/mtpath_web.wasm www/pkg-threads \
    --enable-threads &
  jobs_+=($!)
else
  rm -rf www/pkg-threads
fi
failed=0
for job in "${jobs_[@]}"; do
  wait "$job" || failed=1
done
exit "$failed"
