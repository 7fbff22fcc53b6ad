"""Stride-1 convolution through the discrete Fourier transform, every step a matrix product.

Why: a 5x5 convolution with 32 or 64 channels is 25 multiply-adds per input channel, output
channel and pixel when done by im2col. In the frequency domain it is one complex multiply-add
per channel pair and frequency, so most of the arithmetic disappears (3-4x fewer operations for
the CIFAR-10 net's conv2 and conv3). The transforms are done as small matrix products with
precomputed DFT matrices (an FFT call per 20x20 image costs more than the whole product here),
which also lets the matrices absorb the zero padding and the cropping of the output.

The layout, per image, with channels last throughout (x is (H, W, C)):

    S1  u = A1 @ x            contract H: (2Fh, H) @ (H, W*C)    half spectrum along H
    S2  v = A2 @ u[f]         contract W: (2Pw, 2W) @ (2W, C)    full spectrum along W
    mix y[q] = v[q] @ G[q]    per frequency q: (1, 2C) @ (2C, 2O) the channel mixing
    S3  t = B3 @ y[f]         inverse along W: (2Wo, 2Pw) @ (2Pw, O)
    S4  out = B4 @ t          inverse along H, real part: (Ho, 2Fh) @ (2Fh, Wo*O)

Complex numbers are pairs of real rows (r = real, imaginary), so every product is a real float32
matrix product. Ph = H + pad_h and Pw = W + pad_w are the transform sizes, the smallest for which
the circular correlation equals the zero-padded one on every output: with the image at positions
pad..pad+H-1 of a period of Ph, the reads that run past the right padding wrap into the first
pad_h positions, which hold zeros too (a period of H + 2*pad_h would be safe as well, and costs
20-30% more for the practical's 16x16 and 8x8 layers). The backward pass is the
transpose of each step in reverse order, so it is the exact gradient of what forward computed.
Like im2col (im2col.py) it computes reference.conv2d_forward/backward, and is tested equal to them.
`DFTConv` holds the fixed matrices of one geometry; `DFT`, the algorithm layers.Conv2d runs, holds
one DFTConv and the buffers of its passes.
"""

from __future__ import annotations

import numpy as np

from mlp_cli.nn import conv, parallel
from mlp_cli.nn.parallel import ordered_sum, over_batch

# Below this many images a block (parallel.BLOCKS of the batch), the weight gradient is split by
# frequencies instead of by batch blocks (DFT.backward).
FREQUENCY_SPLIT_BELOW = 32


def cost(H, W, kernel, padding, dilation, C, O) -> tuple[int, int]:
    """Multiply-adds per image of (this method, im2col) for one forward pass (cost.py turns
    them into modelled times)."""
    Ph, Pw, Fh, Ho, Wo = _sizes(H, W, kernel, padding, dilation)
    dft = (2 * Fh * H * W * C + Fh * 2 * Pw * 2 * W * C + Fh * Pw * 4 * C * O
           + Fh * 2 * Wo * 2 * Pw * O + Ho * 2 * Fh * Wo * O)
    return dft, Ho * Wo * kernel[0] * kernel[1] * C * O


def _sizes(H, W, kernel, padding, dilation):
    Ph, Pw = H + padding[0], W + padding[1]
    Ho = H + 2 * padding[0] - dilation[0] * (kernel[0] - 1)
    Wo = W + 2 * padding[1] - dilation[1] * (kernel[1] - 1)
    return Ph, Pw, Ph // 2 + 1, Ho, Wo


def _interleave(re: np.ndarray, im: np.ndarray, axis: int) -> np.ndarray:
    """Stack re and im so that index 2k along `axis` is re[k] and 2k+1 is im[k]."""
    both = np.stack([re, im], axis=axis + 1)
    shape = list(re.shape)
    shape[axis] *= 2
    return both.reshape(shape)


