"""Finite-difference gradient checks (float64, central differences) of every layer and the loss."""

import numpy as np
import pytest

from mlp_cli.gradcheck import check_layer, check_network, numerical_gradient, relative_error
from mlp_cli.nn import layers as L
from mlp_cli.nn.execution import Execution
from mlp_cli.nn.losses import softmax_cross_entropy
from mlp_cli.nn.model import build

TOL = 1e-6
F64 = np.float64


def randomize(layer, rng):
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    return layer


def assert_checks(checks):
    assert checks, "nothing was checked"
    for c in checks:
        assert c.error <= TOL, f"{c.name}: relative error {c.error:.2e}"


CASES = {
    "linear": (lambda: L.Linear(7, 5, dtype=F64), (4, 7)),
    "linear_nobias": (lambda: L.Linear(6, 3, bias=False, dtype=F64), (5, 6)),
    "conv_basic": (lambda: L.Conv2d(3, 4, 3, dtype=F64), (2, 3, 6, 6)),
    "conv_stride2_pad1_nonsquare": (lambda: L.Conv2d(2, 3, 3, stride=2, padding=1, dtype=F64), (2, 2, 7, 5)),
    "conv_dilation2": (lambda: L.Conv2d(2, 3, 3, dilation=2, padding=1, dtype=F64), (2, 2, 8, 7)),
    "conv_rect_kernel": (lambda: L.Conv2d(2, 2, (2, 3), stride=(1, 2), padding=(1, 0), dtype=F64), (2, 2, 5, 6)),
    "maxpool_2x2": (lambda: L.MaxPool2d(2), (2, 3, 6, 4)),
    "maxpool_overlap_k3s2": (lambda: L.MaxPool2d(3, 2), (2, 2, 7, 9)),
    "maxpool_ceil_mode": (lambda: L.MaxPool2d(2, 2, ceil_mode=True), (2, 2, 7, 5)),
    "maxpool_pad_dilation": (lambda: L.MaxPool2d(3, 2, padding=1, dilation=2, ceil_mode=True), (2, 2, 9, 8)),
    "avgpool": (lambda: L.AvgPool2d(2), (2, 3, 6, 4)),
    "avgpool_pad_ceil": (lambda: L.AvgPool2d(3, 2, padding=1, ceil_mode=True), (2, 2, 8, 6)),
    "relu": (lambda: L.ReLU(), (4, 3, 5, 5)),
    "tanh": (lambda: L.Tanh(), (4, 9)),
    "sigmoid": (lambda: L.Sigmoid(), (4, 9)),
    "flatten": (lambda: L.Flatten(), (3, 2, 3, 4)),
    "dropout_fixed_mask": (lambda: L.Dropout(0.4), (6, 10)),
    "batchnorm1d_train": (lambda: L.BatchNorm1d(5, dtype=F64), (8, 5)),
    "batchnorm2d_train": (lambda: L.BatchNorm2d(3, dtype=F64), (4, 3, 5, 4)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_gradients(case):
    make, shape = CASES[case]
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    layer = randomize(make(), rng)
    x = rng.standard_normal(shape)
    assert_checks(check_layer(layer, x))


@pytest.mark.parametrize("use_compiled", [True, False])
@pytest.mark.parametrize("cls,shape", [(L.BatchNorm1d, (8, 5)), (L.BatchNorm2d, (4, 3, 5, 4))])
def test_batchnorm_train_gradients_of_both_paths(cls, shape, use_compiled):
    """The compiled kernels (the default where Numba is installed) and the NumPy reference."""
    rng = np.random.default_rng(11)
    layer = randomize(cls(shape[1], dtype=F64, execution=Execution(compiled=use_compiled)), rng)
    assert_checks(check_layer(layer, rng.standard_normal(shape)))


@pytest.mark.parametrize("cls", [L.BatchNorm1d, L.BatchNorm2d])
def test_batchnorm_eval_gradients(cls):
    rng = np.random.default_rng(3)
    layer = randomize(cls(3, dtype=F64), rng)
    layer.buffers["running_mean"][...] = rng.standard_normal(3)
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2, 3)
    layer.training = False
    x = rng.standard_normal((4, 3) if cls is L.BatchNorm1d else (4, 3, 3, 2))
    assert_checks(check_layer(layer, x))


def test_dropout_mask_is_really_applied():
    layer = L.Dropout(0.5)
    out = layer.forward(np.ones((50, 40)))
    assert 0.3 < (out == 0).mean() < 0.7
    assert set(np.unique(out)) <= {0.0, 2.0}
    layer.training = False
    assert np.array_equal(layer.forward(np.ones((3, 3))), np.ones((3, 3)))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_gradient(smoothing):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 5)) * 3
    labels = rng.integers(0, 5, 6)
    _, analytic = softmax_cross_entropy(logits, labels, smoothing)
    numeric = numerical_gradient(lambda: softmax_cross_entropy(logits, labels, smoothing)[0], logits)
    assert relative_error(analytic, numeric) <= TOL


