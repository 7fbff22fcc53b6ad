"""The reference tier (mlp_cli/nn/reference.py) is the derivation: every pair of forward and
backward functions checked against PyTorch's autograd and against central differences, in float64,
on random geometries; the optimizer updates against torch.optim; and the module imports nothing
but NumPy and the standard library's math and typing."""

import ast
import inspect
import itertools

import numpy as np
import pytest
import torch

from mlp_cli.gradcheck import numerical_gradient
from mlp_cli.nn import reference as R

torch.set_num_threads(1)


def t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def assert_close(ours, theirs, what, tol=1e-10):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    scale = max(np.abs(theirs).max(initial=0.0), 1.0)
    err = np.abs(ours - theirs).max(initial=0.0) / scale
    assert err <= tol, f"{what}: relative error {err:.2e}"


def geometries(rng, count, pool=False):
    """Random (x shape, kernel, stride, padding, dilation[, ceil_mode]) with odd sizes and pairs."""
    out = []
    while len(out) < count:
        N, C, H, W = (int(v) for v in rng.integers([1, 1, 4, 4], [4, 4, 12, 12]))
        k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 3)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        p = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1))) if pool else \
            (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        if any(n + 2 * pp < dd * (kk - 1) + 1 for n, kk, pp, dd in zip((H, W), k, p, d)):
            continue
        out.append(((N, C, H, W), k, s, p, d))
    return out


@pytest.mark.parametrize("case", range(12))
def test_conv2d_pair_equals_torch(case):
    rng = np.random.default_rng(case)
    shape, k, s, p, d = geometries(rng, 1)[0]
    F = int(rng.integers(1, 5))
    x, W, b = rng.standard_normal(shape), rng.standard_normal((F, shape[1], *k)), rng.standard_normal(F)
    bias = case % 3 != 0
    out, cache = R.conv2d_forward(x, W, b if bias else None, s, p, d)
    xt, Wt, bt = t(x, True), t(W, True), t(b, True)
    expected = torch.nn.functional.conv2d(xt, Wt, bt if bias else None, s, p, d)
    assert_close(out, expected, "forward")
    dout = rng.standard_normal(out.shape)
    expected.backward(t(dout))
    dx, dW, db = R.conv2d_backward(dout, cache)
    assert_close(dx, xt.grad, "dx")
    assert_close(dW, Wt.grad, "dW")
    if bias:
        assert_close(db, bt.grad, "db")
    else:
        assert db is None


@pytest.mark.parametrize("kind,case", list(itertools.product(["max", "avg"], range(10))))
def test_pooling_pairs_equal_torch(kind, case):
    rng = np.random.default_rng(100 + case)
    shape, k, s, p, d = geometries(rng, 1, pool=True)[0]
    ceil = bool(case % 2)
    x = rng.standard_normal(shape)
    if case == 0:
        x = np.round(x)  # ties: the first maximum of a window takes its gradient
    xt = t(x, True)
    if kind == "max":
        out, cache = R.maxpool2d_forward(x, k, s, p, d, ceil)
        expected = torch.nn.functional.max_pool2d(xt, k, s, p, d, ceil_mode=ceil)
    else:
        out, cache = R.avgpool2d_forward(x, k, s, p, ceil)
        expected = torch.nn.functional.avg_pool2d(xt, k, s, p, ceil_mode=ceil)
    assert_close(out, expected, "forward")
    dout = rng.standard_normal(out.shape)
    expected.backward(t(dout))
    dx = (R.maxpool2d_backward if kind == "max" else R.avgpool2d_backward)(dout, cache)
    assert_close(dx, xt.grad, "dx")


def test_output_sizes_follow_pytorch_including_ceil_mode_drops():
    for size, k, s, p, d in itertools.product(range(1, 12), range(1, 4), range(1, 4), range(0, 2), range(1, 3)):
        if size + 2 * p < d * (k - 1) + 1:
            continue
        x = torch.zeros(1, 1, size, size)
        assert R.conv_output_size(size, k, s, p, d) == torch.nn.functional.conv2d(
            x, torch.zeros(1, 1, k, k), None, s, p, d).shape[2]
        if p <= k // 2:
            for ceil in (False, True):
                assert R.pool_output_size(size, k, s, p, d, ceil) == torch.nn.functional.max_pool2d(
                    x, k, s, p, d, ceil_mode=ceil).shape[2], (size, k, s, p, d, ceil)


def test_linear_pair_equals_torch_and_the_practical_formulas():
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((5, 7)), rng.standard_normal((3, 7)), rng.standard_normal(3)
    out, cache = R.linear_forward(x, W, b)
    xt, Wt, bt = t(x, True), t(W, True), t(b, True)
    expected = torch.nn.functional.linear(xt, Wt, bt)
    assert_close(out, expected, "forward")
    dout = rng.standard_normal(out.shape)
    expected.backward(t(dout))
    dx, dW, db = R.linear_backward(dout, cache)
    assert_close(dx, xt.grad, "dx")
    assert_close(dW, Wt.grad, "dW")
    assert_close(db, bt.grad, "db")
    # One example: grad W = dout h^T (an outer product), grad b = dout.
    _, dW1, db1 = R.linear_backward(dout[:1], (x[:1], W, True))
    np.testing.assert_allclose(dW1, np.outer(dout[0], x[0]))
    np.testing.assert_allclose(db1, dout[0])


@pytest.mark.parametrize("name", ["tanh", "relu", "sigmoid", "flatten"])
def test_elementwise_pairs_equal_torch(name):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 4, 5)) * 3
    x[0, 0, 0, :2] = [0.0, 40.0]
    forward, backward = getattr(R, f"{name}_forward"), getattr(R, f"{name}_backward")
    out, cache = forward(x)
    xt = t(x, True)
    expected = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
                "flatten": lambda a: a.flatten(1)}[name](xt)
    assert_close(out, expected, "forward")
    dout = rng.standard_normal(out.shape)
    expected.backward(t(dout))
    assert_close(backward(dout, cache), xt.grad, "dx")


