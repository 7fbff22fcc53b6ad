"""The DFT convolution (nn/conv/dft.py) against its reference, im2col, and against PyTorch."""

import numpy as np
import pytest

import test_parity_torch as parity
from mlp_cli.gradcheck import check_layer
from mlp_cli.nn import layers as L
from mlp_cli.nn.execution import Execution


def random_geometry(rng):
    C, F = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    ph, pw = int(rng.integers(0, kh + 2)), int(rng.integers(0, kw + 2))  # also past the kernel's reach
    dh, dw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    H = int(rng.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 13))
    W = int(rng.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 13))
    conv = dict(in_channels=C, out_channels=F, kernel_size=(kh, kw), padding=(ph, pw), dilation=(dh, dw),
                bias=bool(rng.integers(0, 2)))
    return conv, (int(rng.integers(1, 5)), C, H, W)


def step(method, conv, x, dout_seed, dtype, threads=1):
    layer = L.Conv2d(**conv, dtype=dtype, execution=Execution(conv_method=method, threads=threads))
    rng = np.random.default_rng(dout_seed)
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    out = np.array(layer.forward(x))
    dx = np.array(layer.backward(rng.standard_normal(out.shape).astype(dtype)))
    return out, dx, {k: np.array(v) for k, v in layer.grads.items()}


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-11), (np.float32, 2e-5)])
def test_dft_equals_im2col(seed, dtype, tol):
    rng = np.random.default_rng(seed)
    conv, shape = random_geometry(rng)
    x = rng.standard_normal(shape).astype(dtype)
    ref, got = step("im2col", conv, x, seed, dtype), step("dft", conv, x, seed, dtype)
    for what, a, b in [("output", ref[0], got[0]), ("input gradient", ref[1], got[1])] + \
            [(f"grad {k}", ref[2][k], got[2][k]) for k in ref[2]]:
        assert a.shape == b.shape, what
        assert np.abs(a - b).max() <= tol * max(np.abs(a).max(), 1.0), f"{conv} {shape}: {what}"


@pytest.mark.parametrize("conv,shape", [
    (dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 6, 6)),
    (dict(in_channels=2, out_channels=3, kernel_size=5, padding=2), (2, 2, 7, 8)),
    (dict(in_channels=2, out_channels=3, kernel_size=(3, 2), padding=(0, 1), dilation=(2, 1)), (2, 2, 9, 6)),
])
def test_dft_gradients_by_finite_differences(conv, shape):
    rng = np.random.default_rng(0)
    layer = L.Conv2d(**conv, dtype=np.float64, execution=Execution(conv_method="dft"))
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    checks = check_layer(layer, rng.standard_normal(shape))
    assert checks and layer.algorithm.name == "dft"
    for c in checks:
        assert c.error <= 1e-6, f"{c.name}: {c.error:.2e}"


@pytest.mark.parametrize("method", ["im2col", "dft"])
@pytest.mark.parametrize("seed", range(6))
def test_each_method_matches_torch(method, seed):
    rng = np.random.default_rng(100 + seed)
    arch, x, labels = parity.random_case(rng, "Conv2d")
    parity.run_both(arch, x, labels, execution=Execution(conv_method=method))


@pytest.mark.parametrize("method", ["im2col", "dft"])
def test_each_method_trains_the_cifar_net_like_torch(method):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    parity.run_both(parity.CIFAR_NET, x, rng.integers(0, 10, 4), steps=2, execution=Execution(conv_method=method))


def test_auto_takes_the_dft_only_where_it_pays():
    x = np.zeros((2, 32, 16, 16), np.float32)
    conv2 = L.Conv2d(32, 64, 5, padding=2)
    conv2.forward(x)
    assert conv2.algorithm.name == "dft"  # the CIFAR net's conv2: 0.28x the multiply-adds
    strided = L.Conv2d(32, 64, 5, stride=2, padding=2)
    strided.forward(x)
    assert strided.algorithm.name != "dft"  # the DFT computes every output: stride 1 only
    first = L.Conv2d(3, 32, 5, padding=2)
    first.needs_input_grad = False  # a first layer skips col2im, im2col's costly half
    first.forward(np.zeros((2, 3, 32, 32), np.float32))
    assert first.algorithm.name != "dft"
    large = L.Conv2d(16, 32, 3, padding=1)
    large.forward(np.zeros((1, 16, 96, 96), np.float32))
    assert large.algorithm.name != "dft"  # a DFT by matrix products costs O(size) per pixel


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("method", ["dft", "band"])
@pytest.mark.parametrize("batch", [5, 97])
def test_split_over_threads_equals_im2col(method, threads, batch, monkeypatch):
    """The work split over several threads: the same results as im2col on one thread. For the
    DFT's weight gradient both splits: by ranges of frequencies (few images per thread) and by
    ranges of the batch with the partial gradients summed in range order (97 images: 32 or more
    a thread)."""
    from mlp_cli.nn import parallel

    conv = dict(in_channels=3, out_channels=4, kernel_size=3, padding=1)
    x = np.random.default_rng(threads).standard_normal((batch, 3, 8, 8))
    ref = step("im2col", conv, x, 1, np.float64)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_SIZE", 1)  # split even these small arrays
    with parallel.single_threaded_blas():
        got = step(method, conv, x, 1, np.float64, threads=threads)
    for a, b in [(ref[0], got[0]), (ref[1], got[1])] + [(ref[2][k], got[2][k]) for k in ref[2]]:
        assert np.abs(a - b).max() <= 1e-11 * max(np.abs(a).max(), 1.0)
