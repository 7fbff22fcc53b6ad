"""Pictures of a run: curves.png, confusion.png, boundary.png, filters.png and errors.png.

`draw_run` is what the trainer calls at the end of a run; each `draw_*` function also works on
its own. matplotlib is imported inside the functions (so `mlp-cli --help` stays fast) and used
through its object-oriented API on the non-interactive Agg canvas: no pyplot state, no GUI
backend, nothing to close or leak, whatever backend the calling process may have chosen.
Every file is written atomically (temporary name, then rename).

The numbers drawn are the numbers recorded: the curves plot metrics.csv's values as they are
(accuracies are fractions, shown with a percent axis), the confusion matrix is test_metrics.json's.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from mlp_cli import registry as R
from mlp_cli.nn.losses import softmax
from mlp_cli.selection import best_row

# Colours of the classes in scatter plots (the first two match the two ends of the RdBu map).
_TWO = ("#2166ac", "#b2182b")


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path) -> Path:
    """Write in the format the file name says (curves.png, ladder.pdf, ...)."""
    from mlp_cli.files import write_atomic

    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, facecolor="white"))
    finally:
        fig.clear()
    return path


def check_picture_path(path, option: str) -> Path:
    """Before any work: `path` names a format matplotlib writes (by its extension) in a folder that
    takes a new file; UsageError naming `option` otherwise."""
    from matplotlib.backend_bases import FigureCanvasBase

    from mlp_cli import system
    from mlp_cli.errors import UsageError

    path = Path(path)
    formats = sorted(set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"})  # pgf needs a TeX installation
    if path.suffix[1:].lower() not in formats:
        raise UsageError(f"{option} {path}: matplotlib cannot write {'a ' + path.suffix if path.suffix else 'a file without an extension'}; "
                         f"end the name with one of .{', .'.join(formats)}")
    return system.check_writable(path, option)


def _values(metrics, key) -> np.ndarray:
    out = []
    for row in metrics:
        v = row.get(key)
        out.append(float("nan") if v is None or v == "" else float(v))
    return np.asarray(out, dtype=np.float64)


def _cmap(name):
    import matplotlib

    return matplotlib.colormaps[name]


# ----------------------------------------------------------------------------- curves.png
def draw_curves(metrics: list[dict], path, title: str = "") -> Path:
    """Loss, accuracy and learning rate per epoch (train and validation), as in metrics.csv.

    `metrics`: the rows of metrics.csv (dicts of strings or numbers; empty values are gaps).
    The best validation accuracy is marked with its value and epoch.
    """
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    epochs = _values(metrics, "epoch")
    few = len(epochs) <= 40
    marker = dict(marker="o", markersize=3.5) if few else {}
    fig = new_figure(15, 4.4)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 0.7]})
    fig.suptitle(f"{title}: training curves ({len(epochs)} epoch{'s' * (len(epochs) != 1)})" if title
                 else "training curves", fontsize=13, fontweight="bold")

    for ax, key, label in ((ax_loss, "loss", "cross-entropy loss"), (ax_acc, "acc", "accuracy")):
        ax.plot(epochs, _values(metrics, f"train_{key}"), color="tab:blue", label="train", **marker)
        ax.plot(epochs, _values(metrics, f"val_{key}"), color="tab:orange", label="validation", **marker)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_title("loss (mean per example)")
    ax_acc.set_title("accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))

    val_acc = _values(metrics, "val_acc")
    best = best_row(metrics)  # the epoch best.safetensors holds
    if best is not None:
        ax_acc.plot([epochs[best]], [val_acc[best]], marker="*", markersize=14, color="tab:red", linestyle="none",
                    label=f"best validation {100 * val_acc[best]:.2f}% (epoch {int(epochs[best])})", zorder=5)
    val_loss = _values(metrics, "val_loss")
    if np.isfinite(val_loss).any():
        low = int(np.nanargmin(val_loss))
        ax_loss.plot([epochs[low]], [val_loss[low]], marker="*", markersize=14, color="tab:red", linestyle="none",
                     label=f"lowest validation {val_loss[low]:.4f} (epoch {int(epochs[low])})", zorder=5)
    ax_loss.legend(loc="best", fontsize=9)
    ax_acc.legend(loc="best", fontsize=9)

    lr = _values(metrics, "lr")
    ax_lr.plot(epochs, lr, color="tab:green", **marker)
    ax_lr.set_title("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate (of that epoch)")
    ax_lr.grid(alpha=0.3)
    ax_lr.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    finite = lr[np.isfinite(lr)]
    if finite.size and finite.max() == finite.min():
        v = finite[0]
        ax_lr.set_ylim(0, 2 * v if v > 0 else 1)
        ax_lr.text(0.5, 0.55, f"constant {v:g}", transform=ax_lr.transAxes, ha="center", color="tab:green")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- confusion.png
def draw_confusion(confusion, classes, path, title: str = "", split: str = "test") -> Path:
    """Row-normalized confusion matrix (rows: true class), class names on both axes, the overall
    accuracy in the title and, for up to 20 classes, each cell's percentage."""
    counts = np.asarray(confusion, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"a confusion matrix must be square (K x K), got shape {counts.shape}")
    k = counts.shape[0]
    classes = [str(c) for c in classes] if classes is not None and len(classes) == k else [str(i) for i in range(k)]
    support = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, support, out=np.zeros(counts.shape, np.float64), where=support > 0)
    n, correct = int(counts.sum()), int(np.trace(counts))
    accuracy = correct / n if n else float("nan")

    side = min(22.0, max(6.5, 0.55 * k + 3.0))
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap=_cmap("Blues"), vmin=0, vmax=1, interpolation="nearest")
    from matplotlib.ticker import PercentFormatter

    cbar = fig.colorbar(image, ax=ax, shrink=0.8, format=PercentFormatter(xmax=1.0, decimals=0))
    cbar.set_label("share of the true class's examples")
    label_size = 10 if k <= 20 else max(5, int(260 / k))
    crowded = k * max(map(len, classes)) > 40
    ax.set_xticks(range(k), labels=classes, fontsize=label_size, rotation=45 if crowded else 0,
                  ha="right" if crowded else "center", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=classes, fontsize=label_size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    heading = f"{title}: confusion matrix" if title else "confusion matrix"
    ax.set_title(f"{heading}\n{split} accuracy {100 * accuracy:.2f}% ({correct:,} of {n:,}); rows sum to 100%",
                 fontsize=12)
    if k <= 20:  # each cell: its percentage of the row and, up to 10 classes, the count
        size = 11 if k <= 4 else 8.5 if k <= 10 else 6.5
        for i in range(k):
            for j in range(k):
                if counts[i, j] == 0:
                    continue
                v = 100 * norm[i, j]
                text = f"{v:.1f}%" if v < 99.95 else "100%"
                if k <= 10:
                    text += f"\n({counts[i, j]:,})"
                ax.text(j, i, text, ha="center", va="center", fontsize=size,
                        color="white" if norm[i, j] > 0.55 else "black")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- boundary.png
def _forward_eval(model, x: np.ndarray, batch: int = 8192) -> np.ndarray:
    """Logits of the network in eval mode, restoring each layer's mode afterwards."""
    modes = [layer.training for layer in model.layers]
    dtype = next((p.dtype for layer in model.layers for p in layer.params.values()), np.float32)
    try:
        model.eval()
        return np.concatenate([np.asarray(model.forward(x[i:i + batch].astype(dtype)), np.float64)
                               for i in range(0, len(x), batch)])
    finally:
        for layer, mode in zip(model.layers, modes):
            layer.training = mode


def draw_boundary(model, path, *, train=None, test=None, classes=None, normalization=None, title: str = "",
                  resolution: int = 300) -> Path:
    """Decision regions of a network on 2-D points over the data, with the points on top.

    `train`, `test`: (x (N, 2), y (N,)) pairs or objects with .x and .y (raw features, as plotted;
    `normalization` {"mean", "std"} is applied before the forward, as the data pipeline does).
    Two classes: the probability of the second class as filled contours and its 0.5 line, the
    decision boundary. More classes: the predicted class as coloured regions.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.lines import Line2D

    sets = [(name, *_xy(s)) for name, s in (("train", train), ("test", test)) if s is not None]
    points = np.concatenate([x for _, x, _ in sets]) if sets else np.zeros((0, 2))
    if points.shape[0] == 0:
        lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    else:
        lo, hi = points.min(axis=0), points.max(axis=0)
    pad = 0.1 * np.maximum(hi - lo, 1e-6)
    lo, hi = lo - pad, hi + pad
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    grid_in = _normalized(grid, normalization)
    probs = softmax(_forward_eval(model, grid_in))
    k = probs.shape[1]
    classes = [str(c) for c in classes] if classes is not None and len(classes) == k else [str(i) for i in range(k)]
    colours = list(_TWO) if k == 2 else [_cmap("tab10" if k <= 10 else "tab20")(i % 20) for i in range(k)]

    fig = new_figure(8.6, 7.2)
    ax = fig.add_subplot()
    if k == 2:
        p1 = probs[:, 1].reshape(gx.shape)
        filled = ax.contourf(gx, gy, p1, levels=np.linspace(0, 1, 11), cmap=_cmap("RdBu_r"), alpha=0.75)
        ax.contour(gx, gy, p1, levels=[0.5], colors="black", linewidths=1.8)
        cbar = fig.colorbar(filled, ax=ax, shrink=0.85)
        cbar.set_label(f"predicted probability of '{classes[1]}'")
    else:
        pred = probs.argmax(axis=1).reshape(gx.shape)
        cmap = ListedColormap(colours)
        ax.contourf(gx, gy, pred, levels=np.arange(k + 1) - 0.5, cmap=cmap,
                    norm=BoundaryNorm(np.arange(k + 1) - 0.5, k), alpha=0.35)
        ax.contour(gx, gy, pred, levels=np.arange(k) + 0.5, colors="black", linewidths=1.0)

    handles = []
    for name, x, y in sets:
        for c in range(k):
            sel = y == c
            if not sel.any():
                continue
            if name == "train":
                ax.scatter(x[sel, 0], x[sel, 1], s=26, color=colours[c], edgecolors="white", linewidths=0.7, zorder=3)
            else:
                ax.scatter(x[sel, 0], x[sel, 1], s=30, marker="^", facecolors="none", edgecolors=colours[c],
                           linewidths=1.3, zorder=4)
    for name in [s[0] for s in sets]:
        for c in range(k):
            if name == "train":
                handles.append(Line2D([], [], marker="o", linestyle="none", color=colours[c], markeredgecolor="white",
                                      label=f"train: {classes[c]}"))
            else:
                handles.append(Line2D([], [], marker="^", linestyle="none", markerfacecolor="none",
                                      markeredgecolor=colours[c], label=f"test: {classes[c]}"))
    if k == 2:
        handles.append(Line2D([], [], color="black", label="decision boundary (p = 0.5)"))
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)

    subtitle = []
    for name, x, y in sets:
        pred = _forward_eval(model, _normalized(x, normalization)).argmax(axis=1)
        subtitle.append(f"{name} accuracy {100 * float((pred == y).mean()):.1f}% ({len(y)} points)")
    heading = f"{title}: decision regions" if title else "decision regions"
    ax.set_title(heading + ("\n" + ", ".join(subtitle) if subtitle else ""), fontsize=12)
    ax.set_xlabel("feature 1 (x1)")
    ax.set_ylabel("feature 2 (x2)")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    return save_figure(fig, path)


def _xy(split):
    if isinstance(split, (tuple, list)):
        x, y = split
    else:
        x, y = split.x, split.y
    return np.asarray(x, np.float64), np.asarray(y, np.int64)


def _normalized(x, normalization):
    if not normalization:
        return x
    mean = np.asarray(normalization["mean"], np.float64)
    std = np.asarray(normalization["std"], np.float64)
    return (x - mean) / std


# ----------------------------------------------------------------------------- filters.png
def draw_filters(weight: np.ndarray, path, title: str = "") -> Path:
    """The first conv layer's filters (F, C, kh, kw), each scaled to [0, 1] on its own: in colour
    when C == 3 (RGB), else in gray levels of the mean over the input channels."""
    w = np.asarray(weight, np.float64)
    f, c, kh, kw = w.shape
    cols = f if f <= 8 else min(16, math.ceil(math.sqrt(f * 2)))
    rows = math.ceil(f / cols)
    cell = 1.25 if f > 16 else 1.6
    fig = new_figure(max(5.0, cols * cell), rows * cell + 1.1)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colour = c == 3
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= f:
            continue
        img = w[i].transpose(1, 2, 0) if colour else w[i].mean(axis=0)
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else np.full_like(img, 0.5)
        if colour:
            ax.imshow(img, interpolation="nearest")
        else:
            ax.imshow(img, cmap=_cmap("gray"), vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(str(i), fontsize=8, pad=2)
    how = "RGB" if colour else ("gray levels" if c == 1 else f"gray levels of the mean over {c} input channels")
    heading = f"{title}: first-layer filters" if title else "first-layer filters"
    fig.suptitle(f"{heading}\n{f} filters of {c}x{kh}x{kw} ({how}; each scaled to its own min..max)", fontsize=11)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- errors.png
def draw_errors(images: np.ndarray, labels: np.ndarray, logits: np.ndarray, classes, path, title: str = "",
                rows: int = 4, cols: int = 6) -> Path:
    """A grid of the misclassified test images with the highest loss, each titled with its true and
    predicted class and the predicted probability. `images`: uint8 (N, H, W, C)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    classes = [str(c) for c in classes]
    probs = softmax(logits)
    pred = probs.argmax(axis=1)
    loss = -np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-300))
    wrong = np.flatnonzero(pred != labels)
    chosen = wrong[np.argsort(-loss[wrong], kind="stable")][:rows * cols]
    heading = f"{title}: worst test errors" if title else "worst test errors"
    if not len(wrong):
        fig = new_figure(8, 1.6)
        fig.suptitle(heading, fontsize=11)
        fig.text(0.5, 0.4, f"no misclassified image among the {len(labels):,} test images", ha="center",
                 va="center", fontsize=12)
        return save_figure(fig, path)
    rows = min(rows, math.ceil(len(chosen) / cols))
    cols = min(cols, len(chosen))
    longest = max(len(classes[labels[i]]) + len(classes[pred[i]]) for i in chosen)
    two_lines = longest > 14
    fig = new_figure(max(6.0, cols * 2.1), rows * (2.35 if two_lines else 2.2) + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, i in zip(axes, chosen):
        img = images[i]
        if img.ndim == 3 and img.shape[2] == 1:
            ax.imshow(img[:, :, 0], cmap=_cmap("gray"), vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        sep = "\n" if two_lines else " / "
        ax.set_title(f"true {classes[labels[i]]}{sep}pred {classes[pred[i]]} (p={probs[i, pred[i]]:.2f})",
                     fontsize=8.5, color="#b2182b")
    sub = (f"the {len(chosen)} misclassified test images with the highest loss "
           f"({len(wrong):,} errors in {len(labels):,} images)")
    fig.suptitle(f"{heading}\n{sub}", fontsize=11)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- report --plot
def draw_validation_overlay(curves, path, title: str | None = None) -> Path:
    """Validation accuracy per epoch of several runs on one axis.

    `curves`: (name, epochs, accs, best_epoch) with best_epoch the epoch best.safetensors holds
    (or None to take the first maximum)."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig = new_figure(10, 6)
    ax = fig.add_subplot()
    longest = max((len(c[1]) for c in curves), default=0)
    for i, (name, epochs, accs, *best_epoch) in enumerate(curves):
        style = dict(marker="o", markersize=3) if longest <= 40 else {}
        label = name
        if accs:
            best = list(epochs).index(best_epoch[0]) if best_epoch and best_epoch[0] in epochs else int(np.argmax(accs))
            label = f"{name} (best {100 * accs[best]:.2f}% @ epoch {epochs[best]})"
        ax.plot(epochs, accs, label=label, linestyle="-" if i < 10 else "--", **style)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_title(title or f"validation accuracy of {len(curves)} run{'s' * (len(curves) != 1)}", fontsize=13)
    if curves:
        ax.legend(loc="lower right", fontsize=9)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- a whole run
def draw_run(run_dir, *, metrics: list[dict], classes: list[str], confusion=None, model=None, test_split=None,
             test_logits=None, train_split=None, normalization=None, on_error: str = "warn") -> list[Path]:
    """Draw every picture that applies to a finished run into `run_dir`; returns the files written.

    - curves.png always (from `metrics`, the rows of metrics.csv);
    - confusion.png when `confusion` (test_metrics.json's confusion_matrix, rows true class) is given;
    - boundary.png when the data is 2-D features (`train_split`/`test_split` x of shape (N, 2)) and
      `model` is given; `normalization` is the run's, applied to the points before the forward;
    - filters.png when `model.layers[0]` is a Conv2d;
    - errors.png for image data (`test_split.x` uint8 (N, H, W, C)) with `test_logits` (N, K) in the
      split's order.

    on_error: "warn" (default) turns a failure to draw one picture into a RuntimeWarning and goes on
    with the others, so a finished training never fails over a picture; "raise" re-raises.
    """
    run_dir = Path(run_dir)
    name = run_dir.resolve().name
    jobs = [("curves.png", lambda p: draw_curves(metrics, p, title=name))]
    if confusion is not None:
        jobs.append(("confusion.png", lambda p: draw_confusion(confusion, classes, p, title=name)))
    splits = [s for s in (train_split, test_split) if s is not None]
    flat_2d = bool(splits) and all(np.ndim(s.x) == 2 and np.shape(s.x)[1] == 2 for s in splits)
    if model is not None and flat_2d:
        jobs.append(("boundary.png", lambda p: draw_boundary(model, p, train=train_split, test=test_split,
                                                             classes=classes, normalization=normalization,
                                                             title=name)))
    if model is not None and model.layers and type(model.layers[0]).__name__ == R.CONV2D.fast:
        jobs.append(("filters.png", lambda p: draw_filters(model.layers[0].params["weight"], p, title=name)))
    if test_split is not None and test_logits is not None and np.ndim(test_split.x) == 4:
        jobs.append(("errors.png", lambda p: draw_errors(test_split.x, test_split.y, test_logits, classes, p,
                                                         title=name)))
    written = []
    for filename, draw in jobs:
        try:
            written.append(draw(run_dir / filename))
        except Exception as e:
            if on_error == "raise":
                raise
            warnings.warn(f"could not draw {run_dir / filename}: {type(e).__name__}: {e}", RuntimeWarning,
                          stacklevel=2)
    return written


# ----------------------------------------------------------------------------- a sweep
def draw_sweep(curves, points: dict, path, *, metric_label: str = "best validation accuracy",
               percent: bool = True) -> Path:
    """sweep.png: the validation accuracy per epoch of every trial, and the sweep's metric
    against each varied key, one panel per key.

    `curves`: (name, epochs, accs, status) per trial that has a run directory; trials that did
    not finish are dashed. `points`: key -> [(value, metric)] over the trials with a result;
    numbers are placed on a log axis when they span more than a factor 20, other values
    (strings, lists, booleans) as categories in their order of first appearance."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig = new_figure(6.5 + 4 * len(points), 4.8)
    axes = fig.subplots(1, 1 + len(points), squeeze=False)[0]
    ax = axes[0]
    for name, epochs, accs, status in curves:
        ax.plot(epochs, accs, linestyle="-" if status == "done" else "--", marker="o" if len(epochs) <= 30 else None,
                markersize=3, label=name if status == "done" else f"{name} ({status})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.set_title(f"{len(curves)} trial{'s' * (len(curves) != 1)}")
    if 0 < len(curves) <= 12:
        ax.legend(fontsize=7, loc="lower right")
    for ax, (key, pairs) in zip(axes[1:], points.items()):
        values = [v for v, _ in pairs]
        numeric = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            xs = values
            if min(values) > 0 and max(values) / min(values) > 20:
                ax.set_xscale("log")
        else:
            labels = list(dict.fromkeys(str(v) for v in values))
            xs = [labels.index(str(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels)
        ax.scatter(xs, [m for _, m in pairs], s=30)
        ax.set_xlabel(key)
        ax.set_ylabel(metric_label)
        if percent:
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
        ax.grid(alpha=0.3)
    return save_figure(fig, path)
