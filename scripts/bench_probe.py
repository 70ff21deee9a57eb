#!/usr/bin/env python3
"""scikit-learn side of the linear-probe benchmark (shared/examples/probe_bench.rs).

    cargo run --release -p mtpath-shared --example probe_bench -- --dump /tmp/probe_bench
    python3 scripts/bench_probe.py /tmp/probe_bench [--c 1.0] [--threads N]

Fits the same 10,000 x 2,048, 10-class data with LogisticRegression(lbfgs, max_iter=10000)
and LinearSVC(dual=True, i.e. liblinear's dual coordinate descent, the algorithm the Rust
probe ports), printing fit times and the objectives the Rust example prints, so that both
speed and optimality can be compared. --threads caps BLAS threads (threadpoolctl).
"""
import argparse
import time

import numpy as np
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

N, D, K = 10_000, 2_048, 10


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prefix")
    ap.add_argument("--c", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    x = np.fromfile(a.prefix + ".x.f32", dtype="<f4").reshape(N, D)
    y = np.fromfile(a.prefix + ".y.u32", dtype="<u4").astype(np.int64)
    x64 = x.astype(np.float64)

    with threadpool_limits(limits=a.threads):
        t = time.perf_counter()
        lr = LogisticRegression(C=a.c, max_iter=10_000).fit(x, y)
        secs = time.perf_counter() - t
        z = x64 @ lr.coef_.T.astype(np.float64) + lr.intercept_
        obj = 0.5 * (lr.coef_.astype(np.float64) ** 2).sum() + a.c * (
            logsumexp(z, axis=1) - z[np.arange(N), y]
        ).sum()
        print(
            f"sklearn LogisticRegression C={a.c}: {secs:.2f} s, {int(lr.n_iter_[0])} iterations, "
            f"objective {obj:.8f}, train accuracy {lr.score(x, y):.4f}"
        )

        t = time.perf_counter()
        svc = LinearSVC(C=a.c, dual=True, max_iter=1000).fit(x, y)
        secs = time.perf_counter() - t
        w = svc.coef_.astype(np.float64)
        b = svc.intercept_.astype(np.float64)
        sign = np.where(y[:, None] == np.arange(K)[None, :], 1.0, -1.0)
        slack = np.maximum(0.0, 1.0 - sign * (x64 @ w.T + b))
        obj = 0.5 * ((w**2).sum() + (b**2).sum()) + a.c * (slack**2).sum()
        print(
            f"sklearn LinearSVC(dual=True) C={a.c}: {secs:.2f} s, {int(svc.n_iter_)} epochs (max), "
            f"primal objective (sum over classes) {obj:.8f}, train accuracy {svc.score(x, y):.4f}"
        )


if __name__ == "__main__":
    main()
