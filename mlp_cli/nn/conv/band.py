"""Convolution as one matrix product with a banded weight matrix along the width.

Why: im2col turns a convolution into a product (N*Ho*Wo, kh*kw*C) @ (kh*kw*C, O). For a thin
layer such as LeNet-5's first (1 channel in, 6 out) that product has 6 columns and 25 terms per
row: BLAS runs it at a third of its speed, and the im2col copy (runs of kw*C = 5 numbers)
costs more than the product. Here a row holds a block of B neighbouring outputs along the
width instead of one, so both the product and the copy get wider:

    rows[n, y, b] = the kh input rows y*sh + i*dh (i < kh), columns b*B*sw ... b*B*sw + Bw - 1,
                    all channels: kh*Bw*C numbers, copied as kh runs of Bw*C
    out[n, y, b*B:(b+1)*B, :] = rows[n, y, b] @ T           T: (kh*Bw*C, B*O)

with Bw = (B - 1)*sw + (kw - 1)*dw + 1 input columns per block. T is the same for every block
(the convolution is translation invariant): T[i, xb*sw + j*dw, c, xb, o] = weight[o, c, i, j] and
zero elsewhere, a band of width kw along the block's columns. The product does (B + kw - 1)/kw
times im2col's multiply-adds at B = 1 stride 1 (B = 1 is im2col itself), but on a matrix B times
wider, which BLAS runs near its peak; cost.choose picks B by the modelled time.

Backward is the transpose of the product: grad T = rows^T @ dout, folded back onto the weight
by summing the band's copies of each weight (`fold`), and drows = dout @ T^T, added back onto
the input window by window (the transpose of the copy). Like im2col (im2col.py) it
computes reference.conv2d_forward/backward, and is tested equal to them.
"""

from __future__ import annotations

import numpy as np

from mlp_cli.nn import conv
from mlp_cli.nn.arrays import column_sums, window, windows
from mlp_cli.nn.parallel import ordered_sum


def block_input_width(B: int, kernel_w: int, stride_w: int, dilation_w: int) -> int:
    """Bw: the input columns that B neighbouring outputs read."""
    return (B - 1) * stride_w + (kernel_w - 1) * dilation_w + 1


def band_matrix(weight: np.ndarray, B: int, stride_w: int, dilation_w: int) -> np.ndarray:
    """weight (O, C, kh, kw) -> T (kh*Bw*C, B*O), the banded matrix of B neighbouring outputs."""
    O, C, kh, kw = weight.shape
    Bw = block_input_width(B, kw, stride_w, dilation_w)
    T = np.zeros((kh, Bw, C, B, O), weight.dtype)
    w = weight.transpose(3, 2, 1, 0)  # (kw, kh, C, O)
    for xb in range(B):
        for j in range(kw):
            T[:, xb * stride_w + j * dilation_w, :, xb, :] = w[j]
    return T.reshape(kh * Bw * C, B * O)


def fold(grad_T: np.ndarray, weight_shape, B: int, stride_w: int, dilation_w: int) -> np.ndarray:
    """The transpose of band_matrix: grad T (kh*Bw*C, B*O) -> grad weight (O, C, kh, kw), each
    weight's gradient the sum over the B places where T holds it."""
    O, C, kh, kw = weight_shape
    Bw = block_input_width(B, kw, stride_w, dilation_w)
    g = grad_T.reshape(kh, Bw, C, B, O)
    dw = np.zeros((kw, kh, C, O), grad_T.dtype)
    for xb in range(B):
        for j in range(kw):
            dw[j] += g[:, xb * stride_w + j * dilation_w, :, xb, :]
    return dw.transpose(3, 2, 1, 0)


def block_widths(Wo: int) -> list[int]:
    """The block widths that tile the Wo outputs of a row exactly: the divisors of Wo."""
    return [B for B in range(1, Wo + 1) if Wo % B == 0]


