"""Slide reading, side by side: mtpath (`mtpath bench --mode slide`) against OpenSlide
(openslide-python, the reference whole-slide reader) on the same slides, tiles and threads.

usage: python3 scripts/bench_slide.py [--mtpath BIN] [--size 224] [--level 0] [--threads 1,2]
                                      [--passes 3] SLIDE...

Both read every SIZE-px tile of the level (row by row; OpenSlide's `read_region`, which also
converts to RGBA), after one untimed pass that warms the OS file cache, each timed pass with a
new reader so that tile caches start empty; best of PASSES. With N threads, OpenSlide's reads
run in a pool of N Python threads (read_region releases the GIL); mtpath reads tiles in
parallel over N threads. Prints a Markdown table with tiles/s and the ratio mtpath/OpenSlide.
Needs `pip install openslide-bin openslide-python` and a release build of mtpath. Test slides:
`cargo run --release -p mtpath-integration-tests --bin make-test-slide -- OUT.svs [--grid CxR]`.
"""
import argparse
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openslide


def openslide_rate(slide: Path, level: int, size: int, threads: int, passes: int) -> float:
    handle = openslide.OpenSlide(str(slide))
    w, h = handle.level_dimensions[level]
    ds = handle.level_downsamples[level]
    tiles = [
        (round(x * ds), round(y * ds))
        for y in range(0, h // size * size, size)
        for x in range(0, w // size * size, size)
    ]

    def read_all(s: openslide.OpenSlide) -> None:
        if threads == 1:
            for t in tiles:
                s.read_region(t, level, (size, size))
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda t: s.read_region(t, level, (size, size)), tiles))

    read_all(handle)
    best = float("inf")
    for _ in range(passes):
        fresh = openslide.OpenSlide(str(slide))
        start = time.perf_counter()
        read_all(fresh)
        best = min(best, time.perf_counter() - start)
    return len(tiles) / best


def mtpath_rate(
    binary: str, slide: Path, level: int, size: int, threads: int, passes: int
) -> float:
    out = subprocess.run(
        [
            binary, "bench", "--mode", "slide", "--slide", str(slide), "--level", str(level),
            "--size", str(size), "--threads", str(threads), "--iters", str(passes),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"slide: ([0-9.]+) tiles/s", out)
    if not m:
        sys.exit(f"unexpected output of mtpath bench:\n{out}")
    return float(m.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("slides", nargs="+", type=Path)
    ap.add_argument("--mtpath", default="target/release/mtpath")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--level", type=int, default=0)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--passes", type=int, default=3)
    a = ap.parse_args()
    cpu = next(
        (l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
        "unknown CPU",
    )
    print(f"{cpu}; openslide {openslide.__library_version__}; {a.size}-px tiles, level {a.level}\n")
    print("| slide | threads | mtpath tiles/s | OpenSlide tiles/s | mtpath / OpenSlide |")
    print("|---|---|---|---|---|")
    for slide in a.slides:
        for t in (int(x) for x in a.threads.split(",")):
            # Interleaved, so that both see the same machine load.
            ours = mtpath_rate(a.mtpath, slide, a.level, a.size, t, a.passes)
            peer = openslide_rate(slide, a.level, a.size, t, a.passes)
            print(f"| {slide.name} | {t} | {ours:.0f} | {peer:.0f} | {ours / peer:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
