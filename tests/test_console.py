"""What a run prints on a pipe: the columns it has, thinned lines for very short epochs."""

import subprocess
import sys
from pathlib import Path

from mlp_cli.console import Console, plural

ROOT = Path(__file__).resolve().parents[1]
MLP_CLI = [sys.executable, "-m", "mlp_cli.cli"]
CIRCLES = ROOT / "configs" / "circles_mlp.yaml"


def test_a_run_without_validation_prints_only_the_columns_it_has(tmp_path):
    r = subprocess.run([*MLP_CLI, "train", "--config", str(CIRCLES), "--out", str(tmp_path / "run"),
                        "train.epochs=300", "data.val_size=0", "train.plots=false"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("epoch ")]
    assert "val" not in r.stdout.split("done:")[0] and " - " not in r.stdout
    # 300 epochs of a few milliseconds: at most one line a second, and the last always
    assert 1 <= len(lines) < 30 and lines[-1].startswith("epoch 300/300")


def test_one_epoch_is_one_epoch(tmp_path):
    r = subprocess.run([*MLP_CLI, "train", "--config", str(CIRCLES), "--out", str(tmp_path / "run"),
                        "train.epochs=1", "train.plots=false"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "done: 1 epoch," in r.stdout and "val loss" in r.stdout
    assert plural(1, "epoch") == "1 epoch" and plural(2, "epoch") == "2 epochs"


def test_throttled_lines_keep_the_first_and_the_last(capsys, monkeypatch):
    console = Console(line_interval=3600)
    for i in range(5):
        console.throttled_line(f"line {i}", last=i == 4)
    assert capsys.readouterr().out.splitlines() == ["line 0", "line 4"]


def test_lines_go_to_the_streams_the_console_was_made_with(capsys):
    """A sweep's console is made before Ray points sys.stdout and sys.stderr elsewhere."""
    import contextlib
    import io

    console = Console()
    elsewhere = io.StringIO()
    with contextlib.redirect_stdout(elsewhere), contextlib.redirect_stderr(elsewhere):
        console.line("trial a done")
        console.warn("a warning")
    out, err = capsys.readouterr()
    assert (out, err, elsewhere.getvalue()) == ("trial a done\n", "warning: a warning\n", "")


def test_stop_signals_raise_what_they_are_asked_to_and_keep_the_signal():
    import os
    import signal
    import time

    import pytest

    from mlp_cli.console import Stopped, StopSignals

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped, StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at once
    assert stopped.value.signum == signal.SIGTERM and signals.received == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt), StopSignals(raises=KeyboardInterrupt) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at once
    assert signals.received == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the handler from before, back
    with StopSignals() as signals:  # held during a commit: raised when it ends
        with pytest.raises(Stopped):
            with signals.hold():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)  # held: the handler only notes it
                committed = True
    assert committed
