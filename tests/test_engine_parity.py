"""The fast engine (layers.py, conv/, compiled.py) proven equal to the reference (reference.py).

Every layer type on random shapes (odd sizes; the strides, paddings, dilations and ceil modes the
config allows), every fast path (each convolution algorithm, compiled kernels on and off, a first
layer that skips its input gradient): forward and every gradient within 1e-10 (float64) and 1e-5
(float32) of the reference, relative to the reference tensor's largest magnitude. Then one whole
training step of every shipped config: logits, loss, every gradient and the update.
"""

from pathlib import Path

import numpy as np
import pytest

from mlp_cli import config, shapes
from mlp_cli.nn import layers as L
from mlp_cli.nn import reference as R
from mlp_cli.nn.execution import Execution
from mlp_cli.nn.losses import loss_function
from mlp_cli.nn.optim import Optimizer
from mlp_cli.train import build_network, check_network

ROOT = Path(__file__).resolve().parents[1]
TOL = {np.float64: 1e-10, np.float32: 1e-5}
FAST_PATHS = [Execution(conv_method=m, compiled=c) for m in ("auto", "im2col", "band", "dft") for c in (True, False)]


def error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max(initial=0.0) / max(np.abs(ref).max(initial=0.0), 1e-30))


def channels_last(a: np.ndarray) -> np.ndarray:
    """The NCHW view of channels-last memory that layers pass on (a copy of a)."""
    if a.ndim != 4:
        return a.copy()
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def compare_layer(kind, spec, x, execution, dtype, training=True, needs_input_grad=True, seed=0):
    """Forward and backward of the fast and the reference layer with the same parameters and input."""
    if kind in ("Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d"):
        spec = {**spec, "dtype": dtype}
    fast, ref = getattr(L, kind)(**spec, execution=execution), getattr(R, kind)(**spec)
    rng = np.random.default_rng(seed)
    for name, p in fast.params.items():
        p[...] = rng.uniform(0.5, 1.5, p.shape) if kind.startswith("BatchNorm") and name == "weight" else \
            rng.standard_normal(p.shape)
        ref.params[name][...] = p
    for name, b in fast.buffers.items():
        if b.ndim:
            b[...] = rng.uniform(0.5, 2, b.shape) if name == "running_var" else rng.standard_normal(b.shape)
            ref.buffers[name][...] = b
    if kind == "Dropout":
        fast.rng, ref.rng = np.random.default_rng(seed), np.random.default_rng(seed)
    fast.training = ref.training = training
    fast.needs_input_grad = needs_input_grad
    x = x.astype(dtype)
    out_f, out_r = fast.forward(channels_last(x)), ref.forward(x.copy())
    dout = rng.standard_normal(out_r.shape).astype(dtype)
    dx_f, dx_r = fast.backward(channels_last(dout)), ref.backward(dout.copy())
    pairs = {"output": (out_f, out_r)}
    if needs_input_grad:
        pairs["input gradient"] = (dx_f, dx_r)
    pairs.update({f"grad {k}": (fast.grads[k], ref.grads[k]) for k in ref.params})
    pairs.update({f"buffer {k}": (fast.buffers[k], ref.buffers[k]) for k in ref.buffers})
    for what, (a, b) in pairs.items():
        assert a.dtype == b.dtype == np.dtype(dtype) or what.startswith("buffer"), what
        assert error(a, b) <= TOL[dtype], f"{kind} {spec} {x.shape} {execution}: {what} {error(a, b):.1e}"
    return fast


def random_conv(rng):
    C, F = int(rng.integers(1, 6)), int(rng.integers(1, 7))
    k = tuple(int(v) for v in rng.integers(1, 6, 2))
    s = tuple(int(v) for v in rng.integers(1, 4, 2))
    p = tuple(int(v) for v in rng.integers(0, 4, 2))
    d = tuple(int(v) for v in rng.integers(1, 3, 2))
    H, W = (int(rng.integers(max(1, d[i] * (k[i] - 1) + 1 - 2 * p[i]), 14)) for i in range(2))
    spec = dict(in_channels=C, out_channels=F, kernel_size=k, stride=s, padding=p, dilation=d,
                bias=bool(rng.integers(0, 2)))
    return spec, (int(rng.integers(1, 6)), C, H, W)


