"""The sweep folder: its state on disk, which --resume trusts.

  sweep.yaml   the plan (plan.py): the request and its trials, with the config they share;
  results.csv  one row per trial, rewritten atomically whenever a trial changes state: its
               status, and what its run directory holds (best epoch, test accuracy, time);
  sweep.png    the validation curves, and the metric against each varied key;
  the HParams experiment of TensorBoard at the root (each trial's run writes its values).
"""

from __future__ import annotations

import csv
import io
import shlex
from pathlib import Path

import yaml

from mlp_cli import selection
from mlp_cli.config import ConfigError
from mlp_cli.sweep.plan import Plan, Trial, scalar, trial_hparams, trial_threads

SWEEP_FILE, RESULTS_FILE, PLOT_FILE = "sweep.yaml", "results.csv", "sweep.png"


def write_plan(plan: Plan, out: Path) -> None:
    from mlp_cli.files import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / SWEEP_FILE, yaml.safe_dump(plan.to_file(), sort_keys=False, default_flow_style=None))


def read_plan(out) -> Plan:
    out = Path(out)
    try:
        data = yaml.safe_load((out / SWEEP_FILE).read_text())
        data["trials"] = [Trial(**t) for t in data["trials"]]
        return Plan(**data)
    except FileNotFoundError:
        raise ConfigError(f"{out} is not a sweep folder (no {SWEEP_FILE}); pass a folder that mlp-cli sweep created") from None
    except (OSError, yaml.YAMLError, TypeError, KeyError) as e:
        raise ConfigError(f"{out / SWEEP_FILE}: not a sweep file of mlp-cli ({e})") from None


def result_row(plan: Plan, trial: Trial, out: Path, status: str, message: str = "") -> dict:
    """A results.csv row: the varied values, the status, and what the run directory holds."""
    from mlp_cli import report, rundir

    row = {"trial": trial.name}
    row.update({item.partition("=")[0]: item.partition("=")[2] for item in trial.overrides})
    row.update(status=status, best_val_acc="", best_epoch="", best_val_loss="", test_acc="", epochs="", seconds="",
               message=message)
    try:
        run = report.load_run(out / trial.name)
    except rundir.NotARun:
        return row
    acc, epoch = run.best
    losses = [float(r["val_loss"]) for r in run.metrics if r.get("val_loss")]
    seconds = sum(float(r["seconds"]) for r in run.metrics if r.get("seconds"))
    row.update(best_val_acc="" if acc is None else f"{acc:.6f}", best_epoch="" if epoch is None else epoch,
               best_val_loss=f"{min(losses):.6f}" if losses else "",
               test_acc="" if run.test_acc is None else f"{run.test_acc:.6f}", epochs=run.epochs,
               seconds=f"{seconds:.2f}")
    return row


def write_results(plan: Plan, out: Path, rows: dict[str, dict]) -> None:
    from mlp_cli.files import write_atomic

    buf = io.StringIO()
    fields = list(rows[plan.trials[0].name])
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[t.name] for t in plan.trials)
    write_atomic(out / RESULTS_FILE, buf.getvalue())


def read_statuses(out: Path) -> dict[str, tuple[str, str]]:
    """Trial name -> (status, message) from results.csv (empty when there is none yet)."""
    try:
        with open(out / RESULTS_FILE, newline="") as f:
            return {r["trial"]: (r.get("status", ""), r.get("message", "")) for r in csv.DictReader(f)}
    except FileNotFoundError:
        return {}


def best_trial(plan: Plan, rows: dict[str, dict]) -> dict | None:
    """The row of the best trial by plan.metric, chosen as best.safetensors is (selection.py);
    None when no trial has a validation result."""
    trials = list(rows.values())
    scores = [(_number(r["best_val_acc"]), _number(r["best_val_loss"])) for r in trials]
    best = selection.best_index(scores, plan.metric)
    return None if best is None else trials[best]


def _number(text: str) -> float | None:
    return None if text == "" else float(text)


def reproduce_command(plan: Plan, trial_name: str, threads: int) -> str:
    trial = next(t for t in plan.trials if t.name == trial_name)
    words = ["mlp-cli", "train", "--config", plan.config, *plan.overrides, *trial.overrides]
    return f"MLP_CLI_THREADS={threads} " + " ".join(shlex.quote(w) for w in words)


def summary(plan: Plan, out: Path, rows: dict[str, dict]) -> str:
    """What the sweep found: counts, the best trial and the command that reproduces it."""
    statuses = [r["status"] for r in rows.values()]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in ("done", "stopped", "failed", "lost")
                       if statuses.count(s))
    lines = [f"{len(rows)} trials: {counts or 'none finished'}; results in {out / RESULTS_FILE}, curves in {out / PLOT_FILE}"]
    best = best_trial(plan, rows)
    if best is not None:
        what = (f"validation accuracy {100 * float(best['best_val_acc']):.2f}% at epoch {best['best_epoch']}"
                if plan.metric == "val_acc" else f"validation loss {float(best['best_val_loss']):.4f}")
        test = f", test accuracy {100 * float(best['test_acc']):.2f}%" if best["test_acc"] else ""
        lines.append(f"best trial: {best['trial']} ({best['status']}), {what}{test}; run in {out / best['trial']}")
        lines.append(f"reproduce it: {reproduce_command(plan, best['trial'], trial_threads())}")
    return "\n".join(lines)


def draw(plan: Plan, out: Path, rows: dict[str, dict]) -> Path:
    from mlp_cli import pictures, report, rundir

    curves = []
    for trial in plan.trials:
        try:
            run = report.load_run(out / trial.name)
        except rundir.NotARun:
            continue
        curves.append((trial.name, *run.val_curve(), rows[trial.name]["status"]))
    key = "best_val_acc" if plan.metric == "val_acc" else "best_val_loss"
    points = {k: [(scalar(rows[t.name][k]), float(rows[t.name][key])) for t in plan.trials
                  if rows[t.name][key] != ""] for k in plan.params}
    label = "best validation accuracy" if plan.metric == "val_acc" else "lowest validation loss"
    return pictures.draw_sweep(curves, points, out / PLOT_FILE, metric_label=label, percent=plan.metric == "val_acc")


def write_hparams_config(plan: Plan, out: Path, configs: dict) -> None:
    """TensorBoard's HParams experiment at the sweep's root (each trial's run writes its values)."""
    if not any(cfg.train.tensorboard for cfg in configs.values()):
        return
    from mlp_cli import events

    values: dict[str, list] = {}
    for trial in plan.trials:
        for key, value in trial_hparams(trial).items():
            values.setdefault(key, []).append(value)
    events.write_sweep_hparams_config(out, values)
