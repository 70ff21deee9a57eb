#!/usr/bin/env bash
# The aarch64 (ARM64, Apple Silicon under Linux, Graviton) build and its tests, on an x86-64
# machine: cross-compiled with Debian's aarch64 gcc as the linker and run under qemu-user.
# There the direct convolution kernels are compiled out and every convolution goes through
# gemm (its NEON kernels). Not part of CI (emulated, the whole suite takes over an hour);
# TESTS overrides the test filter (default: the layers, the probe, preprocessing, weights).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
rustup target list --installed | grep -q "^$target\$" || rustup target add "$target"
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  sudo_=""
  [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo build --release --target "$target" -p mtpath
# shellcheck disable=SC2086
cargo test --target "$target" -p mtpath-shared --lib -- ${TESTS:-layers:: probe:: preprocess:: weights::}