class DFTConv:
    """The fixed matrices of one convolution geometry (input size, kernel, padding, dilation).

    Shapes: x (N, H, W, C) -> out (N, Ho, Wo, O); the frequency-domain arrays are
    (N, Q, 2C) and (N, Q, 2O) with Q = Fh * Pw frequencies and [real | imaginary] halves.
    """

    def __init__(self, H, W, kernel, padding, dilation, dtype):
        Ph, Pw, Fh, Ho, Wo = _sizes(H, W, kernel, padding, dilation)
        self.H, self.W, self.Pw, self.Fh, self.Ho, self.Wo, self.kernel = H, W, Pw, Fh, Ho, Wo, kernel
        f, p = np.arange(Fh), np.arange(Pw)

        # S1: X[f] = sum_h x[h] e^{-2 pi i f (h + pad_h) / Ph}; rows (f, r).
        angle = 2 * np.pi * np.outer(f, np.arange(H) + padding[0]) / Ph
        self.A1 = _interleave(np.cos(angle), -np.sin(angle), axis=0).astype(dtype)
        # S2: Z[p] = sum_w e^{-2 pi i p (w + pad_w) / Pw} U[w]; rows (p, r'), columns (r, w).
        angle = 2 * np.pi * np.outer(p, np.arange(W) + padding[1]) / Pw
        c, s = np.cos(angle), np.sin(angle)
        self.A2 = _interleave(np.hstack([c, s]), np.hstack([-s, c]), axis=0).astype(dtype)
        # S3: T[w] = sum_p e^{+2 pi i p w / Pw} Y[p] / Pw; rows (r, w), columns (p, r').
        angle = 2 * np.pi * np.outer(np.arange(Wo), p) / Pw
        c, s = np.cos(angle) / Pw, np.sin(angle) / Pw
        self.B3 = np.vstack([_interleave(c, -s, axis=1), _interleave(s, c, axis=1)]).astype(dtype)
        # S4: out[h] = sum_f weight_f Re(e^{+2 pi i f h / Ph} T[f]) / Ph, where weight_f = 2
        # counts the conjugate frequency Ph - f that the half spectrum leaves out.
        weight = np.where((f == 0) | (2 * f == Ph), 1.0, 2.0)
        angle = 2 * np.pi * np.outer(np.arange(Ho), f) / Ph
        self.B4 = _interleave(weight * np.cos(angle) / Ph, -weight * np.sin(angle) / Ph, axis=1).astype(dtype)
        # Kernel -> G: G[q] = sum_{a,b} w[a, b] e^{+i theta}, theta = 2 pi (f a dil_h / Ph + p b dil_w / Pw)
        # (the conjugate of the kernel's DFT: a correlation, not a convolution).
        a, b = np.arange(kernel[0]) * dilation[0], np.arange(kernel[1]) * dilation[1]
        theta = 2 * np.pi * (f[:, None, None, None] * a[None, None, :, None] / Ph
                             + p[None, :, None, None] * b[None, None, None, :] / Pw)
        theta = theta.reshape(Fh * Pw, kernel[0] * kernel[1])  # (Q, kh*kw)
        self.E_cos, self.E_sin = np.cos(theta).astype(dtype), np.sin(theta).astype(dtype)
        self.E_sin_neg = -self.E_sin

    @property
    def frequencies(self) -> int:
        return self.Fh * self.Pw

    # ------------------------------------------------------------------ weights
    def weight_block(self, weight: np.ndarray, out: np.ndarray | None = None, *, threads: int = 1) -> np.ndarray:
        """weight (O, C, kh, kw) -> (Q, 2C, 2O): [[Gr, Gi], [-Gi, Gr]], the real form of
        right-multiplying a row [Xr | Xi] by the complex matrix G = Gr + i Gi (into `out` when given)."""
        O, C = weight.shape[:2]
        w = weight.transpose(2, 3, 1, 0).reshape(-1, C * O)  # (kh*kw, C*O)
        block = np.empty((self.frequencies, 2 * C, 2 * O), weight.dtype) if out is None else out

        def run(q0, q1):
            Gr = (self.E_cos[q0:q1] @ w).reshape(-1, C, O)
            Gi = (self.E_sin[q0:q1] @ w).reshape(-1, C, O)
            b = block[q0:q1]
            b[:, :C, :O] = Gr
            b[:, :C, O:] = Gi
            np.negative(Gi, out=b[:, C:, :O])
            b[:, C:, O:] = Gr

        over_batch(run, len(block), block.size, uses_blas=True, threads=threads)
        return block

    def weight_grad(self, grad_block: np.ndarray, *, threads: int = 1) -> np.ndarray:
        """The transpose of weight_block: (Q, 2C, 2O) gradient -> (O, C, kh, kw) gradient. Each
        quadrant's part is a product per input channel, (kh*kw, Q) @ (Q, O), read straight from
        the block's strided rows."""
        Q, C2, O2 = grad_block.shape
        C, O = C2 // 2, O2 // 2

        def run(q0, q1):
            g = grad_block[q0:q1]
            parts = [np.matmul(E[q0:q1].T, quadrant.transpose(1, 0, 2))  # (C, kh*kw, O)
                     for quadrant, E in ((g[:, :C, :O], self.E_cos), (g[:, :C, O:], self.E_sin),
                                         (g[:, C:, :O], self.E_sin_neg), (g[:, C:, O:], self.E_cos))]
            return ordered_sum(parts)

        dw = ordered_sum(over_batch(run, Q, grad_block.size, uses_blas=True, threads=threads))
        return dw.reshape(C, *self.kernel, O).transpose(3, 0, 1, 2)

    # ------------------------------------------------------------------ transforms
    def to_frequency(self, x: np.ndarray, out: np.ndarray) -> None:
        """S1, S2: x (n, H, W, C) -> out (n, Q, 2C)."""
        n, H, W, C = x.shape
        u = np.matmul(self.A1, x.reshape(n, H, W * C))  # (n, 2Fh, W*C)
        np.matmul(self.A2, u.reshape(n * self.Fh, 2 * W, C), out=out.reshape(n * self.Fh, 2 * self.Pw, C))

    def from_frequency(self, y: np.ndarray, out: np.ndarray) -> None:
        """S3, S4: y (n, Q, 2O) -> out (n, Ho, Wo, O)."""
        n, O = len(y), y.shape[2] // 2
        t = np.matmul(self.B3, y.reshape(n * self.Fh, 2 * self.Pw, O))  # (n*Fh, 2Wo, O)
        np.matmul(self.B4, t.reshape(n, 2 * self.Fh, self.Wo * O), out=out.reshape(n, self.Ho, self.Wo * O))

    def from_frequency_transposed(self, dout: np.ndarray, out: np.ndarray) -> None:
        """Transpose of S4, S3: dout (n, Ho, Wo, O) -> out (n, Q, 2O)."""
        n, Ho, Wo, O = dout.shape
        dt = np.matmul(self.B4.T, dout.reshape(n, Ho, Wo * O))  # (n, 2Fh, Wo*O)
        np.matmul(self.B3.T, dt.reshape(n * self.Fh, 2 * Wo, O), out=out.reshape(n * self.Fh, 2 * self.Pw, O))

    def to_frequency_transposed(self, dv: np.ndarray, out: np.ndarray) -> None:
        """Transpose of S2, S1: dv (n, Q, 2C) -> out (n, H, W, C)."""
        n, C = len(dv), dv.shape[2] // 2
        du = np.matmul(self.A2.T, dv.reshape(n * self.Fh, 2 * self.Pw, C))  # (n*Fh, 2W, C)
        np.matmul(self.A1.T, du.reshape(n, 2 * self.Fh, self.W * C), out=out.reshape(n, self.H, self.W * C))


