"""Layout helpers the fast layers (layers.py) and convolution algorithms (conv/) share.

4-D arrays are NCHW logically and channels-last (NHWC) in memory: a layer returns
`out_nhwc.transpose(0, 3, 1, 2)`, and the next layer's `x.transpose(0, 2, 3, 1)` gets the NHWC
array back for free.
"""

from __future__ import annotations

import numpy as np


def pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def nhwc(x: np.ndarray) -> np.ndarray:
    """NCHW (logical) -> NHWC view; free when x is a view of channels-last memory."""
    return x.transpose(0, 2, 3, 1)


def nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2)


def windows(xp: np.ndarray, out_size, kernel, stride, dilation) -> np.ndarray:
    """Read-only view (N, Ho, Wo, kh, kw, C) of every kernel window of a padded NHWC array:
    element [n, y, x, i, j, c] is xp[n, y*sh + i*dh, x*sw + j*dw, c]. No data is copied."""
    sn, sy, sx, sc = xp.strides
    (Ho, Wo), (kh, kw), (sh, sw), (dh, dw) = out_size, kernel, stride, dilation
    return np.lib.stride_tricks.as_strided(
        xp, (xp.shape[0], Ho, Wo, kh, kw, xp.shape[3]), (sn, sy * sh, sx * sw, sy * dh, sx * dw, sc), writeable=False)


def window(offset: int, dilation: int, stride: int, count: int) -> slice:
    """The input rows (or columns) that kernel offset `offset` touches across `count` outputs."""
    start = offset * dilation
    return slice(start, start + stride * (count - 1) + 1, stride)


def column_sums(a: np.ndarray) -> np.ndarray:
    """(M, C) -> (C,): a matrix-vector product, which streams the rows far faster than
    a.sum(axis=0) does for a few dozen columns."""
    return np.ones(len(a), a.dtype) @ a
