"""Driver of scripts/bench-web-probe.sh: the explorer's "Cross-validate and classify" timed in
headless Chromium (www/bench/probe.html), beside `mtpath bench --mode probe` natively and
scikit-learn (scripts/bench_probe_cv.py) on the same rows, one after the other, one thread
each unless told otherwise.

For each size in --tiles, a random subset of that many rows (seed 0, without replacement) of
the features file is written to target/bench-web/probe/ as a features file of its own (per-row
tensors and per-row metadata lists cut alike, the rest kept), so that all three engines read
the same rows. Prints a markdown table of seconds (cross-validation, final fit, total) and the
ratios to scikit-learn's total. Raw results: target/bench-web/probe/results.json.
"""
import argparse
import json
import pathlib
import random
import re
import struct
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_web_server  # noqa: E402
from bench_web_driver import start_chromedriver  # noqa: E402

ROOT = bench_web_server.ROOT
OUT = ROOT / "target" / "bench-web" / "probe"
DTYPE_SIZE = {"F32": 4, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "U32": 4}


def read_safetensors(path):
    raw = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_subset(src, rows, dst):
    """The rows `rows` of the features file `src` as a features file at `dst`."""
    header, body = read_safetensors(src)
    n = header["features"]["shape"][0]
    meta = dict(header.get("__metadata__", {}))
    for key, value in meta.items():
        try:
            parsed = json.loads(value)
        except ValueError:
            continue
        if isinstance(parsed, list) and len(parsed) == n:
            meta[key] = json.dumps([parsed[i] for i in rows])
    out_header, chunks, offset = {"__metadata__": meta}, [], 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        data = body[a:b]
        shape = list(t["shape"])
        if shape and shape[0] == n:
            width = (b - a) // n
            data = b"".join(data[i * width : (i + 1) * width] for i in rows)
            shape[0] = len(rows)
        out_header[name] = {"dtype": t["dtype"], "shape": shape,
                            "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    h = json.dumps(out_header).encode()
    h += b" " * (-len(h) % 8)
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(chunks))
    tmp.replace(dst)


def seconds(pattern, text, what):
    m = re.search(pattern, text)
    if not m:
        raise RuntimeError(f"{what}: no timing line in its output:\n{text[-2000:]}")
    return [float(v) for v in m.groups()]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("features", help="a labelled features file (mtpath features --task ...)")
    p.add_argument("--tiles", default="1000,10000", help="subset sizes, comma-separated")
    p.add_argument("--threads", type=int, default=1, help="threads of every engine")
    p.add_argument("--mtpath", default=str(ROOT / "target" / "release" / "mtpath"))
    p.add_argument("--python", default=sys.executable, help="a Python with scikit-learn")
    p.add_argument("--pkg", default="/models/pkg/mtpath_web.js")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    p.add_argument("--page-limit", type=int, default=1800, help="seconds per page")
    p.add_argument("--skip-sklearn", action="store_true")
    a = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    header, _ = read_safetensors(a.features)
    total = header["features"]["shape"][0]
    sizes = [int(s) for s in a.tiles.split(",")]
    if any(s < 10 or s > total for s in sizes):
        sys.exit(f"{a.features} has {total} rows; --tiles must lie in 10..{total}")
    pkg = a.pkg
    if a.threads > 1 and "pkg-threads" not in pkg:
        pkg = pkg.replace("/pkg/", "/pkg-threads/")

    server, base = bench_web_server.start()
    driver_proc, wd = start_chromedriver(a.chromedriver)
    results = []
    try:
        for size in sizes:
            rows = sorted(random.Random(0).sample(range(total), size))
            sub = OUT / f"subset-{size}.safetensors"
            write_subset(a.features, rows, sub)
            r = {"tiles": size}
            # The page.
            url = f"{base}/www/bench/probe.html?pkg={pkg}&threads={a.threads}&file=/models/probe/{sub.name}"
            session = wd.new_session(a.chromium)
            try:
                page = wd.run_page(session, url, a.page_limit)
            finally:
                wd.call("DELETE", f"/session/{session}")
            if page.get("error"):
                raise RuntimeError(f"page {url}: {page['error']}")
            r["page"] = page
            print(f"{size} tiles, page: CV {page['cvMs'] / 1e3:.2f} s, final fit {page['fitMs'] / 1e3:.2f} s "
                  f"(best C {page['bestC']}, widened {page['widened']})", file=sys.stderr)
            # Native, same rows, same threads.
            out = subprocess.run([a.mtpath, "bench", "--mode", "probe", "--features", str(sub),
                                  "--threads", str(a.threads)], capture_output=True, text=True, check=True)
            r["native"] = seconds(r"cross-validation ([\d.]+) s, final fit ([\d.]+) s", out.stdout + out.stderr,
                                  "mtpath bench")
            print(f"{size} tiles, native: {r['native']}", file=sys.stderr)
            if not a.skip_sklearn:
                out = subprocess.run([a.python, str(ROOT / "scripts" / "bench_probe_cv.py"), str(sub),
                                      "--threads", str(a.threads)], capture_output=True, text=True, check=True)
                r["sklearn"] = seconds(r"cross-validation ([\d.]+) s, final fit ([\d.]+) s", out.stdout,
                                       "bench_probe_cv.py")
                print(f"{size} tiles, scikit-learn: {r['sklearn']}", file=sys.stderr)
            results.append(r)
    finally:
        driver_proc.terminate()
        driver_proc.wait(timeout=10)
        server.shutdown()
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    d = header["features"]["shape"][1]
    print(f"\nThe probe's model selection and final fit, {d} features, {a.threads} thread(s), seconds "
          f"(cross-validation + final fit = total); ratio = time / scikit-learn's time\n")
    print("| tiles | page (wasm) | native | scikit-learn | page / sklearn | native / sklearn | best C (page) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        pg = (r["page"]["cvMs"] / 1e3, r["page"]["fitMs"] / 1e3)
        cell = lambda t: f"{t[0] + t[1]:.2f} ({t[0]:.2f} + {t[1]:.2f})"  # noqa: E731
        sk = r.get("sklearn")
        ratio = lambda t: f"{(t[0] + t[1]) / (sk[0] + sk[1]):.3f}" if sk else "–"  # noqa: E731
        widened = r["page"]["widened"]
        best = f"{r['page']['bestC']}" + (f" (widened to {widened})" if widened else "")
        print(f"| {r['tiles']} | {cell(pg)} | {cell(r['native'])} | {cell(sk) if sk else '–'} | "
              f"{ratio(pg)} | {ratio(r['native'])} | {best} |")


if __name__ == "__main__":
    main()
