"""Signals as exceptions, so that every exit path cleans up, and workers that die with their parent.

Python turns SIGINT (Ctrl-C) into ``KeyboardInterrupt``; SIGTERM and SIGHUP would
end the process on the spot and leave temporary files behind. :func:`install`
makes them raise :class:`Interrupted` (a ``KeyboardInterrupt``) as well, so the
``finally`` blocks of :func:`mimi_cli.fileio.atomic_output` run whatever the signal. A signal ignored
when the process started (``nohup``'s SIGHUP, the SIGINT of a script's ``&``) stays ignored.
A signal that arrives while a finalizer (``__del__``) or an import runs is taken just after it:
raised there, Python would print a traceback and carry on as if it had never come.

What remains after each signal::

    SIGINT, SIGTERM, SIGHUP    whole outputs only; the temporary file of the one being written is removed
                               (sent to the whole process group too, as a terminal does: workers and
                               multiprocessing's resource tracker stop or carry on without a traceback)
    SIGXCPU                    the same, said as the CPU-time limit (ulimit -S -t) reached; a worker that
                               reaches its own fails its file saying so
    SIGKILL                    cannot be caught: nothing remains on Linux, where the file being written has
                               no name until it is complete (fileio._scratch_file); elsewhere a hidden
                               .NAME.*.partial file may remain beside it (never mistaken for an output);
                               worker processes notice their parent is gone within a second and stop the
                               same clean way
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

# SIGXCPU: a soft CPU-time limit (ulimit -S -t) reached, which would end the process as SIGKILL does (a hard limit
# is SIGKILL itself).
_CAUGHT = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGXCPU") if hasattr(signal, name))
# Why a signal stopped the run, where it is not someone stopping it.
_REASONS = {getattr(signal, "SIGXCPU", None): "the CPU time limit (ulimit -t) was reached"}


class Interrupted(KeyboardInterrupt):
    """A termination signal, raised where the program was; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def exit_code(exc: KeyboardInterrupt) -> int:
    return getattr(exc, "exit_code", 128 + signal.SIGINT)


def limit_reached(code: object) -> str | None:
    """The limit of the system whose signal gives exit ``code`` (128 + the signal's number), in words; None for a
    signal that someone sent to stop the run."""
    return _REASONS.get(code - 128) if isinstance(code, int) else None


def reason(exc: KeyboardInterrupt) -> str:
    """Why the run stopped, as the start of its message: "interrupted", or the limit that was reached."""
    return limit_reached(exit_code(exc)) or "interrupted"


def _as_interrupt(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Interrupted(signum)  # SIGINT: as Python's own


def _as_exit(signum: int) -> BaseException:
    return SystemExit(128 + signum)  # unwinds like any exception; multiprocessing ends the worker without a traceback


# A signal that lands in a finalizer is sent again this much later (and again, if the finalizer still runs).
_RETRY_SECONDS = 0.02


def _in_finalizer(frame) -> bool:
    """Whether an exception raised at ``frame`` would be lost: Python cannot raise out of a ``__del__``
    (a file object closing as it is collected) nor out of a weakref's callback (importlib's module locks
    have one); it prints "Exception ignored in ..." with a traceback, and the program carries on as if the
    signal had never come. An import in progress counts too: its module-lock callbacks run in it, and a
    module stopped half way through its body stays half made."""
    while frame is not None:
        if frame.f_code.co_name == "__del__" or frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _handler(exception: Callable[[int], BaseException]) -> Callable:
    def handle(signum, frame) -> None:
        if _in_finalizer(frame):  # take it once the finalizer is done, from where it can unwind
            timer = threading.Timer(_RETRY_SECONDS, signal.pthread_kill, (threading.main_thread().ident, signum))
            timer.daemon = True
            timer.start()
            return
        raise exception(signum)

    return handle


def install(worker: bool = False) -> None:
    """SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread (``SystemExit`` in a ``worker``),
    SIGINT ``KeyboardInterrupt`` (``SystemExit``); one that arrives inside a finalizer or an import is taken just
    after it. A signal the process was started ignoring stays ignored, as Python does for SIGINT: ``nohup``
    ignores SIGHUP so that a run outlives its terminal, a shell script's ``&`` ignores SIGINT so that Ctrl-C
    meant for the foreground does not stop it (and the workers inherit it, ignored, across ``exec``); but a
    worker always takes SIGTERM, the way its parent stops it (and it stops itself, see die_with_parent)."""
    if threading.current_thread() is not threading.main_thread():
        return
    handle = _handler(_as_exit if worker else _as_interrupt)
    for signum in (*_CAUGHT, signal.SIGINT):  # a worker's Ctrl-C reaches the whole group: the parent reports it
        if signal.getsignal(signum) is not signal.SIG_IGN or (worker and signum == signal.SIGTERM):
            signal.signal(signum, handle)


def die_with_parent(poll_seconds: float = 0.5) -> None:
    """In a worker process: when the parent goes away (even by SIGKILL), SIGTERM ourselves.

    A daemon thread watches the parent's pid; the SIGTERM then unwinds the main
    thread through :func:`install`'s handler, removing any temporary file.
    """
    parent = os.getppid()

    def watch() -> None:
        import time

        while os.getppid() == parent:
            time.sleep(poll_seconds)
        # to the main thread itself: a signal taken by this thread would not interrupt the main thread's
        # blocking read, and Python runs handlers only when the main thread gets control back
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    threading.Thread(target=watch, name="mimi-parent-watch", daemon=True).start()


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (before a pool does) deaf to SIGHUP.

    A terminal's hangup reaches the whole process group. The tracker ignores SIGINT and
    SIGTERM but not SIGHUP: it died, the pool started another, and that one printed a
    ``KeyError`` traceback for every semaphore it had never seen. A signal blocked while
    a process starts stays blocked in it (the tracker unblocks only SIGINT and SIGTERM),
    and one that comes meanwhile reaches this process once unblocked, not lost.
    """
    if not hasattr(signal, "SIGHUP") or not hasattr(signal, "pthread_sigmask"):
        return
    from multiprocessing import resource_tracker

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
