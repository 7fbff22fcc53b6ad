"""Optimizers and learning-rate schedules with PyTorch's exact update rules.

The updates follow the cs231n style: one small function per optimizer,
`*_update(param, grad, state, *, hyper...) -> None`, which changes `param` and the
arrays in `state` in place. `state` is a plain dict owned by the caller and starts
empty; the function fills it on the first call. The arithmetic runs in the dtype of
`param` (Python-float hyper-parameters are cast to it, as in torch), so float32
training stays float32 and float64 gradient checks stay float64.

`Optimizer` keeps one such state dict per named parameter and flattens them into
`state_dict()` for safetensors checkpoints.

`lr_at` gives the learning rate of an epoch, replaying the floating-point operations
of torch.optim.lr_scheduler so the numbers are equal, not merely close.

This module never imports torch.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from mlp_cli.nn import compiled_kernels
from mlp_cli.nn.execution import Execution

__all__ = [
    "sgd_update", "adam_update", "adamw_update",
    "Optimizer", "make_optimizer",
    "lr_at", "constant_lr", "step_lr", "exponential_lr", "cosine_lr", "linear_warmup_lr",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "cosine")


# ----------------------------------------------------------------------------- update rules
def ema_update(average: np.ndarray, value: np.ndarray, decay: float) -> None:
    """average <- decay * average + (1 - decay) * value, in place: an exponential moving average of
    the weights, as torch.optim.swa_utils.get_ema_multi_avg_fn(decay) computes it (a lerp of the
    average towards the value with weight 1 - decay). Integer arrays (num_batches_tracked) are copied."""
    if np.issubdtype(average.dtype, np.integer):
        average[...] = value
        return
    diff = value - average
    diff *= 1.0 - decay
    average += diff


def sgd_update(param, grad, state: dict, *, lr: float, momentum: float = 0.0,
               nesterov: bool = False, weight_decay: float = 0.0, scratch=None) -> None:
    """One step of torch.optim.SGD (dampening=0, maximize=False), in place.

    param, grad: arrays of the same shape; `scratch`, when given, an array of that shape and
    dtype that takes the intermediate values instead of fresh arrays. With momentum > 0, state holds
    "momentum_buffer" (same shape as param), created on the first call as a copy of the
    (weight-decayed) gradient, as torch does. With momentum == 0, state stays empty.

        g = grad + weight_decay * param
        buf = g                      (first step)
        buf = momentum * buf + g     (later steps)
        g = g + momentum * buf       (nesterov)   or   g = buf
        param -= lr * g
    """
    owned = False  # whether g is a scratch array this call may overwrite
    if weight_decay != 0:
        # A fresh array: the caller's grad must stay the pure loss gradient.
        g = np.multiply(param, weight_decay, out=scratch)
        g += grad
        owned = True
    else:
        g = grad
    if momentum != 0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = np.array(g, dtype=param.dtype, copy=True)
        else:
            buf *= momentum
            buf += g
        if nesterov:
            update = np.multiply(buf, momentum)
            update += g
            g, owned = update, True
        else:
            g, owned = buf, False
    if owned:
        g *= -lr
        param += g
    else:  # g is grad or buf, so scratch is free
        param += np.multiply(g, -lr, dtype=param.dtype, out=scratch)


def adam_update(param, grad, state: dict, *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                eps: float = 1e-8, weight_decay: float = 0.0,
                decoupled_weight_decay: bool = False) -> None:
    """One step of torch.optim.Adam (amsgrad=False), in place; AdamW when decoupled.

    param, grad: arrays of the same shape. state holds "exp_avg" and "exp_avg_sq"
    (same shape as param, zeros at first) and "step" (a Python int, 0 at first).

        step += 1
        param *= 1 - lr * weight_decay                  (decoupled, AdamW)
        g = grad + weight_decay * param                 (otherwise, L2 as in Adam)
        exp_avg    += (1 - beta1) * (g - exp_avg)       (torch's lerp_)
        exp_avg_sq  = beta2 * exp_avg_sq + (1 - beta2) * g * g
        denom = sqrt(exp_avg_sq) / sqrt(1 - beta2**step) + eps
        param -= lr / (1 - beta1**step) * exp_avg / denom
    """
    beta1, beta2 = betas
    if not state:
        state["step"] = 0
        state["exp_avg"] = np.zeros_like(param)
        state["exp_avg_sq"] = np.zeros_like(param)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    state["step"] += 1
    step = state["step"]

    g = grad
    if weight_decay != 0:
        if decoupled_weight_decay:
            param *= 1 - lr * weight_decay
        else:
            g = np.multiply(param, weight_decay)
            g += grad

    # One scratch array serves every intermediate below.
    tmp = np.subtract(g, exp_avg, dtype=param.dtype)
    tmp *= 1 - beta1
    exp_avg += tmp

    exp_avg_sq *= beta2
    np.multiply(g, g, out=tmp)
    tmp *= 1 - beta2
    exp_avg_sq += tmp

    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5

    denom = np.sqrt(exp_avg_sq, out=tmp)
    denom /= bias_correction2_sqrt
    denom += eps
    np.divide(exp_avg, denom, out=tmp)
    tmp *= -step_size
    param += tmp


def adamw_update(param, grad, state: dict, *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
    """One step of torch.optim.AdamW: Adam with decoupled decay `param *= 1 - lr * weight_decay`.

    Same shapes and state as `adam_update` (torch's AdamW is Adam with
    decoupled_weight_decay=True).
    """
    adam_update(param, grad, state, lr=lr, betas=betas, eps=eps,
                weight_decay=weight_decay, decoupled_weight_decay=True)


# ----------------------------------------------------------------------------- optimizer
_STATE_KEYS = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq", "step"),
               "adamw": ("exp_avg", "exp_avg_sq", "step")}


def state_keys(name: str, momentum: float = 0.0) -> tuple[str, ...]:
    """The state an update rule keeps per parameter ("PARAM.KEY" in state_dict): SGD's momentum
    buffer (none without momentum), Adam's and AdamW's moments and step count."""
    return _STATE_KEYS[name] if (name != "sgd" or momentum != 0) else ()


class Optimizer:
    """The optimizer named by a config's `Optim` (sgd, adam or adamw) over named parameters.

    Every parameter (weights, biases, batch-norm scales) is in one group, so all get the
    same weight decay, as with torch's default `optimizer(model.parameters())`.
    The learning rate is passed to each `step` because the schedule owns it; `base_lr`
    is the config's lr, the schedule's starting point.
    """

    def __init__(self, cfg_optim, execution: Execution | None = None):
        self.execution = execution if execution is not None else Execution()
        name = cfg_optim.name
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
        if cfg_optim.nesterov and (name != "sgd" or cfg_optim.momentum == 0):
            raise ValueError("nesterov needs the sgd optimizer and a momentum above 0")
        self.name = name
        self.base_lr = float(cfg_optim.lr)
        self.momentum = float(cfg_optim.momentum)
        self.nesterov = bool(cfg_optim.nesterov)
        self.weight_decay = float(cfg_optim.weight_decay)
        self.betas = (float(cfg_optim.betas[0]), float(cfg_optim.betas[1]))
        self.eps = float(cfg_optim.eps)
        self.state: dict[str, dict] = {}
        self._check_state = False
        self._flat_key, self._flat = None, None  # the arrays last updated as whole buffers: _flat_sgd

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """Update every array of `params` in place from the same-named array of `grads`."""
        missing = params.keys() - grads.keys()
        if missing:
            raise KeyError(f"no gradient for parameter(s) {', '.join(sorted(missing))}")
        if self._check_state:
            self._adopt_loaded_state(params)
        if self.execution.reference:
            self._reference_step(params, grads, lr)
            return
        if self.name == "sgd" and self._flat_sgd(params, grads, lr):
            return
        for name, param in params.items():
            state = self.state.setdefault(name, {})
            if self.name == "sgd":
                sgd_update(param, grads[name], state, lr=lr, momentum=self.momentum,
                           nesterov=self.nesterov, weight_decay=self.weight_decay)
            else:
                adam_update(param, grads[name], state, lr=lr, betas=self.betas, eps=self.eps,
                            weight_decay=self.weight_decay,
                            decoupled_weight_decay=self.name == "adamw")

    def _reference_step(self, params, grads, lr) -> None:
        """The step by reference.py's updates, which return new arrays: copied into the parameters
        (the network's arrays stay the same objects), the new state kept as this optimizer's."""
        from mlp_cli.nn import reference as R

        for name, param in params.items():
            state, grad = self.state.get(name, {}), grads[name]
            if self.name == "sgd":
                new, state = R.sgd_update(param, grad, state, lr=lr, momentum=self.momentum, nesterov=self.nesterov,
                                          weight_decay=self.weight_decay)
            elif self.name == "adam":
                new, state = R.adam_update(param, grad, state, lr=lr, betas=self.betas, eps=self.eps,
                                           weight_decay=self.weight_decay)
            else:
                new, state = R.adamw_update(param, grad, state, lr=lr, betas=self.betas, eps=self.eps,
                                            weight_decay=self.weight_decay)
            param[...] = new
            # A first momentum buffer is the gradient array itself: keep a copy, not the layer's array.
            self.state[name] = {k: v.copy() if isinstance(v, np.ndarray) and np.shares_memory(v, grad) else v
                                for k, v in state.items()}

    def _flat_sgd(self, params, grads, lr) -> bool:
        """The SGD step as one `sgd_update` over whole buffers, when the parameters are
        consecutive views of one array and the gradients of another laid out alike (as
        model.build makes them); False (nothing done) otherwise. Every element goes through the
        same operations as in the per-parameter loop, so the result is the same to the bit; the
        momentum buffers become views of one flat buffer too (state_dict() is unchanged)."""
        names = list(params)
        buffers = [self.state.get(n, {}).get("momentum_buffer") for n in names]
        arrays = [*params.values(), *(grads[n] for n in names), *buffers]
        if self._flat_key is None or len(arrays) != len(self._flat_key) or \
                any(a is not b for a, b in zip(arrays, self._flat_key)):
            # A new network, or the state was loaded: check the layout again.
            flat = _common_buffer(list(params.values())), _common_buffer([grads[n] for n in names])
            if flat[0] is None or flat[1] is None or flat[0].dtype != flat[1].dtype:
                return False
            if all(b is None for b in buffers):
                state = {}
            elif all(b is not None for b in buffers):
                buffer = _common_buffer(buffers)
                if buffer is None:  # loaded from a checkpoint: gathered once
                    buffer = np.concatenate([b.reshape(-1) for b in buffers]).astype(flat[0].dtype, copy=False)
                state = {"momentum_buffer": buffer}
            else:
                return False
            self._flat = (*flat, state, np.empty_like(flat[0]))
        flat_params, flat_grads, state, scratch = self._flat
        kernels = compiled_kernels() if self.execution.compiled else None
        if kernels is not None and state.get("momentum_buffer") is not None:  # one compiled pass, same bits
            kernels.sgd_momentum_update(flat_params, flat_grads, state["momentum_buffer"], lr=lr,
                                        momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay)
        else:
            sgd_update(flat_params, flat_grads, state, lr=lr, momentum=self.momentum, nesterov=self.nesterov,
                       weight_decay=self.weight_decay, scratch=scratch)
        buffer = state.get("momentum_buffer")
        if buffer is not None and (buffers[0] is None or buffers[0].base is not buffer):
            offset = 0
            for name, param in params.items():  # per-parameter views of the (new) flat buffer
                self.state[name] = {"momentum_buffer": buffer[offset:offset + param.size].reshape(param.shape)}
                offset += param.size
            arrays[2 * len(names):] = [self.state[n]["momentum_buffer"] for n in names]
        self._flat_key = arrays  # the arrays themselves (not ids): they stay alive while compared
        return True

    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat copies of the state: "0.weight.momentum_buffer", "0.weight.exp_avg",
        "0.weight.step" (0-d int64), ... ready for safetensors."""
        out = {}
        for name, state in self.state.items():
            for key, value in state.items():
                if key == "step":
                    out[f"{name}.{key}"] = np.array(value, dtype=np.int64)
                else:
                    out[f"{name}.{key}"] = value.copy()
        return out

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        """Replace the state with copies of `d` (as written by `state_dict`).

        Raises ValueError when `d` does not belong to this kind of optimizer. Shapes are
        checked against the parameters at the next `step`.
        """
        allowed = state_keys(self.name, self.momentum)
        state: dict[str, dict] = {}
        for flat, value in d.items():
            name, _, key = flat.rpartition(".")
            if not name or key not in allowed:
                expected = (f"expected entries named PARAM.{{{','.join(allowed)}}}" if allowed
                            else "it keeps no state")
                raise ValueError(f"optimizer state entry {flat!r} does not belong to "
                                 f"{self._describe()}; {expected}")
            value = np.asarray(value)
            state.setdefault(name, {})[key] = int(value.reshape(-1)[0]) if key == "step" else value.copy()
        for name, entries in state.items():
            absent = [k for k in allowed if k not in entries]
            if absent:
                raise ValueError(f"optimizer state for {name!r} lacks {', '.join(absent)}")
        self.state = state
        self._check_state = True

    def _adopt_loaded_state(self, params) -> None:
        unknown = self.state.keys() - params.keys()
        if unknown:
            raise ValueError(f"optimizer state for unknown parameter(s) {', '.join(sorted(unknown))}")
        for name, entries in self.state.items():
            param = params[name]
            for key, value in entries.items():
                if key == "step":
                    continue
                if value.shape != param.shape:
                    raise ValueError(f"optimizer state {name}.{key} has shape {value.shape}, "
                                     f"the parameter has {param.shape}")
                # In-place updates would otherwise silently mix dtypes.
                entries[key] = value.astype(param.dtype, copy=False)
        self._check_state = False

    def _describe(self) -> str:
        if self.name == "sgd":
            return f"sgd with momentum {self.momentum}"
        return self.name


def _common_buffer(arrays: list[np.ndarray]) -> np.ndarray | None:
    """The contiguous 1-D array of which `arrays` are consecutive contiguous views, in order and
    covering all of it; None when there is none."""
    base = arrays[0].base
    if base is None or base.ndim != 1 or not base.flags.c_contiguous:
        return None
    address, offset = base.__array_interface__["data"][0], 0
    for a in arrays:
        if (a.base is not base or not a.flags.c_contiguous
                or a.__array_interface__["data"][0] != address + offset * base.itemsize):
            return None
        offset += a.size
    return base if offset == base.size else None


def make_optimizer(name: str = "sgd", *, lr: float, momentum: float = 0.0, nesterov: bool = False,
                   weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                   eps: float = 1e-8) -> Optimizer:
    """Build an `Optimizer` from keyword arguments instead of a config object."""
    return Optimizer(SimpleNamespace(name=name, lr=lr, momentum=momentum, nesterov=nesterov,
                                     weight_decay=weight_decay, betas=tuple(betas), eps=eps))


# ----------------------------------------------------------------------------- schedules
# Each `*_lr(lr, k, ...)` is one `scheduler.step()` of the torch class: it maps the lr of
# the schedule's local epoch k - 1 to the lr of epoch k (k >= 1), with torch's own
# expression so the rounding is the same. torch computes these recursively from the
# current lr, so `lr_at` iterates from the start rather than using a closed form.

def constant_lr(lr: float, k: int) -> float:
    """No scheduler (or LambdaLR(lambda _: 1.0)): the lr never changes."""
    return lr


def step_lr(lr: float, k: int, *, step_size: int, gamma: float) -> float:
    """StepLR.get_lr: multiply by gamma when k is a non-zero multiple of step_size."""
    if k == 0 or k % step_size != 0:
        return lr
    return lr * gamma


def exponential_lr(lr: float, k: int, *, gamma: float) -> float:
    """ExponentialLR.get_lr: multiply by gamma every epoch."""
    return lr * gamma


def cosine_lr(lr: float, k: int, *, base_lr: float, t_max: int, eta_min: float) -> float:
    """CosineAnnealingLR.get_lr (recursive form, no restarts)."""
    if (k - 1 - t_max) % (2 * t_max) == 0:
        # torch's branch for the step after the minimum, where the ratio below is 0/0.
        return lr + (base_lr - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
    return ((1 + math.cos(math.pi * k / t_max))
            / (1 + math.cos(math.pi * (k - 1) / t_max))
            * (lr - eta_min) + eta_min)


def linear_warmup_lr(lr: float, k: int, *, start_factor: float, total_iters: int,
                     end_factor: float = 1.0) -> float:
    """LinearLR.get_lr for 1 <= k <= total_iters: the recursive ratio between factors."""
    return lr * (1.0 + (end_factor - start_factor)
                 / (total_iters * start_factor + (k - 1) * (end_factor - start_factor)))


def lr_at(epoch: int, base_lr: float, schedule, total_epochs: int) -> float:
    """The learning rate used during `epoch` (0-based), equal (==) to torch's.

    `schedule` has the attributes of config.Schedule. The reference is
    `optimizer.param_groups[0]["lr"]` after `epoch` calls of `scheduler.step()` where the
    scheduler is StepLR(step_size, gamma), ExponentialLR(gamma),
    CosineAnnealingLR(T_max=t_max or total_epochs - warmup_epochs, eta_min) or none for
    "constant"; with warmup_epochs > 0 it is wrapped as
    SequentialLR([LinearLR(start_factor=warmup_start_factor, end_factor=1.0,
    total_iters=warmup_epochs), main], milestones=[warmup_epochs]).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be 0 or more, got {epoch}")
    name = schedule.name
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(SCHEDULES)}")
    warmup = schedule.warmup_epochs

    if epoch < warmup:
        # LinearLR's initial step scales the lr SequentialLR has just reset to base_lr.
        lr = base_lr * schedule.warmup_start_factor
        for k in range(1, epoch + 1):
            lr = linear_warmup_lr(lr, k, start_factor=schedule.warmup_start_factor, total_iters=warmup)
        return lr

    if name == "constant":
        rule = constant_lr
        start = base_lr
    elif name == "step":
        def rule(lr, k):
            return step_lr(lr, k, step_size=schedule.step_size, gamma=schedule.gamma)
        # Closed form at the milestone: base_lr * gamma ** 0.
        start = base_lr * schedule.gamma ** (0 // schedule.step_size) if warmup else base_lr
    elif name == "exponential":
        def rule(lr, k):
            return exponential_lr(lr, k, gamma=schedule.gamma)
        start = base_lr * schedule.gamma**0 if warmup else base_lr
    else:
        t_max = schedule.t_max if schedule.t_max is not None else total_epochs - warmup
        if t_max < 1:
            raise ValueError(f"cosine schedule needs t_max >= 1 (got {t_max}: "
                             f"{total_epochs} epochs minus {warmup} warm-up epochs)")
        eta_min = schedule.eta_min

        def rule(lr, k):
            return cosine_lr(lr, k, base_lr=base_lr, t_max=t_max, eta_min=eta_min)
        # SequentialLR starts the main scheduler with step(0), i.e. the closed form, which
        # need not round back to exactly base_lr when eta_min > 0.
        start = (eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * 0 / t_max)) / 2
                 if warmup else base_lr)

    lr = start
    for k in range(1, epoch - warmup + 1):
        lr = rule(lr, k)
    return lr
