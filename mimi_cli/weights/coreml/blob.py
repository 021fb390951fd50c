"""MIL blob storage v2 (``weight.bin``): the binary store behind every ``BLOBFILE`` reference.

Layout (little-endian)::

    0    file header, 64 B: u32 blob count | u32 version (= 2) | 56 B reserved
    64   blob record, 64 B: u32 0xDEADBEEF | u32 dtype code | u64 byte size | u64 data offset
                            | u64 padding bits | 4 × u64 reserved
    128  payload (byte size bytes), then zeros up to the next multiple of 64, next record ...

A ``BLOBFILE(path, offset)`` points at a *record*, not at the data. Files from
tools older than iOS 18 carry uninitialised memory in the padding and reserved
fields, so sizes are computed from the tensor's dtype and shape and those
fields are never trusted.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_cli.errors import WeightsError, os_reason
from mimi_cli.weights.dtypes import bf16_to_f32, e4m3_to_f32, e5m2_to_f32, unpack_bits

HEADER_BYTES = RECORD_BYTES = 64
SENTINEL = 0xDEADBEEF


@dataclass(frozen=True)
class BlobType:
    name: str  # as written in model.mil
    bits: int
    storage: str | None  # NumPy dtype of byte-aligned types; None for packed sub-byte integers
    signed: bool = False


# Blob dtype code → type. (The protobuf's DataType enum uses other numbers: see proto.py.)
BLOB_TYPES = {
    1: BlobType("fp16", 16, "<f2"), 2: BlobType("fp32", 32, "<f4"), 3: BlobType("uint8", 8, "u1"),
    4: BlobType("int8", 8, "i1"), 5: BlobType("bf16", 16, "<u2"), 6: BlobType("int16", 16, "<i2"),
    7: BlobType("uint16", 16, "<u2"), 8: BlobType("int4", 4, None, signed=True), 9: BlobType("uint1", 1, None),
    10: BlobType("uint2", 2, None), 11: BlobType("uint4", 4, None), 12: BlobType("uint3", 3, None),
    13: BlobType("uint6", 6, None), 14: BlobType("int32", 32, "<i4"), 15: BlobType("uint32", 32, "<u4"),
    16: BlobType("fp8e4m3fn", 8, "u1"), 17: BlobType("fp8e5m2", 8, "u1"),
}
TYPES_BY_NAME = {t.name: t for t in BLOB_TYPES.values()}


def decode(data: np.ndarray | bytes, type_name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Raw little-endian bytes of a ``type_name`` tensor → a NumPy array of ``shape``.

    Floats come back as float16/float32 (bf16 and fp8 widened to float32, exactly);
    integers in their own type.
    """
    kind = TYPES_BY_NAME[type_name]
    count = math.prod(shape)
    raw = np.frombuffer(data, np.uint8)
    if count * kind.bits > 8 * len(raw):  # checked before anything of ``shape`` is allocated
        raise ValueError(f"a {type_name} tensor of shape {list(shape)} needs {math.ceil(count * kind.bits / 8)} "
                         f"bytes, the data has {len(raw)}")
    if kind.storage is None:
        return unpack_bits(raw, count, kind.bits, kind.signed).reshape(shape)
    values = raw[: count * kind.bits // 8].view(kind.storage)
    if type_name == "bf16":
        values = bf16_to_f32(values)
    elif type_name == "fp8e4m3fn":
        values = e4m3_to_f32(values)
    elif type_name == "fp8e5m2":
        values = e5m2_to_f32(values)
    return values.reshape(shape)


class BlobFile:
    """One memory-mapped ``weight.bin``; ``read(offset, type, shape)`` decodes the blob recorded at ``offset``."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                self.size = path.stat().st_size
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        except OSError as exc:
            raise WeightsError(f"cannot read Core ML weights {path}: {os_reason(exc)}") from None
        if self.size < HEADER_BYTES:
            raise self._error(f"file is {self.size} bytes, too short for the 64-byte header")
        self.count, version = struct.unpack_from("<II", self._map, 0)
        if version != 2:
            raise self._error(f"blob storage version {version}, only version 2 is known")

    def _error(self, problem: str) -> WeightsError:
        return WeightsError(f"cannot read Core ML weights {self.path}: {problem}")

    def record(self, offset: int) -> tuple[int, int, int]:
        """``(dtype code, size in bytes, data offset)`` of the record at ``offset``, checked against the file."""
        if not 0 <= offset <= self.size - RECORD_BYTES:
            raise self._error(f"blob record offset {offset} is outside the {self.size}-byte file")
        sentinel, code, size, data_offset = struct.unpack_from("<IIQQ", self._map, offset)
        if sentinel != SENTINEL:
            raise self._error(f"no blob record at offset {offset} (sentinel {sentinel:#x}, expected {SENTINEL:#x})")
        if code not in BLOB_TYPES:
            raise self._error(f"blob at offset {offset} has unknown dtype code {code}")
        if not data_offset <= self.size or size > self.size - data_offset:
            raise self._error(f"blob at offset {offset} claims {size} bytes at {data_offset}, "
                              f"past the end of the {self.size}-byte file")
        return code, size, data_offset

    def read(self, offset: int, type_name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor of ``type_name`` and ``shape`` whose record is at ``offset``."""
        code, size, data_offset = self.record(offset)
        stored = BLOB_TYPES[code].name
        if stored != type_name:
            raise self._error(f"blob at offset {offset} holds {stored}, but the model declares {type_name}")
        needed = math.ceil(math.prod(shape) * TYPES_BY_NAME[type_name].bits / 8)
        if needed > size:
            raise self._error(f"blob at offset {offset} has {size} bytes, a {type_name} tensor of shape "
                              f"{list(shape)} needs {needed}")
        return decode(memoryview(self._map)[data_offset: data_offset + needed], type_name, shape)

    def offsets(self) -> list[int]:
        """Record offsets found by walking the file (each next record at the next multiple of 64 after the data)."""
        found, offset = [], HEADER_BYTES
        while offset <= self.size - RECORD_BYTES and len(found) < self.count:
            _, size, data_offset = self.record(offset)
            found.append(offset)
            offset = -(-(data_offset + size) // 64) * 64
        return found