def test_sigmoid_never_overflows():
    with np.errstate(all="raise"):
        out, _ = R.sigmoid_forward(np.array([-1e4, 0.0, 1e4]))
    np.testing.assert_array_equal(out, [0.0, 0.5, 1.0])


@pytest.mark.parametrize("shape,training", [((7, 3), True), ((7, 3), False), ((2, 3, 4, 5), True), ((2, 3, 4, 5), False)])
def test_batchnorm_pair_equals_torch(shape, training):
    rng = np.random.default_rng(2)
    x, gamma, beta = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(3), rng.standard_normal(3)
    mean, var = rng.standard_normal(3), rng.random(3) + 0.5
    bn = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(3, momentum=0.3).double()
    with torch.no_grad():
        bn.weight[:], bn.bias[:], bn.running_mean[:], bn.running_var[:] = t(gamma), t(beta), t(mean), t(var)
    bn.train(training)
    out, cache, (new_mean, new_var) = R.batchnorm_forward(x, gamma, beta, mean, var, training=training, momentum=0.3)
    xt = t(x, True)
    expected = bn(xt)
    assert_close(out, expected, "forward")
    assert_close(new_mean, bn.running_mean, "running mean")
    assert_close(new_var, bn.running_var, "running var")
    dout = rng.standard_normal(shape)
    expected.backward(t(dout))
    dx, dgamma, dbeta = R.batchnorm_backward(dout, cache)
    assert_close(dx, xt.grad, "dx")
    assert_close(dgamma, bn.weight.grad, "dgamma")
    assert_close(dbeta, bn.bias.grad, "dbeta")


def test_dropout_keeps_with_probability_1_minus_p_and_scales():
    rng = np.random.default_rng(3)
    x = np.ones((200, 50), np.float32)
    out, mask = R.dropout_forward(x, 0.3, rng)
    assert out.dtype == np.float32
    kept = out != 0
    assert 0.65 < kept.mean() < 0.75
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(R.dropout_backward(dout, mask), dout * mask)
    same, none = R.dropout_forward(x, 0.3, rng, training=False)
    assert same is x and none is None


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_equals_torch_and_is_stable(smoothing):
    rng = np.random.default_rng(4)
    logits, labels = rng.standard_normal((6, 5)) * 4, rng.integers(0, 5, 6)
    logits[0] = [1000.0, -1000.0, 0.0, 999.0, 3.0]  # exp would overflow without the shift
    loss, dlogits = R.softmax_cross_entropy(logits, labels, smoothing)
    lt = t(logits, True)
    expected = torch.nn.functional.cross_entropy(lt, torch.as_tensor(labels), label_smoothing=smoothing)
    expected.backward()
    assert loss == pytest.approx(expected.item(), rel=1e-12)
    assert_close(dlogits, lt.grad, "dl/dy~")
    np.testing.assert_allclose(R.softmax(logits).sum(axis=1), 1.0)


