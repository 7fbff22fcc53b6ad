"""The exceptions the CLI turns into exit codes. No dependencies, so anything may import it."""


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
