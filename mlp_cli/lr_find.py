"""The learning-rate range test of `mlp-cli lr-find`, as fastai's `Learner.lr_find` runs it.

A mock training of the config's network (its seeded initial weights, its optimizer, batch size,
augmentation and label smoothing, on its training batches) whose learning rate grows
exponentially, one value per batch, from `start` to `end`. After each batch the loss is smoothed
as fastai's Recorder does (an exponential moving average with beta 0.98, debiased by
1 - beta^n, n the batches so far), and the test stops once the smoothed loss exceeds 4 times the
lowest smoothed loss so far (fastai's `stop_div`) or a loss is not finite. The suggestion is
fastai's `steep` rule (steepest descent) on the recorded curve trimmed as fastai trims it;
fastai's default, `valley`, is computed beside it (see RULE for why not the default).

One difference from fastai, on purpose: batch k of N trains at start * (end/start)^(k/(N-1)), so
the first batch is at `start` and the last at `end` (Lightning's and torch-lr-finder's ramp);
fastai's uses k/N and never reaches `end`.

Nothing here writes a file but the plot (`draw`), and nothing of the mock training is kept: the
weights live in this process only. `find_lr` is the pure part; it returns the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BETA = 0.98  # fastai's AvgSmoothLoss
DIVERGENCE = 4.0  # stop once the smoothed loss is this many times its best (fastai's LRFinder)
# Steepest descent, not fastai's default valley: on the shipped nets valley lands a decade below
# the rates that train best (the MNIST MLP: 0.0047-0.0077 over seeds 0-6, where 3 epochs reach 95.2%
# test against 97.1% at the shipped 0.05), steep within a factor 2-4 of them (0.055-0.2).
RULE = "steep"
RULE_TEXT = {"valley": "fastai's default, the middle of the longest fall of the smoothed loss",
             "steep": "fastai's steepest descent of the smoothed loss against log lr"}
TRIM_END = 5  # fastai drops the last 5 points and the first steps // 10 before suggesting


@dataclass
class LRFindResult:
    """The curve of one range test: entry k is batch k (all lists as long as `batches`)."""

    lrs: list[float]  # the learning rate batch k trained with
    losses: list[float]  # the smoothed (debiased) loss after batch k: what is plotted and judged
    raw_losses: list[float]  # the loss of batch k itself, before its step
    steps: int  # the batches asked for
    stopped: str  # "completed", "diverged" (smoothed loss above 4x its best) or "non-finite"
    rule: str = RULE  # the rule whose suggestion is `suggestion`
    indices: dict = field(default_factory=dict)  # rule -> the batch it suggests (None: too few batches)
    stop_lr: float | None = None  # the rate at which a stopped test stopped

    @property
    def index(self) -> int | None:
        return self.indices.get(self.rule)

    @property
    def suggestion(self) -> float | None:
        return self.suggestions[self.rule] if self.indices else None

    @property
    def suggestions(self) -> dict:
        """rule -> suggested rate (None if the rule had too few batches)."""
        return {rule: None if i is None else self.lrs[i] for rule, i in self.indices.items()}

    @property
    def batches(self) -> int:
        return len(self.lrs)


def rate(start: float, end: float, steps: int, k: int) -> float:
    """The rate of batch k of the ramp: start * (end/start)^(k/(steps-1)); exactly `end` for the last."""
    if not (0 < start < end) or steps < 2:
        raise ValueError(f"a ramp needs 0 < start < end and at least 2 steps, got {start}, {end}, {steps}")
    return float(end) if k == steps - 1 else float(start * (end / start) ** (k / (steps - 1)))


def ramp(start: float, end: float, steps: int) -> np.ndarray:
    """(steps,) float64: the rate of every batch (see `rate`), exponential from start to end."""
    return np.array([rate(start, end, steps, k) for k in range(steps)])


class SmoothedLoss:
    """fastai's AvgSmoothLoss: avg <- beta * avg + (1 - beta) * loss, reported as avg / (1 - beta^n)."""

    def __init__(self, beta: float = BETA):
        self.beta, self.avg, self.count = beta, 0.0, 0

    def add(self, loss: float) -> float:
        self.count += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        return self.avg / (1 - self.beta ** self.count)