def test_loss_is_stable_for_huge_logits():
    logits = np.array([[1000.0, -1000.0, 0.0], [-1e4, 1e4, 5.0]])
    loss, grad = softmax_cross_entropy(logits, np.array([0, 0]))
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert loss == pytest.approx(2e4 / 2)  # second row: -y~_0 + logsumexp = 1e4 + 1e4


def test_seed_mlp_gradients_match_the_derivation():
    """The practical's equations, written out for one example, equal the engine's batched backward."""
    rng = np.random.default_rng(0)
    net = build([{"type": "Linear", "in_features": 4, "out_features": 3},
                 {"type": "Tanh"},
                 {"type": "Linear", "in_features": 3, "out_features": 2}], rng=rng, dtype=F64)
    x, c = rng.standard_normal(4), 1
    logits = net.forward(x[None])
    _, d = softmax_cross_entropy(logits, np.array([c]))
    net.backward(d)
    Wh, bh = net.layers[0].params["weight"], net.layers[0].params["bias"]
    Wy = net.layers[2].params["weight"]
    h = np.tanh(Wh @ x + bh)
    y_tilde = Wy @ h + net.layers[2].params["bias"]
    y_hat = np.exp(y_tilde) / np.exp(y_tilde).sum()
    y = np.eye(2)[c]
    grad_ytilde = y_hat - y
    grad_htilde = (1 - h**2) * (Wy.T @ grad_ytilde)  # the corrected seed line
    assert np.allclose(net.layers[2].grads["weight"], np.outer(grad_ytilde, h))
    assert np.allclose(net.layers[2].grads["bias"], grad_ytilde)
    assert np.allclose(net.layers[0].grads["weight"], np.outer(grad_htilde, x))
    assert np.allclose(net.layers[0].grads["bias"], grad_htilde)


SMALL_CNN = [
    {"type": "Conv2d", "in_channels": 2, "out_channels": 3, "kernel_size": 3, "stride": 1, "padding": 1},
    {"type": "BatchNorm2d", "num_features": 3},
    {"type": "ReLU"},
    {"type": "MaxPool2d", "kernel_size": 2, "stride": 2, "ceil_mode": True},
    {"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 2, "stride": 2},
    {"type": "Tanh"},
    {"type": "Flatten"},
    {"type": "Linear", "in_features": 4 * 2 * 1, "out_features": 6},
    {"type": "Sigmoid"},
    {"type": "Dropout", "p": 0.3},
    {"type": "BatchNorm1d", "num_features": 6},
    {"type": "Linear", "in_features": 6, "out_features": 3},
]


def test_whole_small_net_end_to_end():
    rng = np.random.default_rng(5)
    net = build(SMALL_CNN, rng=rng, dtype=F64)
    x = rng.standard_normal((4, 2, 7, 5))
    labels = rng.integers(0, 3, 4)
    assert_checks(check_network(net, x, labels, label_smoothing=0.1))


def test_gradcheck_catches_a_broken_backward():
    class BrokenTanh(L.Tanh):
        def backward(self, dout):
            return dout * (1 - self.out)  # forgot the square

    checks = check_layer(BrokenTanh(), np.random.default_rng(0).standard_normal((3, 4)))
    assert max(c.error for c in checks) > 1e-2


def test_engine_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, mlp_cli.nn, mlp_cli.nn.layers, mlp_cli.nn.losses, mlp_cli.nn.init, mlp_cli.nn.model, "
            "mlp_cli.nn.optim, mlp_cli.nn.parallel, mlp_cli.gradcheck; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
