"""Reading one ``.npy`` array safely: header first, sizes checked, never unpickled."""

from __future__ import annotations

import contextlib
import functools
import io
import lzma
import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from mimi_cli.errors import DATA_ERRORS, MimiError, first_line, os_reason
from mimi_cli.fileio import missing

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what a model input or a code array can be
# The .npy format's versions (numpy.lib.format) and the size of each one's header length field.
VERSIONS = {(1, 0): 2, (2, 0): 4, (3, 0): 4}
# The longest header NumPy parses (its own ``max_header_size`` default): a header is a short dict literal.
MAX_HEADER_BYTES = 10_000


class InvalidArrayError(MimiError, ValueError):
    """An ``.npy`` file that is not a plain numeric array, or lies about its size."""


# What a reader may check of an array from its header, before anything is read: ``check(shape, dtype)``
# raises to refuse it (a codes reader: a shape no codec decodes).
HeaderCheck = Callable[[tuple[int, ...], np.dtype], None]


def read_npy(path: Path | str, max_bytes: int = 4 << 30, check: HeaderCheck | None = None) -> np.ndarray:
    """The array in ``path``; its header's shape and dtype must match the file's size, and the size stay
    under ``max_bytes`` (and pass ``check``), before anything is read."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _read_array(f, os.fstat(f.fileno()).st_size, str(path), max_bytes,
                               lambda dtype, count: np.fromfile(f, dtype=dtype, count=count), check=check)
    except FileNotFoundError:  # said as every reader says it ("cannot read x.npy: No such file or directory")
        raise InvalidArrayError(f"{path} {missing(path) or 'does not exist'}") from None
    except OSError as exc:
        raise InvalidArrayError(f"cannot read {path}: {os_reason(exc)}") from None


def read_npy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str, max_bytes: int = 4 << 30,
                    kinds: str | None = NUMERIC_KINDS, check: HeaderCheck | None = None) -> np.ndarray:
    """The array of one ``.npy`` member of a zip archive (an ``.npz``), checked as :func:`read_npy` checks a
    file: against the member's size in the archive's directory, before anything is decompressed (and no
    more than that size is ever decompressed). ``kinds``: the dtype kinds taken (None: any but objects)."""
    with open_member(archive, info, shown) as f:
        return _read_array(f, info.file_size, shown, max_bytes,
                           lambda dtype, count: np.frombuffer(f.read(count * dtype.itemsize), dtype, count), kinds,
                           check)


@contextlib.contextmanager
def open_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str) -> Iterator[IO[bytes]]:
    """One member of a zip archive, open to read; what zipfile and its decompressors raise on a damaged or odd
    member, in the block too, as one InvalidArrayError."""
    try:
        with archive.open(info) as f:
            yield f
    except NotImplementedError as exc:  # a compression method zipfile lacks
        raise InvalidArrayError(f"cannot read {shown}: {exc}; write it again with NumPy (np.savez)") from None
    except RuntimeError:  # zipfile's words for an encrypted member
        raise InvalidArrayError(f"cannot read {shown}: it is encrypted; write it without a password") from None
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError) as exc:  # a CRC that does not match, damaged deflate
        raise InvalidArrayError(f"{shown} is not readable ({exc}): it is cut short or damaged; write it again") \
            from None
    except OSError as exc:
        raise InvalidArrayError(f"cannot read {shown}: {os_reason(exc)}") from None


def read_header(f, size: int, shown: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype from the ``.npy`` header at ``f``'s start, in a file or member of ``size``
    bytes. The header's own length is checked before it is read: NumPy reads whatever length a header
    declares (up to 4 GB) before it checks it, and takes an unknown version for 2.0."""
    try:
        magic = f.read(8)
        if len(magic) < 8 or magic[:6] != np.lib.format.MAGIC_PREFIX:
            raise InvalidArrayError(f"{shown} is not a .npy array (it does not start as one)")
        version = (magic[6], magic[7])
        if version not in VERSIONS:
            raise InvalidArrayError(f"{shown} declares .npy format version {version[0]}.{version[1]}, which does "
                                    f"not exist (1.0, 2.0, 3.0); the file is damaged")
        field = f.read(VERSIONS[version])
        length = int.from_bytes(field, "little")
        if len(field) < VERSIONS[version] or length > min(MAX_HEADER_BYTES, size - 8 - len(field)):
            raise InvalidArrayError(f"{shown}: its .npy header declares {length:,} bytes of itself, more than the "
                                    f"file holds or NumPy reads ({MAX_HEADER_BYTES:,}); the file is damaged")
        shape, fortran, dtype = _parsed_header(version, field + f.read(length))
    except InvalidArrayError:
        raise
    # NumPy parses the header's text as a Python literal: a damaged one can raise the tokenizer's errors too
    except (*DATA_ERRORS, SyntaxError, tokenize.TokenError) as exc:
        raise InvalidArrayError(f"{shown} is not a readable .npy array ({type(exc).__name__}: "
                                f"{first_line(exc, 160)})") from None
    if any(dim < 0 for dim in shape):  # NumPy's parser takes any integers, and -1s multiply to a size that fits
        raise InvalidArrayError(f"{shown}: its .npy header declares the shape {list(shape)}, with a negative size; "
                                "the file is damaged")
    return shape, fortran, dtype


def check_npy_head(head: bytes, name: str) -> None:
    """Refuse data whose first bytes (``head``, of a pipe still coming: see fileio.readable) do not begin a
    readable ``.npy`` header, with the error the whole would get."""
    read_header(io.BytesIO(head), len(head), name)


@functools.lru_cache(maxsize=256)
def _parsed_header(version: tuple[int, int], header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """NumPy's reading of a header (its length field and text), kept: NumPy parses the text as a Python
    literal, a compile each time, and a run that checks a corpus's codes files before resuming it (see
    mimi_cli.pipeline.made_otherwise) reads a dozen headers a file, most alike. What raises is not kept."""
    parse = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return parse(io.BytesIO(header))


def _read_array(f, size: int, shown: str, max_bytes: int, read, kinds: str | None = NUMERIC_KINDS,
                check: HeaderCheck | None = None) -> np.ndarray:
    """The array after ``f``'s ``.npy`` header, in a file or member of ``size`` bytes: ``read(dtype, count)``."""
    shape, fortran, dtype = read_header(f, size, shown)
    try:
        if dtype.hasobject:
            raise InvalidArrayError(f"{shown} holds pickled objects ({dtype}), which are never unpickled; give an "
                                    "array of plain values")
        if kinds is not None and dtype.kind not in kinds:
            raise InvalidArrayError(f"{shown} holds {dtype} values; give an array of booleans, integers or floats")
        declared = math.prod(shape) * dtype.itemsize
        if declared > max_bytes:
            raise InvalidArrayError(f"{shown}: its header declares {list(shape)} {dtype} ({declared:,} bytes), "
                                    f"more than the {max_bytes:,} read here")
        stored = size - f.tell()
        if stored != declared:
            raise InvalidArrayError(f"{shown}: its header declares {list(shape)} {dtype} ({declared:,} bytes) "
                                    f"but the file holds {stored:,}; the file is cut short or damaged")
        if check is not None:
            check(shape, dtype)
        data = read(dtype, math.prod(shape))
    except MimiError:  # this reader's refusals, and ``check``'s
        raise
    except DATA_ERRORS as exc:
        raise InvalidArrayError(f"{shown} is not a readable .npy array ({type(exc).__name__}: "
                                f"{first_line(exc, 160)})") from None
    return data.reshape(shape, order="F" if fortran else "C")
