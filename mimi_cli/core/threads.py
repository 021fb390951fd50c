"""Thread counts for the core, and how it uses several threads without changing a bit.

OpenBLAS rounds a product differently when it runs on more threads, and even on
one thread when the product's shape changes (measured: a ``[64, 96] @ [96, 4096]``
product differs in the last bit from the same columns computed in two halves).
So the codecs never let BLAS thread: each product runs on one BLAS thread
(:func:`one_blas_thread`) with a shape that depends on the input alone, and the
cores share the work at a coarser grain, in our own threads:

- :func:`mimi_cli.core.stream.run_chunks` runs a chain of convolutions as a pipeline;
- :func:`run_blocks` runs fixed blocks at once: a transformer's rows, a convolution's time;
- :func:`matmul_rows` cuts a product bound by reading its weight (streaming) into fixed pieces of rows,
  :func:`matmul_depth` one whose weight is the right operand into pieces of its depth;
- :func:`map_elements` splits element-wise work (ELU, GELU), whose result cannot
  depend on the split.

The products and loops all release the GIL. Results are the same bits at any
thread count, and threads that block (queues, futures) instead of spinning keep
a busy neighbour process from stalling us (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from mimi_cli.core import cgroups

CACHE_BLOCK = 1 << 16  # elements: 256 KB of float32 in and out, well inside a core's L2 cache


def usable_cores() -> int:
    """The cores this process may use: those its CPU affinity allows (``taskset``, a container's cpuset), no
    more than its control group's CPU quota (``docker --cpus 2``, a Kubernetes limit, systemd's CPUQuota), in
    whole cores. ``os.cpu_count()`` counts the machine's: a container given 2 of 64 cores ran 64 threads."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroups.cpu_quota()
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


_threads = usable_cores()
_local = threading.local()  # .threads: this thread's own count (1 inside a pipeline stage or a block)
_controller = None  # (threadpoolctl's controller, and _blas()'s two): made anew, it takes 1.3 ms a call
_blas_lock = threading.Lock()  # guards the two below: how many codec calls run now, in any thread
_blas_users = 0
_blas_limiter = None  # threadpoolctl's limiter while _blas_users > 0: it knows the limit to restore


def usable_threads(threads: int | None) -> tuple[int | None, str | None]:
    """``threads`` capped at the cores this process may use (:func:`usable_cores`), with a note when it was: more
    threads than cores only make them take turns (a thousand threads made a 2 s encode take 55 s)."""
    cores = usable_cores()
    if threads is not None and threads > cores:
        return cores, f"--threads {threads} is more than the {cores} core{'s' * (cores > 1)} this process may " \
                      f"use; using {cores}"
    return threads, None


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Use at most ``threads`` threads inside the block (None: no limit): the codecs' own threads, for this
    thread's calls (two runs in two threads of one process each keep their own count; one ending once put back
    the count under the other, and the process kept the last one's), and BLAS wherever a caller lets it use
    more than one."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with using(threads), threadpool_limits(limits=threads, user_api="blas"):
        yield


@contextlib.contextmanager
def later_blas_threads(threads: int, replace: bool = True) -> Iterator[None]:
    """Inside the block, an OpenBLAS that loads (SciPy's own copy, a child process's) starts ``threads`` threads,
    NumPy's own, loaded already, as it was: ``OPENBLAS_NUM_THREADS`` in this process's environment, then put
    back. With ``replace`` False, a value the environment has already is kept.

    OpenBLAS starts its threads as it loads, a thread per core unless told; where the system refuses one (ulimit
    -u), it prints four lines and interrupts its own process (SIGINT). Asked later for more threads than it
    started (threadpoolctl), it makes them without looking whether they started, and its next product waits
    for ever for one that did not: so a process is told, before it loads, the count it will use."""
    given = os.environ.get(_OPENBLAS_THREADS)
    if replace or given is None:
        os.environ[_OPENBLAS_THREADS] = str(threads)
    try:
        yield
    finally:
        if given is None:
            os.environ.pop(_OPENBLAS_THREADS, None)
        else:
            os.environ[_OPENBLAS_THREADS] = given


_OPENBLAS_THREADS = "OPENBLAS_NUM_THREADS"


def set_threads(threads: int) -> None:
    """:func:`limit_threads` for the rest of this process (a worker's whole life)."""
    global _threads
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    _threads = threads


