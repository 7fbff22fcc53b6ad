"""Compiled kernels (Numba) for the few loops NumPy cannot run as long passes: max pooling,
SGD's update and batch norm's training passes (below the pooling kernels).

Why: max pooling's forward is a maximum of four strided views of the input, in runs of C
numbers (0.87 ms a batch of 128 for LeNet-5's first pool on one core; compiled: 0.18 ms). Its
backward routes each window's gradient to the first input that equals the window's maximum.
In NumPy (MaxPool2d.backward, the reference) that is four passes per kernel offset (compare,
mask the windows already routed, update the mask, multiply), each over a strided view whose
contiguous runs are only C numbers long: LeNet-5's 6 channels make every pass a loop over runs
of 6, and the 16 passes of a 2x2 window cost 1.9 ms a batch on one core. One compiled pass reads
each input once and writes each gradient once: 0.54 ms. (The CIFAR-10 net's first pool, 32
channels of 32x32: forward 5.5 -> 1.5 ms, backward 9.8 -> 4.3 ms.)

The kernels, for the 2x2 window with stride 2 over an input of even height and width (every
pooling layer of the shipped configs), on NHWC arrays seen as rows of W*C numbers. Forward:

    out[r, q] = max(max(max(xp[2r, p], xp[2r, p+C]), xp[2r+1, p]), xp[2r+1, p+C])

with np.maximum's rules (a NaN wins; of equal values, 0.0 and -0.0, the second), in the
reference's order. The forward also decides where backward will route each gradient, and keeps
that as one byte per output, so backward reads neither the input nor the output again (a 16 MB
input for the CIFAR-10 net's first pool; forward and backward together 22% faster than when
backward compared them itself):

    for each output row r, column x, channel c (q = x*C + c, p = 2x*C + c):
        m = out[r, q]
        hit0 = xp[2r, p] == m                      the four inputs of the window, in
        hit1 = xp[2r, p+C] == m and not hit0       PyTorch's (row-major) order; the first
        hit2 = xp[2r+1, p] == m and not (hit0 or hit1)           that equals the maximum
        hit3 = xp[2r+1, p+C] == m and not (hit0 or hit1 or hit2) takes the gradient
        first[r, q] = 0, 1, 2 or 3 for the input hit, 4 for none
    backward: dx[2r, p], dx[2r, p+C], dx[2r+1, p], dx[2r+1, p+C] = d[r, q] where first is 0..3, else 0

Only comparisons and copies: wherever the gradient is finite the result equals the NumPy
reference's (ties, and a NaN maximum, which equals nothing and routes nowhere, included);
tests/test_compiled.py checks it. The reference multiplies d by each hit mask, so it writes -0.0
beside a negative gradient, and NaN beside an infinite or NaN one, where the kernel (like PyTorch)
writes 0.0.
Branch-free selects keep the loop fast on random data (a branch per input mispredicts half
the time).

The engine imports this module (and with it Numba) on first use, through
mlp_cli.nn.compiled_kernels(), so commands that never pool or step do not pay Numba's import;
without Numba that returns None and the NumPy references run. The machine code is cached on
disk (`cache=True`: beside this file, or in NUMBA_CACHE_DIR), so only the first run on a machine
compiles (about a second a kernel); the kernels are module-level functions, which Numba's cache
can find again.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always", cache=True)
def _maximum(a, b):
    """np.maximum's choice exactly: a NaN wins, and of equal values (0.0 and -0.0) the second."""
    return a if (a > b) | (a != a) else b


