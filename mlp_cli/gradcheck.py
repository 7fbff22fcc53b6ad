"""Finite-difference gradient checks of layers and whole networks (float64, central differences).

The error measure is the largest absolute difference between the analytic and numerical
gradient, relative to the largest magnitude of either (the gradient's scale). An element-wise
ratio would be dominated by finite-difference noise (about 2e-10 in float64 with h = 1e-6) on
entries that are nearly zero. For the same reason the scale is floored at SCALE_FLOOR: a
gradient that is truly zero (a conv bias followed by batch norm) is checked to an absolute
1e-8 (at the default threshold 1e-6), which is what central differences can confirm: their
noise on such a bias, where the loss moves only in its last bits, was measured at up to 8.1e-9
(a stride-2 conv before batch norm, later a batch norm over the batch of 2; 16 seeds), which
the former floor of 1e-3 reported as a wrong backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlp_cli import registry
from mlp_cli.nn.losses import softmax_cross_entropy


SCALE_FLOOR = 1e-2


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), SCALE_FLOOR)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def numerical_gradient(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f() / d x by central differences, perturbing x in place one element at a time."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat = x.reshape(-1)  # a view: x must be contiguous
    assert np.shares_memory(flat, x), "numerical_gradient needs a contiguous array"
    g = grad.reshape(-1)
    for i in range(flat.size):
        g[i] = central_difference(f, flat, i, h)
    return grad


def central_difference(f, flat: np.ndarray, i: int, h: float = 1e-6) -> float:
    """(f(x + h e_i) - f(x - h e_i)) / 2h, perturbing entry i of `flat` (a view of x) in place."""
    old = flat[i]
    flat[i] = old + h
    up = f()
    flat[i] = old - h
    down = f()
    flat[i] = old
    return (up - down) / (2 * h)


@dataclass
class Check:
    name: str
    error: float


def check_layer(layer, x: np.ndarray, seed: int = 0, h: float = 1e-6) -> list[Check]:
    """Check dL/dx and dL/dparams of one layer for L = sum(forward(x) * R), R fixed and random.

    Random layers (dropout) get the same generator state before every forward, so the mask
    stays fixed while the inputs move.
    """
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float64)

    def forward():
        if hasattr(layer, "rng"):
            layer.rng = np.random.default_rng(seed + 1)
        return layer.forward(x)

    out = forward()
    R = rng.standard_normal(out.shape)

    def loss():
        return float((forward() * R).sum())

    checks = []
    # Numerical gradients first: they run many forwards, which would overwrite the cache
    # (and, for batch norm in training, move its running statistics; those are not checked).
    numeric_x = numerical_gradient(loss, x, h)
    numeric_p = {name: numerical_gradient(loss, p, h) for name, p in layer.params.items()}
    forward()
    dx = layer.backward(R.copy())
    checks.append(Check("input", relative_error(np.asarray(dx), numeric_x)))
    for name in layer.params:
        checks.append(Check(name, relative_error(layer.grads[name], numeric_p[name])))
    return checks


def check_network(model, x: np.ndarray, labels: np.ndarray, seed: int = 0, h: float = 1e-6,
                  label_smoothing: float = 0.0) -> list[Check]:
    """Check every parameter gradient and the input gradient of a whole network under the
    softmax cross-entropy loss (the network and x must be float64)."""
    x = np.ascontiguousarray(x, dtype=np.float64)

    def forward():
        model.set_rng(np.random.default_rng(seed))
        return model.forward(x)

    def loss():
        return softmax_cross_entropy(forward(), labels, label_smoothing)[0]

    params = model.named_params()
    numeric = {name: numerical_gradient(loss, p, h) for name, p in params.items()}
    numeric_x = numerical_gradient(loss, x, h)
    _, dlogits = softmax_cross_entropy(forward(), labels, label_smoothing)
    dx = model.backward(dlogits)
    grads = model.named_grads()
    checks = [Check(name, relative_error(grads[name], numeric[name])) for name in params]
    checks.append(Check("input", relative_error(dx, numeric_x)))
    return checks


# ----------------------------------------------------------------------------- sampled checks
# A whole CIFAR-sized network has millions of parameters; central differences on every entry
# would take hours. The sampled check perturbs a few random entries of each tensor instead and
# compares them with the analytic gradient at the same entries, relative to the scale of the
# whole analytic tensor (floored at SCALE_FLOOR, as relative_error does).
#
# It also checks, layer by layer, the gradient with respect to each layer's *input* (the
# activation feeding it), re-running only the layers from there on. A wrong backward in layer k
# makes that layer's input gradient the first wrong one counted from the output, so the report
# can name the culprit even for a layer without parameters (ReLU, pooling, Flatten).
#
# Sampled entries can miss an error confined to a few entries (a ReLU backward that forgets its
# mask is wrong only where the ReLU output is 0 and still receives a gradient: after max pooling,
# about 1% of the entries). So every tensor is also checked along one random direction
# v = (+-1 entries) / sqrt(m) spread over the whole tensor: (L(a + h v) - L(a - h v)) / 2h against
# <analytic, v>, relative to the same scale. If every entry were off by e * scale with a random
# sign the direction error would be about e, like the entry error; an error in a few entries
# still shows far above the threshold. Being of unit length, the step moves the activations
# about as much as a one-entry step does, so it crosses kinks as rarely. Exact zeros of an
# activation (ReLU outputs) are left out of the direction: tied inside a max-pooling window,
# each of them sits on a kink whatever h.
#
# Kinks: ReLU and max pooling are not differentiable where an activation crosses zero or two
# window entries swap places. If a +-h perturbation flips any ReLU mask or max-pool choice the
# central difference straddles a kink and measures nothing useful, so such an entry is skipped
# and another one drawn (the report counts them). Dropout masks are fixed by giving every
# dropout layer its own generator, re-seeded before each forward.


@dataclass
class SampledCheck:
    name: str  # "0.weight" or "0.input"
    layer: int
    layer_type: str
    tensor: str  # "weight", "bias", "input"
    shape: tuple
    checked: int
    skipped: int  # entries drawn but skipped because a +-h step crosses a kink
    error: float  # the larger of entry_error and direction_error
    scale: float  # max |analytic| over the whole tensor (or a sampled |numeric|), at least SCALE_FLOOR
    entry_error: float = 0.0  # max |analytic - numeric| over the checked entries / scale
    direction_error: float | None = None  # |<analytic, v> - numeric| / scale, |v| = 1; None: every try hit a kink
    worst_index: tuple | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.layer_type})"


def _kink_state(layers) -> list[np.ndarray]:
    """What decides which branch each kink takes: ReLU masks and max-pool choices (the `kinks()`
    of the layers that have kinks, fast or reference)."""
    return [layer.kinks() for layer in layers if hasattr(layer, "kinks")]


def _same_kinks(a, b) -> bool:
    return all(np.array_equal(u, v) for u, v in zip(a, b))


def sampled_check_network(model, x: np.ndarray, labels: np.ndarray, *, samples: int = 12, seed: int = 0,
                          h: float = 1e-6, label_smoothing: float = 0.0, max_draws: int | None = None,
                          loss=softmax_cross_entropy) -> list[SampledCheck]:
    """Sampled central-difference check of every parameter tensor and every layer's input gradient.

    The network must be float64 and in the mode to check (training mode: batch statistics,
    dropout with a fixed mask). Returns one SampledCheck per tensor, in layer order: for each
    layer its input gradient ("k.input", the network input for k = 0) and then its parameters.
    `loss(logits, labels, label_smoothing) -> (loss, dlogits)` is the loss (default: the fast engine's).
    """
    probe = _Probe(model.layers, labels, seed=seed, h=h, label_smoothing=label_smoothing, loss=loss)
    x = np.ascontiguousarray(x, dtype=np.float64)
    input_grads, param_grads = probe.reference_pass(x)
    rng = np.random.default_rng([seed, 7])
    draws = dict(samples=samples, max_draws=max_draws or 4 * samples, rng=rng)
    checks = []
    for k, layer in enumerate(model.layers):
        checks.append(probe.check(k, "input", probe.inputs[k], input_grads[k], **draws))
        for name, p in layer.params.items():
            checks.append(probe.check(k, name, p, param_grads[k][name], **draws))
    probe.run_from(0, x)  # leave the caches of a normal forward behind
    return checks


class _Probe:
    """The loss of the network from layer k on, with one of layer k's input or parameter
    tensors perturbed in place, and whether the perturbation moved a kink (a ReLU mask or a
    max-pool choice) away from where the reference pass (`reference_pass`) had them."""

    def __init__(self, layers, labels, *, seed: int, h: float, label_smoothing: float, loss):
        self.layers, self.labels, self.h, self.label_smoothing, self.loss = layers, labels, h, label_smoothing, loss
        # Fast or reference: the classes share their names.
        self.dropouts = [(i, layer) for i, layer in enumerate(layers) if type(layer).__name__ == registry.DROPOUT.fast]
        self.seed = seed
        self.inputs: list[np.ndarray] = []
        self.base_kinks: list[np.ndarray] = []

    def run_from(self, k: int, a: np.ndarray) -> np.ndarray:
        """The logits from layer k on, for input `a` of layer k, with the same dropout masks every time."""
        for i, layer in self.dropouts:
            layer.rng = np.random.default_rng([self.seed, i])
        for layer in self.layers[k:]:
            a = layer.forward(a)
        return a

    def reference_pass(self, x: np.ndarray):
        """Keep every layer's input (owned copies, contiguous) and the kinks; return the analytic
        gradients: per layer that of its input and those of its parameters (float64 copies)."""
        self.inputs, a = [], x
        for i, layer in self.dropouts:
            layer.rng = np.random.default_rng([self.seed, i])
        for layer in self.layers:
            self.inputs.append(np.ascontiguousarray(a))
            a = layer.forward(self.inputs[-1])
        self.base_kinks = _kink_state(self.layers)
        _, dout = self.loss(a, self.labels, self.label_smoothing)
        input_grads = [None] * len(self.layers)
        param_grads = [None] * len(self.layers)
        for k in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[k]
            layer.needs_input_grad = True
            dout = layer.backward(dout)
            input_grads[k] = np.array(dout, dtype=np.float64)
            param_grads[k] = {name: np.array(g, dtype=np.float64) for name, g in layer.grads.items()}
        return input_grads, param_grads

    def numeric(self, k: int, perturb) -> float | None:
        """(loss(+h) - loss(-h)) / 2h, where perturb(+1) and perturb(-1) step a tensor of layer k
        and perturb(0) puts it back; None when a step moved a kink."""
        kinks = []
        losses = []
        for sign in (1, -1):
            perturb(sign)
            losses.append(self.loss(self.run_from(k, self.inputs[k]), self.labels, self.label_smoothing)[0])
            kinks.append(_kink_state(self.layers[k:]))
        perturb(0)
        base = self.base_kinks[len(self.base_kinks) - len(kinks[0]):]
        if not all(_same_kinks(state, base) for state in kinks):
            return None
        return (losses[0] - losses[1]) / (2 * self.h)

    def check(self, k: int, tensor_name: str, array: np.ndarray, analytic: np.ndarray, *, samples: int,
              max_draws: int, rng: np.random.Generator) -> SampledCheck:
        """Up to `samples` entries of `array` (layer k's input or one of its parameters) and one
        random direction, against `analytic`."""
        scale = max(float(np.abs(analytic).max(initial=0.0)), SCALE_FLOOR)
        worst, worst_at, checked, skipped, scale = self._entries(k, array, analytic, scale, samples, max_draws, rng)
        direction_error = self._direction(k, tensor_name, array, analytic, scale, rng)
        entry_error = worst / scale
        return SampledCheck(f"{k}.{tensor_name}", k, type(self.layers[k]).__name__, tensor_name, tuple(array.shape),
                            checked, skipped, max(entry_error, direction_error or 0.0), scale, entry_error,
                            direction_error, worst_at)

    def _entries(self, k, array, analytic, scale, samples, max_draws, rng):
        """The largest |analytic - numeric| over sampled entries that cross no kink, where, how
        many were checked and skipped, and the scale (grown by any larger |numeric|)."""
        flat = array.reshape(-1)
        assert np.shares_memory(flat, array), "sampled checks need contiguous arrays"
        aflat = analytic.reshape(-1)
        worst, worst_at, checked, skipped = 0.0, None, 0, 0
        for i in rng.permutation(flat.size)[:max_draws]:
            if checked == min(samples, flat.size):
                break
            old = flat[i]

            def perturb(sign, i=i, old=old):
                flat[i] = old + sign * self.h if sign else old

            numeric = self.numeric(k, perturb)
            if numeric is None:
                skipped += 1
                continue
            scale = max(scale, abs(numeric))
            diff = abs(float(aflat[i]) - numeric)
            if worst_at is None or diff > worst:
                worst, worst_at = diff, tuple(int(j) for j in np.unravel_index(i, array.shape))
            checked += 1
        return worst, worst_at, checked, skipped, scale

    def _direction(self, k, tensor_name, array, analytic, scale, rng) -> float | None:
        """|<analytic, v> - numeric| / scale along a random unit direction v (of the nonzero
        entries, for an input); a step crosses a kink now and then: up to four directions are drawn."""
        saved = array.copy()
        support = (saved != 0) if tensor_name == "input" else np.ones(array.shape, bool)
        for _ in range(4 if support.any() else 0):
            v = rng.choice(np.array([-1.0, 1.0]), size=array.shape) * support / np.sqrt(support.sum())

            def perturb(sign):
                if sign > 0:
                    array[...] += self.h * v
                else:
                    array[...] = saved - self.h * v if sign < 0 else saved

            numeric = self.numeric(k, perturb)
            if numeric is not None:
                return abs(float((analytic * v).sum()) - numeric) / max(scale, abs(numeric))
        return None


# ----------------------------------------------------------------------------- a config's network
@dataclass
class ConfigCheck:
    """The result of `check_config`: one SampledCheck per tensor, and how they were obtained."""

    source: str
    input_shape: list
    batch: int
    samples: int
    threshold: float
    seed: int
    h: float
    seconds: float
    checks: list

    @staticmethod
    def unchecked(c: SampledCheck) -> bool:
        """Every sampled entry and direction crossed a kink: nothing was measured (not a wrong gradient)."""
        return c.checked == 0 and c.direction_error is None and bool(np.prod(c.shape))

    def failed(self, c: SampledCheck) -> bool:
        return not c.error <= self.threshold or self.unchecked(c)

    @property
    def failures(self) -> list[SampledCheck]:
        return [c for c in self.checks if self.failed(c)]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def worst(self) -> SampledCheck:
        return max(self.checks, key=lambda c: c.error)

    @property
    def culprit(self) -> SampledCheck | None:
        """The failing check of the highest layer: a wrong backward in layer k corrupts the
        gradients of layer k and everything before it, never after, so that is where to look."""
        failures = [c for c in self.failures if not self.unchecked(c)]
        if not failures:
            return None
        top = max(c.layer for c in failures)
        return max((c for c in failures if c.layer == top), key=lambda c: c.error)

    def summary(self) -> str:
        worst = self.worst
        if self.ok:
            return (f"ok: all {len(self.checks)} gradients within {self.threshold:g} "
                    f"(worst {worst.error:.1e}, {worst.label}) in {self.seconds:.1f} s")
        wrong = [c for c in self.failures if not self.unchecked(c)]
        if not wrong:
            names = ", ".join(c.label for c in self.failures[:3])
            return (f"gradient check inconclusive: {len(self.failures)} of {len(self.checks)} gradients could not be "
                    f"checked ({names}{', ...' if len(self.failures) > 3 else ''}): every sampled entry and direction "
                    "crossed a ReLU or max-pool kink; try a smaller --batch or another --seed")
        culprit = self.culprit
        return (f"gradient check failed: {len(self.failures)} of {len(self.checks)} gradients above "
                f"{self.threshold:g}; the first wrong one counted from the output is {culprit.label} "
                f"(relative error {culprit.error:.1e}), so the backward of layer {culprit.layer} "
                f"({culprit.layer_type}) is the likely culprit; worst: {worst.label} {worst.error:.1e}")


def check_config(cfg, *, batch: int = 2, samples: int = 12, seed: int = 0, threshold: float = 1e-6,
                 h: float = 1e-6, source: str = "config", execution=None) -> ConfigCheck:
    """Sampled gradient check of a config's network in float64 and training mode, on standard-normal
    inputs of the config's input shape and random labels. The weights are initialized as training
    would (the config's init and seed); inputs, labels, sampled entries and dropout masks come from
    `seed`; the network runs as `execution` says (default: Execution.from_env()). Raises
    ShapeError/ConfigError when the network does not fit its data."""
    import time

    from mlp_cli import shapes
    from mlp_cli.config import ConfigError
    from mlp_cli.train import build_network
    from mlp_cli.train import check_network as check_shapes

    from mlp_cli.data import resolve_config

    cfg = resolve_config(cfg)  # an image folder without data.image_size: the size of its images
    input_shape, infos = check_shapes(cfg, batch_size=batch, dtype=np.float64)
    out = infos[-1].output_shape
    if len(out) != 1:
        raise ConfigError(f"invalid config: the network ends with output shape {out}; the loss needs one score "
                          "per class, so end with {type: flatten} and {type: linear, out_features: CLASSES}")
    model = build_network(cfg, shapes.architecture(infos), dtype=np.float64, execution=execution).train()
    rng = np.random.default_rng([seed, 1])
    x = rng.standard_normal((batch, *input_shape))
    labels = rng.integers(0, out[0], batch)
    started = time.perf_counter()
    from mlp_cli.nn.losses import loss_function

    checks = sampled_check_network(model, x, labels, samples=samples, seed=seed, h=h,
                                   label_smoothing=cfg.train.label_smoothing, loss=loss_function(model.execution))
    return ConfigCheck(source, list(input_shape), batch, samples, threshold, seed, h,
                       time.perf_counter() - started, checks)


def format_config_check(report: ConfigCheck) -> str:
    """The terminal table: one row per tensor, in layer order, then the verdict."""
    shape = lambda s: "x".join(map(str, s)) or "scalar"  # noqa: E731
    rows = [(c.label, shape(c.shape), str(c.checked), str(c.skipped) if c.skipped else "", f"{c.entry_error:.1e}",
             "at kink" if c.direction_error is None else f"{c.direction_error:.1e}",
             ("unchecked" if report.unchecked(c) else "FAIL") if report.failed(c) else "ok") for c in report.checks]
    head = ("tensor", "shape", "entries", "at kink", "entry error", "direction error", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    right = (False, False, True, True, True, True, False)

    def line(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    layers = len({c.layer for c in report.checks})
    lines = [
        f"gradient check of {report.source}: {layers} layers in float64, training mode, "
        f"batch {report.batch} x {report.input_shape}, seed {report.seed}",
        f"central differences (h = {report.h:g}) at up to {report.samples} random entries of each tensor, "
        "and along one random unit direction v (+-1/sqrt(m) entries) over all of it",
        "entry error = max |analytic - numeric| / scale;  direction error = |<analytic, v> - numeric| / scale;",
        f"scale = max(max |analytic|, {SCALE_FLOOR:g});  threshold {report.threshold:g} for both",
        "k.input is the gradient of the loss with respect to the input of layer k, made by the backward of layers k and up",
        "",
        line(head),
        *(line(r) for r in rows),
    ]
    if any(c.skipped for c in report.checks):
        lines.append("(at kink: entries skipped and redrawn because a +-h step flips a ReLU or max-pool choice)")
    if report.ok:
        lines += ["", report.summary()]
    else:  # the diagnosis goes to stderr with the exit code (see summary)
        culprit = report.culprit
        lines += ["", f"FAIL: {len(report.failures)} of {len(report.checks)} gradients above {report.threshold:g}; "
                      f"likely culprit: the backward of layer {culprit.layer} ({culprit.layer_type})"]
    return "\n".join(lines)


def config_check_json(report: ConfigCheck) -> dict:
    def item(c: SampledCheck):
        return {"name": c.name, "layer": c.layer, "type": c.layer_type, "tensor": c.tensor, "shape": list(c.shape),
                "checked": c.checked, "skipped_at_kink": c.skipped, "error": c.error, "entry_error": c.entry_error,
                "direction_error": c.direction_error, "scale": c.scale,
                "worst_index": None if c.worst_index is None else list(c.worst_index), "ok": not report.failed(c)}

    culprit = report.culprit
    return {"config": report.source, "input_shape": report.input_shape, "batch": report.batch,
            "samples": report.samples, "seed": report.seed, "h": report.h, "threshold": report.threshold,
            "seconds": round(report.seconds, 3), "ok": report.ok, "max_error": report.worst.error,
            "worst": report.worst.name, "culprit": None if culprit is None else {"layer": culprit.layer,
                                                                                 "type": culprit.layer_type,
                                                                                 "name": culprit.name},
            "checks": [item(c) for c in report.checks]}
