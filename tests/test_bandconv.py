"""The banded-product convolution (nn/conv/band.py) against its reference, im2col, and PyTorch;
and the modelled choice of method (nn/conv/cost.py)."""

import numpy as np
import pytest

import test_parity_torch as parity
from mlp_cli.gradcheck import check_layer
from mlp_cli.nn import conv as conv_package
from mlp_cli.nn.conv import band, cost
from mlp_cli.nn import layers as L
from mlp_cli.nn.execution import Execution
from test_dftconv import random_geometry, step


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-11), (np.float32, 2e-5)])
def test_band_equals_im2col(seed, dtype, tol):
    rng = np.random.default_rng(seed)
    conv, shape = random_geometry(rng)
    if seed % 2:  # the band handles strides too
        conv["stride"] = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    x = rng.standard_normal(shape).astype(dtype)
    ref, got = step("im2col", conv, x, seed, dtype), step("band", conv, x, seed, dtype)
    for what, a, b in [("output", ref[0], got[0]), ("input gradient", ref[1], got[1])] + \
            [(f"grad {k}", ref[2][k], got[2][k]) for k in ref[2]]:
        assert a.shape == b.shape, what
        assert np.abs(a - b).max() <= tol * max(np.abs(a).max(), 1.0), f"{conv} {shape}: {what}"


@pytest.mark.parametrize("B", [1, 2, 4, 8])
def test_every_block_width_equals_im2col(B, monkeypatch):
    """Each block width that tiles the row (8 outputs) gives im2col's results, also when the
    batch is copied in several blocks of images (here 2, 2 and 1 of 5)."""
    monkeypatch.setattr(cost, "choose", lambda *a, methods: ("band", B))
    monkeypatch.setattr(conv_package, "BLOCK_IMAGES", 2)
    monkeypatch.setattr(conv_package, "BLOCK_BYTES", 1)
    conv = dict(in_channels=2, out_channels=3, kernel_size=(3, 4), padding=(1, 2), stride=(1, 2), dilation=(2, 1))
    rng = np.random.default_rng(B)
    x = rng.standard_normal((5, 2, 9, 15))
    ref, got = step("im2col", conv, x, 0, np.float64), step("band", conv, x, 0, np.float64)
    for a, b in [(ref[0], got[0]), (ref[1], got[1])] + [(ref[2][k], got[2][k]) for k in ref[2]]:
        assert np.abs(a - b).max() <= 1e-11 * max(np.abs(a).max(), 1.0)


def test_fold_is_the_transpose_of_band_matrix():
    """<band_matrix(w), G> == <w, fold(G)> for any G: fold is the exact gradient of band_matrix."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 2, 4, 3))
    T = band.band_matrix(w, 5, 2, 2)
    G = rng.standard_normal(T.shape)
    assert np.sum(T * G) == pytest.approx(np.sum(w * band.fold(G, w.shape, 5, 2, 2)), rel=1e-12)


@pytest.mark.parametrize("conv,shape", [
    (dict(in_channels=1, out_channels=3, kernel_size=5, padding=2), (2, 1, 8, 8)),
    (dict(in_channels=2, out_channels=3, kernel_size=(3, 2), padding=(0, 1), dilation=(2, 1), stride=(1, 2)), (2, 2, 9, 8)),
])
def test_band_gradients_by_finite_differences(conv, shape):
    rng = np.random.default_rng(0)
    layer = L.Conv2d(**conv, dtype=np.float64, execution=Execution(conv_method="band"))
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    checks = check_layer(layer, rng.standard_normal(shape))
    assert checks and layer.algorithm.name == "band"
    for c in checks:
        assert c.error <= 1e-6, f"{c.name}: {c.error:.2e}"


@pytest.mark.parametrize("seed", range(6))
def test_band_matches_torch(seed):
    rng = np.random.default_rng(100 + seed)
    arch, x, labels = parity.random_case(rng, "Conv2d")
    parity.run_both(arch, x, labels, execution=Execution(conv_method="band"))


def test_band_trains_lenet5_like_torch():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    parity.run_both(parity.LENET5, x, rng.integers(0, 10, 4), steps=2, execution=Execution(conv_method="band"))


def test_auto_follows_the_modelled_time():
    """LeNet-5's thin first layer takes the band; the CIFAR-10 net's conv2 the DFT; a strided
    layer never the DFT; a wide first layer stays on im2col, which the band beats by too little."""
    lenet1 = L.Conv2d(1, 6, 5, padding=2)
    lenet1.needs_input_grad = False
    lenet1.forward(np.zeros((2, 1, 28, 28), np.float32))
    assert lenet1.algorithm.name == "band"
    assert cost.band_ns(28, 28, lenet1.algorithm.B, (5, 5), (1, 1), (1, 1), 1, 6, False) < \
        cost.im2col_ns(28, 28, (5, 5), (1, 1), 1, 6, False) / 1.5
    conv2 = L.Conv2d(32, 64, 5, padding=2)
    conv2.forward(np.zeros((2, 32, 16, 16), np.float32))
    assert conv2.algorithm.name == "dft"
    strided = L.Conv2d(32, 64, 5, stride=2, padding=2)
    strided.forward(np.zeros((2, 32, 16, 16), np.float32))
    assert strided.algorithm.name != "dft"
    cifar1 = L.Conv2d(3, 32, 5, padding=2)
    cifar1.needs_input_grad = False
    cifar1.forward(np.zeros((2, 3, 32, 32), np.float32))
    assert cifar1.algorithm.name == "im2col"
