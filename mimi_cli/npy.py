"""Reading one ``.npy`` array safely: header first, sizes checked, never unpickled."""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from mimi_cli.errors import DATA_ERRORS, MimiError, first_line

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what a model input or a code array can be


class InvalidArrayError(MimiError, ValueError):
    """An ``.npy`` file that is not a plain numeric array, or lies about its size."""


def read_npy(path: Path | str, max_bytes: int = 4 << 30) -> np.ndarray:
    """The array in ``path``; its header's shape and dtype must match the file's size, and the size stay
    under ``max_bytes``, before anything is read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _read_array(f, os.fstat(f.fileno()).st_size, str(path), max_bytes,
                               lambda dtype, count: np.fromfile(f, dtype=dtype, count=count))
    except OSError as exc:
        raise InvalidArrayError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_npy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str,
                    max_bytes: int = 4 << 30) -> np.ndarray:
    """The array of one ``.npy`` member of a zip archive (an ``.npz``), checked as :func:`read_npy` checks a
    file: against the member's size in the archive's directory, before anything is decompressed (and no
    more than that size is ever decompressed)."""
    try:
        with archive.open(info) as f:
            return _read_array(f, info.file_size, shown, max_bytes,
                               lambda dtype, count: np.frombuffer(f.read(count * dtype.itemsize), dtype, count))
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidArrayError(f"cannot read {shown}: {getattr(exc, 'strerror', None) or exc}") from None


def _read_array(f, size: int, shown: str, max_bytes: int, read) -> np.ndarray:
    """The array after ``f``'s ``.npy`` header, in a file or member of ``size`` bytes: ``read(dtype, count)``."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        if dtype.hasobject or dtype.kind not in NUMERIC_KINDS:
            why = " (objects are never unpickled)" if dtype.hasobject else ""
            raise InvalidArrayError(f"{shown} holds {dtype} values; give an array of booleans, integers or floats{why}")
        declared = math.prod(shape) * dtype.itemsize
        if declared > max_bytes:
            raise InvalidArrayError(f"{shown}: its header declares {list(shape)} {dtype} ({declared:,} bytes), "
                                    f"more than the {max_bytes:,} read here")
        stored = size - f.tell()
        if stored != declared:
            raise InvalidArrayError(f"{shown}: its header declares {list(shape)} {dtype} ({declared:,} bytes) "
                                    f"but the file holds {stored:,}; the file is cut short or damaged")
        data = read(dtype, math.prod(shape))
    except InvalidArrayError:
        raise
    except DATA_ERRORS as exc:
        raise InvalidArrayError(f"{shown} is not a readable .npy array ({type(exc).__name__}: "
                                f"{first_line(exc, 160)})") from None
    return data.reshape(shape, order="F" if fortran else "C")
