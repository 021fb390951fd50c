"""Writing outputs safely: never overwrite by accident, never leave a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mimi_cli.errors import MimiError, OutputExistsError


def check_output(path: Path, force: bool) -> None:
    """Fail early (before any work) if ``path`` cannot or should not be written."""
    if path.is_dir():
        raise MimiError(f"{path} is a directory; give an output file name with -o")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass -f/--force to overwrite it")
    if not path.parent.is_dir():
        raise MimiError(f"cannot write {path}: folder {path.parent} does not exist")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    On any exception, Ctrl-C included, the temporary file is removed and
    ``path`` is left as it was. The temporary name keeps the suffix, so
    libraries that pick a format from the extension still work.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
