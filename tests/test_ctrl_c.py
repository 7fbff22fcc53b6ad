"""A Ctrl-C at any instant of `mlp-cli ...`, from its first millisecond: no traceback, exit 130
(or the signal's default death, -2, while the launcher's shell or perl start, before Python).

The installed command (bin/mlp-cli, next to this interpreter) is started and sent SIGINT after
1 to 250 ms, several times each: Python's own start-up included, which pip's console script
left open (a Ctrl-C in Python's site module or in the wrapper's imports printed a traceback).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "mlp-cli"
DELAYS_MS = (1, 3, 5, 7, 9, 11, 13, 15, 20, 30, 50, 100, 150, 250)


def test_the_installed_command_is_the_launcher():
    """pip installed bin/mlp-cli itself, not a console script of its own."""
    assert SCRIPT.read_text() == (ROOT / "bin" / "mlp-cli").read_text()


def _interrupt(args: list[str], delay_ms: int) -> tuple[int, str, str, bool]:
    proc = subprocess.Popen([str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    time.sleep(delay_ms / 1000)
    ended = proc.poll() is not None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err, ended


@pytest.mark.skipif(not SCRIPT.exists(), reason="needs the mlp-cli console script next to the interpreter")
@pytest.mark.parametrize("args, tries", [
    (["convshape", "--help"], 4),
    (["train", "--config", "configs/circles_mlp.yaml", "--out", "{tmp}/run", "train.plots=false"], 2),
], ids=["convshape-help", "train"])
def test_ctrl_c_at_any_instant_is_no_traceback(tmp_path, args, tries):
    complete = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT).stdout \
        if "--help" in args else None
    ours = 0
    for delay in DELAYS_MS:
        for attempt in range(tries):
            where = tmp_path / f"{delay}ms-{attempt}"  # a run directory of its own each time
            code, out, err, ended = _interrupt([a.replace("{tmp}", str(where)) for a in args], delay)
            assert "Traceback" not in err, f"after {delay} ms: exit {code}, a traceback:\n{err}"
            if ended or (code == 0 and out == complete):
                continue  # it had finished (or was just finishing) before the Ctrl-C came
            assert code in (130, -signal.SIGINT), f"after {delay} ms: exit {code}\n{err}"
            if code == 130:
                assert err.endswith("error: interrupted\n") or "interrupted" in err.splitlines()[-1], err
                ours += 1
    assert ours, "no Ctrl-C came while mlp-cli was running"
