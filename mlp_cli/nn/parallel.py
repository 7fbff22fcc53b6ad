"""Spread element-wise and copying work over the CPU cores.

NumPy runs element-wise loops and strided copies on one core but releases the GIL while it
does, so Python threads that each take a contiguous range of the batch run them in
parallel. Matrix products are left to BLAS, which has threads of its own. Each range writes
only its own part of the output, so the results do not depend on the number of threads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

# Below this many elements a job is too small to be worth a thread hand-off.
MIN_PARALLEL_SIZE = 1 << 16


def thread_count() -> int:
    env = os.environ.get("MLP_CLI_THREADS")
    return max(1, int(env)) if env else max(1, min(os.cpu_count() or 1, 8))


_pool: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=thread_count(), thread_name_prefix="mlp-cli")
    return _pool


def over_batch(fn, n: int, size: int) -> None:
    """Call fn(start, stop) on contiguous ranges covering [0, n), in parallel when worth it.

    `size` is the number of elements the whole job touches, used to skip threads for small jobs.
    """
    threads = thread_count()
    if threads == 1 or n < 2 or size < MIN_PARALLEL_SIZE:
        fn(0, n)
        return
    parts = min(threads, n)
    bounds = [n * k // parts for k in range(parts + 1)]
    futures = [_executor().submit(fn, bounds[k], bounds[k + 1]) for k in range(1, parts)]
    fn(bounds[0], bounds[1])  # this thread takes the first range
    for f in futures:
        f.result()
