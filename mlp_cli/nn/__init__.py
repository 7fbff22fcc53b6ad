"""The from-scratch NumPy engine: layers, loss, initializers, optimizers and schedules.

Every forward and backward is written by hand; nothing here imports torch.
"""

import functools
import os
import tempfile


@functools.cache
def compiled_kernels():
    """The module of compiled kernels (compiled.py), imported on first use since Numba takes a
    while to load; None where Numba is not installed or cannot run (the NumPy references run instead)."""
    try:
        from mlp_cli.nn import compiled
    except ImportError:
        return None
    except RuntimeError:
        # Numba found no writable place for its cache (a read-only install and no writable home
        # or NUMBA_CACHE_DIR): the temporary directory's then, or no kernels at all.
        try:
            import numba

            numba.config.CACHE_DIR = os.path.join(tempfile.gettempdir(), "mlp-cli-numba-cache")
            from mlp_cli.nn import compiled
        except Exception:
            return None
    return compiled


def warm_up_compiled(dtype) -> None:
    """Load the compiled kernels for `dtype` now rather than on their first call (no-op without Numba)."""
    kernels = compiled_kernels()
    if kernels is not None:
        kernels.warm_up(dtype)
