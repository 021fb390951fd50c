"""What a C library prints on standard error itself, caught and kept as text.

mpg123, libsndfile's MP3 decoder, writes notes about damaged frames ("Note: Illegal Audio-MPEG-Header …
Trying to resync…") and warnings about a stream's size straight to file descriptor 2, whatever ``-q``
says, several lines for each place, naming no file. Around such a library's calls, descriptor 2 is pointed
at a temporary file, and what was written there is read back as lines: the tool then says it once, as a
warning about that file (or not at all, when it refuses the file in one line anyway).

    fd 2 ──▶ terminal            before and after the call
    fd 2 ──▶ temporary file      during it; the terminal's descriptor kept aside (``dup``) and put back

Descriptor 2 is the whole process's: a lock keeps two threads from swapping it at once, and what another
thread wrote meanwhile (a progress bar's refresh: it holds escape codes) is written back where it was going.
Where the temporary file or a spare descriptor cannot be had, the call runs as it is, its chatter shown.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

_SWAP = threading.Lock()
MAX_LINES = 100  # a badly damaged file makes thousands: the first ones say what happened


class CaughtStderr:
    """The lines C code wrote on descriptor 2 inside :meth:`caught` blocks, in order (at most MAX_LINES)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.count = 0  # all of them, kept or not
        self._file = None

    @contextlib.contextmanager
    def caught(self) -> Iterator[None]:
        with _SWAP:
            try:
                if self._file is None:
                    self._file = tempfile.TemporaryFile()
                if sys.stderr is not None:
                    sys.stderr.flush()  # Python's own text, written before, goes where it was going
                kept = os.dup(2)
            except (OSError, ValueError):  # no room, no descriptor left, a closed stderr: the call as it is
                yield
                return
            try:
                os.dup2(self._file.fileno(), 2)
                yield
            finally:
                os.dup2(kept, 2)
                os.close(kept)
                self._take()

    @contextlib.contextmanager
    def dropped(self) -> Iterator[None]:
        """Like :meth:`caught`, but what is written is not kept: complaints the caller expects (mpg123 decoding
        from a frame whose bit reservoir it has not read, as a seek makes it)."""
        lines, count = list(self.lines), self.count
        try:
            with self.caught():
                yield
        finally:
            self.lines, self.count = lines, count

    def _take(self) -> None:
        """Read what the file holds into ``lines``, and empty it for the next block."""
        f = self._file
        f.seek(0)
        text = f.read().decode("utf-8", "replace")
        f.seek(0)
        f.truncate()
        for line in text.splitlines(keepends=True):
            if "\x1b" in line or "\r" in line:  # a terminal's display, another thread's: not the library's
                with contextlib.suppress(OSError):
                    os.write(2, line.encode())
            elif line.strip():
                self.count += 1
                if len(self.lines) < MAX_LINES:
                    self.lines.append(line.strip())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
