"""A large slide in the browser explorer: drop SLIDE through "Pick slides" in headless Chromium
and record, every few seconds, the tiles embedded, the page's JavaScript heap and the memory
(RSS) of all Chromium processes (page, workers, GPU), until the page has embedded every tile,
or until --cancel-after tiles, when it presses Cancel and times how long the page takes to
stop and show what it has.

usage: python3 scripts/slide_scale_web.py SLIDE [--mtpath target/release/mtpath]
           [--size 224] [--mpp 0.5] [--min-tissue 0.5] [--cancel-after N] [--limit-s 3600]

The page is served by `mtpath serve www` (its default model: the released trunk). Prints one
line per sample and a summary; needs chromium and chromedriver (scripts/test.sh installs them).
"""
import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_web_driver import CHROME_ARGS, WebDriver  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_rss_mb() -> float:
    """Resident memory of every Chromium process, in MiB."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"chrom" not in cmd.split(b"\0")[0]:
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slide", type=Path)
    ap.add_argument("--mtpath", default=str(ROOT / "target/release/mtpath"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--min-tissue", type=float, default=0.5)
    ap.add_argument("--cancel-after", type=int, default=0)
    ap.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--limit-s", type=float, default=3600)
    a = ap.parse_args()

    port, dport = free_port(), free_port()
    server = subprocess.Popen([a.mtpath, "serve", str(ROOT / "www"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver = subprocess.Popen([a.chromedriver, f"--port={dport}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wd = WebDriver(f"http://127.0.0.1:{dport}")
    session = None
    try:
        for _ in range(200):
            if wd.ready():
                break
            time.sleep(0.1)
        session = wd.new_session(a.chromium)
        s = f"/session/{session}"

        def js(script):
            return wd.call("POST", s + "/execute/sync", {"script": script, "args": []})

        def wait(cond, limit):
            end = time.monotonic() + limit
            while time.monotonic() < end:
                if js(f"return Boolean({cond})"):
                    return
                time.sleep(0.5)
            raise RuntimeError(f"not reached in {limit} s: {cond}")

        for _ in range(100):  # the server needs a moment
            try:
                wd.call("POST", s + "/url", {"url": f"http://127.0.0.1:{port}/"})
                break
            except RuntimeError:
                time.sleep(0.2)
        wait("document.body.dataset.stage === 'model-loaded'", 300)
        js(f"document.getElementById('slide-size').value = '{a.size}';"
           f"document.getElementById('slide-mpp').value = '{a.mpp}';"
           f"document.getElementById('slide-tissue').value = '{a.min_tissue}'; return true;")
        base_rss = chromium_rss_mb()
        el = wd.call("POST", s + "/element", {"using": "css selector", "value": "#slides-input"})
        t0 = time.monotonic()
        wd.call("POST", s + f"/element/{el[ELEMENT]}/value", {"text": str(a.slide.resolve())})
        peak_rss = peak_heap = 0.0
        cancelled_at = None
        print(f"{a.slide.name}: {a.slide.stat().st_size / 2**30:.2f} GiB; Chromium at rest "
              f"{base_rss:.0f} MiB")
        while time.monotonic() - t0 < a.limit_s:
            st = js("return [document.body.dataset.stage, document.getElementById('progress-text').textContent,"
                    " document.getElementById('input-status').textContent,"
                    " performance.memory ? performance.memory.usedJSHeapSize : 0,"
                    " Number(document.getElementById('progress-bar').value)]")
            stage, progress, status, heap, done = st
            rss = chromium_rss_mb()
            peak_rss, peak_heap = max(peak_rss, rss), max(peak_heap, heap / 2**20)
            print(f"{time.monotonic() - t0:7.1f} s  {stage:<12} {progress or status[:80]}  "
                  f"heap {heap / 2**20:.0f} MiB  chromium RSS {rss:.0f} MiB", flush=True)
            if stage == "extracted" or (stage not in ("extracting", "model-loaded")):
                break
            if a.cancel_after and cancelled_at is None and done >= a.cancel_after:
                js("document.getElementById('cancel').click(); return true;")
                cancelled_at = time.monotonic()
                print(f"  Cancel pressed at {int(done)} tiles", flush=True)
            time.sleep(0.5 if cancelled_at else a.every)
        end = time.monotonic()
        status = js("return document.getElementById('input-status').textContent")
        print(f"\nfinal: {status}")
        print(f"total {end - t0:.1f} s; peak Chromium RSS {peak_rss:.0f} MiB "
              f"(+{peak_rss - base_rss:.0f} over the page at rest); peak JS heap {peak_heap:.0f} MiB")
        if cancelled_at is not None:
            print(f"cancel to stopped: {end - cancelled_at:.1f} s")
    finally:
        if session:
            wd.call("DELETE", f"/session/{session}")
        driver.terminate()
        server.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
