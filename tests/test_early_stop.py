"""train.early_stop: Keras's EarlyStopping(monitor, patience, min_delta), in a run and on resume."""

import csv
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlp_cli.train.steps import early_stop

ROOT = Path(__file__).resolve().parents[1]
MLP_CLI = [sys.executable, "-m", "mlp_cli.cli"]
CIRCLES = ROOT / "configs" / "circles_mlp.yaml"


def rows(monitor, values):
    return [{"epoch": i + 1, monitor: v} for i, v in enumerate(values)]


def rule(monitor="val_loss", patience=0, min_delta=0.0):
    return SimpleNamespace(monitor=monitor, patience=patience, min_delta=min_delta)


@pytest.mark.parametrize("values, patience, min_delta, stop", [
    ([1.0, 0.9, 0.8, 0.7], 0, 0.0, None),  # improving every epoch
    ([1.0, 1.0], 0, 0.0, 2),  # Keras: patience 0 stops at the first epoch without improvement
    ([1.0, 0.995, 0.992, 0.991, 0.5], 3, 0.01, 4),  # changes below min_delta are no improvement
    ([1.0, 0.99, 0.995, 0.5, 0.495, 0.49, 0.492], 3, 0.015, 7),  # the wait starts again at 0.5
    ([1.0, 1.1, 1.2, 0.9, 1.0], 3, 0.0, None),  # 0.9 improved before the patience ran out
])
def test_the_rule_replays_keras(values, patience, min_delta, stop):
    found = early_stop(rows("val_loss", values), rule("val_loss", patience, min_delta))
    assert (found and found.epoch) == stop


def test_val_acc_must_rise():
    found = early_stop(rows("val_acc", [0.5, 0.6, 0.55, 0.6]), rule("val_acc", 2))
    assert found.epoch == 4 and found.best == 0.6 and found.best_epoch == 2


def train(*args):
    return subprocess.run([*MLP_CLI, "train", *map(str, args)], capture_output=True, text=True)


STOP = ["optim.lr=1e-9", "train.early_stop.monitor=val_loss", "train.early_stop.patience=3",
        "train.early_stop.min_delta=0.01", "train.plots=false"]


def epochs(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_a_run_that_stops_learning_stops_after_patience_epochs(tmp_path):
    out = tmp_path / "run"
    r = train("--config", CIRCLES, "--out", out, *STOP)
    assert r.returncode == 0, r.stderr
    assert epochs(out) == [1, 2, 3, 4]
    assert "early stop after epoch 4: val_loss has not improved by at least 0.01 for 3 epochs" in r.stdout
    assert "done: 4 epochs (stopped early)" in r.stdout
    assert (out / "best.safetensors").exists() and (out / "test_metrics.json").exists()

    again = train("--resume", out)  # the run is finished: nothing more is trained
    assert again.returncode == 0, again.stderr
    assert "stopped early at epoch 4" in again.stdout and "train.early_stop.patience=" in again.stdout
    assert epochs(out) == [1, 2, 3, 4]

    more = train("--resume", out, "train.early_stop.patience=5")  # a higher patience goes on
    assert more.returncode == 0, more.stderr
    assert epochs(out) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("bad, message", [
    ("train.early_stop.patience=-1", "train.early_stop.patience"),
    ("train.early_stop.monitor=val_accuracy", "train.early_stop.monitor"),
    ("train.early_stop.min_delta=-0.1", "train.early_stop.min_delta"),
])
def test_bad_values_exit_2_and_write_nothing(tmp_path, bad, message):
    out = tmp_path / "run"
    r = train("--config", CIRCLES, "--out", out, *STOP, bad)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_early_stop_needs_a_validation_split(tmp_path):
    r = train("--config", CIRCLES, "--out", tmp_path / "run", *STOP, "data.val_size=0")
    assert r.returncode == 2 and "data.val_size is 0" in r.stderr
    assert not (tmp_path / "run").exists()