def mix(v: np.ndarray, block: np.ndarray, out: np.ndarray) -> None:
    """Per frequency, v (n, Q, 2C) @ block (Q, 2C, 2O) -> out (n, Q, 2O)."""
    np.matmul(v.transpose(1, 0, 2), block, out=out.transpose(1, 0, 2))


class DFT(conv.Algorithm):
    """The convolution of one input size (H, W) and dtype through the frequency domain."""

    name = "dft"

    def __init__(self, kernel, stride, padding, dilation, threads: int, H: int, W: int, dtype):
        super().__init__(kernel, stride, padding, dilation, threads)
        self.plan = DFTConv(H, W, kernel, padding, dilation, dtype)

    def forward(self, xh, weight, bias):
        """xh (N, H, W, C) -> (N, Ho, Wo, F), through the frequency domain."""
        plan, N, C = self.plan, len(xh), xh.shape[3]
        self.in_shape = xh.shape
        F, Q = weight.shape[0], plan.frequencies
        self.block = plan.weight_block(weight, out=self._scratch("_block", (Q, 2 * C, 2 * F), weight.dtype),
                                       threads=self.threads)
        spectrum = self._scratch("_spectrum", (N, Q, 2 * C), xh.dtype)
        mixed = self._scratch("_mixed", (N, Q, 2 * F), xh.dtype)
        out = np.empty((N, plan.Ho, plan.Wo, F), xh.dtype)

        def run(b0, b1):
            plan.to_frequency(xh[b0:b1], spectrum[b0:b1])
            mix(spectrum[b0:b1], self.block, mixed[b0:b1])
            plan.from_frequency(mixed[b0:b1], out[b0:b1])
            if bias is not None:
                out[b0:b1] += bias

        self._over(run, N, mixed.size, uses_blas=True)
        self.spectrum = spectrum
        return out

    def backward(self, dh, weight, has_bias, needs_input_grad):
        """dh (N, Ho, Wo, F) -> (dx (N, H, W, C) or None, weight gradient parts, bias gradient
        parts). Each step is the transpose of a forward step, in reverse order.

        The weight gradient is a product per frequency over the batch. With many images per
        block each block of the batch goes through every step while it is in cache, and the
        per-block (Q, 2C, 2F) partial gradients are added; with few (batch 32) adding those costs
        more than the products, so the blocks are ranges of frequencies instead."""
        plan, spectrum, (N, H, W, C) = self.plan, self.spectrum, self.in_shape
        F, Q = dh.shape[3], plan.frequencies
        dmixed = self._scratch("_mixed", (N, Q, 2 * F), dh.dtype)
        dx = np.empty((N, H, W, C), dh.dtype) if needs_input_grad else None
        if dx is not None:
            block_t = self._scratch("_block_t", (Q, 2 * F, 2 * C), dh.dtype)
            self._over(lambda q0, q1: np.copyto(block_t[q0:q1], self.block[q0:q1].transpose(0, 2, 1)), Q, block_t.size)

        def to_mixed(b0, b1):  # dout -> its spectrum, and the bias gradient's part
            plan.from_frequency_transposed(dh[b0:b1], dmixed[b0:b1])
            return dh[b0:b1].sum(axis=(0, 1, 2))

        def block_grad(b0, b1, q0=0, q1=Q, out=None):  # the weight block's gradient: images b0..b1, frequencies q0..q1
            return np.matmul(spectrum[b0:b1, q0:q1].transpose(1, 2, 0), dmixed[b0:b1, q0:q1].transpose(1, 0, 2), out=out)

        def to_input(b0, b1):  # the spectrum is used up: its buffer takes its gradient
            mix(dmixed[b0:b1], block_t, spectrum[b0:b1])
            plan.to_frequency_transposed(spectrum[b0:b1], dx[b0:b1])

        if N >= FREQUENCY_SPLIT_BELOW * parallel.BLOCKS:  # by the blocks, not the threads: the same on any
            def run(b0, b1):
                bias_part = to_mixed(b0, b1)
                weight_part = block_grad(b0, b1)
                if dx is not None:
                    to_input(b0, b1)
                return weight_part, bias_part

            parts = self._over(run, N, dmixed.size, uses_blas=True)
            bias_parts, grad_block = [p[1] for p in parts], parts[0][0]
            # The partial sums added in block order, into the first, by ranges of frequencies in
            # parallel: the sum ordered_sum makes, without a fresh array and a serial pass.
            if len(parts) > 1:
                self._over(lambda q0, q1: ordered_sum([p[0][q0:q1] for p in parts], out=grad_block[q0:q1]),
                           Q, grad_block.size)
        else:
            bias_parts = self._over(to_mixed, N, dmixed.size, uses_blas=True)
            grad_block = self._scratch("_grad_block", (Q, 2 * C, 2 * F), dh.dtype)
            self._over(lambda q0, q1: block_grad(0, N, q0, q1, out=grad_block[q0:q1]), Q, dmixed.size, uses_blas=True)
            if dx is not None:
                self._over(to_input, N, dmixed.size, uses_blas=True)
        grad_weight = plan.weight_grad(grad_block, threads=self.threads)
        self.spectrum = self.block = None
        return dx, [grad_weight], bias_parts if has_bias else None