def test_every_backward_matches_central_differences():
    """The same pairs against finite differences, so the proof does not rest on PyTorch alone:
    for l = sum(forward(x, ...) * R) with R fixed, dl/dx and every dl/dparam."""
    rng = np.random.default_rng(5)
    x4, x2 = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 5))
    W_conv, b_conv = rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    W_lin, b_lin = rng.standard_normal((3, 5)), rng.standard_normal(3)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    cases = {
        "conv2d": (lambda x, W, b: R.conv2d_forward(x, W, b, (2, 1), (1, 0), (1, 2)),
                   R.conv2d_backward, [x4, W_conv, b_conv]),
        "linear": (R.linear_forward, R.linear_backward, [x2, W_lin, b_lin]),
        "maxpool2d": (lambda x: R.maxpool2d_forward(x, 3, 2, 1, 1, True), R.maxpool2d_backward, [x4]),
        "avgpool2d": (lambda x: R.avgpool2d_forward(x, (3, 2), (2, 1), (1, 1), True), R.avgpool2d_backward, [x4]),
        "batchnorm2d": (lambda x, g, b: R.batchnorm_forward(x, g, b, np.zeros(3), np.ones(3), training=True)[:2],
                        R.batchnorm_backward, [x4, gamma, beta]),
        "tanh": (R.tanh_forward, R.tanh_backward, [x4]),
        "sigmoid": (R.sigmoid_forward, R.sigmoid_backward, [x4]),
    }
    for name, (forward, backward, args) in cases.items():
        out, cache = forward(*args)
        weights = rng.standard_normal(out.shape)
        grads = backward(weights, cache)
        grads = grads if isinstance(grads, tuple) else (grads,)
        for i, (arg, grad) in enumerate(zip(args, grads)):
            numeric = numerical_gradient(lambda: float((forward(*args)[0] * weights).sum()), arg)
            err = np.abs(grad - numeric).max() / max(np.abs(numeric).max(), 1e-3)
            assert err < 1e-7, f"{name}: gradient {i} off by {err:.1e}"
    labels = rng.integers(0, 5, 4)
    _, dlogits = R.softmax_cross_entropy(x2, labels, 0.1)
    numeric = numerical_gradient(lambda: R.softmax_cross_entropy(x2, labels, 0.1)[0], x2)
    assert np.abs(dlogits - numeric).max() < 1e-8


@pytest.mark.parametrize("kind,hyper", [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.8, nesterov=True)),
    ("adam", dict(lr=0.01, weight_decay=0.1)),
    ("adamw", dict(lr=0.01, weight_decay=0.1)),
])
def test_optimizer_updates_equal_torch(kind, hyper):
    rng = np.random.default_rng(6)
    w0 = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) for _ in range(4)]
    param = torch.nn.Parameter(t(w0))
    torch_opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]([param], **hyper)
    update = {"sgd": R.sgd_update, "adam": R.adam_update, "adamw": R.adamw_update}[kind]
    w, state = w0.copy(), {}
    for g in grads:
        given, snapshot = w, w.copy()
        w, state = update(w, g, state, **hyper)
        np.testing.assert_array_equal(given, snapshot)  # pure: the weights it was given are unchanged
        param.grad = t(g)
        torch_opt.step()
        assert_close(w, param, f"{kind} after a step", tol=1e-12)


def test_reference_layers_keep_the_network_interface():
    rng = np.random.default_rng(7)
    layer = R.Conv2d(2, 3, (3, 2), stride=2, padding=1, dtype=np.float64)
    layer.params["weight"][...] = rng.standard_normal(layer.params["weight"].shape)
    x = rng.standard_normal((2, 2, 6, 5))
    out = layer.forward(x)
    dx = layer.backward(np.ones_like(out))
    assert dx.shape == x.shape and set(layer.grads) == {"weight", "bias"}
    bn = R.BatchNorm2d(3, dtype=np.float64)
    running = bn.buffers["running_mean"]
    bn.forward(out)
    assert bn.buffers["running_mean"] is running and running.any()  # updated in place
    assert int(bn.buffers["num_batches_tracked"]) == 1
    pool, relu = R.MaxPool2d(2, ceil_mode=True), R.ReLU()
    pool.forward(relu.forward(out))
    assert pool.kinks().shape == (2, 3, 2, 2) and relu.kinks().dtype == bool


def test_the_reference_imports_only_numpy_math_and_typing():
    tree = ast.parse(inspect.getsource(R))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"__future__", "math", "typing", "numpy"}, imported


def test_max_pooling_ties_route_the_gradient_to_the_first_maximum_as_torch():
    x = np.array([[[[1.0, 1.0, 0.0], [1.0, 1.0, 2.0], [2.0, 0.0, 2.0]]]])
    for args in [(2, 1, 0, 1, False), (2, 2, 1, 1, True), (3, 1, 1, 1, False)]:
        out, cache = R.maxpool2d_forward(x, *args)
        xt = t(x, True)
        torch.nn.functional.max_pool2d(xt, *args[:4], ceil_mode=args[4]).backward(t(np.arange(1.0, out.size + 1).reshape(out.shape)))
        assert_close(R.maxpool2d_backward(np.arange(1.0, out.size + 1).reshape(out.shape), cache), xt.grad, f"ties {args}")
