"""PyTorch side of scripts/bench.sh: images/s for the same shapes as `mtpath bench`.

Prints lines `infer: X img/s` / `train: X img/s` like `mtpath bench`. The train step is
forward (train mode) + cross-entropy + backward, without an optimiser update, as mtpath's.
"""
import argparse
import time

import torch
import torchvision


def timed(fn, warmup, iters, sync):
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
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
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tf32", action="store_true", help="CUDA: allow TF32 matmuls and convolutions")
    p.add_argument("--amp", choices=["none", "bf16"], default="none", help="CUDA: autocast to bf16")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
        torch.backends.cudnn.benchmark = True
        sync = torch.cuda.synchronize
    else:
        sync = lambda: None
    model = getattr(torchvision.models, a.arch)(weights=None).to(dev)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    labels = (torch.arange(a.batch) % 1000).to(dev)
    amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.amp == "bf16")
    print(f"torch {torch.__version__}, {a.arch} batch {a.batch} at {a.size} px, {torch.get_num_threads()} threads, {a.device} tf32={a.tf32} amp={a.amp}")
    if a.mode in ("infer", "both"):
        model.eval()

        def infer():
            with torch.no_grad(), amp:
                model(x)

        s = timed(infer, a.warmup, a.iters, sync)
        print(f"infer: {a.batch / s:.1f} img/s ({s * 1e3:.1f} ms/batch)")
    if a.mode in ("train", "both"):
        model.train()

        def train():
            model.zero_grad(set_to_none=True)
            with amp:
                loss = torch.nn.functional.cross_entropy(model(x), labels)
            loss.backward()

        s = timed(train, a.warmup, a.iters, sync)
        print(f"train: {a.batch / s:.1f} img/s ({s * 1e3:.1f} ms/step)")


if __name__ == "__main__":
    main()
