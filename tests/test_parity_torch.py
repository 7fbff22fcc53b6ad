"""Parity with PyTorch autograd in float32: forward outputs, every gradient, running statistics."""

import numpy as np
import pytest
import torch

from mlp_cli.interop import torch_sequential
from mlp_cli.nn.execution import Execution
from mlp_cli.nn.losses import softmax_cross_entropy
from mlp_cli.nn.model import build

torch.set_num_threads(1)
TOL = 1e-4


def close(ours, theirs, what):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs torch {theirs.shape}"
    scale = max(np.abs(theirs).max(initial=0.0), 1e-12)
    err = np.abs(ours - theirs).max(initial=0.0) / scale
    assert err <= TOL, f"{what}: error {err:.2e} relative to scale {scale:.2e}"


def run_both(arch, x, labels, steps=1, train=True, smoothing=0.0, execution=Execution()):
    """Build both networks with the same weights; compare logits, loss and all gradients."""
    ours = build(arch, rng=np.random.default_rng(0), execution=execution)
    theirs = torch_sequential(arch, ours.state_dict())
    ours.train() if train else ours.eval()
    theirs.train(train)
    for _ in range(steps):
        logits = ours.forward(x)
        loss, dlogits = softmax_cross_entropy(logits, labels, smoothing)
        dx = ours.backward(dlogits)
        xt = torch.tensor(x, requires_grad=True)
        tlogits = theirs(xt)
        tloss = torch.nn.functional.cross_entropy(tlogits, torch.as_tensor(labels), label_smoothing=smoothing)
        theirs.zero_grad()
        tloss.backward()
        close(logits, tlogits, "logits")
        assert loss == pytest.approx(tloss.item(), rel=TOL)
        close(dx, xt.grad, "input gradient")
        tparams = dict(theirs.named_parameters())
        net_scale = max(p.grad.abs().max().item() for p in tparams.values())
        for name, grad in ours.named_grads().items():
            tgrad = tparams[name].grad
            if tgrad.abs().max().item() < 1e-5 * net_scale:
                # Zero in exact arithmetic (a conv bias followed by batch norm): both sides
                # hold only rounding noise, so both must be tiny against the net's gradients.
                assert np.abs(grad).max() < 1e-5 * net_scale, f"grad {name} should vanish"
                continue
            close(grad, tgrad, f"grad {name}")
    for name, value in theirs.state_dict().items():
        close(ours.state_dict()[name], value, f"state {name}")
    return ours, theirs


