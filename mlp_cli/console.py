"""The console and the stop signals: what a long command shows, and how Ctrl-C and SIGTERM end it.

The console prints progress bars only on a terminal; on a pipe or in a log, one line per event
(thinned by `throttled_line` so that a run of 300 one-millisecond epochs does not print 300
lines). Warnings go to stderr whatever the verbosity. It writes to the streams the process had
when it was made, so that a library that redirects sys.stdout meanwhile (Ray, in a sweep) does
not swallow its lines. Every command's progress goes through it: training, a sweep's trials,
lr-find's batches, the decoding of an image folder.

The stop signals: inside `StopSignals`, SIGINT and SIGTERM raise `Stopped` in the main thread,
except during `hold()` (a commit), when they wait until it has ended (a sweep asks for
KeyboardInterrupt instead, which Ray Tune's loop expects). A kill -9 is survived by
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
        self.out, self.err = sys.stdout, sys.stderr
        self.bars = not quiet and _is_terminal(self.out)
        self.line_interval = line_interval  # seconds between two thinned lines (throttled_line)
        self._last_line = None

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.bars:
            from tqdm import tqdm

            tqdm.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

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

            tqdm.write(f"warning: {text}", file=self.err)
        else:
            print(f"warning: {text}", file=self.err, flush=True)

    def progress(self, iterable, **kwargs):
        """A bar over an iterable (an epoch's batches), on stderr, drawn only on a terminal."""
        from tqdm import tqdm

        return tqdm(iterable, file=self.err, disable=not self.bars, dynamic_ncols=True, **kwargs)

    def counter(self, total: int, desc: str, unit: str, *, initial: int = 0, leave: bool = True):
        """A bar counted by hand with `update(n)` (trials, batches, images), drawn only on a
        terminal; a context manager, or `close()` it."""
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.err, leave=leave,
                    disable=not self.bars, dynamic_ncols=True)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def plural(count: int, word: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


class Stopped(BaseException):
    """Raised by the signal handlers; the caller settles its files, then reports it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum



class StopSignals:
    """SIGINT and SIGTERM raise Stopped (or `raises`, called with no argument); inside `hold()`
    they wait until it ends. `received` keeps the last one that came.

    Signal handlers exist only in the main thread, so elsewhere (a sweep's worker threads) this
    does nothing."""

    SIGNALS = STOP_SIGNALS

    def __init__(self, raises=None):
        self._raises = raises
        self._held, self._pending, self._previous = False, None, {}
        self.received = None

    def _stop(self, signum):
        self.received = signum
        return self._raises() if self._raises is not None else Stopped(signum)

    def _handler(self, signum, _frame):
        if self._held:
            self._pending = signum
        else:
            raise self._stop(signum)

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
            raise self._stop(signum)