@njit(nogil=True, cache=True)  # nogil: the engine's threads run it on batch ranges in parallel
def _maxpool2x2_forward(xp, out, first, C):
    """xp: (2R, 2*Wo*C) input rows -> out: (R, Wo*C) output rows, and first: (R, Wo*C), which of
    the window's inputs (0-3, row-major) is the first to equal its maximum, 4 for none."""
    R, WC = out.shape
    for r in range(R):
        a, b, o, f = xp[2 * r], xp[2 * r + 1], out[r], first[r]
        for x in range(WC // C):
            for c in range(C):
                q = x * C + c
                p = q + x * C
                m = _maximum(_maximum(_maximum(a[p], a[p + C]), b[p]), b[p + C])
                o[q] = m
                hit0 = a[p] == m
                hit1 = (a[p + C] == m) & ~hit0
                seen = hit0 | hit1
                hit2 = (b[p] == m) & ~seen
                hit3 = (b[p + C] == m) & ~(seen | hit2)
                found = (seen | hit2 | hit3) != 0  # no input equals a NaN maximum: route nowhere
                f[q] = ((hit1 != 0) + 2 * (hit2 != 0) + 3 * (hit3 != 0)) if found else 4


@njit(nogil=True, cache=True)
def _maxpool2x2_backward(first, d, dx, C):
    """first, d: (R, Wo*C) output rows; dx: (2R, 2*Wo*C) input rows."""
    R, WC = d.shape
    for r in range(R):
        da, db, f, g = dx[2 * r], dx[2 * r + 1], first[r], d[r]
        for x in range(WC // C):
            for c in range(C):
                q = x * C + c
                p = q + x * C
                k, v = f[q], g[q]
                da[p] = v if k == 0 else 0.0
                da[p + C] = v if k == 1 else 0.0
                db[p] = v if k == 2 else 0.0
                db[p + C] = v if k == 3 else 0.0


def maxpool2x2_forward(xp: np.ndarray, out: np.ndarray, first: np.ndarray) -> None:
    """2x2 max pooling with stride 2 of images [0, N) of NHWC arrays: xp (N, 2Ho, 2Wo, C),
    C-contiguous -> writes out (N, Ho, Wo, C), each window's maximum (NaN if it holds one), and
    first (N, Ho, Wo, C) uint8, which input takes the window's gradient (4: none)."""
    N, H, W, C = xp.shape
    _maxpool2x2_forward(xp.reshape(N * H, W * C), out.reshape(N * H // 2, -1), first.reshape(N * H // 2, -1), C)


def maxpool2x2_backward(first: np.ndarray, d: np.ndarray, dx: np.ndarray) -> None:
    """2x2 max pooling with stride 2, backward, for images [0, N) of NHWC arrays: first the
    forward's routing, d (N, Ho, Wo, C) the output's gradient; writes dx (N, 2Ho, 2Wo, C), the
    input's gradient. first and d must be C-contiguous, d of dx's dtype."""
    N, Ho, Wo, C = d.shape
    _maxpool2x2_backward(first.reshape(N * Ho, -1), d.reshape(N * Ho, -1), dx.reshape(N * 2 * Ho, -1), C)


# ----------------------------------------------------------------------------- SGD
# torch.optim.SGD with momentum, after its first step (optim.sgd_update is the reference), in one
# pass over flat buffers where NumPy makes five or six: the MNIST MLP's 79,510 parameters took
# 52 µs a step in NumPy, about a ninth of its whole step. Each operation is the reference's, in
# its order and dtype (the scalars rounded to the parameters' dtype first, as NumPy does with a
# Python float, and no fused multiply-adds: Numba contracts nothing without fastmath), so the
# result is the same to the bit:
#
#     g = param * weight_decay + grad     (g = grad without weight decay)
#     buf = buf * momentum + g
#     param += (buf * momentum + g) * -lr   with Nesterov,   param += buf * -lr   without
@njit(nogil=True, cache=True)
def _sgd_momentum(param, grad, buf, neg_lr, momentum, weight_decay, decay, nesterov):
    for i in range(param.size):
        g = param[i] * weight_decay + grad[i] if decay else grad[i]
        b = buf[i] * momentum + g
        buf[i] = b
        if nesterov:
            param[i] += (b * momentum + g) * neg_lr
        else:
            param[i] += b * neg_lr


def sgd_momentum_update(param: np.ndarray, grad: np.ndarray, buf: np.ndarray, *, lr: float, momentum: float,
                        nesterov: bool, weight_decay: float) -> None:
    """One SGD step with an existing momentum buffer, in place: param, grad, buf 1-D and
    C-contiguous, of one floating dtype."""
    t = param.dtype.type
    _sgd_momentum(param, grad, buf, t(-lr), t(momentum), t(weight_decay), weight_decay != 0, nesterov)


def warm_up(dtype) -> None:
    """Load (or compile) every kernel for `dtype` now: Numba loads a kernel's machine code on its
    first call, and a timed loop should not carry that."""
    x, out = np.zeros((1, 2, 2, 1), dtype), np.zeros((1, 1, 1, 1), dtype)
    first = np.zeros(out.shape, np.uint8)
    maxpool2x2_forward(x, out, first)
    maxpool2x2_backward(first, out, np.empty_like(x))
    rows, vector = np.zeros((1, 1), dtype), np.zeros(1, dtype)
    batchnorm_normalize(rows, vector, vector, vector, rows)
    batchnorm_sums(rows, batchnorm_sums(rows))
    batchnorm_backward_sums(rows, vector, rows)
    batchnorm_backward_dx(rows, vector, rows, vector, vector, vector, rows.copy())
    p = np.zeros(1, dtype)
    sgd_momentum_update(p, p.copy(), p.copy(), lr=0.0, momentum=0.0, nesterov=False, weight_decay=0.0)


# ----------------------------------------------------------------------------- batch norm
# Training-mode batch norm over rows of C channels (_BatchNorm's NumPy code is the reference). The
# reference makes about ten NumPy passes a step over arrays of 12 MB (the improved CIFAR-10 net's
# first one), several on short rows; these make two reading passes and one writing pass forward,
# one reading and one writing pass backward, and keep no centered copy: backward recomputes x - mean.
# The per-channel sums are accumulated in float64 over a range of rows (the reference sums in
# float32), so results agree with the reference to rounding, not to the bit.
@njit(nogil=True, cache=True)
def _bn_sums(x, mean, squares):
    """x (M, C) -> (C,) float64 sums of x, or with squares=True of (x - mean)**2."""
    M, C = x.shape
    acc = np.zeros(C, np.float64)
    for r in range(M):
        row = x[r]
        if squares:
            for c in range(C):
                d = np.float64(row[c]) - mean[c]
                acc[c] += d * d
        else:
            for c in range(C):
                acc[c] += row[c]
    return acc


@njit(nogil=True, cache=True)
def batchnorm_normalize(x, mean, scale, shift, out):
    """out = (x - mean) * scale + shift for x, out (M, C) and (C,) vectors, all of x's dtype."""
    M, C = x.shape
    for r in range(M):
        row, o = x[r], out[r]
        for c in range(C):
            o[c] = (row[c] - mean[c]) * scale[c] + shift[c]


@njit(nogil=True, cache=True)
def batchnorm_backward_sums(x, mean, d):
    """x, d (M, C), mean (C,) of x's dtype -> float64 (C,) sums of d and of d * (x - mean)."""
    M, C = x.shape
    dsum, dcentered = np.zeros(C, np.float64), np.zeros(C, np.float64)
    for r in range(M):
        row, g = x[r], d[r]
        for c in range(C):
            dsum[c] += g[c]
            dcentered[c] += np.float64(g[c]) * np.float64(row[c] - mean[c])
    return dsum, dcentered


@njit(nogil=True, cache=True)
def batchnorm_backward_dx(x, mean, d, xhat_factor, scale, shift, dx):
    """dx = (d - (x - mean) * xhat_factor) * scale - shift, arrays (M, C) and (C,) of x's dtype."""
    M, C = x.shape
    for r in range(M):
        row, g, o = x[r], d[r], dx[r]
        for c in range(C):
            o[c] = (g[c] - (row[c] - mean[c]) * xhat_factor[c]) * scale[c] - shift[c]


def batchnorm_sums(x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """x (M, C), C-contiguous -> (C,) float64: the column sums of x, or with `mean` ((C,) float64)
    the column sums of (x - mean)**2."""
    if mean is None:
        return _bn_sums(x, np.zeros(x.shape[1]), False)
    return _bn_sums(x, mean, True)
