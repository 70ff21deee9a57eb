#!/usr/bin/env python3
"""scikit-learn side of the probe's model-selection benchmark (`mtpath bench --mode probe`).

    mtpath features --weights pool-r18 --task DIR --size 64 --out feats.safetensors
    mtpath bench --mode probe --features feats.safetensors --threads 2
    python3 scripts/bench_probe_cv.py feats.safetensors --threads 2

Runs what the browser explorer's "Cross-validate and classify" and `mtpath eval` run, on the
same features: grouped, stratified 5-fold cross-validation of LogisticRegression(lbfgs) over
C in {1e-4, ..., 10} (scikit-learn's default tolerance, max_iter 2000), then the final fit at
the best C, and prints the seconds of each part beside the balanced accuracies. The folds are
scikit-learn's StratifiedGroupKFold, not mtpath's assignment, so scores differ slightly; the
work is the same. --threads caps BLAS threads (threadpoolctl).
"""
import argparse
import json
import struct
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedGroupKFold
from threadpoolctl import threadpool_limits

GRID = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]


def read_features(path):
    """The `features` (F32) and `labels` (I64) tensors and `groups` metadata of a features file."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]

    def tensor(name, dtype):
        h = header[name]
        a, b = h["data_offsets"]
        return np.frombuffer(data[a:b], dtype=dtype).reshape(h["shape"])

    x = tensor("features", "<f4")
    y = tensor("labels", "<i8")
    groups = json.loads(header.get("__metadata__", {}).get("groups", "null")) or [""] * len(y)
    groups = [g if g else f"row{i}" for i, g in enumerate(groups)]
    return x, y, groups


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("features")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    x, y, groups = read_features(a.features)
    print(f"scikit-learn: {x.shape[0]} tiles x {x.shape[1]} features, {y.max() + 1} classes")
    with threadpool_limits(limits=a.threads):
        t = time.perf_counter()
        folds = list(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(x, y, groups))
        scores = []
        for c in GRID:
            s = []
            for tr, va in folds:
                m = LogisticRegression(C=c, max_iter=2000).fit(x[tr], y[tr])
                s.append(balanced_accuracy_score(y[va], m.predict(x[va])))
            scores.append(float(np.mean(s)))
            print(f"  C {c:<8} balanced accuracy {scores[-1]:.4f}")
        cv = time.perf_counter() - t
        best = GRID[int(np.argmax(scores))]
        t = time.perf_counter()
        LogisticRegression(C=best, max_iter=2000).fit(x, y)
        fit = time.perf_counter() - t
    print(f"scikit-learn: cross-validation {cv:.2f} s, final fit {fit:.2f} s, total {cv + fit:.2f} s (best C {best})")


if __name__ == "__main__":
    main()
