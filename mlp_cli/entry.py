"""The `mlp-cli` console script's entry point, apart from cli.py so that it runs before anything
heavy is imported.

Importing click and the command modules takes the first ~80 ms of every command. A Ctrl-C in
that window would reach Python's default handler and print a KeyboardInterrupt traceback; here
it ends the process quietly with exit 130, as a Ctrl-C during a command does. Nothing has been
written yet, so there is nothing to clean up. Once cli.py is imported the usual handling
(KeyboardInterrupt, turned into one line by the command's error handler) is back.
"""

import os
import signal


def _interrupted_while_starting(signum, frame):
    os.write(2, b"error: interrupted\n")
    os._exit(128 + signum)


def main():
    quiet = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not when the parent ignores SIGINT
    if quiet:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    from mlp_cli.cli import main as program

    if quiet:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return program()
