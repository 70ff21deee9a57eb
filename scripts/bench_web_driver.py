"""Driver of scripts/bench-web.sh: runs www/bench/ in headless Chromium over WebDriver (plain
HTTP to chromedriver, standard library only), one fresh browser session per engine, and prints
markdown tables: per tile, ms per image (median of N runs after the warm-up) at 1 and 2
threads, the ratios mtpath / ort, the .wasm sizes, feature agreement and whether each page was
cross-origin isolated; per folder, the tiles/s of the explorer's extraction pool over
target/bench-web/tiles.json with all cores (as many workers as cores, and one worker on all
cores) beside onnxruntime-web on as many threads.

Agreement is max|a - b| / max|b| over the feature vector of the common input (input.bin),
b being the reference named (PyTorch: `<arch>.ref.bin` from bench_web_models.py).
"""
import argparse
import json
import os
import pathlib
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_web_server  # noqa: E402

ROOT = bench_web_server.ROOT
OUT = ROOT / "target" / "bench-web"
ORT_DIST = ROOT / ".tools" / "node_modules" / "onnxruntime-web" / "dist"
CHROME_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-extensions", "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    def __init__(self, url):
        self.url = url

    def call(self, method, path, body=None, timeout=600):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"webdriver {method} {path}: {e.code} {e.read()[:2000].decode(errors='replace')}")

    def ready(self):
        try:
            return bool(self.call("GET", "/status", timeout=2).get("ready"))
        except Exception:
            return False

    def new_session(self, chromium):
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": CHROME_ARGS},
            "timeouts": {"script": 300000, "pageLoad": 300000},
        }}}
        return self.call("POST", "/session", caps)["sessionId"]

    def run_page(self, session, url, limit_s):
        s = f"/session/{session}"
        self.call("POST", s + "/url", {"url": url})
        deadline = time.monotonic() + limit_s
        last = ""
        while time.monotonic() < deadline:
            state = self.call("POST", s + "/execute/sync", {
                "script": "return [window.benchDone === true, document.getElementById('status').textContent]",
                "args": []})
            if state[0]:
                text = self.call("POST", s + "/execute/sync", {
                    "script": "return document.getElementById('result').textContent", "args": []})
                return json.loads(text)
            if state[1] != last and os.environ.get("BENCH_WEB_VERBOSE"):
                print(f"  {state[1]}", file=sys.stderr)
            last = state[1]
            time.sleep(1)
        raise RuntimeError(f"{url}: not done after {limit_s} s (last status: {last})")


