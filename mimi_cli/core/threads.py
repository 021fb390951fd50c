"""Thread counts for the core: BLAS (through threadpoolctl) and the element-wise work NumPy runs on one core.

NumPy ufuncs (exp, erf, min/max...) use a single thread; on a 2-core machine
the ELUs and GELUs of a batch encode leave half the machine idle. Their loops
release the GIL, so splitting an array across a few threads runs them in
parallel. Element-wise results do not depend on the split: outputs stay
bit-identical whatever the thread count.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_MIN_ELEMENTS_PER_THREAD = 1 << 16  # below this, a thread costs more than it saves
_threads = os.cpu_count() or 1
_pool: ThreadPoolExecutor | None = None


def usable_threads(threads: int | None) -> tuple[int | None, str | None]:
    """``threads`` capped at this machine's cores, with a note when it was: more threads than cores only
    make them take turns (a thousand threads made a 2 s encode take 55 s)."""
    cores = os.cpu_count() or 1
    if threads is not None and threads > cores:
        return cores, f"--threads {threads} is more than this machine's {cores} cores; using {cores}"
    return threads, None


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Use at most ``threads`` threads for BLAS and for element-wise work inside the block (None: no limit)."""
    global _threads
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    previous, _threads = _threads, threads
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        _threads = previous


def set_threads(threads: int) -> None:
    """Limit BLAS and element-wise threads for the rest of this process (a worker's whole life)."""
    global _threads
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    _threads = threads


def map_rows(fn: Callable[[np.ndarray, np.ndarray], None], x: np.ndarray) -> np.ndarray:
    """``out = fn(x)`` computed in place by ``fn(x_part, out_part)`` over row blocks, in parallel.

    ``x`` is viewed as 2-D ``[rows, last axis]``; each thread gets a block of rows.
    """
    global _pool
    out = np.empty_like(x)
    threads = min(_threads, max(1, x.size // _MIN_ELEMENTS_PER_THREAD))
    rows_in, rows_out = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])
    if threads == 1 or rows_in.shape[0] < 2:
        fn(rows_in, rows_out)
        return out
    if _pool is None or _pool._max_workers < threads:
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mimi-elementwise")
    bounds = np.linspace(0, rows_in.shape[0], min(threads, rows_in.shape[0]) + 1).astype(int)
    jobs = [_pool.submit(fn, rows_in[a:b], rows_out[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for job in jobs:
        job.result()
    return out