def random_pool(rng, kind):
    """A pooling layer PyTorch accepts: padding at most half the kernel, at least one output."""
    k = tuple(int(v) for v in rng.integers(1, 5, 2))
    s = tuple(int(v) for v in rng.integers(1, 4, 2))
    p = tuple(int(rng.integers(0, ki // 2 + 1)) for ki in k)
    d = tuple(int(v) for v in rng.integers(1, 3, 2)) if kind == "MaxPool2d" else (1, 1)
    H, W = (int(rng.integers(max(1, d[i] * (k[i] - 1) + 1 - 2 * p[i]), 14)) for i in range(2))
    spec = dict(kernel_size=k, stride=s, padding=p, ceil_mode=bool(rng.integers(0, 2)))
    if kind == "MaxPool2d":
        spec["dilation"] = d
    return spec, (int(rng.integers(1, 5)), int(rng.integers(1, 5)), H, W)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(12))
def test_conv2d_every_algorithm_equals_the_reference(seed, dtype):
    rng = np.random.default_rng(seed)
    spec, shape = random_conv(rng)
    if seed % 3 == 0:
        spec.update(stride=1)  # the DFT runs at stride 1 only: make sure it runs often
    x = rng.standard_normal(shape)
    for execution in FAST_PATHS[::2]:
        for first in (False, True):  # a first layer skips its input gradient (and may take another algorithm)
            compare_layer("Conv2d", spec, x, execution, dtype, needs_input_grad=not first, seed=seed)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["MaxPool2d", "AvgPool2d"])
@pytest.mark.parametrize("seed", range(10))
def test_pooling_equals_the_reference(kind, seed, dtype):
    rng = np.random.default_rng(100 + seed)
    spec, shape = random_pool(rng, kind)
    compare_layer(kind, spec, rng.standard_normal(shape), Execution(), dtype, seed=seed)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("compiled", [True, False])
def test_max_pooling_2x2_compiled_and_numpy_equal_the_reference(compiled, dtype):
    rng = np.random.default_rng(3)
    for shape in [(3, 4, 8, 6), (2, 3, 5, 7)]:  # even sizes take the compiled kernel; odd ones not
        compare_layer("MaxPool2d", dict(kernel_size=2, stride=2), rng.standard_normal(shape),
                      Execution(compiled=compiled), dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("kind,shape", [("BatchNorm1d", (7, 5)), ("BatchNorm2d", (3, 4, 5, 7)),
                                        ("BatchNorm2d", (9, 16, 6, 6))])
def test_batchnorm_equals_the_reference(kind, shape, compiled, training, dtype):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 2 + 3  # a mean away from zero
    compare_layer(kind, dict(num_features=shape[1], momentum=0.2), x, Execution(compiled=compiled), dtype,
                  training=training)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["Linear", "ReLU", "Tanh", "Sigmoid", "Flatten", "Dropout"])
def test_dense_and_elementwise_layers_equal_the_reference(kind, dtype):
    rng = np.random.default_rng(len(kind))
    for shape in [(5, 13), (3, 2, 5, 7)]:
        x = rng.standard_normal(shape) * 3
        if kind == "Linear":
            x = x.reshape(len(x), -1)
            spec = dict(in_features=x.shape[1], out_features=11, bias=shape[0] == 5)
        else:
            spec = dict(p=0.3) if kind == "Dropout" else {}
        for threads in (1, 3):
            compare_layer(kind, spec, x, Execution(threads=threads), dtype)


# ----------------------------------------------------------------------------- whole training steps
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))


def network(cfg, arch, execution, dtype):
    model = build_network(cfg, arch, dtype=dtype, execution=execution).train()
    model.skip_input_gradient()  # as training sets it up
    return model, Optimizer(cfg.optim, execution)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("name", CONFIGS)
