"""How the engine runs a network: which engine, how many threads, compiled kernels, which convolution.

One frozen object, made once by each entry point (`train`, `eval`, `gradcheck`, `predict`, a sweep
trial) and handed to the network builder (model.build), which hands it to every layer. Nothing in
the engine reads the environment or keeps a setting of its own: a layer built with an Execution
runs as it says, whatever else runs in the process.

    engine       "fast" (layers.py, conv/, compiled.py) or "reference" (reference.py: the plain
                 derivation, slow). The two agree to float rounding (tests/test_engine_parity.py).
    threads      how many threads the fast layers may use. Results do not depend on it, only the
                 speed: work is cut into blocks whose number does not depend on the threads
                 (parallel.over_batch), and partial sums are added in block order.
    compiled     whether the fast layers may use the compiled kernels of compiled.py (where Numba
                 is installed). The NumPy code beside each kernel is its reference.
    conv_method  the fast Conv2d's algorithm: "auto" (the least modelled time, conv/cost.py) or
                 one of "im2col", "band", "dft" (the DFT needs stride 1: im2col otherwise).

`Execution.from_env()` reads MLP_CLI_THREADS (default: the CPU count, at most 8); the other
fields are arguments (`--engine` on the command line) or keep their defaults.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

from mlp_cli.errors import UsageError

ENGINES = ("fast", "reference")
CONV_METHODS = ("auto", "im2col", "band", "dft")
THREADS_VARIABLE = "MLP_CLI_THREADS"


class ExecutionError(UsageError, ValueError):
    """An execution setting that is not one (a bad MLP_CLI_THREADS, an unknown engine): exit code 2."""


@dataclass(frozen=True)
class Execution:
    engine: str = "fast"
    threads: int = 1
    compiled: bool = True
    conv_method: str = "auto"

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ExecutionError(f"unknown engine {self.engine!r}; allowed: {', '.join(ENGINES)}")
        if self.conv_method not in CONV_METHODS:
            raise ExecutionError(f"unknown convolution method {self.conv_method!r}; allowed: {', '.join(CONV_METHODS)}")
        if not isinstance(self.threads, int) or isinstance(self.threads, bool) or self.threads < 1:
            raise ExecutionError(f"threads must be a whole number of at least 1, got {self.threads!r}")

    @classmethod
    def from_env(cls, environ=None, **fields) -> Execution:
        """The settings of this process: threads from MLP_CLI_THREADS in `environ` (default
        os.environ), the other fields from `fields` or their defaults. Read once, by an entry point."""
        environ = os.environ if environ is None else environ
        value = environ.get(THREADS_VARIABLE, "").strip()
        if value:
            try:
                threads = int(value)
            except ValueError:
                raise ExecutionError(f"{THREADS_VARIABLE}={value!r} is not a number of threads; "
                                     "unset it or give e.g. 2") from None
            threads = max(1, threads)
        else:
            threads = max(1, min(os.cpu_count() or 1, 8))
        return cls(**{"threads": threads, **fields})

    @property
    def reference(self) -> bool:
        return self.engine == "reference"

    def with_(self, **fields) -> Execution:
        """A copy with some fields changed (tests and benchmarks: one conv method, one thread count)."""
        return replace(self, **fields)

    def record(self) -> dict:
        """What a run's history.yaml records of how an invocation ran: the engine and the threads
        (results do not depend on the threads; the time per epoch does)."""
        return {"engine": self.engine, "threads": self.threads}

    def as_dict(self) -> dict:
        return asdict(self)
