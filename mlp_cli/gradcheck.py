"""Finite-difference gradient checks of layers and whole networks (float64, central differences).

The error measure is the largest absolute difference between the analytic and numerical
gradient, relative to the largest magnitude of either (the gradient's scale). An element-wise
ratio would be dominated by finite-difference noise (about 2e-10 in float64 with h = 1e-6) on
entries that are nearly zero. For the same reason the scale is floored at SCALE_FLOOR: a
gradient that is truly zero (a conv bias followed by batch norm) is checked to an absolute
1e-9, which is all that central differences can confirm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlp_cli.nn.losses import softmax_cross_entropy


SCALE_FLOOR = 1e-3


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), SCALE_FLOOR)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def numerical_gradient(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f() / d x by central differences, perturbing x in place one element at a time."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)  # a view: x must be contiguous
    assert np.shares_memory(flat, x), "numerical_gradient needs a contiguous array"
    g = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        up = f()
        flat[i] = old - h
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * h)
    return grad


@dataclass
class Check:
    name: str
    error: float


def check_layer(layer, x: np.ndarray, seed: int = 0, h: float = 1e-6) -> list[Check]:
    """Check dL/dx and dL/dparams of one layer for L = sum(forward(x) * R), R fixed and random.

    Random layers (dropout) get the same generator state before every forward, so the mask
    stays fixed while the inputs move.
    """
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float64)

    def forward():
        if hasattr(layer, "rng"):
            layer.rng = np.random.default_rng(seed + 1)
        return layer.forward(x)

    out = forward()
    R = rng.standard_normal(out.shape)

    def loss():
        return float((forward() * R).sum())

    checks = []
    # Numerical gradients first: they run many forwards, which would overwrite the cache
    # (and, for batch norm in training, move its running statistics; those are not checked).
    numeric_x = numerical_gradient(loss, x, h)
    numeric_p = {name: numerical_gradient(loss, p, h) for name, p in layer.params.items()}
    forward()
    dx = layer.backward(R.copy())
    checks.append(Check("input", relative_error(np.asarray(dx), numeric_x)))
    for name in layer.params:
        checks.append(Check(name, relative_error(layer.grads[name], numeric_p[name])))
    return checks


def check_network(model, x: np.ndarray, labels: np.ndarray, seed: int = 0, h: float = 1e-6,
                  label_smoothing: float = 0.0) -> list[Check]:
    """Check every parameter gradient and the input gradient of a whole network under the
    softmax cross-entropy loss (the network and x must be float64)."""
    x = np.ascontiguousarray(x, dtype=np.float64)

    def forward():
        model.set_rng(np.random.default_rng(seed))
        return model.forward(x)

    def loss():
        return softmax_cross_entropy(forward(), labels, label_smoothing)[0]

    params = model.named_params()
    numeric = {name: numerical_gradient(loss, p, h) for name, p in params.items()}
    numeric_x = numerical_gradient(loss, x, h)
    _, dlogits = softmax_cross_entropy(forward(), labels, label_smoothing)
    dx = model.backward(dlogits)
    grads = model.named_grads()
    checks = [Check(name, relative_error(grads[name], numeric[name])) for name in params]
    checks.append(Check("input", relative_error(dx, numeric_x)))
    return checks
