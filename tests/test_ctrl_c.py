"""A Ctrl-C at any instant of `mlp-cli ...`, from its first millisecond: no traceback, exit 130
(or the signal's default death, -2, where Python's handler is not there yet or no longer).

The console script (next to this interpreter) is started and sent SIGINT after 5 to 250 ms,
several times each. What no package can reach is told apart, from the traceback itself: the
interpreter's own start-up (CPython reports a Ctrl-C in its io or site modules as a fatal
error with a traceback) and the console script's lines before it imports mlp_cli.entry (pip's
wrapper first imports re). From mlp_cli.entry's first statement on, a traceback fails the test.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "mlp-cli"
DELAYS_MS = (5, 10, 20, 50, 100, 150, 250)


def _entry_hold_line() -> int:
    """The line of mlp_cli/entry.py from which on a Ctrl-C is ours to handle."""
    lines = (ROOT / "mlp_cli" / "entry.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if "pthread_sigmask(_signal.SIG_BLOCK" in line)


def _entry_import_line() -> int:
    lines = SCRIPT.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if "mlp_cli.entry" in line)


def _before_mlp_cli(stderr: str) -> bool:
    """Whether a traceback comes from before mlp_cli could act (see the module's docstring)."""
    if re.search(r"^Fatal Python error: init_", stderr, re.M):
        return True  # CPython's own start-up, before the console script's first line
    for path, line in re.findall(r'File "([^"]+)", line (\d+)', stderr):
        line = int(line)
        if Path(path) == SCRIPT and line > _entry_import_line():
            return False
        if path.endswith("mlp_cli/entry.py") and line >= _entry_hold_line():
            return False
        if "mlp_cli" in path and not path.endswith(("mlp_cli/__init__.py", "mlp_cli/entry.py")):
            return False
    return True


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
    (["convshape", "--help"], 3),
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
            if "Traceback" in err:
                assert _before_mlp_cli(err), f"after {delay} ms: exit {code}, a traceback:\n{err}"
                continue
            if ended or (code == 0 and out == complete):
                continue  # it had finished (or was just finishing) before the Ctrl-C came
            assert code in (130, -signal.SIGINT), f"after {delay} ms: exit {code}\n{err}"
            if code == 130:
                assert err.endswith("error: interrupted\n") or "interrupted" in err.splitlines()[-1], err
                ours += 1
    assert ours, "no Ctrl-C came while mlp-cli was running"
