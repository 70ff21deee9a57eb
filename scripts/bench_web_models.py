"""Models and inputs for scripts/bench-web.sh: the same network for mtpath (safetensors) and
onnxruntime-web (ONNX).

For each architecture, writes into --out:

* `<arch>.safetensors`: the torchvision state dict (torchvision names, classifier included;
  mtpath infers the architecture from the names and ignores `fc.*`);
* `<arch>.onnx`: the trunk (`fc = Identity`) in eval mode, static input `input`
  1x3xSxS, output `features` 1xD (global-average-pooled features), opset 18;
* `<arch>.ref.bin`: PyTorch's features of `input.bin` (float32, little-endian).

Shared by all architectures:

* `tile.jpg`, `tile.png`: one real 224x224 tile (the first NCT-CRC tumour sample under the shared
  data folder, else a synthetic image), as a user would hand it to `FeatureModel.extract`;
* `input.bin`: that tile preprocessed the torchvision way (resize 256, center crop S,
  ImageNet mean/std), 3xSxS CHW float32: the common input of the forward-only timings;
* `manifest.json`: what is there.

Weights are seeded random (torchvision init); BatchNorm running statistics are made
non-trivial by accumulating them over a few random batches in train mode, then the BN affine
parameters are perturbed, and everything is put in eval mode.
"""
import argparse
import json
import os
import pathlib
import sys

import numpy as np
import torch
import torchvision
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
VERSION = 1  # bump when the outputs change meaning


def find_tile(data_dir):
    nct = pathlib.Path(data_dir) / "nct-crc-samples" / "images"
    if nct.is_dir():
        tiles = sorted(p for p in nct.rglob("*") if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg"))
        # Prefer a tumour tile (dense texture, a typical JPEG size) over adipose (mostly white).
        tiles = sorted(tiles, key=lambda p: p.parent.name != "tum")
        if tiles:
            return Image.open(tiles[0]).convert("RGB"), str(tiles[0])
    # Synthetic stand-in: smooth colour blobs plus noise, roughly H&E-coloured.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    base = np.stack([0.8 - 0.3 * np.sin(6 * xx + 3 * yy), 0.5 + 0.3 * np.cos(5 * yy), 0.75 + 0.2 * np.sin(4 * xx * yy)], -1)
    img = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    return Image.fromarray((img * 255).astype(np.uint8)), "synthetic"


def preprocess(img, size):
    t = torchvision.transforms.Compose([
        torchvision.transforms.Resize(256, interpolation=torchvision.transforms.InterpolationMode.BILINEAR),
        torchvision.transforms.CenterCrop(size),
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize(MEAN, STD),
    ])
    return t(img).contiguous()


def build(arch, seed, x):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(2):
            batch = x.unsqueeze(0) * (0.5 + 0.5 * torch.rand(4, 3, 1, 1)) + 0.5 * torch.randn(4, *x.shape)
            model(batch)
        for m in bns:
            m.weight.mul_(torch.empty_like(m.weight).uniform_(0.6, 1.4))
            m.bias.add_(0.1 * torch.randn_like(m.bias))
            m.momentum = 0.1
    model.eval()
    return model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="target/bench-web")
    p.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=os.environ.get("MTPATH_DATA", str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")))
    p.add_argument("--force", action="store_true", help="rebuild even if the outputs are there")
    a = p.parse_args()
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    want = {"version": VERSION, "size": a.size, "seed": a.seed, "archs": a.archs}
    if not a.force and manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if all(old.get(k) == v for k, v in want.items()):
            print(f"models in {out} are up to date", file=sys.stderr)
            return
    torch.set_num_threads(max(1, int(os.environ.get("THREADS", "2"))))

    img, source = find_tile(a.data)
    img = img.resize((224, 224), Image.BILINEAR) if img.size != (224, 224) else img
    img.save(out / "tile.jpg", quality=90)
    img.save(out / "tile.png")
    x = preprocess(img, a.size)
    x.numpy().astype("<f4").tofile(out / "input.bin")

    archs = {}
    for arch in a.archs:
        model = build(arch, a.seed, x)
        sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        from safetensors.torch import save_file
        save_file(sd, str(out / f"{arch}.safetensors"))
        model.fc = torch.nn.Identity()
        with torch.no_grad():
            ref = model(x.unsqueeze(0))[0]
        ref.numpy().astype("<f4").tofile(out / f"{arch}.ref.bin")
        onnx_path = out / f"{arch}.onnx"
        torch.onnx.export(
            model,
            (x.unsqueeze(0),),
            str(onnx_path),
            input_names=["input"],
            output_names=["features"],
            opset_version=18,
            dynamo=True,
            external_data=False,
        )
        archs[arch] = {"dim": int(ref.numel()), "onnx_bytes": onnx_path.stat().st_size,
                       "safetensors_bytes": (out / f"{arch}.safetensors").stat().st_size}
        print(f"{arch}: {ref.numel()}-d features, |f|max {ref.abs().max():.4g}, mean {ref.mean():.4g}", file=sys.stderr)
    manifest = dict(want, tile=source, torch=torch.__version__, torchvision=torchvision.__version__,
                    models=archs)
    manifest_path.write_text(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
