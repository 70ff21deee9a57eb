"""PyTorch's side of shared/examples/conv_bench.rs: one convolution's forward, input-gradient
and weight-gradient passes (autograd.grad of each operand alone on a retained graph).

usage: conv_torch.py N CIN COUT H K STRIDE PAD [THREADS]"""
import sys
import time

import torch


def timed(reps, fn):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main():
    n, cin, cout, h, k, s, p = map(int, sys.argv[1:8])
    torch.set_num_threads(int(sys.argv[8]) if len(sys.argv) > 8 else 1)
    x = torch.randn(n, cin, h, h, requires_grad=True)
    w = torch.randn(cout, cin, k, k, requires_grad=True)
    y = torch.nn.functional.conv2d(x, w, stride=s, padding=p)
    dy = torch.randn_like(y)
    gflop = 2 * y.numel() * cin * k * k / 1e9
    fwd = timed(5, lambda: torch.nn.functional.conv2d(x, w, stride=s, padding=p))
    # Each gradient alone, from one retained graph (only its own backward kernel runs).
    dx = timed(5, lambda: torch.autograd.grad(y, [x], dy, retain_graph=True))
    dw = timed(5, lambda: torch.autograd.grad(y, [w], dy, retain_graph=True))
    print(f"torch  fwd {fwd * 1e3:.1f} ms ({gflop / fwd:.0f} GFLOP/s)  dx {dx * 1e3:.1f} ms "
          f"({gflop / dx:.0f})  dw {dw * 1e3:.1f} ms ({gflop / dw:.0f})")


if __name__ == "__main__":
    main()
