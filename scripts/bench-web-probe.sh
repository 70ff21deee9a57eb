#!/usr/bin/env bash
# The explorer's probe ("Cross-validate and classify") timed in headless Chromium on 1,000 and
# 10,000 real tiles, beside `mtpath bench --mode probe` natively and scikit-learn on the same
# rows, one thread each by default (THREADS=N: every engine on N; the page then runs the
# threaded module, its folds in parallel, as on a cross-origin isolated page). Not part of CI.
#
#   bash scripts/bench-web-probe.sh                         # chula-rbc, pool-r18 features
#   FEATURES=feats.safetensors TILES=1000,5000 bash scripts/bench-web-probe.sh
#   THREADS=2 bash scripts/bench-web-probe.sh               # every engine on 2 threads
#
# FEATURES: a labelled features file (`mtpath features --task DIR`); by default the released
# pool-r18 model's features of the shared chula-rbc task at 64 px (14,015 tiles, 11 classes),
# made once into target/bench-web/probe/. TILES: subset sizes (random rows, seed 0). The page
# runs the explorer's calls (www/bench/probe-worker.js: probeCrossValidate over the default
# C grid, widened at an edge as the explorer does, then the final Probe fit); the native and
# scikit-learn runs use the fixed default grid. Prints a markdown table (scripts/bench_web_probe.py).
# SKIP_BUILD=1 reuses target/bench-web/pkg. Python with scikit-learn: BENCH_VENV (default
# /tmp/mtpath-bench-venv, created from PyPI on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${BENCH_VENV:-/tmp/mtpath-bench-venv}
out=target/bench-web
data=${MTPATH_DATA:-$root/../shared/data}
export MTPATH_DATA=$data
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import sklearn, threadpoolctl" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q scikit-learn threadpoolctl
fi
cargo build -q --release -p mtpath
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  bash scripts/build-web.sh
  mkdir -p "$out"
  for p in pkg pkg-threads; do rm -rf "$out/$p" && cp -r "www/$p" "$out/$p"; done
fi
for p in pkg pkg-threads; do [ -f "$out/$p/mtpath_web.js" ] || cp -r "www/$p" "$out/$p"; done
mkdir -p "$out/probe"
features=${FEATURES:-}
if [ -z "$features" ]; then
  features=$out/probe/chula-rbc-pool-r18.safetensors
  if [ ! -f "$features" ]; then
    [ -f "$data/chula-rbc/manifest.csv" ] || { echo "$data/chula-rbc/manifest.csv: missing; set MTPATH_DATA to the shared data folder or FEATURES to a features file" >&2; exit 1; }
    ./target/release/mtpath features --weights pool-r18 --size 64 --task "$data/chula-rbc" \
      --out "$features"
  fi
fi
"$venv/bin/python" scripts/bench_web_probe.py "$features" --tiles "${TILES:-1000,10000}" \
  --threads "${THREADS:-1}" --python "$venv/bin/python"
