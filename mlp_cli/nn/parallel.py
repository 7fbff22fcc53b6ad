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
import os
from concurrent.futures import ThreadPoolExecutor

# Below this many elements a job is too small to be worth a thread hand-off.
MIN_PARALLEL_SIZE = 1 << 16


@functools.cache  # asked for by every layer call: read the environment once per process
def thread_count() -> int:
    env = os.environ.get("MLP_CLI_THREADS")
    return max(1, int(env)) if env else max(1, min(os.cpu_count() or 1, 8))


_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=thread_count() - 1, thread_name_prefix="mlp-cli")
    return _pool


def over_batch(fn, n: int, size: int) -> list:
    """Call fn(start, stop) on contiguous ranges covering [0, n), in parallel when worth it,
    and return the results in range order.

    `size` is the number of elements the whole job touches, used to skip threads for small jobs.
    """
    threads = thread_count()
    if threads == 1 or n < 2 or size < MIN_PARALLEL_SIZE:
        return [fn(0, n)]
    parts = min(threads, n)
    bounds = [n * k // parts for k in range(parts + 1)]
    futures = [_executor().submit(fn, bounds[k], bounds[k + 1]) for k in range(1, parts)]
    first = fn(bounds[0], bounds[1])  # this thread takes the first range
    return [first] + [f.result() for f in futures]


def ordered_sum(parts):
    """Sum of partial results in a fixed order (deterministic float rounding)."""
    if len(parts) == 1:
        return parts[0]
    total = parts[0] + parts[1]
    for p in parts[2:]:
        total += p
    return total


@contextlib.contextmanager
def single_threaded_blas():
    """Limit BLAS to one thread while the engine runs its own threads (no-op with one thread)."""
    if thread_count() == 1:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # still correct, only slower: BLAS and our threads share the cores
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
