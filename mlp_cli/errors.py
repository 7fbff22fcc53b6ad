"""The exceptions the CLI turns into exit codes. No dependencies, so anything may import it."""


class UsageError(Exception):
    """Bad usage found after parsing: a run directory in use or already holding a run, an override
    that a resume cannot take (exit code 2, nothing written)."""


class ShapeError(ValueError):
    """A network whose layer shapes do not fit (exit code 2, like an invalid config)."""


class RuntimeFailure(Exception):
    """A failure at run time: missing data, divergence, a bad checkpoint (exit code 1)."""


class DataError(RuntimeFailure):
    """Data that cannot be found or read; the message says where it was expected and how to fix it."""


class CheckpointError(RuntimeFailure):
    """A checkpoint that is missing, truncated or not one of ours."""


class Divergence(RuntimeFailure):
    """The training loss became NaN or infinite."""