def random_case(rng, kind):
    """One random layer (in a tiny net ending in a Linear so the loss applies) and its input."""
    N, C = int(rng.integers(2, 5)), int(rng.integers(1, 4))
    H, W = int(rng.integers(5, 12)), int(rng.integers(5, 12))
    k = int(rng.integers(1, 4))
    s, p, d = int(rng.integers(1, 3)), int(rng.integers(0, k // 2 + 1)), int(rng.integers(1, 3))
    if kind == "Conv2d":
        F = int(rng.integers(1, 5))
        layer = {"type": "Conv2d", "in_channels": C, "out_channels": F, "kernel_size": k, "stride": s,
                 "padding": p, "dilation": d, "bias": bool(rng.integers(0, 2))}
        oh, ow = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n in (H, W)]
        out_c = F
    else:
        ceil = bool(rng.integers(0, 2))
        layer = {"type": kind, "kernel_size": k, "stride": s, "padding": p, "ceil_mode": ceil}
        if kind == "MaxPool2d":
            layer["dilation"] = d
        else:
            d = 1
        tp = torch.nn.MaxPool2d if kind == "MaxPool2d" else torch.nn.AvgPool2d
        spec = dict(layer)
        spec.pop("type")
        _, out_c, oh, ow = tp(**spec)(torch.zeros(1, C, H, W)).shape
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    arch = [layer, {"type": "Flatten"}, {"type": "Linear", "in_features": out_c * oh * ow, "out_features": 3}]
    return arch, x, rng.integers(0, 3, N)


@pytest.mark.parametrize("kind", ["Conv2d", "MaxPool2d", "AvgPool2d"])
@pytest.mark.parametrize("seed", range(12))
def test_random_spatial_layers(kind, seed):
    rng = np.random.default_rng(seed)
    arch, x, labels = random_case(rng, kind)
    run_both(arch, x, labels)


@pytest.mark.parametrize("act", ["ReLU", "Tanh", "Sigmoid"])
def test_activations_and_linear(act):
    rng = np.random.default_rng(1)
    arch = [{"type": "Linear", "in_features": 13, "out_features": 9}, {"type": act},
            {"type": "Dropout", "p": 0.0}, {"type": "Linear", "in_features": 9, "out_features": 4}]
    run_both(arch, rng.standard_normal((7, 13)).astype(np.float32) * 2, rng.integers(0, 4, 7), smoothing=0.1)


def test_batchnorm_running_statistics_after_several_steps():
    rng = np.random.default_rng(2)
    arch = [{"type": "Conv2d", "in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1},
            {"type": "BatchNorm2d", "num_features": 3, "eps": 1e-5, "momentum": 0.1},
            {"type": "ReLU"}, {"type": "Flatten"},
            {"type": "Linear", "in_features": 90, "out_features": 20},
            {"type": "BatchNorm1d", "num_features": 20, "eps": 1e-3, "momentum": 0.3},
            {"type": "Tanh"}, {"type": "Linear", "in_features": 20, "out_features": 4}]
    x = (rng.standard_normal((8, 2, 6, 5)) * 3 + 1).astype(np.float32)
    ours, theirs = run_both(arch, x, rng.integers(0, 4, 8), steps=4)
    assert int(ours.state_dict()["1.num_batches_tracked"]) == 4
    # Eval mode uses the running statistics in both.
    run_eval = build(arch)
    run_eval.load_state_dict(ours.state_dict())
    theirs.eval()
    close(run_eval.eval().forward(x), theirs(torch.tensor(x)), "eval logits")


LENET5 = [
    {"type": "Conv2d", "in_channels": 1, "out_channels": 6, "kernel_size": 5, "padding": 2},
    {"type": "Tanh"}, {"type": "MaxPool2d", "kernel_size": 2, "stride": 2},
    {"type": "Conv2d", "in_channels": 6, "out_channels": 16, "kernel_size": 5},
    {"type": "Tanh"}, {"type": "MaxPool2d", "kernel_size": 2, "stride": 2},
    {"type": "Flatten"},
    {"type": "Linear", "in_features": 400, "out_features": 120}, {"type": "Tanh"},
    {"type": "Linear", "in_features": 120, "out_features": 84}, {"type": "Tanh"},
    {"type": "Linear", "in_features": 84, "out_features": 10},
]

CIFAR_NET = [
    {"type": "Conv2d", "in_channels": 3, "out_channels": 32, "kernel_size": 5, "padding": 2},
    {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2, "stride": 2},
    {"type": "Conv2d", "in_channels": 32, "out_channels": 64, "kernel_size": 5, "padding": 2},
    {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2, "stride": 2},
    {"type": "Conv2d", "in_channels": 64, "out_channels": 64, "kernel_size": 5, "padding": 2},
    {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2, "stride": 2},
    {"type": "Flatten"},
    {"type": "Linear", "in_features": 1024, "out_features": 1000}, {"type": "ReLU"},
    {"type": "Linear", "in_features": 1000, "out_features": 10},
]


def test_lenet5_whole_network():
    rng = np.random.default_rng(3)
    run_both(LENET5, rng.standard_normal((16, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 16))


def test_cifar10_net_whole_network():
    rng = np.random.default_rng(4)
    run_both(CIFAR_NET, rng.standard_normal((8, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 8))


def test_improved_cifar10_net_with_batchnorm_and_ceil_mode():
    arch = []
    for layer in CIFAR_NET:
        arch.append(dict(layer))
        if layer["type"] == "Conv2d":
            arch.append({"type": "BatchNorm2d", "num_features": layer["out_channels"]})
    for layer in arch:
        if layer["type"] == "MaxPool2d":
            layer["ceil_mode"] = True
    rng = np.random.default_rng(5)
    run_both(arch, rng.standard_normal((8, 3, 28, 28)).astype(np.float32), rng.integers(0, 10, 8), steps=2)


# ----------------------------------------------------------------------------- cutout and test-time flips
def torch_cutout(x: torch.Tensor, cy, cx, size: int) -> torch.Tensor:
    """Cutout as DeVries & Taylor's PyTorch code applies it, a mask multiplied in per image, with the
    square [c - size // 2, c - size // 2 + size) clipped at the borders."""
    _, _, h, w = x.shape
    mask = torch.ones_like(x)
    for k in range(len(x)):
        y0, x0 = int(cy[k]) - size // 2, int(cx[k]) - size // 2
        mask[k, :, max(y0, 0):min(y0 + size, h), max(x0, 0):min(x0 + size, w)] = 0
    return x * mask


def centres(rng, b, h, w):
    """The centres our cutout draws from `rng`: rows, then columns, uniform over the pixels."""
    return rng.integers(0, h, b), rng.integers(0, w, b)


@pytest.mark.parametrize("size", [1, 4, 5, 8])
def test_cutout_equals_the_torch_definition(size):
    from mlp_cli.data import cutout

    rng = np.random.default_rng(size)
    x = rng.standard_normal((32, 9, 11, 3)).astype(np.float32).transpose(0, 3, 1, 2)  # the engine's layout
    theirs = torch_cutout(torch.from_numpy(np.ascontiguousarray(x)), *centres(np.random.default_rng(7), 32, 9, 11), size)
    ours = cutout(x.copy(), np.random.default_rng(7), size)
    assert np.array_equal(ours, theirs.numpy())  # exactly (x * 0 may be -0.0 there, equal to our +0.0)
    assert not np.array_equal(ours, x)


def test_test_hflip_equals_torch_flip_averaging():
    from mlp_cli.data import mirror
    from mlp_cli.evaluate import forward

    rng = np.random.default_rng(5)
    arch = [{"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"type": "BatchNorm2d", "num_features": 4}, {"type": "ReLU"},
            {"type": "MaxPool2d", "kernel_size": 2, "stride": 2}, {"type": "Flatten"},
            {"type": "Linear", "in_features": 4 * 4 * 5, "out_features": 6}]
    ours = build(arch, rng=rng).eval()
    theirs = torch_sequential(arch, ours.state_dict()).eval()
    x = rng.standard_normal((10, 8, 10, 3)).astype(np.float32).transpose(0, 3, 1, 2)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    assert np.array_equal(mirror(x), torch.flip(xt, dims=[3]).numpy())
    with torch.no_grad():
        expected = (theirs(xt) + theirs(torch.flip(xt, dims=[3]))) / 2
        plain = theirs(xt)
    close(forward(ours, x, test_hflip=True), expected, "flip-averaged logits")
    assert (expected - plain).abs().max() > 1e-3  # the flip matters for this net
