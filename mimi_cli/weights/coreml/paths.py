"""Paths inside a Core ML model folder: nothing a model names may lead out of it."""

from __future__ import annotations

import contextlib
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
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise WeightsError(f"refusing {what} path {relative!r}: it resolves outside the model folder {root}")
    with contextlib.suppress(OSError):  # a pipe or a device would block or read forever
        kind = file_kind(resolved.stat().st_mode)
        if kind is not None and kind != "a folder":
            raise WeightsError(f"refusing {what} path {relative!r}: it is {kind}, not a file")
    return resolved
