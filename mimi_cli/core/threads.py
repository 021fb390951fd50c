"""Thread counts for the core, and how it uses several threads without changing a bit.

OpenBLAS rounds a product differently when it runs on more threads, and even on
one thread when the product's shape changes (measured: a ``[64, 96] @ [96, 4096]``
product differs in the last bit from the same columns computed in two halves).
So the codecs never let BLAS thread: each product runs on one BLAS thread
(:func:`one_blas_thread`) with a shape that depends on the input alone, and the
cores share the work at a coarser grain, in our own threads:

- :func:`mimi_cli.core.stream.run_chunks` runs a chain of convolutions as a pipeline;
- :func:`run_blocks` runs fixed blocks at once: a transformer's rows, a convolution's time;
- :func:`matmul_rows` cuts a product bound by reading its weight (streaming) into fixed pieces of rows;
- :func:`map_rows` splits element-wise work (ELU, GELU), whose result cannot
  depend on the split.

The products and loops all release the GIL. Results are the same bits at any
thread count, and threads that block (queues, futures) instead of spinning keep
a busy neighbour process from stalling us (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_MIN_ELEMENTS_PER_THREAD = 1 << 16  # below this, a thread costs more than it saves
_threads = os.cpu_count() or 1
_pool: ThreadPoolExecutor | None = None
_local = threading.local()  # .threads: this thread's own count (1 inside a pipeline stage or a block)
_controller = None  # a cached threadpoolctl.ThreadpoolController: limiting through it takes 0.04 ms, not 1.3


def usable_threads(threads: int | None) -> tuple[int | None, str | None]:
    """``threads`` capped at this machine's cores, with a note when it was: more threads than cores only
    make them take turns (a thousand threads made a 2 s encode take 55 s)."""
    cores = os.cpu_count() or 1
    if threads is not None and threads > cores:
        return cores, f"--threads {threads} is more than this machine's {cores} cores; using {cores}"
    return threads, None


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Use at most ``threads`` threads inside the block (None: no limit): the codecs' own threads, and BLAS
    wherever a caller lets it use more than one."""
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
    """:func:`limit_threads` for the rest of this process (a worker's whole life)."""
    global _threads
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    _threads = threads


def current() -> int:
    """The thread count in force for this thread (``limit_threads``/``set_threads``; all cores by default)."""
    return getattr(_local, "threads", _threads)


@contextlib.contextmanager
def single() -> Iterator[None]:
    """Inside the block, this thread's own work uses no other thread (it is one of several already)."""
    previous = getattr(_local, "threads", None)
    _local.threads = 1
    try:
        yield
    finally:
        if previous is None:
            del _local.threads
        else:
            _local.threads = previous


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS runs each product on one thread inside the block (see the module docstring for why)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        yield


def _workers(count: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool._max_workers < count:
        _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="mimi-worker")
    return _pool


def run_blocks(fn: Callable[[int], None], count: int) -> None:
    """``fn(i)`` for ``i`` in ``range(count)``, on up to :func:`current` threads at once.

    The blocks are the caller's and must not depend on the thread count; ``fn`` writes its own
    block's result. The calling thread takes blocks too; errors are raised here.
    """
    threads = min(current(), count)
    if threads <= 1:
        for index in range(count):
            fn(index)
        return
    pending = iter(range(count))
    lock = threading.Lock()

    def work() -> None:
        with single():
            while True:
                with lock:
                    index = next(pending, None)
                if index is None:
                    return
                fn(index)

    helpers = [_workers(threads - 1).submit(work) for _ in range(threads - 1)]
    try:
        work()
    finally:
        errors = [helper.exception() for helper in helpers]
    for error in errors:
        if error is not None:
            raise error


# A product with at most this many columns is bound by reading its weight (streaming: a frame or
# two per stream); its rows then go in an even number of pieces of at most _PIECE_BYTES of weight.
_SKINNY_COLUMNS = 64
_PIECE_BYTES = 4 << 20


def matmul_rows(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``w @ x`` for ``w`` ``[M, K]``, ``x`` ``[K, N]``; with few columns, pieces of rows run at once.

    Each thread reads only its rows of the weight, so two threads stream the weight at up to twice
    the rate. The pieces (an even number, for two cores) depend on the shapes alone, never on the
    thread count (see the module docstring).
    """
    rows = w.shape[0]
    if x.shape[1] > _SKINNY_COLUMNS or rows < 64:
        return w @ x
    pieces = 2 * -(-w.nbytes // (2 * _PIECE_BYTES))
    bounds = np.linspace(0, rows, pieces + 1).astype(int)
    out = np.empty((rows, x.shape[1]), np.result_type(w, x))
    x = np.ascontiguousarray(x)

    def one(i: int) -> None:
        r = slice(bounds[i], bounds[i + 1])
        # np.dot, not np.matmul: matmul holds the GIL on products this small (measured: a waiting
        # thread then starts only after the 5 ms switch interval), dot always lets it go.
        np.dot(w[r], x, out=out[r])

    run_blocks(one, pieces)
    return out


def map_rows(fn: Callable[[np.ndarray, np.ndarray], None], x: np.ndarray) -> np.ndarray:
    """``out = fn(x)`` computed in place by ``fn(x_part, out_part)`` over row blocks, in parallel.

    ``x`` is viewed as 2-D ``[rows, last axis]``; each thread gets a block of rows. Both are made
    C-contiguous first: reshaping a strided ``out`` (say, a transposed one from ``empty_like``) would
    copy it, and ``fn`` would fill the copy, leaving ``out`` uninitialised.
    """
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    threads = min(current(), max(1, x.size // _MIN_ELEMENTS_PER_THREAD))
    rows_in, rows_out = x.reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])
    if threads == 1 or rows_in.shape[0] < 2:
        fn(rows_in, rows_out)
        return out
    bounds = np.linspace(0, rows_in.shape[0], min(threads, rows_in.shape[0]) + 1).astype(int)
    pool = _workers(threads)
    jobs = [pool.submit(fn, rows_in[a:b], rows_out[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for job in jobs:
        job.result()
    return out
