"""Compare training runs: `mlp-cli report RUN_DIR... [--format table|markdown|csv|json] [--plot FILE.png]`.

A row per run: what differs between the runs' configs (the resolved config.yaml of each run,
flattened to dotted keys, shown as key=value), the best validation accuracy and its epoch, the
test accuracy of best.safetensors (test_metrics.json) if the run got that far, the epochs done
and the median wall time of an epoch's training loop (metrics.csv `seconds`).

`model.layers` is compared layer by layer (`model.layers.3.out_channels`) when every run has the
same sequence of layer types; otherwise, when layers were added or removed, the whole stack is one
key shown in a compact notation (conv32k5p2-bn-relu-max2-...), since per-index keys would shift.

A folder that is not a run is skipped with a warning (a glob such as runs/* often catches one).
A sweep folder (mlp-cli sweep) stands for the run directories of its trials.

Pure Python except --plot, which imports matplotlib when asked.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from mlp_cli import registry as R
from mlp_cli import rundir


@dataclass
class Run:
    path: Path
    name: str
    config: dict
    metrics: list[dict]
    test: dict | None
    differences: dict = field(default_factory=dict)  # dotted key -> value (filled by compare)

    @property
    def epochs(self) -> int:
        return int(float(self.metrics[-1]["epoch"])) if self.metrics else 0

    @property
    def planned_epochs(self) -> int | None:
        return (self.config.get("train") or {}).get("epochs")

    @property
    def best(self) -> tuple[float | None, int | None]:
        """Best validation accuracy and its epoch (the epoch best.safetensors holds)."""
        from mlp_cli.selection import best_row

        i = best_row(self.metrics)
        return (None, None) if i is None else (_number(self.metrics[i]["val_acc"]), int(float(self.metrics[i]["epoch"])))

    @property
    def test_acc(self) -> float | None:
        return None if not self.test else _number(self.test.get("accuracy"))

    @property
    def seconds_per_epoch(self) -> float | None:
        values = [v for v in (_number(r.get("seconds")) for r in self.metrics) if v is not None]
        return statistics.median(values) if values else None

    def val_curve(self) -> tuple[list[int], list[float]]:
        epochs, accs = [], []
        for row in self.metrics:
            acc = _number(row.get("val_acc"))
            if acc is not None:
                epochs.append(int(float(row["epoch"])))
                accs.append(acc)
        return epochs, accs


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- reading
def load_run(path) -> Run:
    files = rundir.read(path)
    return Run(files.path, files.path.resolve().name, files.config, files.metrics, files.test)


# ----------------------------------------------------------------------------- config differences
_MISSING = object()


def layer_notation(layer: dict) -> str:
    """A compact name for one layer spec: conv32k5p2, max2ceil, fc1000, drop0.5, bn, relu."""
    name = str(layer.get("type", "?")).lower()
    kind = R.layer_type(name)

    def size(v):
        return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    def opt(prefix, v, default):
        return "" if v is None or v == default or (isinstance(v, (list, tuple)) and all(x == default for x in v)) \
            else f"{prefix}{size(v)}"

    if kind is R.LINEAR:
        return f"fc{layer.get('out_features')}" + ("" if layer.get("bias", True) else "nobias")
    if kind is R.CONV2D:
        return (f"conv{layer.get('out_channels')}k{size(layer.get('kernel_size'))}"
                + opt("s", layer.get("stride"), 1) + opt("p", layer.get("padding"), 0)
                + opt("d", layer.get("dilation"), 1) + ("" if layer.get("bias", True) else "nobias"))
    if kind in (R.MAXPOOL2D, R.AVGPOOL2D):
        k = layer.get("kernel_size")
        stride = layer.get("stride")
        return (f"{name[:3]}{size(k)}" + ("" if stride in (None, k) else f"s{size(stride)}")
                + opt("p", layer.get("padding"), 0) + opt("d", layer.get("dilation"), 1)
                + ("ceil" if layer.get("ceil_mode") else ""))
    if kind is R.DROPOUT:
        return f"drop{layer.get('p', 0.5):g}"
    if kind in (R.BATCHNORM1D, R.BATCHNORM2D):
        return "bn"
    return name


def _layers_comparable(configs: list[dict]) -> bool:
    stacks = [((c.get("model") or {}).get("layers")) for c in configs]
    if not all(isinstance(s, list) for s in stacks):
        return False
    kinds = [[str(l.get("type", "")).lower() if isinstance(l, dict) else None for l in s] for s in stacks]
    return all(k == kinds[0] for k in kinds)


def flatten(config, prefix: str = "", *, split_layers: bool = True) -> dict:
    """Dotted keys -> scalar values (lists of scalars stay whole; model.layers see the module doc)."""
    out = {}
    if isinstance(config, dict):
        for k, v in config.items():
            key = f"{prefix}{k}"
            if key == "model.layers" and isinstance(v, list) and not split_layers:
                out[key] = "-".join(layer_notation(l) if isinstance(l, dict) else str(l) for l in v)
            elif isinstance(v, dict) or (isinstance(v, list) and any(isinstance(i, (dict, list)) for i in v)):
                if isinstance(v, list):
                    v = {str(i): item for i, item in enumerate(v)}
                out.update(flatten(v, key + ".", split_layers=split_layers))
            else:
                out[key] = v
    return out


def compare(runs: list[Run]) -> list[str]:
    """Fill each run's `differences` with the keys whose values are not all equal; return the keys."""
    if len(runs) < 2:
        for run in runs:
            run.differences = {}
        return []
    split = _layers_comparable([r.config for r in runs])
    flats = [flatten(r.config, split_layers=split) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    differing = [k for k in keys if len({json.dumps(f.get(k, "<unset>"), sort_keys=True, default=str) for f in flats}) > 1]
    for run, f in zip(runs, flats):
        run.differences = {k: f.get(k, _MISSING) for k in differing}
    return differing


def format_value(value) -> str:
    if value is _MISSING:
        return "(unset)"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def _pairs(run: Run) -> list[str]:
    return [f"{k}={format_value(v)}" for k, v in run.differences.items()]


# ----------------------------------------------------------------------------- output
def sweep_runs(path: Path) -> list[Path]:
    """The run directories of a sweep folder (mlp-cli sweep), in the order of its results.csv;
    trials that never started have none."""
    with open(path / "results.csv", newline="") as f:
        names = [row["trial"] for row in csv.DictReader(f)]
    return [path / n for n in names if (path / n / "config.yaml").is_file()]


def load_runs(paths) -> tuple[list[Run], list[str]]:
    """(the runs of `paths`, a message per path that is not a run); sweep folders stand for the runs
    of their trials. rundir.NotARun if no run is left."""
    expanded, skipped = [], []
    for p in map(Path, paths):
        if (p / "results.csv").is_file() and (p / "sweep.yaml").is_file() and not (p / "config.yaml").exists():
            try:
                trials = sweep_runs(p)
            except (OSError, KeyError, csv.Error) as e:
                skipped.append(f"{p / 'results.csv'}: not a results file of mlp-cli sweep ({e})")
                continue
            if not trials:
                skipped.append(f"{p}: no trial of the sweep has started yet")
            expanded += trials
        else:
            expanded.append(p)
    runs = []
    for path in expanded:
        try:
            runs.append(load_run(path))
        except rundir.NotARun as e:
            skipped.append(str(e))
    if not runs:
        raise rundir.NotARun(skipped[0] if len(skipped) == 1 else
                          f"none of the {len(skipped)} folders is a run directory; the first: {skipped[0]}")
    names = [r.name for r in runs]
    for r in runs:  # two runs with the same folder name: show the parent too
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    compare(runs)
    return runs, skipped


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}%"


