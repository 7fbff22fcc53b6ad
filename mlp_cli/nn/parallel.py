"""Spread the work of a layer over the CPU cores: the job is cut into a fixed number of blocks,
and the threads take the blocks.

NumPy releases the GIL inside its loops and BLAS calls, so Python threads that each take a
block of the batch (im2col copy, matrix product, col2im, pooling, activations) run in
parallel, and each works on data small enough to stay in its core's cache. BLAS is then best
kept to one thread of its own (`single_threaded_blas`), or its threads and ours would fight
for the same cores.

The thread count changes the speed, never a bit: how a job is cut (`blocks`) depends on the
job's size alone, never on the threads, which only decide who computes which block. Every block
is the same call with the same shapes on 1, 2 or 3 threads, and reductions over the batch (weight
gradients) add the per-block partial results in block order (`ordered_sum`).
"""

from __future__ import annotations

import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Below this many elements a job is too small to be worth a thread hand-off: one block.
MIN_PARALLEL_SIZE = 1 << 16
# The blocks a larger job is cut into, whatever the thread count: the split two threads made
# before results were made independent of the threads, so that two threads (the machines this was
# tuned on) run exactly as fast as they did. More threads than blocks wait. Raising it lets more
# cores help, and changes every result once, for every thread count alike.
BLOCKS = 2

_blas_single_threaded = False  # set while single_threaded_blas() is active


@functools.cache  # one pool per size, made on first use: a resource, not a setting
def _executor(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mlp-cli")


def blocks(n: int, size: int) -> int:
    """How many blocks a job over [0, n) touching `size` elements is cut into (never the threads')."""
    return 1 if n < 2 or size < MIN_PARALLEL_SIZE else min(BLOCKS, n)


def over_batch(fn, n: int, size: int, uses_blas: bool = False, *, threads: int) -> list:
    """Call fn(start, stop) on the `blocks(n, size)` contiguous blocks covering [0, n) and return
    the results in block order, the blocks shared out over `threads` threads (the layer's
    Execution.threads), each thread taking consecutive blocks.

    `size` is the number of elements the whole job touches. A job with matrix products
    (`uses_blas`) runs its blocks one after the other unless BLAS is single-threaded, since BLAS's
    own threads already use the cores; the blocks, and so the results, are the same.
    """
    count = blocks(n, size)
    bounds = [n * k // count for k in range(count + 1)]
    workers = min(threads, count)
    if workers == 1 or (uses_blas and not _blas_single_threaded):
        return [fn(bounds[k], bounds[k + 1]) for k in range(count)]

    def share(w):  # worker w's consecutive blocks
        return [fn(bounds[k], bounds[k + 1]) for k in range(w * count // workers, (w + 1) * count // workers)]

    futures = [_executor(workers - 1).submit(share, w) for w in range(1, workers)]
    results = share(0)  # this thread takes the first share
    for f in futures:
        results += f.result()
    return results


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
