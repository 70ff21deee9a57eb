"""Compare the tiles `mtpath tile --level L` decoded from a slide with the same pixels read by
tifffile (imagecodecs: libjpeg-turbo, zlib, LZW), for level 0 by Pillow (libtiff), and by
OpenSlide (the reference whole-slide reader) where openslide-python is installed and reads
the file (Aperio SVS and tiled generic TIFF; OpenSlide ignores OME-TIFF's SubIFD levels).

usage: check_with_tifffile.py SLIDE TILES_DIR LEVEL

Prints one line per reader: tiles compared, tiles equal, largest difference (and for
OpenSlide its vendor, level count and MPP); exits non-zero unless every tile equals
tifffile's pixels exactly, or, for Aperio's YCbCr JPEG 2000 (33003, whose components tifffile
returns unconverted), OpenSlide's.
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
        ycbcr_j2k = tf.pages[0].compression == 33003
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
    osl = None
    try:
        import openslide

        osl = openslide.OpenSlide(str(slide))
        if level >= osl.level_count:
            print(f"openslide: {slide.name} has {osl.level_count} level(s), not level {level}")
            osl = None
    except ImportError:
        pass
    except Exception as e:  # noqa: BLE001 - report: OpenSlide reads only some layouts
        print(f"openslide: cannot read {slide.name}: {e}")
    rows = list(csv.DictReader(open(tiles_dir / "manifest.csv")))
    rows = [r for r in rows if Path(r["slide"]).name == slide.name]
    ok_t = ok_p = ok_o = 0
    worst_t = worst_p = worst_o = 0
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
        if osl is not None:
            region = osl.read_region((int(r["x"]), int(r["y"])), level, (w, h))
            ref = np.asarray(region.convert("RGB")).astype(int)
            d = int(np.abs(ref - tile).max())
            worst_o = max(worst_o, d)
            ok_o += d == 0
    print(f"{slide.name} level {level}: tifffile {ok_t}/{len(rows)} tiles equal (max diff {worst_t})")
    if pillow is not None:
        print(f"{slide.name} level {level}: pillow {ok_p}/{len(rows)} tiles equal (max diff {worst_p})")
    if osl is not None:
        p = osl.properties
        print(
            f"{slide.name} level {level}: openslide {ok_o}/{len(rows)} tiles equal (max diff {worst_o}); "
            f"vendor {p.get('openslide.vendor')}, {osl.level_count} levels, mpp {p.get('openslide.mpp-x')}"
        )
    if ycbcr_j2k:
        return 0 if rows and osl is not None and ok_o == len(rows) else 1
    return 0 if rows and ok_t == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
