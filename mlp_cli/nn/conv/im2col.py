"""Convolution by im2col: every kernel window copied into a row, then one matrix product.

The plainest of the fast algorithms, and reference.conv2d_forward's loop over kernel offsets
gathered into one product: with the windows of image n as rows (channels last, so a row is kh
runs of kw*C contiguous numbers),

    cols[n, y, x] = xp[n, y*sh + i*dh, x*sw + j*dw, c] for every (i, j, c)     (Ho*Wo, kh*kw*C)
    out[n, y, x]  = cols[n, y, x] @ Wm + b                                       Wm: (kh*kw*C, F)

with Wm the weight rearranged to the order of a row. Backward: grad Wm = cols^T dout, and
dcols = dout Wm^T added back onto the windows they were copied from (col2im). Departures from
the reference, for speed: channels-last rows (long contiguous copies), a few images at a time
(BLOCK_IMAGES) so that the copied rows are still in cache for the product, buffers kept from one
step to the next, and col2im in two passes over long runs instead of kh*kw passes.
"""

from __future__ import annotations

import numpy as np

from mlp_cli.nn import conv
from mlp_cli.nn.arrays import window, windows
from mlp_cli.nn.parallel import ordered_sum


def weight_matrix(weight: np.ndarray) -> np.ndarray:
    """(F, C, kh, kw) -> (kh*kw*C, F), the order of an im2col row."""
    return weight.transpose(2, 3, 1, 0).reshape(-1, weight.shape[0])


class Im2col(conv.Algorithm):
    name = "im2col"

    def forward(self, xh, weight, bias):
        """xh (N, H, W, C) -> (N, Ho, Wo, F), by im2col and one product."""
        N, H, W, C = xh.shape
        self.in_shape = xh.shape
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        Ho, Wo = self.output_size(H, W)
        P = Ho * Wo  # output pixels (im2col rows) per image
        # The padded copy's border is written once (zeros) and only its interior afterwards.
        xp = self._scratch("_padded", (N, H + 2 * ph, W + 2 * pw, C), xh.dtype, zero=True) if ph or pw else xh
        cols = self._scratch("_cols", (N, Ho, Wo, kh, kw, C), xh.dtype)
        cols2d = cols.reshape(N * P, kh * kw * C)
        weight = weight_matrix(weight)
        out = np.empty((N * P, weight.shape[1]), xh.dtype)

        def run(b0, b1):  # im2col (one copy from a window view) and the product, for images b0..b1
            for c0 in range(b0, b1, conv.BLOCK_IMAGES):  # a block's columns are still in cache for the product
                c1 = min(c0 + conv.BLOCK_IMAGES, b1)
                if ph or pw:
                    xp[c0:c1, ph:ph + H, pw:pw + W, :] = xh[c0:c1]
                np.copyto(cols[c0:c1], windows(xp[c0:c1], (Ho, Wo), self.kernel_size, self.stride, self.dilation))
                np.matmul(cols2d[c0 * P:c1 * P], weight, out=out[c0 * P:c1 * P])
                if bias is not None:
                    out[c0 * P:c1 * P] += bias

        self._over(run, N, cols.size, uses_blas=True)
        self.cols = cols2d
        return out.reshape(N, Ho, Wo, -1)

    def backward(self, dh, weight, has_bias, needs_input_grad):
        """dh (N, Ho, Wo, F) -> (dx (N, H, W, C) or None, weight gradient parts, bias gradient parts)."""
        N, H, W, C = self.in_shape
        (kh, kw), (sh, sw), (ph, pw), (dil_h, dil_w) = self.kernel_size, self.stride, self.padding, self.dilation
        _, Ho, Wo, F = dh.shape
        P, Hp, Wp = Ho * Wo, H + 2 * ph, W + 2 * pw
        d2 = dh.reshape(N * P, F)
        weight, cols2d = weight_matrix(weight), self.cols
        dxp = np.empty((N, Hp, Wp, C), d2.dtype) if needs_input_grad else None

        def run(b0, b1):  # gradient parts of images b0..b1
            d = d2[b0 * P:b1 * P]
            grad_w, grad_b = d.T @ cols2d[b0 * P:b1 * P], d.sum(axis=0)
            if dxp is not None:
                # A few images at a time, so dcols is still in cache when col2im reads it back.
                for c0 in range(b0, b1, conv.BLOCK_IMAGES):
                    c1 = min(c0 + conv.BLOCK_IMAGES, b1)
                    dcols = (d2[c0 * P:c1 * P] @ weight.T).reshape(c1 - c0, Ho, Wo, kh, kw, C)
                    # col2im in two passes with long contiguous runs (kw*C, then C numbers),
                    # which beats kh*kw passes over runs of C.
                    rows = np.zeros((c1 - c0, Hp, Wo, kw, C), d2.dtype)  # summed over i, not yet over j
                    for i in range(kh):
                        rows[:, window(i, dil_h, sh, Ho)] += dcols[:, :, :, i]
                    dx = dxp[c0:c1]
                    dx[...] = 0
                    for j in range(kw):
                        dx[:, :, window(j, dil_w, sw, Wo)] += rows[:, :, :, j]
            return grad_w, grad_b

        parts = self._over(run, N, cols2d.size, uses_blas=True)
        grad_weight = ordered_sum([p[0] for p in parts]).reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
        self.cols = None
        dx = None if dxp is None else dxp[:, ph:ph + H, pw:pw + W, :]
        return dx, [grad_weight], [p[1] for p in parts] if has_bias else None
