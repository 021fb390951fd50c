"""Signals as exceptions, so that every exit path cleans up, and workers that die with their parent.

Python turns SIGINT (Ctrl-C) into ``KeyboardInterrupt``; SIGTERM and SIGHUP would
end the process on the spot and leave temporary files behind. :func:`install`
makes them raise :class:`Interrupted` (a ``KeyboardInterrupt``) as well, so the
``finally`` blocks of :func:`mimi_cli.fileio.atomic_output` run whatever the signal.

What remains after each signal::

    SIGINT, SIGTERM, SIGHUP    whole outputs only; the temporary file of the one being written is removed
    SIGKILL                    cannot be caught: a hidden .NAME.*.partial file may remain beside the output
                               being written (never mistaken for an output); worker processes notice
                               their parent is gone within a second and stop the same clean way
"""

from __future__ import annotations

import os
import signal
import threading

_CAUGHT = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class Interrupted(KeyboardInterrupt):
    """A termination signal, raised where the program was; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def exit_code(exc: KeyboardInterrupt) -> int:
    return getattr(exc, "exit_code", 128 + signal.SIGINT)


def _raise(signum, frame) -> None:
    raise Interrupted(signum)


def _exit(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds like any exception; multiprocessing ends the worker without a traceback


def install(worker: bool = False) -> None:
    """SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread (``SystemExit`` in a ``worker``)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _CAUGHT:
        signal.signal(signum, _exit if worker else _raise)
    if worker:
        signal.signal(signal.SIGINT, _exit)  # Ctrl-C reaches the whole process group: the parent reports it


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
