"""The compiled max pooling (nn/compiled.py) against the NumPy reference in MaxPool2d.backward:
bit-identical gradients, ties and NaN included; cached machine code; NumPy without Numba."""

import os
import subprocess
import sys

import numpy as np
import pytest

from mlp_cli.nn import compiled_kernels
from mlp_cli.nn.execution import Execution
from mlp_cli.nn.layers import BatchNorm1d, BatchNorm2d, MaxPool2d

pytestmark = pytest.mark.skipif(compiled_kernels() is None, reason="Numba is not installed")


def channels_last(shape, values):
    """An NCHW view of channels-last memory, the layout the engine's layers pass on."""
    n, c, h, w = shape
    return np.ascontiguousarray(values.reshape(n, c, h, w).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def pool_gradients(x, dout, use_compiled):
    pool = MaxPool2d(2, execution=Execution(compiled=use_compiled))
    out = pool.forward(x)
    dx = pool.backward(dout)
    return out, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 6, 28, 28), (3, 1, 2, 2), (4, 32, 8, 6), (130, 7, 4, 10)])
def test_compiled_pooling_equals_the_numpy_reference(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    # Rounded values make ties inside windows common, and all-equal windows (the first input takes all).
    x = channels_last(shape, np.round(rng.standard_normal(shape) * 1.5).astype(dtype))
    n, c, h, w = shape
    dout = channels_last((n, c, h // 2, w // 2), rng.standard_normal((n, c, h // 2, w // 2)).astype(dtype))
    out_c, dx_c = pool_gradients(x, dout, True)
    out_r, dx_r = pool_gradients(x, dout, False)
    assert np.array_equal(out_c, out_r) and np.array_equal(np.signbit(out_c), np.signbit(out_r))
    assert dx_c.dtype == dx_r.dtype == dtype
    assert np.array_equal(dx_c, dx_r)
    # Every window routes its whole gradient to exactly one input.
    assert np.count_nonzero(dx_c) == np.count_nonzero(dout)
    assert np.allclose(dx_c.reshape(n, c, h // 2, 2, w // 2, 2).sum(axis=(3, 5)), dout)


def test_signed_zeros_and_nan_give_the_reference_maxima():
    x = np.array([[[[0.0, -0.0], [-0.0, 0.0]]], [[[-0.0, 0.0], [0.0, -0.0]]], [[[-0.0, -0.0], [-1.0, -0.0]]],
                  [[[1.0, np.nan], [2.0, 3.0]]], [[[np.nan, 1.0], [2.0, 3.0]]]])
    outs = [MaxPool2d(2), MaxPool2d(2, execution=Execution(compiled=False))]
    out_c, out_r = (p.forward(x).ravel() for p in outs)
    assert np.array_equal(out_c, out_r, equal_nan=True)
    assert np.signbit(out_c).tolist() == np.signbit(out_r).tolist()


def test_ties_go_to_the_first_input_in_row_major_order_and_nan_routes_nowhere():
    x = np.array([[[[1.0, 1.0], [1.0, 1.0]]],      # all equal: the top-left one
                  [[[0.0, 2.0], [2.0, 2.0]]],      # the top-right one
                  [[[-3.0, -5.0], [-1.0, -1.0]]],  # bottom-left
                  [[[0.0, np.nan], [4.0, 1.0]]]])  # a NaN maximum equals nothing
    dout = np.full((4, 1, 1, 1), 7.0)
    for use_compiled in (True, False):
        _, dx = pool_gradients(x, dout, use_compiled)
        assert dx[0, 0].tolist() == [[7, 0], [0, 0]]
        assert dx[1, 0].tolist() == [[0, 7], [0, 0]]
        assert dx[2, 0].tolist() == [[0, 0], [7, 0]]
        assert dx[3, 0].tolist() == [[0, 0], [0, 0]]


def test_other_pool_geometries_keep_the_numpy_path():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 7))  # odd size: no 2x2 tiling
    pool = MaxPool2d(2)
    pool.forward(x)
    assert not pool._compiled_applies(7, 7)
    assert MaxPool2d(3, 2)._compiled_applies(8, 8) is False
    assert MaxPool2d(2)._compiled_applies(8, 8) is True


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


KERNEL_CALLS = (
    "import numpy as np; from mlp_cli.nn.layers import MaxPool2d; from mlp_cli.nn import compiled\n"
    "pool = MaxPool2d(2); pool.forward(np.zeros((1, 3, 4, 4), np.float32)); pool.backward(np.ones((1, 3, 2, 2), np.float32))\n"
    "stats = [k.stats for k in (compiled._maxpool2x2_forward, compiled._maxpool2x2_backward)]\n"
    "print(sum(sum(s.cache_hits.values()) for s in stats), sum(sum(s.cache_misses.values()) for s in stats))\n"
)


def test_machine_code_is_cached_so_a_second_run_does_not_compile(tmp_path):
    first = run_python(KERNEL_CALLS, NUMBA_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["0", "2"]  # both kernels compiled...
    assert len([p for p in tmp_path.rglob("*.nbi")]) == 2  # ...and written to the cache
    for _ in range(2):
        again = run_python(KERNEL_CALLS, NUMBA_CACHE_DIR=str(tmp_path))
        assert again.returncode == 0, again.stderr
        assert again.stdout.split() == ["2", "0"]  # loaded, not compiled


def test_without_numba_the_layers_run_the_numpy_reference_and_importing_them_does_not_load_numba():
    code = (
        "import sys\n"
        "import mlp_cli.nn.layers, mlp_cli.nn.model\n"
        "assert 'numba' not in sys.modules, 'numba imported with the layers'\n"
        "sys.modules['numba'] = None\n"  # as if not installed
        "import numpy as np\n"
        "from mlp_cli.nn import compiled_kernels\n"
        "from mlp_cli.nn.layers import MaxPool2d\n"
        "assert compiled_kernels() is None\n"
        "p = MaxPool2d(2); p.forward(np.arange(16.0).reshape(1, 1, 4, 4))\n"
        "print(p.backward(np.ones((1, 1, 2, 2))).ravel().tolist())\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == str([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0] + [0.0] * 5 + [1.0, 0.0, 1.0])


def flat_network(dtype, rng):
    """Two parameters and their gradients as consecutive views of one buffer each, as model.build lays them out."""
    params_flat, grads_flat = rng.standard_normal(50).astype(dtype), np.zeros(50, dtype)
    params = {"0.weight": params_flat[:40].reshape(5, 8), "0.bias": params_flat[40:]}
    grads = {"0.weight": grads_flat[:40].reshape(5, 8), "0.bias": grads_flat[40:]}
    return params, grads, grads_flat


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov,weight_decay", [(False, 0.0), (False, 1e-3), (True, 5e-4), (True, 0.0)])
def test_compiled_sgd_step_equals_the_numpy_reference(dtype, nesterov, weight_decay, monkeypatch):
    from mlp_cli.nn import optim

    results = []
    for use_compiled in (True, False):
        if not use_compiled:
            monkeypatch.setattr(optim, "compiled_kernels", lambda: None)
        rng = np.random.default_rng(7)
        params, grads, grads_flat = flat_network(dtype, rng)
        opt = optim.make_optimizer("sgd", lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay)
        for step in range(4):  # the first step creates the momentum buffer (NumPy); the rest update it
            grads_flat[:] = rng.standard_normal(50)
            opt.step(params, grads, lr=0.05 * 0.7 ** step)
        results.append((params, opt.state_dict()))
    (p_c, s_c), (p_r, s_r) = results
    assert all(p_c[k].dtype == dtype and np.array_equal(p_c[k], p_r[k]) for k in p_r)
    assert s_c.keys() == s_r.keys() and all(np.array_equal(s_c[k], s_r[k]) for k in s_r)
    assert not np.array_equal(p_c["0.weight"], flat_network(dtype, np.random.default_rng(7))[0]["0.weight"])


def test_warm_up_loads_every_kernel_for_the_dtype():
    """train.fit warms the kernels up before the first epoch, so that no epoch's time carries their
    loading (a fresh process: in this one other tests have called them already)."""
    code = ("import numpy as np; from mlp_cli.nn import compiled, warm_up_compiled\n"
            "kernels = [compiled._maxpool2x2_forward, compiled._maxpool2x2_backward, compiled._sgd_momentum,\n"
            "           compiled._bn_sums, compiled.batchnorm_normalize, compiled.batchnorm_backward_sums,\n"
            "           compiled.batchnorm_backward_dx]\n"
            "before = sum(len(k.signatures) for k in kernels)\n"
            "warm_up_compiled(np.float64)\n"
            "print(before, *sorted({str(a.dtype) for k in kernels for s in k.signatures for a in s\n"
            "                       if str(getattr(a, 'dtype', '')).startswith('float')}), "
            "all(len(k.signatures) == 1 for k in kernels))\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "float64", "True"]


def test_a_read_only_install_with_no_writable_cache_dir_still_runs_the_kernels(tmp_path):
    """Numba refuses cache=True where it can write no cache (beside the code, in the home's cache
    or NUMBA_CACHE_DIR); the kernels then cache in the temporary directory instead of failing.
    Read-only bind mounts in a private mount namespace make that case (root only: skipped elsewhere)."""
    import shutil

    import mlp_cli

    package = os.path.dirname(mlp_cli.__file__)
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    code = ("import numpy as np; from mlp_cli.nn import compiled_kernels; k = compiled_kernels(); "
            "k.warm_up(np.float32); print(k._maxpool2x2_forward.stats.cache_path)")
    script = (f"set -e; for d in {package} {home}; do mount --bind $d $d; mount -o remount,ro,bind $d $d; done; "
              f"exec {sys.executable} -c '{code}'")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    result = subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, timeout=300,
                            env={**env, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "TMPDIR": str(tmp)})
    if result.returncode != 0 and ("mount" in result.stderr or "unshare" in result.stderr):
        pytest.skip(f"read-only bind mounts not allowed here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(tmp / "mlp-cli-numba-cache"))


def batchnorm_pass(cls, x, dout, use_compiled, steps=2, threads=1):
    """Output, input gradient, parameter gradients and running statistics after `steps`
    training steps of a batch norm layer with random weights, then an eval-mode output."""
    layer = cls(x.shape[1], dtype=x.dtype, execution=Execution(compiled=use_compiled, threads=threads))
    rng = np.random.default_rng(5)
    layer.params["weight"][...] = rng.uniform(0.5, 2, x.shape[1])
    layer.params["bias"][...] = rng.standard_normal(x.shape[1])
    for _ in range(steps):
        out = np.array(layer.forward(x))
        assert (layer.mean is not None) == use_compiled  # the path asked for ran
        dx = np.array(layer.backward(dout))
    layer.training = False
    return [out, dx, *layer.grads.values(), *layer.buffers.values(), np.array(layer.forward(x))]


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("cls,shape", [(BatchNorm2d, (6, 32, 14, 14)), (BatchNorm2d, (3, 5, 3, 7)),
                                       (BatchNorm2d, (130, 3, 2, 2)), (BatchNorm1d, (64, 100)), (BatchNorm1d, (2, 1))])
def test_compiled_batchnorm_equals_the_numpy_reference(cls, shape, dtype, tol):
    """Same outputs, gradients and running statistics to rounding (the kernels sum in float64),
    on activations whose mean is far from zero (where a one-pass variance would lose digits)."""
    rng = np.random.default_rng(sum(shape))
    layout = channels_last if cls is BatchNorm2d else (lambda shape, values: values)
    x = layout(shape, (rng.standard_normal(shape) * 3 + 40).astype(dtype))
    dout = layout(shape, rng.standard_normal(shape).astype(dtype))
    ref, got = batchnorm_pass(cls, x, dout, False), batchnorm_pass(cls, x, dout, True)
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype and g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol * max(1.0, np.abs(r).max()))


def test_compiled_batchnorm_runs_over_batch_ranges_on_several_threads():
    """The sums of each thread's rows are added in range order: 1, 2 and 3 threads agree."""
    rng = np.random.default_rng(0)
    x = channels_last((64, 16, 12, 12), rng.standard_normal((64, 16, 12, 12)).astype(np.float32))
    dout = channels_last(x.shape, rng.standard_normal(x.shape).astype(np.float32))
    results = []
    for threads in (1, 2, 3):
        results.append(batchnorm_pass(BatchNorm2d, x, dout, True, threads=threads))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