# glibc's malloc settings (malloc.h): blocks up to this size come from the heap, which keeps them.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BLOCKS_UP_TO = 32 << 20  # glibc's own ceiling for the mmap threshold on 64-bit machines
_TRIM_ABOVE = 1 << 30  # give the heap's free top back to the system only beyond 1 GB


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MB for reuse, for the rest of this process.

    NumPy makes a new array for most results. glibc serves a block over its mmap threshold (128 KB
    at first, then moving) from the system and gives it back on free, so results are faulted in page
    by page, and each give-back interrupts every core running another thread of the process to
    flush its TLB. Two threads of one process, each running ``[512, 1536] @ [1536, 256]`` into new
    arrays, took 1.03–1.28× one thread's time alone, 1.01–1.08× writing into one array (two
    processes: 1.01–1.03×). With this setting a 2-thread 30 s encode and decode fault 7–10× fewer
    pages and, with OpenBLAS's own kernels, take about 10 % less time (docs/performance.md).

    Each thread keeps glibc's malloc arena of its own. They once shared one (``M_ARENA_MAX`` = 1),
    for fewer page faults on a process's first calls, but every allocation then took the arena's
    one lock: a 2-thread 30 s encode and decode took 6–7 % longer once warm. A pipeline's stage
    thread is new on every call, but it takes over the arena its predecessor left, kept memory and all.

    The price: each arena keeps its peak size until the process ends. A process-wide setting, so the
    command line and its workers call this; a library user decides for their own process.
    Returns False where malloc is not glibc's.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded (ctypes.util.find_library took 18 ms a start)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BLOCKS_UP_TO)
                    and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE))
    except (OSError, AttributeError):
        return False


def current() -> int:
    """The thread count in force for this thread (``limit_threads``/``set_threads``; all cores by default)."""
    return getattr(_local, "threads", _threads)


def single() -> contextlib.AbstractContextManager[None]:
    """Inside the block, this thread's own work uses no other thread (it is one of several already)."""
    return using(1)


