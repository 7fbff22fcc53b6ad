"""Which convolution method to run: a model of each method's time, not its multiply-adds alone.

Why a model: multiply-adds mislead in both directions here. A product with few columns (LeNet-5's
first layer: 6) runs at a third of BLAS's speed, and im2col's copy of short runs (kw*C = 5
numbers) costs more than its product; the DFT's products are small batched ones that run at
about 60% of BLAS's speed. So each method's forward and backward pass is modelled as the
matrix products and copies it does, per image, in nanoseconds of one core:

    product (M, K) @ (K, N):  M*K*N / (RATE * N/(N + 12) * K/(K + 8))   thin products are slow
    copy of e numbers in runs of r:  e * (0.5 + 2.5/r)                   short runs are slow

and Conv2d's "auto" (Execution.conv_method) takes the cheapest. The constants were fitted to single-core timings of the
three methods on the shipped layer shapes (`benchmarks/conv_methods.py` prints the model beside
the measured times); only their ratios matter. A first layer skips the input gradient: its
backward is the weight gradient alone (one product instead of two, no scatter).

The model is a pure function of the geometry, so the choice, and with it the rounding of every
result, is the same on every run; a choice by timing at run time would not be.
"""

from __future__ import annotations

from mlp_cli.nn.conv import band, dft

RATE = 60.0  # multiply-adds per ns of a wide float32 product on one core (OpenBLAS here)
DFT_EFFICIENCY = 0.6  # the DFT's products are small, batched ones
# The banded product must be modelled this much faster than im2col to be taken: where the two are
# closer the model's error is as large as the difference, and im2col is the plainer.
BAND_MARGIN = 1.15


def product_ns(M, K, N) -> float:
    return M * K * N / (RATE * N / (N + 12) * K / (K + 8))


def copy_ns(elements, run) -> float:
    return elements * (0.5 + 2.5 / run)


def im2col_ns(Ho, Wo, kernel, dilation, C, O, needs_input_grad) -> float:
    """One image's forward + backward by im2col: products (Ho*Wo, kh*kw*C) @ (kh*kw*C, O)."""
    P, K = Ho * Wo, kernel[0] * kernel[1] * C
    elements, run = P * K, C * (kernel[1] if dilation[1] == 1 else 1)
    t = 2 * product_ns(P, K, O) + copy_ns(elements, run)
    if needs_input_grad:  # dcols = dout W^T, and col2im in two passes
        t += product_ns(P, O, K) + 2 * copy_ns(elements, run)
    return t


def band_ns(Ho, Wo, B, kernel, stride, dilation, C, O, needs_input_grad) -> float:
    """One image's forward + backward by the banded product of band.py with blocks of B."""
    Bw = band.block_input_width(B, kernel[1], stride[1], dilation[1])
    M, K = Ho * (Wo // B), kernel[0] * Bw * C
    t = 2 * product_ns(M, K, B * O) + copy_ns(M * K, Bw * C)
    if needs_input_grad:  # drows = dout T^T, then added back window by window
        t += product_ns(M, B * O, K) + 2 * copy_ns(M * K, Bw * C)
    return t


def dft_ns(H, W, kernel, padding, dilation, C, O, needs_input_grad) -> float:
    """One image's forward + backward by the DFT (dft.py): each pass does the forward's products."""
    passes = 3 if needs_input_grad else 2
    return passes * dft.cost(H, W, kernel, padding, dilation, C, O)[0] / (RATE * DFT_EFFICIENCY)


def choose(H, W, kernel, stride, padding, dilation, C, O, needs_input_grad, methods=("im2col", "band", "dft")):
    """(method, block width or None) of the least modelled time among `methods`; the DFT needs stride 1."""
    from mlp_cli.shapes import conv_output_size

    Ho, Wo = (conv_output_size(n, k, s, p, d) for n, k, s, p, d in zip((H, W), kernel, stride, padding, dilation))
    options = []
    if "im2col" in methods:
        options.append((im2col_ns(Ho, Wo, kernel, dilation, C, O, needs_input_grad), "im2col", None))
    if "band" in methods:
        margin = BAND_MARGIN if "im2col" in methods else 1.0
        options += [(margin * band_ns(Ho, Wo, B, kernel, stride, dilation, C, O, needs_input_grad), "band", B)
                    for B in band.block_widths(Wo)]
    if "dft" in methods and stride == (1, 1):
        options.append((dft_ns(H, W, kernel, padding, dilation, C, O, needs_input_grad), "dft", None))
    _, method, B = min(options, key=lambda o: o[0])
    return method, B
