"""The `mlp-cli` command's entry point, apart from cli.py so that it runs before anything
heavy is imported.

A Ctrl-C reaches Python's default handler, which raises KeyboardInterrupt wherever the program
is, and an uncaught one prints a traceback. Inside a command (cli.handle_errors) that is what we
want: the command settles its files and says "error: interrupted" (exit 130). Outside one, while
the commands are imported (the first ~80 ms), click parses the command line or prints --help,
and while the interpreter shuts down, nothing needs saving: there the handler installed here,
when this module is imported by the launcher, ends the process at once with that line
and exit 130 (errors.exit_at_once). While that handler is being imported, a Ctrl-C is held
back (blocked: it waits, it is not lost) and arrives as soon as the handler is in place.

Before this module, the command's launcher (bin/mlp-cli, what pip installs as `mlp-cli`) holds
SIGINT back while Python starts and unblocks it once this module is imported, so a Ctrl-C in
Python's own start-up also ends here; one while the launcher's shell or perl start ends them
with the signal's default death (exit -2, silently).
"""

import _signal  # the interpreter's own, loaded already: `signal` would first build its enums

# Hold a Ctrl-C back (pending, not lost) while the handler below is imported, then let it in.
_held = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT}) if hasattr(_signal, "pthread_sigmask") else None

import signal  # noqa: E402

from mlp_cli.errors import exit_at_once  # noqa: E402

# Not when the parent ignores SIGINT (nohup, a background job): then it stays ignored.
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, exit_at_once)
if _held is not None:
    _signal.pthread_sigmask(_signal.SIG_SETMASK, _held)


def main():
    from mlp_cli.cli import main as program

    return program()
