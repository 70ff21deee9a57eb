"""Rewrite a slide's level 0 as a tiled JPEG 2000 TIFF (OpenJPEG through tifffile and
imagecodecs, lossless codestreams, 256-px tiles), optionally labelled with Aperio's 33005
compression code (JPEG 2000, RGB), or with `--aperio-ycbcr` as Aperio's 33003: the pixels
converted to full-range BT.601 Y, Cb, Cr (rounded) and those components encoded, which readers
convert back (OpenSlide is the reference for it), for the slide tests.

usage: to_jpeg2000.py IN OUT [--aperio | --aperio-ycbcr]
"""
import sys

import numpy as np
import tifffile


def main() -> int:
    src, dst = sys.argv[1], sys.argv[2]
    ycbcr = "--aperio-ycbcr" in sys.argv[3:]
    aperio = ycbcr or "--aperio" in sys.argv[3:]
    with tifffile.TiffFile(src) as tf:
        level0 = tf.series[0].levels[0].asarray()[..., :3]
    if ycbcr:
        r, g, b = (level0[..., i].astype(np.float64) for i in range(3))
        components = [
            0.299 * r + 0.587 * g + 0.114 * b,
            -0.168736 * r - 0.331264 * g + 0.5 * b + 128,
            0.5 * r - 0.418688 * g - 0.081312 * b + 128,
        ]
        level0 = np.clip(np.round(np.stack(components, -1)), 0, 255).astype(np.uint8)
    description = "Aperio Image Library vTEST \r\n|AppMag = 20|MPP = 0.5000" if aperio else None
    tifffile.imwrite(
        dst,
        np.ascontiguousarray(level0),
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg2000",
        compressionargs={"level": 0},
        description=description,
        metadata=None,
    )
    if aperio:
        # Same codestreams, Aperio's code for JPEG 2000 with RGB (or YCbCr) components.
        with tifffile.TiffFile(dst, mode="r+b") as tf:
            tf.pages[0].tags["Compression"].overwrite(33003 if ycbcr else 33005)
    return 0


if __name__ == "__main__":
    sys.exit(main())
