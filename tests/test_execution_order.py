"""Sequential runs a ReLU after the max pooling that follows it: the results must not change."""

import numpy as np

from mlp_cli.nn.model import build

ARCH = [
    {"type": "Conv2d", "in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1},
    {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2, "stride": 2},
    {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    {"type": "Flatten"}, {"type": "Linear", "in_features": 27, "out_features": 4}, {"type": "ReLU"},
    {"type": "Linear", "in_features": 4, "out_features": 3},
]


def test_relu_runs_after_the_pooling_that_follows_it():
    assert build(ARCH).order == [0, 2, 1, 4, 3, 5, 6, 7, 8]


def test_swapped_order_gives_identical_outputs_and_gradients():
    rng = np.random.default_rng(0)
    # Rounded inputs give ties and windows that are all negative, the cases where the order could matter.
    x = np.round(rng.standard_normal((5, 2, 8, 8)) * 2).astype(np.float64)
    dout = rng.standard_normal((5, 3))
    fast = build(ARCH, dtype=np.float64)
    plain = build(ARCH, dtype=np.float64)
    plain.order = list(range(len(ARCH)))
    results = []
    for net in (fast, plain):
        out = net.forward(x)
        dx = net.backward(dout)
        results.append((out, dx, net.named_grads()))
    (out_a, dx_a, g_a), (out_b, dx_b, g_b) = results
    assert np.array_equal(out_a, out_b)
    assert np.array_equal(dx_a, dx_b)
    assert g_a.keys() == g_b.keys() and all(np.array_equal(g_a[k], g_b[k]) for k in g_a)
    assert np.count_nonzero(dx_a) > 0


TANH_ARCH = [
    {"type": "Conv2d", "in_channels": 1, "out_channels": 3, "kernel_size": 3, "padding": 1},
    {"type": "Tanh"}, {"type": "MaxPool2d", "kernel_size": 2, "stride": 2},
    {"type": "Flatten"}, {"type": "Linear", "in_features": 48, "out_features": 3},
]


def test_tanh_runs_after_the_pooling_that_follows_it():
    """tanh is increasing: pooling first gives the same outputs and, without ties that tanh's
    rounding makes (none in float64 below |x| ~ 19), the same gradients."""
    net = build(TANH_ARCH, dtype=np.float64)
    assert net.order == [0, 2, 1, 3, 4]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 1, 8, 8)) * 3
    x[0, 0, :2, :2] = 0.5  # a tie in x: both orders route to the first element
    dout = rng.standard_normal((4, 3))
    plain = build(TANH_ARCH, dtype=np.float64)
    plain.order = list(range(len(TANH_ARCH)))
    results = [(n.forward(x), n.backward(dout), n.named_grads()) for n in (net, plain)]
    (out_a, dx_a, g_a), (out_b, dx_b, g_b) = results
    assert np.array_equal(out_a, out_b)
    assert np.allclose(dx_a, dx_b, rtol=1e-13, atol=0)
    assert np.array_equal(dx_a != 0, dx_b != 0)
    assert all(np.allclose(g_a[k], g_b[k], rtol=1e-12, atol=1e-15) for k in g_a)
