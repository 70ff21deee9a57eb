"""Where PyTorch spends a CPU training step: torch.profiler's self time per op, per input
shape, averaged per step, for the same model and shapes as scripts/bench.sh.

The isolated passes of scripts/conv_torch.py (autograd.grad on a retained graph) carry
overhead a real step does not; this profiles the step bench_torch.py times.

usage: torch_profile.py [--arch resnet18] [--batch 32] [--size 112] [--threads 2] [--steps 5]
"""
import argparse

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=30)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = getattr(torchvision.models, a.arch)(num_classes=1000).train()
    x = torch.randn(a.batch, 3, a.size, a.size)
    y = torch.randint(0, 1000, (a.batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(a.steps):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: a.rows]
    total = sum(e.self_cpu_time_total for e in events) / a.steps / 1e3
    print(f"{a.arch} batch {a.batch} at {a.size} px, {a.threads} threads: "
          f"{total:.1f} ms of op self time per step")
    print(f"{'ms/step':>8} {'calls':>6}  op  input shapes")
    for e in rows:
        shapes = [s for s in e.input_shapes if s][:3]
        print(f"{e.self_cpu_time_total / a.steps / 1e3:8.2f} {e.count // a.steps:6d}  "
              f"{e.key}  {shapes}")


if __name__ == "__main__":
    main()
