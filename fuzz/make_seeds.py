#!/usr/bin/env python3
"""Writes the synthetic seeds of fuzz/corpus/ (standard library only); the JPEGs and the .pth
files are copies of test data (shared/tests/data) and of a few small tiles of the data sets.

Run from the repository root: python3 fuzz/make_seeds.py
"""
import json
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(data)


def png(w, h, color_type, depth, rows, interlace=0, extra=b""):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, interlace)
    raw = b"".join(b"\x00" + r for r in rows)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def pngs():
    w, h = 7, 5
    rgb = [bytes((x * 30 + y * 7) % 256 for x in range(w) for _ in range(3)) for y in range(h)]
    write("image", "rgb8_7x5.png", png(w, h, 2, 8, rgb))
    rgba = [bytes((x * 40 + c * 9 + y) % 256 for x in range(w) for c in range(4)) for y in range(h)]
    write("image", "rgba8_7x5.png", png(w, h, 6, 8, rgba))
    gray16 = [b"".join(struct.pack(">H", (x * 9000 + y * 300) % 65536) for x in range(w)) for y in range(h)]
    write("image", "gray16_7x5.png", png(w, h, 0, 16, gray16))
    bits = [bytes([0b10110010]) for _ in range(h)]
    write("image", "gray1_7x5.png", png(w, h, 0, 1, bits))
    plte = struct.pack(">I", 6) + b"PLTE" + b"\xff\x00\x00\x00\x00\xff"
    plte += struct.pack(">I", zlib.crc32(b"PLTE\xff\x00\x00\x00\x00\xff"))
    pal = [bytes([0b01010000 | y]) for y in range(h)]
    write("image", "palette2_7x5.png", png(w, h, 3, 2, pal, extra=plte))
    write("image", "rgb8_7x5_adam7.png", png(w, h, 2, 8, rgb, interlace=1))


def tiff(w, h, spp, bps, data, photometric, compression=1, sample_format=None, le=True):
    """A one-strip TIFF."""
    e = "<" if le else ">"
    entries = [
        (256, 3, 1, w),
        (257, 3, 1, h),
        (258, 3, 1, bps) if spp == 1 else (258, 3, spp, None),
        (259, 3, 1, compression),
        (262, 3, 1, photometric),
        (273, 4, 1, None),  # strip offset, patched below
        (277, 3, 1, spp),
        (278, 3, 1, h),
        (279, 4, 1, len(data)),
    ]
    if sample_format is not None:
        entries.append((339, 3, 1, sample_format))
    entries.sort()
    ifd_at = 8
    ifd_len = 2 + 12 * len(entries) + 4
    extra_at = ifd_at + ifd_len
    bps_blob = struct.pack(e + "H" * spp, *([bps] * spp))
    data_at = extra_at + len(bps_blob)
    out = (b"II*\x00" if le else b"MM\x00*") + struct.pack(e + "I", ifd_at)
    out += struct.pack(e + "H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 258 and spp > 1:
            out += struct.pack(e + "HHII", tag, typ, count, extra_at)
        elif tag == 273:
            out += struct.pack(e + "HHII", tag, typ, count, data_at)
        elif typ == 3:
            out += struct.pack(e + "HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack(e + "HHII", tag, typ, count, value)
    out += struct.pack(e + "I", 0) + bps_blob + data
    return out


def packbits(data):
    out = b""
    for i in range(0, len(data), 128):
        block = data[i : i + 128]
        out += bytes([len(block) - 1]) + block
    return out


def tiffs():
    w, h = 6, 4
    rgb = bytes((i * 11) % 256 for i in range(w * h * 3))
    write("image", "rgb8_6x4.tif", tiff(w, h, 3, 8, rgb, 2))
    write("image", "rgb8_6x4_be.tif", tiff(w, h, 3, 8, rgb, 2, le=False))
    write("image", "rgb8_6x4_packbits.tif", tiff(w, h, 3, 8, packbits(rgb), 2, compression=32773))
    write("image", "rgb8_6x4_deflate.tif", tiff(w, h, 3, 8, zlib.compress(rgb), 2, compression=8))
    gray16 = b"".join(struct.pack("<H", i * 2000) for i in range(w * h))
    write("image", "gray16_6x4.tif", tiff(w, h, 1, 16, gray16, 1))
    f32 = b"".join(struct.pack("<f", i / 70.0) for i in range(w * h * 3))
    write("image", "rgbf32_6x4.tif", tiff(w, h, 3, 32, f32, 2, sample_format=3))


def safetensors(tensors, metadata=None):
    header = {}
    blobs = b""
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blobs), len(blobs) + len(data)]}
        blobs += data
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blobs


