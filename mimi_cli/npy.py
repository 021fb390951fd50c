"""Reading one ``.npy`` array safely: header first, sizes checked, never unpickled."""

from __future__ import annotations

import math
import os
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
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            if dtype.hasobject or dtype.kind not in NUMERIC_KINDS:
                raise InvalidArrayError(f"{path} holds {dtype} values; give a plain numeric array "
                                        "(objects are never unpickled)")
            declared = math.prod(shape) * dtype.itemsize
            if declared > max_bytes:
                raise InvalidArrayError(f"{path}: its header declares {list(shape)} {dtype} ({declared:,} bytes), "
                                        f"more than the {max_bytes:,} read here")
            stored = os.fstat(f.fileno()).st_size - f.tell()
            if stored != declared:
                raise InvalidArrayError(f"{path}: its header declares {list(shape)} {dtype} ({declared:,} bytes) "
                                        f"but the file holds {stored:,}; the file is cut short or damaged")
            data = np.fromfile(f, dtype=dtype, count=math.prod(shape))
    except InvalidArrayError:
        raise
    except OSError as exc:
        raise InvalidArrayError(f"cannot read {path}: {exc.strerror or exc}") from None
    except DATA_ERRORS as exc:
        raise InvalidArrayError(f"{path} is not a readable .npy array ({type(exc).__name__}: "
                                f"{first_line(exc, 160)})") from None
    return data.reshape(shape, order="F" if fortran else "C")
