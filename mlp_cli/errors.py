"""The exit codes, the exceptions the CLI turns into them, and what a stop signal ends a process
with. Nothing but a few modules of the standard library, so anything may import it.

    0 done, 1 a failure at run time (RuntimeFailure), 2 bad usage or config (UsageError),
    130 Ctrl-C (SIGINT) and 143 SIGTERM: 128 + the signal's number, as a shell reports a death by it.
"""

import os
import signal
import sys

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what a user (Ctrl-C), kill, Docker and Slurm stop a run with


def signal_exit(signum: int) -> tuple[str, int]:
    """How a stop signal is named to the user, and the exit code it ends the process with."""
    return ("SIGTERM", EXIT_TERMINATED) if signum == signal.SIGTERM else ("Ctrl-C", EXIT_INTERRUPTED)


def exit_at_once(signum, frame) -> None:
    """The console script's SIGINT handler outside a command (entry.py): while Python imports the
    commands, parses the command line or shuts down there is nothing to save, and Python's own
    KeyboardInterrupt would print a traceback. One line, and the exit code of a Ctrl-C."""
    name, code = signal_exit(signum)
    for stream in (sys.stdout, sys.stderr):  # what was printed before, then the line
        try:
            stream.flush()
        except Exception:  # noqa: BLE001  closed, or the main thread inside a write: nothing to add
            pass
    os.write(2, b"error: interrupted\n" if code == EXIT_INTERRUPTED else f"error: interrupted by {name}\n".encode())
    os._exit(code)


class Terminated(BaseException):
    """SIGTERM inside a command, as KeyboardInterrupt is Ctrl-C (a BaseException, so that no
    `except Exception` on the way takes it for an error); the CLI exits 143."""


def _raise_terminated(signum, frame):
    raise Terminated


class signals_raise:
    """Within: Ctrl-C raises KeyboardInterrupt and SIGTERM raises Terminated, for the command to
    leave its files settled and exit 130 or 143 (cli.handle_errors); after it, the handlers from
    before: the console script's `exit_at_once` for Ctrl-C, the default death for SIGTERM. A
    Ctrl-C that the parent ignores (nohup, a background job) stays ignored. (A class rather than
    a contextlib generator: this module is imported in the console script's first milliseconds.)"""

    def __enter__(self):
        self.before_int, self.before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        if self.before_int is exit_at_once:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_terminated)  # what kill, Docker and Slurm send: like Ctrl-C
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, signal.SIG_DFL if self.before_term is None else self.before_term)
        if self.before_int is exit_at_once:
            signal.signal(signal.SIGINT, exit_at_once)


class UsageError(Exception):
    """Bad usage or an invalid config, found before anything is written (exit code 2); also a run
    directory in use or already holding a run, and an override that a resume cannot take."""


class ShapeError(UsageError, ValueError):
    """A network whose layer shapes do not fit (exit code 2, like an invalid config)."""


class RuntimeFailure(Exception):
    """A failure at run time: missing data, divergence, a bad checkpoint (exit code 1)."""


class DataError(RuntimeFailure):
    """Data that cannot be found or read; the message says where it was expected and how to fix it.

    `point`, when given, says what the data root should hold ("to the folder holding MNIST/"); the
    message then ends with how to point the tool there, in the words of the command that runs:
    `train` takes data.root=DIR, while `eval` sets `option` to its --data-root.
    """

    option = "set data.root=DIR on the command line or the MLP_CLI_DATA environment variable"

    def __init__(self, message: str, point: str | None = None):
        super().__init__(message)
        self.message, self.point = message, point

    def __str__(self) -> str:
        return self.message if self.point is None else f"{self.message}; {self.option} {self.point}"


class CheckpointError(RuntimeFailure):
    """A checkpoint that is missing, truncated or not one of ours."""


class Divergence(RuntimeFailure):
    """The training loss became NaN or infinite."""


class Interrupted(RuntimeFailure):
    """Ctrl-C (exit code 130) or SIGTERM (143) during training or a sweep, after what was finished
    was committed; the message says how to continue."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
