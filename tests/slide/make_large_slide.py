"""A whole-slide image of any size for scale tests, written tile by tile (memory stays small):
a mosaic of real 224-px tiles of ../shared/data on glass, repeated across the slide, saved as
an Aperio-style pyramidal BigTIFF (256-px RGB-coded JPEG tiles as Aperio writes them,
0.5 µm/px, levels /4 and /16, each level downsampled from the mosaic itself).

usage: make_large_slide.py OUT.svs [--tiles 50000] [--data ../shared/data]

--tiles is roughly how many 224-px tiles at 0.5 µm/px with at least half tissue the slide holds
(`mtpath tile --mpp 0.5 --size 224`): about 74% of the grid has at least half tissue.
"""
import argparse
import math
import os
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

TILE, COLS, ROWS = 224, 8, 6
MOSAIC = (2048, 1536)  # width, height: the tiles at (128, 96) on glass


def mosaic(data: Path) -> np.ndarray:
    folder = data / "lc25000-lung" / "images" / "lung_aca"
    files = sorted(folder.iterdir())[: COLS * ROWS]
    w, h = MOSAIC
    yy, xx = np.mgrid[0:h, 0:w]
    noise = ((xx * 7 + yy * 13) % 5).astype(np.uint8)
    out = np.stack([238 + noise, np.full_like(noise, 239), 241 - noise], -1).astype(np.uint8)
    for i, f in enumerate(files):
        c, r = i % COLS, i // COLS
        tile = np.asarray(Image.open(f).convert("RGB").resize((TILE, TILE), Image.BILINEAR))
        out[96 + r * TILE : 96 + (r + 1) * TILE, 128 + c * TILE : 128 + (c + 1) * TILE] = tile
    return out


def tiles(m: np.ndarray, width: int, height: int, tile: int = 256):
    """The tiles (row by row) of `m` repeated over width x height."""
    mh, mw = m.shape[:2]
    for y0 in range(0, height, tile):
        rows = np.arange(y0, y0 + tile) % mh
        band = m[rows]
        for x0 in range(0, width, tile):
            yield band[:, np.arange(x0, x0 + tile) % mw]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tiles", type=int, default=50_000)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MTPATH_DATA", "../shared/data")))
    a = ap.parse_args()
    m0 = mosaic(a.data)
    # Slide side in mosaics so that ~74% of the grid kept gives the wanted tile count.
    reps = math.sqrt(a.tiles / 0.74 * TILE * TILE / (MOSAIC[0] * MOSAIC[1]))
    width, height = round(reps) * MOSAIC[0], round(reps) * MOSAIC[1]
    desc = (
        f"Aperio Image Library vTEST \r\n{width}x{height} [0,0 {width}x{height}] (256x256) "
        "JPEG/RGB Q=90|AppMag = 20|MPP = 0.5000"
    )
    with tifffile.TiffWriter(a.out, bigtiff=True) as tw:
        for k, ds in enumerate((1, 4, 16)):
            m = m0 if ds == 1 else np.asarray(
                Image.fromarray(m0).resize((MOSAIC[0] // ds, MOSAIC[1] // ds), Image.BOX)
            )
            w, h = math.ceil(width / ds), math.ceil(height / ds)
            tw.write(
                tiles(m, w, h),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(256, 256),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 90},
                subfiletype=0 if k == 0 else 1,
                description=desc if k == 0 else None,
                metadata=None,
                maxworkers=os.cpu_count(),
            )
    print(f"wrote {a.out}: {width}x{height} px, {a.out.stat().st_size / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
