"""Rewrite a slide's level 0 as a tiled JPEG 2000 TIFF (OpenJPEG through tifffile and
imagecodecs, lossless codestreams, 256-px tiles), optionally labelled with Aperio's 33005
compression code (JPEG 2000, RGB), for the slide tests.

usage: to_jpeg2000.py IN OUT [--aperio]
"""
import sys

import numpy as np
import tifffile


def main() -> int:
    src, dst = sys.argv[1], sys.argv[2]
    aperio = "--aperio" in sys.argv[3:]
    with tifffile.TiffFile(src) as tf:
        level0 = tf.series[0].levels[0].asarray()
    description = "Aperio Image Library vTEST \r\n|AppMag = 20|MPP = 0.5000" if aperio else None
    tifffile.imwrite(
        dst,
        np.ascontiguousarray(level0[..., :3]),
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg2000",
        compressionargs={"level": 0},
        description=description,
        metadata=None,
    )
    if aperio:
        # Same codestreams, Aperio's code for JPEG 2000 with RGB components.
        with tifffile.TiffFile(dst, mode="r+b") as tf:
            tf.pages[0].tags["Compression"].overwrite(33005)
    return 0


if __name__ == "__main__":
    sys.exit(main())