def smooth(losses, beta: float = BETA) -> list[float]:
    """The debiased moving average after each of `losses` (see SmoothedLoss)."""
    s = SmoothedLoss(beta)
    return [s.add(float(v)) for v in losses]


def valley(losses) -> int:
    """fastai's `valley` rule: the index of the suggested point of a loss curve.

    It finds the longest strictly decreasing subsequence of `losses` (O(n^2), as fastai), from
    `start` to `end` indices, and returns start + int(d/3) + int(d/6), d = end - start: a point in
    the steep part of the valley, before its bottom. `start` is computed as fastai does
    (end - the subsequence's length, one before its first element when the subsequence is
    contiguous); the index is kept >= 0, where fastai would wrap round to the last point.
    """
    n = len(losses)
    if n == 0:
        raise ValueError("valley needs at least one loss")
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max(0, max_start + int(sections) + int(sections / 2))


def steep(lrs, losses) -> int:
    """fastai's `steep` rule: the left end of the segment where the loss falls fastest against
    log(lr), i.e. argmin of (loss[i+1] - loss[i]) / (log lr[i+1] - log lr[i]). Needs 2 points."""
    losses, logs = np.asarray(losses, dtype=np.float64), np.log(np.asarray(lrs, dtype=np.float64))
    if len(losses) < 2:
        raise ValueError("steep needs at least two losses")
    return int(np.argmin(np.diff(losses) / np.diff(logs)))


RULES = ("valley", "steep")


