"""The fast engine's convolution algorithms, which layers.Conv2d dispatches over.

Each computes what reference.conv2d_forward/backward compute (tests/test_engine_parity.py), on
channels-last (NHWC) arrays, and owns its state: the buffers it keeps from one step to the next
and what its forward leaves for its backward. layers.Conv2d holds the weights, asks cost.choose
which algorithm to run for an input size, and keeps one instance per input size.

    im2col.py   every window copied into a row, one matrix product (the plainest of the three)
    band.py     B neighbouring outputs per product row against a banded weight matrix: wide
                products for thin layers (LeNet-5's first)
    dft.py      stride 1 through the discrete Fourier transform as matrix products: 3-4x fewer
                operations for the practical's 5x5 layers
    cost.py     the modelled time of each, per geometry, from which "auto" picks

An algorithm is made as `Algorithm(kernel, stride, padding, dilation, threads)` (dft.DFT also
takes the input size and dtype) and offers

    forward(xh, weight, bias) -> out          xh (N, H, W, C), weight (F, C, kh, kw), bias (F,) or None
    backward(dh, weight, has_bias, needs_input_grad) -> (dx or None, weight parts, bias parts or None)

where the parts are lists whose ordered sum (parallel.ordered_sum) is the gradient.
"""

from __future__ import annotations

import numpy as np

from mlp_cli.nn.parallel import over_batch
from mlp_cli.shapes import conv_output_size

BLOCK_IMAGES = 8  # images per im2col/col2im block: a block's columns fit in a core's cache
BLOCK_BYTES = 1 << 22  # at least this much of a block's copied rows: fewer, longer NumPy calls


def block_images(image_bytes: int) -> int:
    """Images per block of a copy-then-product loop: BLOCK_IMAGES, or more for small images
    (LeNet-5's), since each NumPy call holds the GIL for its fixed overhead and short calls
    keep the other thread waiting."""
    return max(BLOCK_IMAGES, BLOCK_BYTES // max(image_bytes, 1))


class Algorithm:
    """What the algorithms share: the layer's geometry, its threads and buffers kept between calls."""

    name = ""

    def __init__(self, kernel, stride, padding, dilation, threads: int):
        self.kernel_size, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation
        self.threads = threads

    def _over(self, fn, n, size, uses_blas=False) -> list:
        return over_batch(fn, n, size, uses_blas, threads=self.threads)

    def _scratch(self, name, shape, dtype, zero=False):
        """A buffer kept between calls (never handed out), so big arrays are not re-allocated
        and page-faulted in every step. A zeroed buffer stays zero where it is never written."""
        buf = self.__dict__.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
            self.__dict__[name] = buf
        return buf

    def output_size(self, h, w):
        return tuple(conv_output_size(n, k, s, p, d) for n, k, s, p, d in
                     zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation))
