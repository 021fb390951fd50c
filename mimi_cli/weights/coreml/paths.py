"""Paths inside a Core ML model folder: nothing a model names may lead out of it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from mimi_cli.errors import WeightsError
from mimi_cli.fileio import file_kind


def inside(root: Path, relative: str, what: str) -> Path:
    """``root / relative``, refusing absolute paths, ``..`` and symlinks that lead out of ``root``."""
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise WeightsError(f"refusing {what} path {relative!r}: not a file name")
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise WeightsError(f"refusing {what} path {relative!r}: it leads outside the model folder {root}")
    resolved = Path(os.path.realpath(root / candidate))  # Path.resolve raises RuntimeError on a loop of links
    if not resolved.is_relative_to(os.path.realpath(root)):
        raise WeightsError(f"refusing {what} path {relative!r}: it resolves outside the model folder {root}")
    try:
        kind = file_kind(resolved.stat().st_mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise WeightsError(f"refusing {what} path {relative!r}: it is a loop of symbolic links") from None
        return resolved  # missing or unreadable: said where it is opened
    if kind is not None and kind != "a folder":  # a pipe or a device would block or read forever
        raise WeightsError(f"refusing {what} path {relative!r}: it is {kind}, not a file")
    return resolved
