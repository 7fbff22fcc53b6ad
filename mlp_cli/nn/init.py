"""Weight initialization: PyTorch's defaults, Xavier/Glorot, He/Kaiming and a plain normal.

Each function takes a weight shape in PyTorch's layout ((out, in) or (out, in, kh, kw)),
a numpy Generator and a dtype, and returns a new array.
"""

from __future__ import annotations

import math

import numpy as np


def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) as torch.nn.init computes them."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def uniform(shape, bound, rng, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def normal(shape, std, rng, dtype):
    return (rng.standard_normal(size=shape) * std).astype(dtype)


def pytorch_default(shape, rng, dtype):
    """nn.Linear / nn.Conv2d default: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform(shape, 1 / math.sqrt(fans(shape)[0]), rng, dtype)


def xavier_uniform(shape, rng, dtype):
    fan_in, fan_out = fans(shape)
    return uniform(shape, math.sqrt(6 / (fan_in + fan_out)), rng, dtype)


def xavier_normal(shape, rng, dtype):
    fan_in, fan_out = fans(shape)
    return normal(shape, math.sqrt(2 / (fan_in + fan_out)), rng, dtype)


def kaiming_uniform(shape, rng, dtype):
    """He uniform for ReLU, fan_in mode: U(-sqrt(6/fan_in), sqrt(6/fan_in))."""
    return uniform(shape, math.sqrt(6 / fans(shape)[0]), rng, dtype)


def kaiming_normal(shape, rng, dtype):
    """He normal for ReLU, fan_in mode: N(0, 2/fan_in)."""
    return normal(shape, math.sqrt(2 / fans(shape)[0]), rng, dtype)


WEIGHT_INITS = {
    "default": pytorch_default,
    "xavier_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "kaiming_uniform": kaiming_uniform,
    "kaiming_normal": kaiming_normal,
}


def init_weight(shape, scheme: str, rng, dtype, std: float | None = None):
    if scheme == "normal":
        return normal(shape, std, rng, dtype)
    return WEIGHT_INITS[scheme](shape, rng, dtype)


def init_bias(weight_shape, scheme: str, rng, dtype):
    """'default' is PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)); 'zeros' is zeros."""
    if scheme == "zeros":
        return np.zeros(weight_shape[0], dtype)
    return uniform((weight_shape[0],), 1 / math.sqrt(fans(weight_shape)[0]), rng, dtype)