def suggest(lrs, losses, steps: int, rule: str = RULE) -> int | None:
    """The index of the rate `rule` suggests, on the curve without its first steps // 10 and last 5
    points, as fastai's lr_find trims it (the start is flat noise, the end the divergence).
    None when too little is left after the trim (valley needs 1 point, steep 2)."""
    first, last = steps // 10, len(losses) - TRIM_END
    if last - first < (2 if rule == "steep" else 1):
        return None
    if rule == "valley":
        return first + valley(list(losses[first:last]))
    if rule == "steep":
        return first + steep(lrs[first:last], losses[first:last])
    raise ValueError(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")


def find_lr(cfg, *, start: float = 1e-6, end: float = 10.0, steps: int = 100, rule: str = RULE,
            beta: float = BETA, on_batch=None) -> LRFindResult:
    """Run the range test on `cfg`'s network and training data; nothing is written.

    Raises ConfigError/ShapeError (exit 2) before any data is read, DataError (exit 1) when the
    data is missing. `on_batch(k, lr, smoothed_loss)`, if given, is called after each batch.
    The test runs as many epochs as `steps` needs; each epoch's shuffling, augmentation and
    dropout come from (seed, epoch) as in `mlp-cli train`, so its first batches are the run's.
    """
    from mlp_cli import data, shapes
    from mlp_cli.errors import DataError
    from mlp_cli.nn.losses import softmax_cross_entropy
    from mlp_cli.nn.optim import Optimizer
    from mlp_cli.nn.parallel import single_threaded_blas
    from mlp_cli.train import build_network, check_network, check_outputs

    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")
    rate(start, end, steps, 0)  # the arguments checked before any data is read
    cfg = data.resolve_config(cfg)
    _, infos = check_network(cfg)
    architecture = shapes.architecture(infos)
    train_split = data.load_splits(cfg.data, cfg.seed, ("train",))["train"]
    if len(train_split) == 0:
        raise DataError("the training split is empty: there is nothing to train on; lower data.val_size")
    check_outputs(infos, len(train_split.classes), cfg.data.dataset)
    norm = data.normalization(train_split, cfg.data)
    model = build_network(cfg, architecture)
    model.skip_input_gradient()
    optimizer = Optimizer(cfg.optim)

    result = LRFindResult([], [], [], steps, "completed", rule)
    smoothed, best = SmoothedLoss(beta), math.inf
    with single_threaded_blas():
        epoch = 0
        while result.batches < steps and result.stopped == "completed":
            model.set_rng(np.random.default_rng([cfg.seed, epoch, 2]))
            model.train()
            batches = data.batches(train_split, cfg.train.batch_size, train=True,
                                   rng=np.random.default_rng([cfg.seed, epoch, 1]), normalization=norm,
                                   augment=cfg.data.augment)
            for x, y in batches:
                k = result.batches
                lr = rate(start, end, steps, k)  # one at a time: --steps 10**9 needs no 8 GB array
                with np.errstate(all="ignore"):  # overflow shows up as a non-finite loss
                    logits = model.forward(x)
                    loss, dlogits = softmax_cross_entropy(logits, y, cfg.train.label_smoothing)
                    if not math.isfinite(loss):
                        result.stopped, result.stop_lr = "non-finite", lr
                        break
                    model.backward(dlogits)
                    optimizer.step(model.named_params(), model.named_grads(), lr)
                value = smoothed.add(float(loss))
                result.lrs.append(lr)
                result.raw_losses.append(float(loss))
                result.losses.append(value)
                if on_batch is not None:
                    on_batch(k, lr, value)
                best = min(best, value)
                if value > DIVERGENCE * best:
                    result.stopped, result.stop_lr = "diverged", lr
                    break
                if result.batches == steps:
                    break
            epoch += 1
    result.indices = {name: suggest(result.lrs, result.losses, steps, name) for name in RULES}
    return result


def summary(result: LRFindResult) -> str:
    """One line on how the test went: the rates covered and why it ended."""
    span = f"lr {result.lrs[0]:.3g} to {result.lrs[-1]:.3g}" if result.lrs else "no batch"
    if result.stopped == "diverged":
        how = f"stopped: the smoothed loss passed {DIVERGENCE:g} times its best ({min(result.losses):.4g})"
    elif result.stopped == "non-finite":
        how = f"stopped: the loss was not finite at lr {result.stop_lr:.3g}"
    else:
        how = "completed"
    return f"{result.batches} of {result.steps} batches, {span}; {how}"


def suggestion_line(result: LRFindResult) -> str:
    """`suggested lr 0.123 (steep: ..., batch 40); valley: 0.00475`: the rule used, named and
    explained, and what the other rule would say."""
    others = "".join(f"; {name}: {'-' if lr is None else f'{lr:.3g}'}"
                     for name, lr in result.suggestions.items() if name != result.rule)
    return (f"suggested lr {result.suggestion:.3g} ({result.rule}: {RULE_TEXT[result.rule]}, batch "
            f"{result.index + 1}){others}")


def as_json(result: LRFindResult) -> dict:
    """What --json prints: the rule, its suggestion (null if none), every rule's, the rates and the
    smoothed losses (what the rules judge), each batch's own loss, why the test ended."""
    return {"rule": result.rule, "suggestion": result.suggestion, "suggestions": result.suggestions,
            "lrs": result.lrs, "losses": result.losses, "raw_losses": result.raw_losses,
            "stopped": result.stopped, "batches": result.batches, "steps": result.steps}


def draw(result: LRFindResult, path, title: str = ""):
    """The smoothed loss (and, faintly, each batch's) against the rate on a log axis, the
    suggestion marked; written atomically in the format the extension names. Returns the path."""
    from mlp_cli.pictures import new_figure, save_figure

    fig = new_figure(7, 4.5)
    ax = fig.add_subplot()
    lrs, losses = np.asarray(result.lrs), np.asarray(result.losses)
    ax.plot(lrs, result.raw_losses, color="#bbbbbb", linewidth=0.8, label="loss of the batch")
    ax.plot(lrs, losses, color="#2166ac", linewidth=1.8, label=f"smoothed (beta {BETA})")
    for name, colour in zip(sorted(result.indices, key=lambda n: n != result.rule), ("#b2182b", "#1b7837")):
        i = result.indices[name]
        if i is None:
            continue
        chosen = name == result.rule
        ax.axvline(lrs[i], color=colour, linestyle=":", linewidth=1 if chosen else 0.7)
        ax.plot([lrs[i]], [losses[i]], "o" if chosen else "s", color=colour, markersize=7 if chosen else 5,
                label=f"{name}{' (suggested)' if chosen else ''}: lr {lrs[i]:.3g}")
    ax.set_xscale("log")
    if len(losses):
        low, high = float(losses.min()), float(losses.max())
        pad = 0.05 * (high - low) or 0.05 * abs(high) or 0.1
        ax.set_ylim(low - pad, high + pad)  # the raw losses' spikes would squash the curve
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title or "learning-rate range test")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return save_figure(fig, path)
