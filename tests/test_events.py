"""TensorBoard logs of a run: read back with TensorBoard's own reader and served by a real
`tensorboard` server; equal to metrics.csv; whole and without duplicates after a resume."""

import csv
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from mlp_cli import config, events, train

ROOT = Path(__file__).resolve().parents[1]
CIRCLES = ROOT / "configs" / "circles_mlp.yaml"
QUIET = train.Console(quiet=True)


def circles(*overrides):
    return config.load(CIRCLES, ["train.plots=false", *overrides])


def scalars(logdir) -> dict:
    """{run: {tag: [(step, value), ...]}} as TensorBoard's reader finds them under `logdir`."""
    mux = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    mux.Reload()
    out = {}
    for run, tags in mux.Runs().items():
        out[run] = {tag: [(e.step, e.value) for e in mux.Scalars(run, tag)] for tag in tags["scalars"]}
    return out


def metrics(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def assert_equal_to_metrics(logged: dict, rows: list[dict]) -> None:
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        points = logged[f"epoch/{key}"]
        assert [step for step, _ in points] == [int(r["epoch"]) for r in rows], key  # each epoch once, in order
        for (_, value), row in zip(points, rows):
            assert value == pytest.approx(float(row[key]), rel=1e-6), key  # float32 of the CSV's number


def test_a_run_logs_every_metrics_column_and_batch_points(tmp_path):
    out = tmp_path / "run"
    train.fit(circles("train.epochs=4"), out, console=QUIET)
    logged = scalars(out)
    assert list(logged) == ["tensorboard"]
    assert_equal_to_metrics(logged["tensorboard"], metrics(out))
    batch = logged["tensorboard"]["batch/train_loss"]
    assert batch and batch[0][0] == 0 and all(v > 0 for _, v in batch)


def test_tensorboard_false_writes_no_log(tmp_path):
    train.fit(circles("train.epochs=2", "train.tensorboard=false"), tmp_path / "run", console=QUIET)
    assert not (tmp_path / "run" / events.FOLDER).exists()


def test_a_resumed_run_continues_the_curves(tmp_path):
    out = tmp_path / "run"
    train.fit(circles("train.epochs=3"), out, console=QUIET)
    train.fit(None, out, resume=True, overrides=["train.epochs=6"], console=QUIET)
    assert_equal_to_metrics(scalars(out)["tensorboard"], metrics(out))


class Killed(BaseException):
    pass


def test_epochs_killed_before_their_commit_are_not_shown_twice(tmp_path, monkeypatch):
    """The epochs of a killed process were logged but never committed: the resume trains them again
    and their first points are gone, not doubled."""
    out = tmp_path / "run"
    monkeypatch.setattr(train.loop, "COMMIT_INTERVAL", 3600.0)  # nothing committed before the last epoch

    def kill(row, committed, final):
        if row["epoch"] == 4:
            raise Killed

    with pytest.raises(Killed):
        train.fit(circles("train.epochs=6"), out, console=QUIET, on_epoch=kill)
    assert not (out / "metrics.csv").exists()  # no epoch committed
    assert scalars(out)["tensorboard"]["epoch/val_acc"]  # the dead process's points are on disk
    train.fit(None, out, resume=True, console=QUIET)
    assert_equal_to_metrics(scalars(out)["tensorboard"], metrics(out))


def test_a_stop_mid_epoch_keeps_the_finished_epochs_points_only(tmp_path):
    """A log closed by a stop in the middle of an epoch ends with the last finished epoch."""
    failures = []
    log = events.EventLog(tmp_path, 1, failures.append)
    log.batch(0, 1.0)
    log.epoch({"epoch": 1, "train_loss": 0.5, "train_acc": 0.5, "val_loss": 0.5, "val_acc": 0.5, "lr": 0.1,
               "seconds": 1.0})
    log._last_batch = 0  # the next batch point is due
    log.batch(5, 9.0)  # epoch 2, unfinished
    log.close()
    logged = scalars(tmp_path)["tensorboard"]
    assert logged["batch/train_loss"] == [(0, 1.0)] and logged["epoch/lr"] == [(1, pytest.approx(0.1))]
    assert failures == []


def test_a_log_that_cannot_be_written_stops_with_one_warning_at_the_end(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(events, "_event_file", full)
    result = train.fit(circles("train.epochs=3"), tmp_path / "run", console=train.Console())
    assert result.epochs == 3 and len(metrics(tmp_path / "run")) == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "TensorBoard log stops at epoch 1: No space left on device" in warnings[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tensorboard_server_serves_the_runs_scalars(tmp_path):
    tensorboard = shutil.which("tensorboard") or str(Path(sys.executable).parent / "tensorboard")
    if not Path(tensorboard).exists():
        pytest.skip("no tensorboard executable")
    runs = tmp_path / "runs"
    train.fit(circles("train.epochs=3"), runs / "circles", console=QUIET)
    port = _free_port()
    server = subprocess.Popen([tensorboard, "--logdir", str(runs), "--port", str(port), "--host", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?run=circles/tensorboard&tag=epoch/val_acc"
        deadline, points = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    points = json.load(response)
                if len(points) == 3:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert points is not None and [p[1] for p in points] == [1, 2, 3]  # [wall_time, step, value]
        for point, row in zip(points, metrics(runs / "circles")):
            assert point[2] == pytest.approx(float(row["val_acc"]), rel=1e-6)
    finally:
        server.terminate()
        server.wait(10)