@contextlib.contextmanager
def using(count: int) -> Iterator[None]:
    """Inside the block, this thread's own work uses up to ``count`` threads (:func:`run_blocks`)."""
    previous = getattr(_local, "threads", None)
    _local.threads = count
    try:
        yield
    finally:
        if previous is None:
            del _local.threads
        else:
            _local.threads = previous


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS runs each product on one thread inside the block (see the module docstring for why).

    BLAS's thread count belongs to the process, and codec calls may run in several threads at once (a web
    server's request threads; our own stage threads). So the limit is set when the first call begins and
    put back when the last one ends, whichever threads those are. (Each call once set and put back the limit
    itself: a call that ended while another thread's ran put back two threads under it, whose products then
    rounded otherwise, and the process was left on one thread.) An OpenBLAS built on OpenMP keeps a limit
    per thread instead, which each call sets for its own thread.
    """
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = _set_blas_limit(None)
        _blas_users += 1
    try:
        per_thread = _blas()[1]
        with per_thread.limit(limits=1) if per_thread.lib_controllers else contextlib.nullcontext():
            yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _set_blas_limit(_blas_limiter)
                _blas_limiter = None


def _blas():
    """threadpoolctl's controllers of the BLAS libraries loaded now: ``(all, those whose limit is each thread's
    own)``. threadpoolctl 3.8 keeps a controller until a module is imported (SciPy brings an OpenBLAS of its
    own), and these are taken from it again when it changes; before 3.8, from the one made at the first call."""
    global _controller
    import threadpoolctl

    if hasattr(threadpoolctl, "get_cached_controller"):
        found = threadpoolctl.get_cached_controller()
    else:
        found = _controller[0] if _controller else threadpoolctl.ThreadpoolController()
    if _controller is None or _controller[0] is not found:
        blas = found.select(user_api="blas")
        _controller = (found, blas, blas.select(threading_layer="openmp"))
    return _controller[1:]


def _set_blas_limit(limiter):
    """Limit BLAS to one thread (``limiter`` None; returns threadpoolctl's limiter, which remembers the limit
    before), or put back what ``limiter`` found. threadpoolctl lets one thread at a time set OpenBLAS's limit,
    and takes another's setting silently for none (so that threads do not fight over it); here the first and
    the last call of a run of overlapping calls may be in different threads, so each takes the setting over."""
    from threadpoolctl import OpenBLASController

    release = getattr(OpenBLASController, "clear_controlling_thread", None)  # threadpoolctl 3.8 and later
    if release is not None:
        release(force=True)
    if limiter is None:
        return _blas()[0].limit(limits=1)
    limiter.restore_original_limits()
    if release is not None:
        release(force=True)
    return None


def _nothing() -> None:
    pass


class _Job:
    """One :func:`run_blocks` call as its helpers see it: the work, and how many helpers it woke and
    how many are back. The caller waits on these counts, not on a token per helper: Ctrl-C can land
    just after a wait has taken a helper's token, and a caller that then waited for that token again
    waited for ever; a count it reads again is never lost."""

    def __init__(self, work: Callable[[], None]):
        self.work = work
        self.woken = 0
        self.back: list[None] = []  # one entry per helper back (list.append is atomic under the GIL)
        self.returns: queue.SimpleQueue = queue.SimpleQueue()  # wakes the caller when a helper is back


class _Team:
    """Helper threads for :func:`run_blocks`, each asleep on its own lock between calls.

    A hand-off is a lock release (measured 17 µs for a round trip, against 67 µs through a
    ``ThreadPoolExecutor``'s futures), which matters when a streaming step runs a hundred products of
    0.1 ms each. Waiting threads block, they never spin: a spinning thread would take the time
    slices a busy neighbour process or our own working thread needs.
    """

    def __init__(self, helpers: int):
        self.busy = threading.Lock()  # one run_blocks at a time; another caller runs its blocks alone
        self.wake = [threading.Lock() for _ in range(helpers)]
        self.jobs: list[_Job | None] = [None] * helpers
        for index, wake in enumerate(self.wake):
            wake.acquire()
            try:
                threading.Thread(target=self._helper, args=(index,), daemon=True, name="mimi-worker").start()
            except RuntimeError:  # "can't start new thread" (ulimit -u): the team is not made, and the helpers
                self._dismiss(index)  # started already end, rather than sleep for ever
                raise

    def _dismiss(self, helpers: int) -> None:
        for index in range(helpers):
            self.jobs[index] = None  # (woken with no job: the helper returns)
            self.wake[index].release()

    def _helper(self, index: int) -> None:
        _local.threads = 1  # a helper's blocks never share out their own work
        while True:
            self.wake[index].acquire()
            job = self.jobs[index]
            if job is None:  # dismissed (_dismiss)
                return
            try:
                job.work()
            finally:
                job.back.append(None)
                job.returns.put(None)

    def run(self, work: Callable[[], None], helpers: int, stop: Callable[[BaseException], None]) -> None:
        """``work()`` on ``helpers`` of the team's threads and on the caller's, until all return.

        An interrupt (Ctrl-C) calls ``stop`` and is raised once every helper woken is back, so no
        helper is still writing when the caller unwinds.
        """
        job, interrupt = _Job(work), None
        try:
            for index in range(helpers):
                self.jobs[index] = job
                job.woken += 1  # counted before the release: CPython delivers Ctrl-C after a call, not before
                self.wake[index].release()
            work()
        except BaseException as error:  # noqa: BLE001 - raised below, after the helpers
            stop(error)
            interrupt = error
        while len(job.back) < job.woken:
            try:
                job.returns.get()  # which helper it was does not matter: the count decides
            except BaseException as error:  # noqa: BLE001 - raised below, after the helpers
                stop(error)
                interrupt = interrupt or error
        # Let go of the caller's blocks and the arrays they hold: a helper keeps its last job until the next.
        job.work, self.jobs[:helpers] = _nothing, [None] * helpers
        if interrupt is not None:
            raise interrupt


_team: _Team | None = None
_team_made = threading.Lock()


def _forget_team() -> None:  # a forked child has none of its parent's threads, nor their calls
    global _team, _team_made, _blas_lock, _blas_users, _blas_limiter
    _team, _team_made = None, threading.Lock()
    _blas_lock, _blas_users, _blas_limiter = threading.Lock(), 0, None  # (a lock held then stayed held)


os.register_at_fork(after_in_child=_forget_team)


def run_blocks(fn: Callable[[int], None], count: int) -> None:
    """``fn(i)`` for ``i`` in ``range(count)``, on up to :func:`current` threads at once.

    The blocks are the caller's and must not depend on the thread count; ``fn`` writes its own
    block's result. The calling thread takes blocks too; the first error stops the others from
    taking more and is raised here.
    """
    global _team
    threads = min(current(), count)
    if threads > 1 and (_team is None or len(_team.wake) < threads - 1):
        with _team_made:
            if _team is None or len(_team.wake) < threads - 1:
                _team = _Team(threads - 1)
    team = _team
    if threads <= 1 or not team.busy.acquire(blocking=False):  # nested, or another thread holds the team
        for index in range(count):
            fn(index)
        return
    pending, errors = itertools.count(), []  # next() on a count is atomic under the GIL

    def work() -> None:
        while not errors:
            index = next(pending)
            if index >= count:
                return
            try:
                fn(index)
            except BaseException as error:  # noqa: BLE001 - raised in the caller below
                errors.append(error)

    try:
        with single():
            team.run(work, threads - 1, errors.append)
    finally:
        team.busy.release()
    if errors:
        raise errors[0]


def even_pieces(length: int, size: int, limit: int) -> list[slice]:
    """``range(length)`` cut into an even number (for two cores) of near-equal pieces, as few as keep
    each piece's share of ``size`` within ``limit`` (the same unit: bytes of weight, steps ...)."""
    count = 2 * -(-size // (2 * limit))
    bounds = [length * i // count for i in range(count + 1)]  # (np.linspace took 3 ms of a 100 ms step)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# A product with at most this many columns is bound by reading its weight (streaming: a frame or
# two per stream); its rows then go in an even number of pieces of at most _PIECE_BYTES of weight.
_SKINNY_COLUMNS = 64
_PIECE_BYTES = 4 << 20
# Up to this many columns, one matrix-vector product per column beats one matrix product: OpenBLAS
# packs the whole weight before a product of 2-4 columns, which made a [1536, 512] @ [512, 2] take
# 1.7× the time of two [1536, 512] @ [512] (a [8192, 2048] one 2.1×; at 4 columns they are even).
_VECTOR_COLUMNS = 3


def matmul_rows(w: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``w @ x`` for ``w`` ``[M, K]``, ``x`` ``[K, N]``; with few columns, pieces of rows run at once.

    Each thread reads only its rows of the weight, so two threads stream the weight at up to twice
    the rate. The pieces (an even number, for two cores) depend on the shapes alone, never on the
    thread count (see the module docstring). Without ``out`` the result may be a transposed view;
    with it (``[M, N]``, any strides), a product with many columns is written there by BLAS itself.
    """
    rows, columns = w.shape[0], x.shape[1]
    if columns > _SKINNY_COLUMNS or rows < 64:
        return np.matmul(w, x, out=out)
    pieces = even_pieces(rows, w.nbytes, _PIECE_BYTES)
    # np.dot, not np.matmul: matmul holds the GIL on products this small (measured: a waiting
    # thread then starts only after the 5 ms switch interval), dot always lets it go.
    vectors = columns <= _VECTOR_COLUMNS  # then x and out are kept [N, ·]: one contiguous row per column
    x = np.ascontiguousarray(x.T if vectors else x)
    product = np.empty((columns, rows) if vectors else (rows, columns), np.result_type(w, x))

    def one(i: int) -> None:
        r = pieces[i]
        if vectors:
            for j in range(columns):
                np.dot(w[r], x[j], out=product[j, r])
        else:
            np.dot(w[r], x, out=product[r])

    run_blocks(one, len(pieces))
    product = product.T if vectors else product
    if out is None:
        return product
    out[...] = product
    return out


def matmul_depth(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``x @ w`` for ``x`` ``[N, K]``, ``w`` ``[K, M]`` (a weight as the right operand, as a transposed
    convolution has it); with at most 3 rows, pieces of the depth ``K`` run at once and are summed in order.

    Each piece reads only its rows of the weight, as in :func:`matmul_rows`: the decoder's first
    upsampling (32 MB of weight, 2 rows a step for one stream) took 5.0 ms as one product and 3.0 ms as
    pieces on two threads, the same on one. With more rows the thin pieces cost more than they gain.
    The pieces depend on the shapes alone.
    """
    if x.shape[0] > _VECTOR_COLUMNS or w.nbytes <= _PIECE_BYTES:  # matrix-vector territory only, as above
        return x @ w
    pieces = even_pieces(w.shape[0], w.nbytes, _PIECE_BYTES)
    partial: list[np.ndarray | None] = [None] * len(pieces)

    def one(i: int) -> None:
        partial[i] = np.dot(x[:, pieces[i]], w[pieces[i]])

    run_blocks(one, len(pieces))
    total = partial[0]
    for part in partial[1:]:  # in piece order, whichever thread finished first
        total += part
    return total


def map_elements(fn: Callable[[np.ndarray, np.ndarray], None], x: np.ndarray, in_place: bool = False) -> np.ndarray:
    """``out = fn(x)`` for an element-wise ``fn(x_part, out_part)`` that writes ``out_part`` (``x_part``
    itself when ``in_place``: ``fn`` must then read each element before it writes it).

    The elements go in blocks of :data:`CACHE_BLOCK` (a few passes over a block then stay in the
    core's cache, where a pass over the whole array would stream it from memory each time: ELU over
    a ``[16, 64, 3840]`` activation took 22 ms whole, 14 ms in blocks), shared out to the threads.
    ``x`` is made C-contiguous first, so that ``out`` (``empty_like``) is too and the flat views
    below are views, not copies (a strided ``out`` once stayed uninitialised that way).
    """
    x = np.ascontiguousarray(x)  # a copy when x is strided: the result is then written over that
    out = x if in_place else np.empty_like(x)
    flat_in, flat_out = x.reshape(-1), out.reshape(-1)
    blocks = [slice(start, start + CACHE_BLOCK) for start in range(0, x.size, CACHE_BLOCK)]
    run_blocks(lambda i: fn(flat_in[blocks[i]], flat_out[blocks[i]]), len(blocks))
    return out