def start_chromedriver(path):
    """chromedriver on a free port, once it answers: (its process, a WebDriver client)."""
    port = free_port()
    proc = subprocess.Popen([path, f"--port={port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wd = WebDriver(f"http://127.0.0.1:{port}")
    for _ in range(100):
        if wd.ready():
            return proc, wd
        time.sleep(0.1)
    proc.terminate()
    proc.wait(timeout=10)
    raise RuntimeError("chromedriver did not start")


def read_f32(path):
    b = path.read_bytes()
    return list(struct.unpack(f"<{len(b) // 4}f", b))


def rel(a, b):
    if a is None or b is None:
        return None
    if len(a) != len(b):
        return float("inf")
    scale = max(abs(v) for v in b) or 1.0
    return max(abs(x - y) for x, y in zip(a, b)) / scale


def stats(ms):
    s = sorted(ms)
    k = len(s)
    return {"median": (s[(k - 1) // 2] + s[k // 2]) / 2, "min": s[0], "max": s[-1],
            "mean": sum(s) / k, "n": k}


def merge(rounds, archs):
    """One engine's page results (one per round): timings pooled, the rest from round 1
    (crossOriginIsolated: true only if it was in every round)."""
    out = dict(rounds[0])
    out["crossOriginIsolated"] = all(r["crossOriginIsolated"] for r in rounds)
    out["archs"] = {}
    for arch in archs:
        first = rounds[0]["archs"][arch]
        merged = dict(first)
        for key in ("forward", "jpeg", "png"):
            if key in first:
                merged[key] = stats([t for r in rounds for t in r["archs"][arch][key]["ms"]])
        if "seconds" in first:
            seconds = [t for r in rounds for t in r["archs"][arch]["seconds"]]
            merged["seconds"] = seconds
            merged["tilesPerSecond"] = first["tiles"] / stats(seconds)["median"]
            merged["bestTilesPerSecond"] = first["tiles"] / min(seconds)
        out["archs"][arch] = merged
    return out


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--archs", default="resnet18,resnet50")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    p.add_argument("--rounds", type=int, default=2, help="page loads per engine, order alternating")
    p.add_argument("--nosimd", type=int, default=1, help="0: leave out the build without +simd128")
    p.add_argument("--page-limit", type=int, default=900, help="seconds per engine page")
    p.add_argument("--folder-passes", type=int, default=2, help="timed passes over the folder per page")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="threads of the per-folder runs")
    p.add_argument("--only", choices=["tile", "folder"], help="run one of the two parts")
    a = p.parse_args()
    archs = a.archs.split(",")

    engines = []
    if a.only != "folder":
        engines.append(("mtpath wasm", {"engine": "mtpath", "pkg": "/models/pkg/mtpath_web.js"}))
        if a.nosimd and (OUT / "pkg-nosimd" / "mtpath_web.js").exists():
            engines.append(("mtpath wasm no-simd128", {"engine": "mtpath", "pkg": "/models/pkg-nosimd/mtpath_web.js"}))
        engines += [("mtpath wasm 2 threads", {"engine": "mtpath", "pkg": "/models/pkg-threads/mtpath_web.js", "threads": 2}),
                    ("ort wasm 1 thread", {"engine": "ort", "threads": 1}),
                    ("ort wasm 2 threads", {"engine": "ort", "threads": 2})]
    if a.only != "tile":
        # The explorer's pool with all cores: a worker per core, and one worker on every core.
        engines += [(f"explorer {a.cores} workers", {"engine": "folder-mtpath", "workers": a.cores}),
                    ("explorer 1 worker", {"engine": "folder-mtpath", "workers": 1}),
                    (f"ort folder {a.cores} threads", {"engine": "folder-ort", "threads": a.cores})]
    # Each engine runs in `rounds` page loads of about n / rounds timed runs, the engine order
    # reversed every other round, so that a drifting machine load hits all engines alike.
    per_round = [a.n // a.rounds + (i < a.n % a.rounds) for i in range(a.rounds)]

    server, base = bench_web_server.start()
    driver_proc, wd = start_chromedriver(a.chromedriver)
    pages = {name: [] for name, _ in engines}
    try:
        for rnd, n in enumerate(per_round):
            for name, q in (engines if rnd % 2 == 0 else engines[::-1]):
                query = "&".join(f"{k}={v}" for k, v in {**q, "archs": ",".join(archs), "n": n,
                                                            "warmup": a.warmup,
                                                            "rounds": a.folder_passes}.items())
                url = f"{base}/www/bench/index.html?{query}"
                t0 = time.monotonic()
                session = wd.new_session(a.chromium)
                try:
                    r = wd.run_page(session, url, a.page_limit)
                finally:
                    wd.call("DELETE", f"/session/{session}")
                print(f"round {rnd + 1}/{a.rounds} {name}: {time.monotonic() - t0:.0f} s  ({url})",
                      file=sys.stderr)
                if r.get("error"):
                    raise RuntimeError(f"{name}: page error: {r['error']}")
                pages[name].append(r)
    finally:
        driver_proc.terminate()
        driver_proc.wait(timeout=10)
        server.shutdown()
    (OUT / "results.json").write_text(json.dumps(pages))
    results = {name: merge(rs, archs) for name, rs in pages.items()}
    report(results, archs, a)


def report(results, archs, a):
    def get(engine, arch, *keys):
        v = results.get(engine, {}).get("archs", {}).get(arch)
        for k in keys:
            if v is None:
                return None
            v = v.get(k)
        return v

    tile_results = {k: v for k, v in results.items() if not v["engine"].startswith("folder")}
    folder_results = {k: v for k, v in results.items() if v["engine"].startswith("folder")}
    any_r = next(iter(results.values()))
    print(f"\n{any_r['userAgent']}; hardwareConcurrency {any_r['hardwareConcurrency']}; "
          f"onnxruntime-web {next((r.get('ortVersion') for r in results.values() if r.get('ortVersion')), None)}; "
          f"224 px, batch 1; ms per image: median and min of {a.n} runs, in {a.rounds} page loads per engine "
          f"(engine order alternating), each after {a.warmup} warm-up runs\n")
    if tile_results:
        report_tiles(tile_results, get, archs, a)
    if folder_results:
        report_folder(folder_results, get, archs, a)


def report_tiles(results, get, archs, a):
    print("| engine | arch | forward ms/img | min | extract(jpeg) ms | extract(png) ms | load ms | crossOriginIsolated |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name, r in results.items():
        for arch in archs:
            print(f"| {name} | {arch} | {fmt(get(name, arch, 'forward', 'median'))} "
                  f"| {fmt(get(name, arch, 'forward', 'min'))} "
                  f"| {fmt(get(name, arch, 'jpeg', 'median'))} | {fmt(get(name, arch, 'png', 'median'))} "
                  f"| {fmt(get(name, arch, 'loadMs'), '.0f')} | {r['crossOriginIsolated']} |")

    print("\n| arch | statistic | mtpath / ort 1t | mtpath 2t / ort 2t | mtpath 1t / ort 2t | mtpath no-simd128 / ort 1t | mtpath no-simd128 / mtpath |")
    print("|---|---|---:|---:|---:|---:|---:|")
    ratio = lambda x, y: None if x is None or y is None else x / y
    for arch in archs:
        for st in ("median", "min"):
            ours = get("mtpath wasm", arch, "forward", st)
            ours2 = get("mtpath wasm 2 threads", arch, "forward", st)
            simd = get("mtpath wasm no-simd128", arch, "forward", st)
            o1 = get("ort wasm 1 thread", arch, "forward", st)
            o2 = get("ort wasm 2 threads", arch, "forward", st)
            print(f"| {arch} | {st} | {fmt(ratio(ours, o1), '.2f')} | {fmt(ratio(ours2, o2), '.2f')} "
                  f"| {fmt(ratio(ours, o2), '.2f')} | {fmt(ratio(simd, o1), '.2f')} | {fmt(ratio(simd, ours), '.2f')} |")
    print("(ratios of forward-only times, the network alone; > 1 means mtpath is slower)")

    print("\n| .wasm | bytes |")
    print("|---|---:|")
    ours = OUT / "pkg" / "mtpath_web_bg.wasm"
    print(f"| mtpath (scripts/build-web.sh, wasm-opt -O3) | {ours.stat().st_size} |")
    threaded = OUT / "pkg-threads" / "mtpath_web_bg.wasm"
    if "mtpath wasm 2 threads" in results:
        print(f"| mtpath threaded (atomics, wasm-opt -O3) | {threaded.stat().st_size} |")
    simd = OUT / "pkg-nosimd" / "mtpath_web_bg.wasm"
    if "mtpath wasm no-simd128" in results:
        print(f"| mtpath no-simd128 (wasm-opt -O3) | {simd.stat().st_size} |")
    ort_urls = sorted({w["url"] for r in results.values() if r["engine"] == "ort" for w in r["wasm"]})
    for u in ort_urls:
        f = ORT_DIST / u.removeprefix("/ort/")
        print(f"| onnxruntime-web {u.removeprefix('/ort/')} | {f.stat().st_size if f.exists() else '?'} |")

    print("\nAgreement, max|a-b| / max|b| over the features of input.bin:\n")
    print("| arch | mtpath vs ort 1t | mtpath vs torch | ort 1t vs torch | ort 2t vs ort 1t | mtpath 2t vs mtpath | no-simd128 vs mtpath | no-simd128 vs torch | extract(jpeg) vs torch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arch in archs:
        ref = read_f32(OUT / f"{arch}.ref.bin")
        ours = get("mtpath wasm", arch, "features")
        simd = get("mtpath wasm no-simd128", arch, "features")
        o1 = get("ort wasm 1 thread", arch, "features")
        o2 = get("ort wasm 2 threads", arch, "features")
        jpeg = get("mtpath wasm", arch, "jpegFeatures")
        ours2 = get("mtpath wasm 2 threads", arch, "features")
        cells = [rel(ours, o1), rel(ours, ref), rel(o1, ref), rel(o2, o1), rel(ours2, ours), rel(simd, ours),
                 rel(simd, ref), rel(jpeg, ref)]
        print(f"| {arch} | " + " | ".join(fmt(c, ".1e") for c in cells) + " |")
    print("(extract(jpeg) decodes a JPEG re-encoding of the tile; torch's input is the lossless tile, so "
          "that column measures JPEG loss + resize, not parity)")


def report_folder(results, get, archs, a):
    tiles = next(iter(results.values()))["archs"][archs[0]]["tiles"]
    ort_name = next((k for k, v in results.items() if v["engine"] == "folder-ort"), None)
    print(f"\nPer folder: {tiles} real tiles (target/bench-web/tiles.json), file bytes to features, "
          f"{a.cores} cores; tiles/s over the median pass of {a.folder_passes} per page load "
          f"x {a.rounds} loads, each after a warm-up pass\n")
    print("| engine | arch | workers x threads | tiles/s | best pass tiles/s | vs ort |")
    print("|---|---|---|---:|---:|---:|")
    for name, r in results.items():
        for arch in archs:
            v = r["archs"][arch]
            ort = get(ort_name, arch, "tilesPerSecond") if ort_name else None
            vs = None if ort is None else v["tilesPerSecond"] / ort
            print(f"| {name} | {arch} | {v['workers']} x {v['threads']} | {v['tilesPerSecond']:.1f} "
                  f"| {v['bestTilesPerSecond']:.1f} | {fmt(vs, '.2f')} |")
    print("(explorer: www/app/extract.js's pool, decode + resize + network + thumbnail in its workers; "
          "ort: one session, the browser decoding and resizing each tile; > 1 means mtpath is faster)")


if __name__ == "__main__":
    main()
