"""PyTorch side of scripts/bench.sh: images/s for the same shapes as `mtpath bench`.

Prints lines `infer: X img/s` / `train: X img/s` like `mtpath bench`. The train step is
forward (train mode) + cross-entropy + backward, without an optimiser update, as mtpath's.
"""
import argparse
import time

import torch
import torchvision


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--mode", choices=["infer", "train", "both"], default="both")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = getattr(torchvision.models, a.arch)(weights=None)
    x = torch.randn(a.batch, 3, a.size, a.size)
    labels = torch.arange(a.batch) % 1000
    print(f"torch {torch.__version__}, {a.arch} batch {a.batch} at {a.size} px, {torch.get_num_threads()} threads")
    if a.mode in ("infer", "both"):
        model.eval()

        def infer():
            with torch.no_grad():
                model(x)

        s = timed(infer, a.warmup, a.iters)
        print(f"infer: {a.batch / s:.1f} img/s ({s * 1e3:.1f} ms/batch)")
    if a.mode in ("train", "both"):
        model.train()

        def train():
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), labels).backward()

        s = timed(train, a.warmup, a.iters)
        print(f"train: {a.batch / s:.1f} img/s ({s * 1e3:.1f} ms/step)")


if __name__ == "__main__":
    main()
