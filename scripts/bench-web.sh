#!/usr/bin/env bash
# Browser benchmark: mtpath's wasm feature extraction beside onnxruntime-web (wasm execution
# provider), same headless Chromium, same ResNet-18 / ResNet-50 (seeded random weights, BN with
# non-trivial running statistics), 224 px, batch 1. Not part of CI.
#
#   bash scripts/bench-web.sh
#   N=20 WARMUP=3 ARCHS=resnet18,resnet50 NOSIMD=1 BENCH_VENV=/tmp/torchvenv bash scripts/bench-web.sh
#
# Prints markdown tables of ms per image (median and min of N runs after WARMUP runs) for:
#   mtpath wasm            scripts/build-web.sh's www/pkg (copied to target/bench-web/pkg at
#                          once, as other work may rebuild www/pkg meanwhile), single thread,
#                          compiled with -C target-feature=+simd128;
#   mtpath wasm no-simd128 the same without that flag (NOSIMD=0 skips it;
#                          CARGO_TARGET_DIR=target/wasm-nosimd, bindings in
#                          target/bench-web/pkg-nosimd). NB: it still runs its matrix products
#                          in gemm's simd128 kernels (gemm feature wasm-simd128-enable,
#                          #[target_feature]); the flag adds LLVM's vectorisation of the rest;
#   ort wasm 1 / 2 threads onnxruntime-web (ORT_WEB_VERSION, npm into .tools/), the page served
#                          cross-origin isolated (COOP/COEP) so that its threads work;
# with mtpath's `extract(bytes)` of a real 224x224 JPEG / PNG tile (decode + preprocess +
# network) and the network alone (`extractPreprocessed`, the basis of the ratios mtpath / ort),
# then the .wasm sizes, the feature agreement (mtpath, ort, PyTorch) and crossOriginIsolated.
#
# Models come from scripts/bench_web_models.py (torch + torchvision + onnx + onnxscript in a
# throwaway venv: BENCH_VENV, default /tmp/mtpath-bench-venv, created from PyPI on first use)
# into target/bench-web/ (reused while up to date). The page is www/bench/, the server
# scripts/bench_web_server.py, the WebDriver client scripts/bench_web_driver.py (standard
# library; /usr/bin/chromium and /usr/bin/chromedriver). Raw results: target/bench-web/results.json.
# SKIP_BUILD=1 reuses target/bench-web/pkg and pkg-nosimd as they are. ROUNDS (default 2): page
# loads per engine, the N timed runs split among them, engine order alternating (fairer when the
# machine's load drifts). The browser part takes ~3 minutes on 2 cores; a rebuild of ours
# (both variants; wasm-opt -O3 is most of it) up to ~10 more.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${BENCH_VENV:-/tmp/mtpath-bench-venv}
ort_version=${ORT_WEB_VERSION:-1.30.0}
out=target/bench-web
archs=${ARCHS:-resnet18,resnet50}
nosimd=${NOSIMD:-1}
# The flags scripts/build-web.sh builds with, so that the hash below is of its .wasm.
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="${CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS--C target-feature=+simd128}"

# 1. The models, in the venv.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, torchvision, onnx, onnxscript, safetensors" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch torchvision onnx onnxscript safetensors
fi
"$venv/bin/python" scripts/bench_web_models.py --out "$out" --archs ${archs//,/ } \
  2> >(grep -v '^\[torch.onnx\]' >&2)

# 2. onnxruntime-web.
mkdir -p .tools
if [ "$(node -p "try { require('./.tools/node_modules/onnxruntime-web/package.json').version } catch { '' }")" != "$ort_version" ]; then
  (cd .tools && npm install --silent --no-audit --no-fund "onnxruntime-web@$ort_version" >/dev/null)
fi

# 3. Ours: scripts/build-web.sh's two modules (it redoes wasm-bindgen + wasm-opt only when
# cargo's .wasm changed), copied at once, and the build without +simd128 beside them (its own
# hash kept in pkg-nosimd/.source).
hash() { sha256sum "$1" | cut -d' ' -f1; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  bash scripts/build-web.sh
  for p in pkg pkg-threads; do rm -rf "$out/$p" && cp -r "www/$p" "$out/$p"; done
  if [ "$nosimd" != 0 ]; then
    CARGO_TARGET_DIR=target/wasm-nosimd CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="" \
      cargo build -q --release -p mtpath-web --target wasm32-unknown-unknown
    raw=target/wasm-nosimd/wasm32-unknown-unknown/release/mtpath_web.wasm
    if [ "$(cat "$out/pkg-nosimd/.source" 2>/dev/null)" != "$(hash "$raw")" ]; then
      rm -rf "$out/pkg-nosimd.tmp"
      wasm-bindgen --target web --no-typescript --out-dir "$out/pkg-nosimd.tmp" "$raw"
      "$root/.tools/node_modules/.bin/wasm-opt" -O3 --enable-bulk-memory \
        --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --enable-simd \
        "$out/pkg-nosimd.tmp/mtpath_web_bg.wasm" -o "$out/pkg-nosimd.tmp/mtpath_web_bg.opt.wasm"
      mv "$out/pkg-nosimd.tmp/mtpath_web_bg.opt.wasm" "$out/pkg-nosimd.tmp/mtpath_web_bg.wasm"
      hash "$raw" > "$out/pkg-nosimd.tmp/.source"
      rm -rf "$out/pkg-nosimd" && mv "$out/pkg-nosimd.tmp" "$out/pkg-nosimd"
    fi
  fi
fi
for p in pkg pkg-threads; do [ -f "$out/$p/mtpath_web.js" ] || cp -r "www/$p" "$out/$p"; done

# 4. The folder: TILES real tiles (default 200) from the shared data, several tasks and sizes,
# listed in target/bench-web/tiles.json as URLs under the server's /data/ mount.
data=${MTPATH_DATA:-$root/../shared/data}
python3 - "$data" "${TILES:-200}" "${TILE_TASKS:-lc25000-lung,lbc-pap,pbc-blood,lymphoma}" "$out/tiles.json" <<'PY'
import csv, json, pathlib, sys
data, count, tasks, out = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
per_task = []
for t in tasks:
    manifest = data / t / "manifest.csv"
    if not manifest.is_file():
        sys.exit(f"{manifest}: missing; set MTPATH_DATA to the shared data folder or TILE_TASKS to tasks it has")
    with open(manifest, newline="") as f:
        per_task.append([f"/data/{t}/{row['path']}" for row in csv.DictReader(f)])
# Round-robin over the tasks (and so over tile sizes and classes as the manifests order them).
urls = [rows[i] for i in range(max(map(len, per_task))) for rows in per_task if i < len(rows)][:count]
pathlib.Path(out).write_text(json.dumps(urls))
print(f"{len(urls)} tiles from {', '.join(tasks)} ({data})", file=sys.stderr)
PY
export MTPATH_DATA=$data

# 5. The browser runs.
python3 scripts/bench_web_driver.py --archs "$archs" --n "${N:-20}" --warmup "${WARMUP:-3}" \
  --rounds "${ROUNDS:-2}" --nosimd "$nosimd" --folder-passes "${FOLDER_PASSES:-2}" \
  ${ONLY:+--only "$ONLY"}