def _epochs(run: Run) -> str:
    planned = run.planned_epochs
    return str(run.epochs) if planned in (None, run.epochs) else f"{run.epochs}/{planned}"


def _secs(v):
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


HEADERS = ("run", "best val acc", "at epoch", "test acc", "epochs", "s/epoch", "config differences")


def _cells(run: Run) -> list[str]:
    acc, epoch = run.best
    return [run.name, _pct(acc), "-" if epoch is None else str(epoch), _pct(run.test_acc), _epochs(run),
            _secs(run.seconds_per_epoch)]


def table(runs: list[Run], width: int | None = None) -> str:
    """Aligned columns for the terminal; the differences are the last column, wrapped."""
    import shutil
    import textwrap

    width = width or shutil.get_terminal_size((120, 24)).columns
    rows = [_cells(r) for r in runs]
    widths = [max(len(x) for x in col) for col in zip(HEADERS[:-1], *rows)]
    right = (False, True, True, True, True, True)

    def fixed(cells):
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right))

    indent = sum(widths) + 2 * len(widths)
    room = max(30, width - indent)
    lines = [fixed(HEADERS[:-1]) + "  " + HEADERS[-1]]
    for run, cells in zip(runs, rows):
        pairs = _pairs(run)
        text = "  ".join(pairs) if pairs else "-"
        wrapped = textwrap.wrap(text, room, break_long_words=False, break_on_hyphens=False) or ["-"]
        lines.append(fixed(cells) + "  " + wrapped[0])
        lines += [" " * indent + more for more in wrapped[1:]]
    if len(runs) == 1:
        lines.append("(one run: nothing to compare its config with)")
    return "\n".join(lines)


def markdown(runs: list[Run]) -> str:
    def esc(s):
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(HEADERS) + " |", "| " + " | ".join(["---"] + ["---:"] * 5 + ["---"]) + " |"]
    for run in runs:
        diffs = ", ".join(f"`{p}`" for p in _pairs(run)) or "-"
        lines.append("| " + " | ".join(esc(c) for c in _cells(run)) + " | " + esc(diffs) + " |")
    return "\n".join(lines)


def records(runs: list[Run]) -> list[dict]:
    """Plain data for csv/json: fractions, not percentages; None where unknown."""
    out = []
    for run in runs:
        acc, epoch = run.best
        out.append({
            "run": run.name, "path": str(run.path), "best_val_acc": acc, "best_epoch": epoch,
            "test_acc": run.test_acc, "epochs": run.epochs, "planned_epochs": run.planned_epochs,
            "seconds_per_epoch": run.seconds_per_epoch,
            "differences": {k: (None if v is _MISSING else v) for k, v in run.differences.items()},
        })
    return out


def to_csv(runs: list[Run]) -> str:
    buf = io.StringIO()
    cols = ["run", "best_val_acc", "best_epoch", "test_acc", "epochs", "planned_epochs", "seconds_per_epoch",
            "differences", "path"]
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for run, rec in zip(runs, records(runs)):
        rec = {**rec, "differences": "; ".join(_pairs(run))}
        writer.writerow({k: "" if rec[k] is None else rec[k] for k in cols})
    return buf.getvalue().rstrip("\n")


def to_json(runs: list[Run]) -> str:
    return json.dumps(records(runs), indent=2)


FORMATS = {"table": table, "markdown": markdown, "csv": to_csv, "json": to_json}


def plot_validation(runs: list[Run], path, title: str | None = None) -> Path:
    """One PNG: the validation accuracy per epoch of every run, one curve each, legend with run names."""
    from mlp_cli.pictures import draw_validation_overlay

    return draw_validation_overlay([(r.name, *r.val_curve(), r.best[1]) for r in runs], path, title=title)
