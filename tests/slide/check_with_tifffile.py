"""Compare the tiles `mtpath tile --level L` decoded from a slide with the same pixels read by
tifffile (imagecodecs: libjpeg-turbo, zlib, LZW) and, for level 0, by Pillow (libtiff).

usage: check_with_tifffile.py SLIDE TILES_DIR LEVEL

Prints one line per reader: tiles compared, tiles equal, largest difference; exits non-zero
unless every tile equals tifffile's pixels exactly.
"""
import csv
import sys
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

Image.MAX_IMAGE_PIXELS = None


def main() -> int:
    slide, tiles_dir, level = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    with tifffile.TiffFile(slide) as tf:
        series = tf.series[0]
        full = series.levels[0].shape
        arr = series.levels[level].asarray()
    ds = full[1] / arr.shape[1]
    pillow = None
    if level == 0:
        try:
            with Image.open(slide) as im:
                pillow = np.asarray(im.convert("RGB"))
        except Exception as e:  # noqa: BLE001 - report and go on: tifffile is the reference
            print(f"pillow: cannot read {slide.name}: {e}")
    rows = list(csv.DictReader(open(tiles_dir / "manifest.csv")))
    rows = [r for r in rows if Path(r["slide"]).name == slide.name]
    ok_t = ok_p = 0
    worst_t = worst_p = 0
    for r in rows:
        tile = np.asarray(Image.open(tiles_dir / r["path"]).convert("RGB")).astype(int)
        x, y = round(int(r["x"]) / ds), round(int(r["y"]) / ds)
        h, w = tile.shape[:2]
        ref = arr[y : y + h, x : x + w, :3].astype(int)
        d = int(np.abs(ref - tile).max())
        worst_t = max(worst_t, d)
        ok_t += d == 0
        if pillow is not None:
            d = int(np.abs(pillow[y : y + h, x : x + w].astype(int) - tile).max())
            worst_p = max(worst_p, d)
            ok_p += d == 0
    print(f"{slide.name} level {level}: tifffile {ok_t}/{len(rows)} tiles equal (max diff {worst_t})")
    if pillow is not None:
        print(f"{slide.name} level {level}: pillow {ok_p}/{len(rows)} tiles equal (max diff {worst_p})")
    return 0 if rows and ok_t == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