class Band(conv.Algorithm):
    """The banded product with blocks of B outputs along the width (B divides Wo)."""

    name = "band"

    def __init__(self, kernel, stride, padding, dilation, threads: int, B: int):
        super().__init__(kernel, stride, padding, dilation, threads)
        self.B = B

    def _geometry(self):
        (_, H, W, _), kw, sw, dil_w = self.in_shape, self.kernel_size[1], self.stride[1], self.dilation[1]
        Ho, Wo = self.output_size(H, W)
        return Ho, Wo // self.B, block_input_width(self.B, kw, sw, dil_w)

    def _windows(self, xp, Ho, nb, Bw):
        """(input rows i, output block b, slices into a padded NHWC array) of every copy that builds rows."""
        (kh, _), (sh, sw), (dil_h, _) = self.kernel_size, self.stride, self.dilation
        for b in range(nb):
            for i in range(kh):
                yield i, b, (slice(None), window(i, dil_h, sh, Ho), slice(b * self.B * sw, b * self.B * sw + Bw))

    def forward(self, xh, weight, bias):
        """xh (N, H, W, C) -> (N, Ho, Wo, F), by one banded product."""
        N, H, W, C = xh.shape
        self.in_shape = xh.shape
        (kh, _), (ph, pw), (sh, sw), (dil_h, dil_w) = self.kernel_size, self.padding, self.stride, self.dilation
        Ho, nb, Bw = self._geometry()
        R = Ho * nb  # product rows per image
        xp = self._scratch("_padded", (N, H + 2 * ph, W + 2 * pw, C), xh.dtype, zero=True) if ph or pw else xh
        rows = self._scratch("_rows", (N, Ho, nb, kh, Bw, C), xh.dtype)
        rows2d = rows.reshape(N * R, kh * Bw * C)
        T = band_matrix(weight, self.B, sw, dil_w)
        bias_row = None if bias is None else np.tile(bias, self.B)
        out = np.empty((N * R, T.shape[1]), xh.dtype)
        block = conv.block_images(rows[0].nbytes)

        def run(b0, b1):  # the copy and the product, a few images at a time (still in cache)
            for c0 in range(b0, b1, block):
                c1 = min(c0 + block, b1)
                if ph or pw:
                    xp[c0:c1, ph:ph + H, pw:pw + W, :] = xh[c0:c1]
                # A block's rows are the windows of a (kh, Bw) kernel moving B*sw columns at a time.
                np.copyto(rows[c0:c1], windows(xp[c0:c1], (Ho, nb), (kh, Bw), (sh, self.B * sw), (dil_h, 1)))
                np.matmul(rows2d[c0 * R:c1 * R], T, out=out[c0 * R:c1 * R])
                if bias_row is not None:
                    out[c0 * R:c1 * R] += bias_row

        self._over(run, N, rows.size, uses_blas=True)
        self.rows, self.T = rows2d, T
        return out.reshape(N, Ho, -1, weight.shape[0])

    def backward(self, dh, weight, has_bias, needs_input_grad):
        """dh (N, Ho, Wo, F) -> (dx (N, H, W, C) or None, weight gradient parts, bias gradient parts):
        the transpose of the forward product, then of the copies."""
        N, H, W, C = self.in_shape
        (ph, pw), (_, sw), (_, dil_w) = self.padding, self.stride, self.dilation
        Ho, nb, Bw = self._geometry()
        R = Ho * nb
        rows2d, T = self.rows, self.T
        d2 = dh.reshape(N * R, T.shape[1])
        dxp = np.empty((N, H + 2 * ph, W + 2 * pw, C), d2.dtype) if needs_input_grad else None

        def run(b0, b1):
            d = d2[b0 * R:b1 * R]
            grad_T, grad_b = rows2d[b0 * R:b1 * R].T @ d, column_sums(d)
            if dxp is not None:
                for c0 in range(b0, b1, conv.BLOCK_IMAGES):
                    c1 = min(c0 + conv.BLOCK_IMAGES, b1)
                    drows = (d2[c0 * R:c1 * R] @ T.T).reshape(c1 - c0, Ho, nb, -1, Bw, C)
                    dx = dxp[c0:c1]
                    dx[...] = 0
                    for i, b, win in self._windows(dx, Ho, nb, Bw):
                        dx[win] += drows[:, :, b, i]
            return grad_T, grad_b

        parts = self._over(run, N, rows2d.size, uses_blas=True)
        grad_weight = fold(ordered_sum([p[0] for p in parts]), weight.shape, self.B, sw, dil_w)
        grad_bias = [ordered_sum([p[1] for p in parts]).reshape(self.B, -1).sum(axis=0)] if has_bias else None
        self.rows = self.T = None
        return None if dxp is None else dxp[:, ph:ph + H, pw:pw + W, :], [grad_weight], grad_bias
