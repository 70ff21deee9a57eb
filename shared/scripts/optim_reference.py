#!/usr/bin/env python3
"""Reference values for the optimiser tests in shared/src/optim/tests.rs.

Re-implements torch.optim.SGD and torch.optim.AdamW (single-tensor code path, one rounding per
operation, no FMA) in numpy float32, following torch/optim/sgd.py and torch/optim/adam.py line by
line, and prints the parameters after each step as Rust f32 literals. Run: python3 optim_reference.py
"""
import math

import numpy as np

f32 = np.float32


def sgd(params, grads, lrs, groups, momentum, nesterov):
    """params: {name: array}; grads: per step {name: array} (missing = zero-filled .grad);
    groups: {name: (lr_scale, weight_decay)}."""
    bufs = {}
    out = []
    for step, lr in enumerate(lrs):
        for name, p in params.items():
            lr_scale, wd = groups[name]
            g = grads[step].get(name, np.zeros_like(p))
            if wd != 0:
                g = g + f32(wd) * p  # grad.add(param, alpha=wd)
            if momentum != 0:
                if name not in bufs:
                    bufs[name] = g.copy()  # torch.clone(grad)
                else:
                    bufs[name] = f32(momentum) * bufs[name] + g  # buf.mul_(m).add_(g)
                if nesterov:
                    g = g + f32(momentum) * bufs[name]  # grad.add(buf, alpha=momentum)
                else:
                    g = bufs[name]
            params[name] = p - f32(lr * lr_scale) * g  # param.add_(grad, alpha=-lr)
        out.append({k: v.copy() for k, v in params.items()})
    return out


def lerp(start, end, w):
    # ATen's scalar lerp: two branches on |w| < 0.5
    if abs(w) < 0.5:
        return start + f32(w) * (end - start)
    return end - (end - start) * (f32(1) - f32(w))


def adamw(params, grads, lrs, groups, beta1, beta2, eps):
    state = {}
    out = []
    for step, lr in enumerate(lrs):
        for name, p in params.items():
            lr_scale, wd = groups[name]
            glr = lr * lr_scale
            g = grads[step].get(name, np.zeros_like(p))
            if name not in state:
                state[name] = [np.zeros_like(p), np.zeros_like(p), 0]
            m, v, t = state[name]
            t += 1
            if wd != 0:
                p = p * f32(1 - glr * wd)  # param.mul_(1 - lr * weight_decay)
            m = lerp(m, g, 1 - beta1)  # exp_avg.lerp_(grad, 1 - beta1)
            v = f32(beta2) * v + (f32(1 - beta2) * g) * g  # mul_(b2).addcmul_(g, g, value=1-b2)
            bc1 = 1 - beta1**t
            bc2 = 1 - beta2**t
            step_size = glr / bc1
            denom = np.sqrt(v) / f32(math.sqrt(bc2)) + f32(eps)
            p = p + (f32(-step_size) * m) / denom  # param.addcdiv_(m, denom, value=-step_size)
            state[name] = [m, v, t]
            params[name] = p
        out.append({k: v.copy() for k, v in params.items()})
    return out


def lit(a):
    # shortest decimal that round-trips to the same float32
    return "[" + ", ".join(np.format_float_positional(x, unique=True, trim="0") for x in a) + "]"


A0 = np.array([0.5, -1.25, 2.0, 0.1], dtype=f32)
B0 = np.array([0.3, -0.7, 1.1], dtype=f32)
GRADS = [
    {"a": np.array([0.1, -0.2, 0.3, -0.05], dtype=f32), "b": np.array([1.0, -0.5, 0.25], dtype=f32)},
    {"a": np.array([-0.4, 0.1, 0.2, 0.6], dtype=f32)},  # "b" has no gradient on step 2
    {"a": np.array([0.05, 0.05, -0.3, 0.2], dtype=f32), "b": np.array([-0.2, 0.3, 0.7], dtype=f32)},
    {"a": np.array([0.2, -0.1, 0.0, 0.1], dtype=f32), "b": np.array([0.1, 0.1, -0.1], dtype=f32)},
]
LRS = [0.1, 0.05, 0.02, 0.01]
# "a": lr_scale 1, weight decay 0.05; "b": lr_scale 5, weight decay 0.01
GROUPS = {"a": (1.0, 0.05), "b": (5.0, 0.01)}

for nesterov in (False, True):
    res = sgd({"a": A0.copy(), "b": B0.copy()}, GRADS, LRS, GROUPS, 0.9, nesterov)
    print(f"// SGD momentum 0.9 nesterov={nesterov}")
    for i, r in enumerate(res):
        print(f"step {i + 1}: a = {lit(r['a'])}, b = {lit(r['b'])}")

GROUPS_ADAM = {"a": (1.0, 0.05), "b": (5.0, 0.0)}
res = adamw({"a": A0.copy(), "b": B0.copy()}, GRADS, LRS, GROUPS_ADAM, 0.9, 0.999, 1e-8)
print("// AdamW betas (0.9, 0.999) eps 1e-8")
for i, r in enumerate(res):
    print(f"step {i + 1}: a = {lit(r['a'])}, b = {lit(r['b'])}")
