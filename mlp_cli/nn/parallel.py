"""Spread the work of a layer over the CPU cores, one contiguous range of the batch per thread.

NumPy releases the GIL inside its loops and BLAS calls, so Python threads that each take a
slice of the batch (im2col copy, matrix product, col2im, pooling, activations) run in
parallel, and each works on data small enough to stay in its core's cache. BLAS is then best
kept to one thread of its own (`single_threaded_blas`), or its threads and ours would fight
for the same cores. Reductions over the batch (weight gradients) add the per-range partial
results in range order, so a run is reproducible for a given thread count.
"""

from __future__ import annotations

import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Below this many elements a job is too small to be worth a thread hand-off.
MIN_PARALLEL_SIZE = 1 << 16


_blas_single_threaded = False  # set while single_threaded_blas() is active


@functools.cache  # one pool per size, made on first use: a resource, not a setting
def _executor(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlp-cli")


def over_batch(fn, n: int, size: int, uses_blas: bool = False, *, threads: int) -> list:
    """Call fn(start, stop) on contiguous ranges covering [0, n), in parallel on `threads`
    threads (the layer's Execution.threads) when worth it, and return the results in range order.

    `size` is the number of elements the whole job touches, used to skip threads for small jobs.
    A job with matrix products (`uses_blas`) runs in one piece unless BLAS is single-threaded,
    since BLAS's own threads already use the cores.
    """
    if threads == 1 or n < 2 or size < MIN_PARALLEL_SIZE or (uses_blas and not _blas_single_threaded):
        return [fn(0, n)]
    parts = min(threads, n)
    bounds = [n * k // parts for k in range(parts + 1)]
    futures = [_executor(threads - 1).submit(fn, bounds[k], bounds[k + 1]) for k in range(1, parts)]
    first = fn(bounds[0], bounds[1])  # this thread takes the first range
    return [first] + [f.result() for f in futures]


def ordered_sum(parts, out=None):
    """Sum of partial results in a fixed order (deterministic float rounding), written into
    `out` when given (a part may already be `out` itself: then it is the only one)."""
    if len(parts) == 1:
        if out is None or parts[0] is out:
            return parts[0]
        np.copyto(out, parts[0])
        return out
    total = np.add(parts[0], parts[1], out=out)
    for p in parts[2:]:
        total += p
    return total


@contextlib.contextmanager
def single_threaded_blas():
    """Limit BLAS to one thread while the engine runs its own threads over the batch (no-op
    without threadpoolctl: then products keep BLAS's threads).

    Also with one engine thread: MLP_CLI_THREADS is the run's CPU budget (a sweep gives each
    trial that many CPUs), and BLAS's own threads would exceed it and, summing in another order
    than one thread does, change the results (a Ray worker already has OMP_NUM_THREADS=1).

    Training, evaluation and the benchmarks run every network inside it: a conv net's copies
    and element-wise passes are memory-bound and split by batch range, a dense net's large
    products are split the same way, and its small ones (the MNIST MLP's 64x784 by 784x100) run
    faster on one thread than with BLAS's threads waking, synchronizing and spinning at every call.
    """
    global _blas_single_threaded
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is None or _blas_single_threaded:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        _blas_single_threaded = True
        try:
            yield
        finally:
            _blas_single_threaded = False