def f32s(values):
    return b"".join(struct.pack("<f", v) for v in values)


def i64s(values):
    return b"".join(struct.pack("<q", v) for v in values)


def weights():
    card = {
        "format": "mtpath",
        "trunk": {"architecture": "resnet18"},
    }
    write(
        "safetensors",
        "tiny.safetensors",
        safetensors(
            [
                ("conv1.weight", "F32", [2, 1, 1, 1], f32s([0.5, -1.0])),
                ("bn1.running_mean", "F16", [2], struct.pack("<ee", 0.25, 1.5)),
                ("bn1.num_batches_tracked", "I64", [], i64s([3])),
                ("fc.bias", "BF16", [2], b"\x80\x3f\x00\x40"),
            ],
            {"format": "pt", "mtpath": json.dumps(card)},
        ),
    )
    write("safetensors", "empty.safetensors", safetensors([]))


def features():
    write(
        "features",
        "pool.safetensors",
        safetensors(
            [
                ("features", "F32", [3, 2], f32s([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])),
                ("labels", "I64", [3], i64s([0, 1, 0])),
                ("task", "I64", [3], i64s([0, 0, 1])),
            ],
            {"images": json.dumps(["a.png", "b.jpg", "c.tif"]), "architecture": "resnet18", "tasks": '["x","y"]'},
        ),
    )
    write("features", "plain.safetensors", safetensors([("features", "F32", [1, 3], f32s([1, 2, 3]))]))


def probes():
    two = {
        "format": "mtpath-probe/1",
        "kind": "logistic",
        "classes": ["benign", "tumour"],
        "c": 1.0,
        "n_features": 3,
        "coef": [[0.5, -1.25, 2.0]],
        "intercept": [0.1],
        "features": {"architecture": "resnet18", "feature_dim": 3, "input_size": 224, "resize": 256},
        "cv": {"folds": 5, "balanced_accuracy": 0.9, "accuracy": 0.91, "n_train": 40},
    }
    write("probe", "logistic2.json", json.dumps(two, indent=1))
    three = {
        "format": "mtpath-probe/1",
        "kind": "svm",
        "classes": ["a", "b", "c"],
        "c": 0.01,
        "n_features": 2,
        "coef": [[1, 0], [0, 1], [-1, -1]],
        "intercept": [0, 0.5, -0.5],
    }
    write("probe", "svm3.json", json.dumps(three))


def trainer_inputs():
    write(
        "manifest",
        "full.csv",
        "path,label,group,split\n"
        "a/1.png,tumour,p1,train\n"
        "a/2.png,tumour,p1,\n"
        "\"b/3,x.png\",normal,p2,test\n"
        "./b/4.png,normal,,TRAIN\n",
    )
    write("manifest", "minimal.csv", "\ufeffPath , Label\nx.jpg,a\ny.jpg,b\n../z.jpg,a\nx.jpg,b\n")
    write(
        "pool",
        "full.toml",
        'seed = 7\n\n[[task]]\npath = "data/lymphoma"\nname = "lymphoma"\nweight = 2.0\n'
        'crop = "random-resized-crop"\nsplit = { train = 0.8, val = 0.1, test = 0.1 }\n\n'
        '[[task]]\npath = "/abs/other"\ncrop = "resize"\n\n[train]\nepochs = 10\nlr = 0.1\n',
    )
    write("pool", "minimal.toml", '[[task]]\npath = "."\n')


if __name__ == "__main__":
    pngs()
    tiffs()
    weights()
    features()
    probes()
    trainer_inputs()
