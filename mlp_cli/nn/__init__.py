"""The from-scratch NumPy engine: layers, loss, initializers, optimizers and schedules.

Every forward and backward is written by hand; nothing here imports torch.
"""

import functools


@functools.cache
def compiled_kernels():
    """The module of compiled kernels (compiled.py), imported on first use since Numba takes a
    while to load; None where Numba is not installed (the NumPy references run instead)."""
    try:
        from mlp_cli.nn import compiled
    except ImportError:
        return None
    return compiled


def warm_up_compiled(dtype) -> None:
    """Load the compiled kernels for `dtype` now rather than on their first call (no-op without Numba)."""
    kernels = compiled_kernels()
    if kernels is not None:
        kernels.warm_up(dtype)
