"""The `mlp-cli` command line. Commands only: parse, call one library function, print.

Heavy modules (numpy, torch, matplotlib) are imported inside the commands, so that
`mlp-cli --help` and `mlp-cli convshape` answer at once.
"""

from __future__ import annotations

import functools
import sys

import click

from mlp_cli import __version__

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def fail(message: str, code: int) -> None:
    """Print one clear message on stderr and exit with `code` (no traceback)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handle_errors(command):
    """Turn the project's exceptions into one line on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from mlp_cli.config import ConfigError
        from mlp_cli.errors import RuntimeFailure, ShapeError

        try:
            return command(*args, **kwargs)
        except (ConfigError, ShapeError) as e:
            fail(str(e), EXIT_USAGE)
        except RuntimeFailure as e:
            fail(str(e), EXIT_RUNTIME)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlp-cli")
def main():
    """Train and evaluate neural networks written from scratch in NumPy.

    \b
    mlp-cli train --config configs/mnist_mlp.yaml      train a config
    mlp-cli eval --checkpoint runs/x/best.safetensors  evaluate a checkpoint
    mlp-cli convshape --input 28x28x1 --kernel 5       conv arithmetic
    """


if __name__ == "__main__":
    main()
