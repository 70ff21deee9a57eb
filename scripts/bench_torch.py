"""PyTorch side of scripts/bench.sh: images/s for the same shapes as `mtpath bench`.

Prints lines `infer: X img/s` / `train: X img/s` like `mtpath bench`. The train step is
mtpath's whole multi-task step: the trunk's forward in train mode, four linear heads (four
classes each, the batch spread over them), the summed cross-entropy / B, backward, and an
SGD update with momentum 0.9 and weight decay 1e-4.
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


def ort_rate(model, x, a):
    """images/s of onnxruntime's CPU session (all graph optimisations, `threads` intra-op
    threads) on `model` exported to ONNX with the same input shape."""
    import io
    import onnxruntime as ort

    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, input_names=["x"], output_names=["y"], opset_version=18,
                      dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x.cpu().numpy()}
    s = timed(lambda: sess.run(None, feed), a.warmup, a.iters, lambda: None)
    return a.batch / s


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
    p.add_argument("--ort", action="store_true",
                   help="also time onnxruntime (CPU, same threads) on the model exported to ONNX")
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
    amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.amp == "bf16")
    print(f"torch {torch.__version__}, {a.arch} batch {a.batch} at {a.size} px, {torch.get_num_threads()} threads, {a.device} tf32={a.tf32} amp={a.amp}")
    if a.mode in ("infer", "both"):
        model.eval()

        def infer():
            with torch.no_grad(), amp:
                model(x)

        s = timed(infer, a.warmup, a.iters, sync)
        print(f"infer: {a.batch / s:.1f} img/s ({s * 1e3:.1f} ms/batch)")
        if a.ort and dev.type == "cpu":
            print(f"ort-infer: {ort_rate(model, x, a):.1f} img/s")
    if a.mode in ("train", "both"):
        trunk = model
        if hasattr(trunk, "fc"):
            dim = trunk.fc.in_features
            trunk.fc = torch.nn.Identity()
        else:
            dim = trunk.classifier.in_features
            trunk.classifier = torch.nn.Identity()
        heads = torch.nn.ModuleList(torch.nn.Linear(dim, 4) for _ in range(4)).to(dev)
        tasks = torch.arange(a.batch, device=dev) % 4
        task_labels = (torch.arange(a.batch, device=dev) // 4) % 4
        params = list(trunk.parameters()) + list(heads.parameters())
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
        trunk.train()

        def train():
            opt.zero_grad(set_to_none=True)
            with amp:
                feats = trunk(x)
                loss = sum(
                    torch.nn.functional.cross_entropy(
                        heads[t](feats[tasks == t]), task_labels[tasks == t], reduction="sum"
                    )
                    for t in range(4)
                ) / a.batch
            loss.backward()
            opt.step()

        s = timed(train, a.warmup, a.iters, sync)
        print(f"train: {a.batch / s:.1f} img/s ({s * 1e3:.1f} ms/step)")


if __name__ == "__main__":
    main()
