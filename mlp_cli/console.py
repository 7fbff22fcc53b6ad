"""The console and the stop signals: what a long command shows, and how Ctrl-C and SIGTERM end it.

The console prints progress bars only on a terminal; on a pipe or in a log, one line per event
(thinned by `throttled_line` so that a run of 300 one-millisecond epochs does not print 300
lines). Warnings go to stderr whatever the verbosity.

The stop signals: inside `StopSignals`, SIGINT and SIGTERM raise `Stopped` in the main thread,
except during `hold()` (a commit), when they wait until it has ended. A kill -9 is survived by
the run directory's commit protocol alone; holding the signals only spares a run the epoch whose
commit was under way. The caller turns `Stopped` into the exit codes of errors.py
(`errors.signal_exit`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time

from mlp_cli.errors import STOP_SIGNALS


class Console:
    """Where progress goes: bars only on a terminal, lines unless quiet."""

    def __init__(self, quiet: bool = False, line_interval: float = 1.0):
        self.quiet = quiet
        self.bars = not quiet and sys.stdout.isatty()
        self.line_interval = line_interval  # seconds between two thinned lines (throttled_line)
        self._last_line = None

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.bars:
            from tqdm import tqdm

            tqdm.write(text)
        else:
            print(text, flush=True)

    def throttled_line(self, text: str, *, last: bool = False) -> None:
        """A progress line printed at most once per `line_interval` seconds; `last` always is."""
        now = time.monotonic()
        if last or self._last_line is None or now - self._last_line >= self.line_interval:
            self._last_line = now
            self.line(text)

    def warn(self, text: str) -> None:
        """A warning on stderr, whatever the verbosity."""
        if self.bars:
            from tqdm import tqdm

            tqdm.write(f"warning: {text}", file=sys.stderr)
        else:
            print(f"warning: {text}", file=sys.stderr, flush=True)

    def progress(self, iterable, **kwargs):
        from tqdm import tqdm

        return tqdm(iterable, disable=not self.bars, dynamic_ncols=True, **kwargs)


def plural(count: int, word: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


class Stopped(BaseException):
    """Raised by the signal handlers; the caller settles its files, then reports it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum



class StopSignals:
    """SIGINT and SIGTERM raise Stopped; inside `hold()` they wait until it ends.

    Signal handlers exist only in the main thread, so elsewhere (a sweep's worker threads) this
    does nothing."""

    SIGNALS = STOP_SIGNALS

    def __init__(self):
        self._held, self._pending, self._previous = False, None, {}

    def _handler(self, signum, _frame):
        if self._held:
            self._pending = signum
        else:
            raise Stopped(signum)

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        except ValueError:  # not the main thread
            self._previous = {}
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False

    @contextlib.contextmanager
    def hold(self):
        self._held = True
        try:
            yield
        finally:
            self._held = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise Stopped(signum)
