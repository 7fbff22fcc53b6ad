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
wider, which BLAS runs near its peak; convcost.choose picks B by the modelled time.

Backward is the transpose of the product: grad T = rows^T @ dout, folded back onto the weight
by summing the band's copies of each weight (`fold`), and drows = dout @ T^T, added back onto
the input window by window (the transpose of the copy). The im2col path in layers.Conv2d is the
reference these are tested against.
"""

from __future__ import annotations

import numpy as np


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

