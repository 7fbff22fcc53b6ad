"""Linear split over threads: by ranges of output features (forward, weight and bias gradients)
and of input features (input gradient), the same results as on one thread."""

import numpy as np
import pytest

from mlp_cli.nn import layers as L
from mlp_cli.nn import parallel
from mlp_cli.nn.execution import Execution


def step(x, dout, needs_input_grad=True, threads=1):
    layer = L.Linear(x.shape[1], dout.shape[1], dtype=np.float64, execution=Execution(threads=threads))
    rng = np.random.default_rng(5)
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    layer.needs_input_grad = needs_input_grad
    out = layer.forward(x).copy()
    dx = layer.backward(dout)
    return out, None if dx is None else dx.copy(), {k: v.copy() for k, v in layer.grads.items()}


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("needs_input_grad", [True, False])
def test_linear_split_over_threads_equals_one_thread(threads, needs_input_grad, monkeypatch):
    rng = np.random.default_rng(threads)
    x, dout = rng.standard_normal((7, 20)), rng.standard_normal((7, 13))
    ref = step(x, dout, needs_input_grad)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_SIZE", 1)  # split even these small products
    with parallel.single_threaded_blas():
        got = step(x, dout, needs_input_grad, threads)
    assert (got[1] is None) == (not needs_input_grad)
    pairs = [(ref[0], got[0])] + [(ref[2][k], got[2][k]) for k in ("weight", "bias")]
    if needs_input_grad:
        pairs.append((ref[1], got[1]))
    for a, b in pairs:
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-12 * max(np.abs(a).max(), 1.0)
    # the layer's own gradient arrays are written in place from the second step on
    layer = L.Linear(20, 13, dtype=np.float64)
    layer.forward(x), layer.backward(dout)
    weight_grad = layer.grads["weight"]
    layer.forward(x), layer.backward(2 * dout)
    assert layer.grads["weight"] is weight_grad and np.allclose(weight_grad, 2 * (dout.T @ x))
