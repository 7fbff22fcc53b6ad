"""Optimizers and schedules against torch.optim (the reference; imported only here)."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mlp_cli.nn.optim import Optimizer, lr_at, make_optimizer

SHAPES = {"0.weight": (4, 3), "0.bias": (4,), "2.weight": (2, 4, 3, 3), "3.weight": (5,)}

OPTIMIZERS = {
    "sgd": dict(name="sgd", lr=0.1),
    "sgd_momentum": dict(name="sgd", lr=0.1, momentum=0.9),
    "sgd_nesterov": dict(name="sgd", lr=0.1, momentum=0.9, nesterov=True),
    "sgd_weight_decay": dict(name="sgd", lr=0.1, weight_decay=1e-2),
    "sgd_momentum_weight_decay": dict(name="sgd", lr=0.1, momentum=0.8, nesterov=True, weight_decay=5e-3),
    "adam": dict(name="adam", lr=1e-2),
    "adam_weight_decay": dict(name="adam", lr=1e-2, weight_decay=1e-2, betas=(0.8, 0.99), eps=1e-6),
    "adamw": dict(name="adamw", lr=1e-2, weight_decay=0.1),
}


def _torch_optimizer(tensors, name, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
                     betas=(0.9, 0.999), eps=1e-8):
    if name == "sgd":
        return torch.optim.SGD(tensors, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(tensors, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _problem(seed=0, steps=10):
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s) for k, s in SHAPES.items()} for _ in range(steps)]
    return params, grads


def _lrs(steps, base):
    # A varying lr checks that step() really uses the lr it is given.
    return [base * (1 - 0.05 * i) for i in range(steps)]


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_matches_torch(kind):
    hyper = OPTIMIZERS[kind]
    params, grads = _problem()
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    reference = _torch_optimizer(list(tensors.values()), **hyper)
    ours = make_optimizer(**hyper)
    lrs = _lrs(len(grads), hyper["lr"])
    for lr, g in zip(lrs, grads):
        for group in reference.param_groups:
            group["lr"] = lr
        for k, t in tensors.items():
            t.grad = torch.tensor(g[k])
        reference.step()
        ours.step(params, g, lr)
    for k, t in tensors.items():
        assert params[k].dtype == np.float64
        np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=0, atol=1e-6)
        # Same operations in the same dtype: the agreement is far tighter than 1e-6.
        np.testing.assert_allclose(params[k], t.detach().numpy(), rtol=0, atol=1e-12)
    # The state matches torch's too.
    ours_state = ours.state_dict()
    for k, t in tensors.items():
        for key, value in reference.state[t].items():
            if isinstance(value, torch.Tensor):
                np.testing.assert_allclose(np.asarray(ours_state[f"{k}.{key}"], dtype=np.float64),
                                           value.detach().double().numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_resume_is_bit_identical(kind):
    hyper = OPTIMIZERS[kind]
    params, grads = _problem(seed=1)
    lrs = _lrs(len(grads), hyper["lr"])

    straight = {k: v.copy() for k, v in params.items()}
    opt = make_optimizer(**hyper)
    for lr, g in zip(lrs, grads):
        opt.step(straight, g, lr)

    resumed = {k: v.copy() for k, v in params.items()}
    first = make_optimizer(**hyper)
    for lr, g in zip(lrs[:5], grads[:5]):
        first.step(resumed, g, lr)
    saved = first.state_dict()
    saved_copy = {k: v.copy() for k, v in saved.items()}
    second = make_optimizer(**hyper)
    second.load_state_dict(saved)
    for lr, g in zip(lrs[5:], grads[5:]):
        second.step(resumed, g, lr)

    for k in params:
        assert np.array_equal(straight[k], resumed[k]), k
    assert opt.state_dict().keys() == second.state_dict().keys()
    for key, value in opt.state_dict().items():
        assert np.array_equal(value, second.state_dict()[key]), key
    # The snapshot is a copy: later steps must not change what was saved.
    for key, value in saved.items():
        assert np.array_equal(value, saved_copy[key]), key


def _flat_problem(dtype, seed=0, steps=6):
    """Parameters and gradients as consecutive views of one array each (model.build's layout)."""
    params, grads = _problem(seed, steps)
    total = sum(v.size for v in params.values())
    flat_p, flat_g = np.empty(total, dtype), np.empty(total, dtype)
    views_p, views_g, offset = {}, {}, 0
    for k, v in params.items():
        views_p[k] = flat_p[offset:offset + v.size].reshape(v.shape)
        views_p[k][...] = v
        views_g[k] = flat_g[offset:offset + v.size].reshape(v.shape)
        offset += v.size
    return views_p, views_g, [{k: g.astype(dtype) for k, g in step.items()} for step in grads]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", [k for k in OPTIMIZERS if k.startswith("sgd")])
def test_flat_sgd_equals_per_parameter_update_bit_for_bit(kind, dtype):
    """The whole-buffer SGD step (parameters and gradients views of two arrays) gives exactly the
    numbers of the per-parameter loop, including across a state_dict round trip."""
    hyper = OPTIMIZERS[kind]
    flat_p, flat_g, grads = _flat_problem(dtype)
    plain_p = {k: v.copy() for k, v in flat_p.items()}  # separate arrays: the per-parameter loop
    flat, plain = make_optimizer(**hyper), make_optimizer(**hyper)
    for i, (lr, g) in enumerate(zip(_lrs(len(grads), hyper["lr"]), grads)):
        if i == 3:  # resume both from their checkpointed state
            for opt in (flat, plain):
                opt.load_state_dict(opt.state_dict())
        for k in flat_g:
            flat_g[k][...] = g[k]
        flat.step(flat_p, flat_g, lr)
        plain.step(plain_p, g, lr)
        for k in flat_p:
            assert np.array_equal(flat_p[k], plain_p[k]), (i, k)
        a, b = flat.state_dict(), plain.state_dict()
        assert a.keys() == b.keys()
        assert all(a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)
    for k, g in grads[-1].items():  # the gradients stay the loss gradients
        assert np.array_equal(flat_g[k], g)
    if hyper.get("momentum"):  # the whole-buffer path was the one taken
        buffers = [flat.state[k]["momentum_buffer"] for k in flat_p]
        assert buffers[0].base is not None and all(b.base is buffers[0].base for b in buffers)


def test_build_lays_parameters_and_gradients_out_flat():
    """model.build: parameters views of one array, gradients of another, and backward writes into them."""
    from mlp_cli.nn.model import build
    from mlp_cli.nn.optim import _common_buffer

    net = build([{"type": "Linear", "in_features": 5, "out_features": 4, "bias": True}, {"type": "Tanh"},
                 {"type": "Linear", "in_features": 4, "out_features": 3, "bias": True}])
    params, grads = net.named_params(), net.named_grads()
    assert _common_buffer(list(params.values())) is not None
    assert _common_buffer([grads[k] for k in params]) is not None
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    net.backward(np.ones((6, 3), np.float32) + 0 * net.forward(x))
    assert all(net.named_grads()[k] is grads[k] for k in grads)
    assert np.allclose(grads["2.bias"], 6)


def test_state_dict_names_and_types():
    params, grads = _problem(steps=1)
    adam = make_optimizer("adam", lr=1e-3)
    adam.step(params, grads[0], 1e-3)
    d = adam.state_dict()
    assert set(d) == {f"{k}.{s}" for k in SHAPES for s in ("exp_avg", "exp_avg_sq", "step")}
    assert d["0.weight.step"].dtype == np.int64 and d["0.weight.step"] == 1
    assert d["0.weight.exp_avg"].shape == SHAPES["0.weight"]

    sgd = make_optimizer("sgd", lr=0.1, momentum=0.9)
    sgd.step(params, grads[0], 0.1)
    assert set(sgd.state_dict()) == {f"{k}.momentum_buffer" for k in SHAPES}
    assert make_optimizer("sgd", lr=0.1).state_dict() == {}


def test_state_dict_survives_safetensors():
    from safetensors.numpy import load, save

    params, grads = _problem(steps=4)
    straight = {k: v.copy() for k, v in params.items()}
    opt = make_optimizer("adamw", lr=1e-2, weight_decay=0.1)
    for g in grads:
        opt.step(straight, g, 1e-2)
    first = make_optimizer("adamw", lr=1e-2, weight_decay=0.1)
    for g in grads[:2]:
        first.step(params, g, 1e-2)
    second = make_optimizer("adamw", lr=1e-2, weight_decay=0.1)
    second.load_state_dict(load(save(first.state_dict())))
    for g in grads[2:]:
        second.step(params, g, 1e-2)
    for k in params:
        assert np.array_equal(straight[k], params[k])


def test_float32_stays_float32():
    params, grads = _problem(steps=2)
    params = {k: v.astype(np.float32) for k, v in params.items()}
    grads = [{k: v.astype(np.float32) for k, v in g.items()} for g in grads]
    for hyper in OPTIMIZERS.values():
        opt = make_optimizer(**hyper)
        p = {k: v.copy() for k, v in params.items()}
        for g in grads:
            opt.step(p, g, hyper["lr"])
        assert all(v.dtype == np.float32 for v in p.values())
        assert all(v.dtype in (np.float32, np.int64) for v in opt.state_dict().values())


def test_grads_are_not_modified():
    params, grads = _problem(steps=3)
    before = [{k: v.copy() for k, v in g.items()} for g in grads]
    for hyper in OPTIMIZERS.values():
        opt = make_optimizer(**hyper)
        p = {k: v.copy() for k, v in params.items()}
        for g in grads:
            opt.step(p, g, hyper["lr"])
    for g, b in zip(grads, before):
        for k in g:
            assert np.array_equal(g[k], b[k])


def test_optimizer_from_config():
    from mlp_cli.config import Optim

    cfg = Optim(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt = Optimizer(cfg)
    assert (opt.name, opt.base_lr, opt.momentum, opt.nesterov, opt.weight_decay) == ("sgd", 0.05, 0.9, True, 5e-4)


def test_load_state_dict_rejects_foreign_state():
    params, grads = _problem(steps=1)
    adam = make_optimizer("adam", lr=1e-3)
    adam.step(params, grads[0], 1e-3)
    with pytest.raises(ValueError, match="does not belong"):
        make_optimizer("sgd", lr=0.1, momentum=0.9).load_state_dict(adam.state_dict())
    with pytest.raises(ValueError, match="keeps no state"):
        make_optimizer("sgd", lr=0.1).load_state_dict(adam.state_dict())
    partial = {k: v for k, v in adam.state_dict().items() if not k.endswith("exp_avg_sq")}
    with pytest.raises(ValueError, match="lacks exp_avg_sq"):
        make_optimizer("adam", lr=1e-3).load_state_dict(partial)
    wrong_shape = adam.state_dict()
    wrong_shape["0.bias.exp_avg"] = np.zeros(7)
    fresh = make_optimizer("adam", lr=1e-3)
    fresh.load_state_dict(wrong_shape)
    with pytest.raises(ValueError, match="shape"):
        fresh.step(params, grads[0], 1e-3)


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="nesterov"):
        make_optimizer("sgd", lr=0.1, nesterov=True)


# ----------------------------------------------------------------------------- schedules
EPOCHS = 20
BASE_LR = 0.1


def _schedule(**kw):
    defaults = dict(name="constant", step_size=10, gamma=0.1, t_max=None, eta_min=0.0,
                    warmup_epochs=0, warmup_start_factor=0.1)
    return SimpleNamespace(**{**defaults, **kw})


SCHEDULES = {
    "constant": _schedule(),
    "step": _schedule(name="step", step_size=4, gamma=0.3),
    "exponential": _schedule(name="exponential", gamma=0.95),
    "cosine": _schedule(name="cosine"),
    "cosine_eta_min": _schedule(name="cosine", eta_min=0.013),
    "cosine_short_t_max": _schedule(name="cosine", t_max=6, eta_min=0.007),
}
SCHEDULES.update({
    f"{k}_warmup": SimpleNamespace(**{**vars(v), "warmup_epochs": 3, "warmup_start_factor": 0.3})
    for k, v in list(SCHEDULES.items())
})


def _torch_lrs(s, base_lr, epochs):
    """The lr of each epoch: param_groups[0]["lr"] before the epoch, scheduler.step() after it."""
    sched = torch.optim.lr_scheduler
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    if s.warmup_epochs:
        warm = sched.LinearLR(opt, start_factor=s.warmup_start_factor, end_factor=1.0,
                              total_iters=s.warmup_epochs)
    if s.name == "constant":
        main = sched.LambdaLR(opt, lambda _: 1.0)
    elif s.name == "step":
        main = sched.StepLR(opt, step_size=s.step_size, gamma=s.gamma)
    elif s.name == "exponential":
        main = sched.ExponentialLR(opt, gamma=s.gamma)
    else:
        t_max = s.t_max if s.t_max is not None else epochs - s.warmup_epochs
        main = sched.CosineAnnealingLR(opt, T_max=t_max, eta_min=s.eta_min)
    scheduler = sched.SequentialLR(opt, [warm, main], milestones=[s.warmup_epochs]) if s.warmup_epochs else main
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("kind", SCHEDULES)
def test_schedule_equals_torch(kind):
    s = SCHEDULES[kind]
    expected = _torch_lrs(s, BASE_LR, EPOCHS)
    ours = [lr_at(e, BASE_LR, s, EPOCHS) for e in range(EPOCHS)]
    assert ours == expected  # exact: same float operations in the same order


def test_schedule_with_config_object():
    from mlp_cli.config import Schedule

    s = Schedule(name="cosine", eta_min=0.001, warmup_epochs=2)
    assert [lr_at(e, 0.05, s, 10) for e in range(10)] == _torch_lrs(s, 0.05, 10)


def test_cosine_past_t_max_equals_torch():
    # Beyond t_max torch climbs back up (no restart); the special branch at t_max + 1 matters.
    s = _schedule(name="cosine", t_max=5, eta_min=0.01)
    assert [lr_at(e, BASE_LR, s, 30) for e in range(30)] == _torch_lrs(s, BASE_LR, 30)


def test_cosine_after_warmup_starts_from_torchs_closed_form():
    # SequentialLR restarts the main scheduler with its closed form, and
    # eta_min + (base_lr - eta_min) is not always base_lr in floating point.
    s = _schedule(name="cosine", eta_min=0.0063, warmup_epochs=3, warmup_start_factor=0.3)
    ours = [lr_at(e, 0.3, s, EPOCHS) for e in range(EPOCHS)]
    assert ours[3] != 0.3
    assert ours == _torch_lrs(s, 0.3, EPOCHS)


def test_engine_does_not_import_torch():
    code = "import mlp_cli.nn.optim, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ema_update_equals_torch_ema_lerp():
    import torch

    from mlp_cli.nn.optim import ema_update

    rng = np.random.default_rng(0)
    ours = rng.standard_normal((5, 7)).astype(np.float32)
    theirs = torch.from_numpy(ours.copy())
    count = np.array(0, np.int64)
    for step in range(20):
        value = rng.standard_normal((5, 7)).astype(np.float32)
        ema_update(ours, value, 0.9)
        torch._foreach_lerp_([theirs], [torch.from_numpy(value)], 1 - 0.9)  # get_ema_multi_avg_fn(0.9)
        ema_update(count, np.array(step + 1), 0.9)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=1e-6)
    assert count == 20  # integer buffers follow the value