def test_a_training_step_of_every_shipped_config_equals_the_reference(name, dtype, tol):
    """Two steps (the second updates the momentum buffers the first made), each compared whole:
    logits, loss, every gradient, and the parameters and buffers after the update."""
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    input_shape, infos = check_network(cfg, batch_size=4)
    arch = shapes.architecture(infos)
    nets = {e: network(cfg, arch, Execution(engine=e, threads=2), dtype) for e in ("fast", "reference")}
    rng = np.random.default_rng(0)
    for step in range(2):
        x = rng.standard_normal((4, *input_shape)).astype(dtype)
        y = rng.integers(0, infos[-1].output_shape[0], 4)
        seen = {}
        for engine, (model, optimizer) in nets.items():
            model.set_rng(np.random.default_rng([step, 2]))
            logits = model.forward(channels_last(x))
            loss, dlogits = loss_function(model.execution)(logits, y, cfg.train.label_smoothing)
            model.backward(dlogits)
            grads = {k: g.copy() for k, g in model.named_grads().items()}
            optimizer.step(model.named_params(), model.named_grads(), cfg.optim.lr)
            seen[engine] = logits, loss, grads, {k: v.copy() for k, v in model.state_dict().items()}
        (logits_f, loss_f, grads_f, state_f), (logits_r, loss_r, grads_r, state_r) = seen["fast"], seen["reference"]
        assert error(logits_f, logits_r) <= tol, f"step {step} logits"
        assert abs(loss_f - loss_r) <= tol * abs(loss_r), f"step {step} loss"
        assert grads_f.keys() == grads_r.keys()
        scale = max(np.abs(g).max() for g in grads_r.values())
        for k in grads_r:
            size = np.abs(grads_r[k]).max()
            # A gradient that is zero in exact arithmetic (a conv bias before batch norm) is rounding
            # noise on both sides: it is compared against the network's gradients instead.
            bound = tol * (size if size > 1e-3 * scale else scale)
            assert np.abs(grads_f[k] - grads_r[k]).max() <= bound, f"step {step} grad {k}"
        for k in state_r:
            assert error(state_f[k], state_r[k]) <= tol, f"step {step} {k} after the update"


# ----------------------------------------------------------------------------- whole runs
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from test_thread_determinism import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.mark.parametrize("name", ["mnist_mlp", "mnist_lenet5", "cifar10_cnn_improved", "cifar10_cnn_best"])
def test_train_on_the_reference_engine_ends_where_the_fast_one_does(name, images, tmp_path):
    """`mlp-cli train --engine reference` against the fast engine, the same config and data (a few
    steps): every weight within 2e-4 of its tensor's largest magnitude, and the engine recorded."""
    import yaml

    from mlp_cli import checkpoint
    from test_thread_determinism import train

    weights = {}
    for engine in ("fast", "reference"):
        train(name, tmp_path / engine, images, "--engine", engine, env={"MLP_CLI_THREADS": "2"})
        weights[engine] = checkpoint.load(tmp_path / engine / "last.safetensors").state
        history = yaml.safe_load((tmp_path / engine / "history.yaml").read_text())
        assert history[0]["engine"] == engine and history[0]["threads"] == 2
    errors = {k: error(weights["fast"][k], ref) for k, ref in weights["reference"].items() if ref.dtype.kind == "f"}
    print(f"{name}: largest weight difference {max(errors.values()):.1e} of its tensor's largest magnitude")
    assert max(errors.values()) <= 2e-4, errors


def test_circles_trains_on_the_reference_engine_and_eval_takes_the_engine_too(tmp_path):
    import json

    from click.testing import CliRunner

    from mlp_cli.cli import main

    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--config", str(ROOT / "configs" / "circles_mlp.yaml"), "--out", str(out),
                                       "--quiet", "--engine", "reference"])
    assert result.exit_code == 0, result.output
    test = json.loads((out / "test_metrics.json").read_text())
    assert test["accuracy"] >= 0.94
    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(out / "best.safetensors"), "--json",
                                       "--engine", "reference"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == test["accuracy"]


def test_gradcheck_on_the_reference_engine_passes():
    from click.testing import CliRunner

    from mlp_cli.cli import main

    result = CliRunner().invoke(main, ["gradcheck", "--config", str(ROOT / "configs" / "mnist_lenet5.yaml"), "--engine",
                                       "reference", "--samples", "3"])
    assert result.exit_code == 0, result.output
    assert "ok: all" in result.output


def test_evaluation_takes_the_loss_of_the_network_s_engine(monkeypatch):
    """A reference run's validation and test losses come from reference.py, a fast run's from losses.py."""
    from mlp_cli.data.split import Split
    from mlp_cli.evaluate import evaluate
    from mlp_cli.nn import losses

    calls = []
    for module in (R, losses):
        real = module.softmax_cross_entropy
        monkeypatch.setattr(module, "softmax_cross_entropy",
                            lambda *a, _real=real, _m=module.__name__: calls.append(_m) or _real(*a))
    cfg = config.load(ROOT / "configs" / "circles_mlp.yaml")
    rng = np.random.default_rng(0)
    split = Split(rng.standard_normal((20, 2)).astype(np.float32), rng.integers(0, 2, 20), ["0", "1"])
    for engine in ("reference", "fast"):
        calls.clear()
        model = build_network(cfg, shapes.architecture(check_network(cfg)[1]), execution=Execution(engine=engine))
        result = evaluate(model, split, batch_size=8, normalization=None, augment=cfg.data.augment)
        assert np.isfinite(result["loss"])
        assert calls == [R.__name__ if engine == "reference" else losses.__name__], (engine, calls)
