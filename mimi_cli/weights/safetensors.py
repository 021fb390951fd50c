"""A memory-mapped, validating safetensors reader for every dtype.

Layout: 8 bytes little-endian header length ``N``, ``N`` bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data section; offsets are relative to its start::

    | N (u64 LE) | header JSON (N bytes) | data: tensor bytes at [begin, end) ... |

The file is mapped read-only, never read whole: float32 tensors are zero-copy
views of the mapping (their pages are shared with the page cache and loaded on
first use), other dtypes are converted to float32 on access. Every field is
checked before use, so a malformed file gives a clear error, never a crash, a
hang or a huge allocation.
"""

from __future__ import annotations

import json
import math
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_cli.errors import WeightsError, loads_json, os_reason
from mimi_cli.weights.dtypes import bf16_to_f32, e4m3_to_f32, e5m2_to_f32, f32_to_bf16

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's own limit


# dtype name → (storage numpy dtype, conversion to float32 or None for a zero-copy view)
_DTYPES = {
    "F64": ("<f8", None), "F32": ("<f4", None), "F16": ("<f2", None), "BF16": ("<u2", "bf16"),
    "I64": ("<i8", None), "I32": ("<i4", None), "I16": ("<i2", None), "I8": ("i1", None),
    "U8": ("u1", None), "BOOL": ("?", None), "F8_E4M3": ("u1", "e4m3"), "F8_E5M2": ("u1", "e5m2"),
}
_CONVERSIONS = {"bf16": bf16_to_f32, "e4m3": e4m3_to_f32, "e5m2": e5m2_to_f32}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offsets within the data section
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class SafetensorsFile:
    """An open safetensors file: ``infos`` from the header alone, ``tensor(name)`` maps the data."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise WeightsError(f"{self.path} is a directory; give a .safetensors file")
        try:
            with open(self.path, "rb") as f:
                size = self.path.stat().st_size
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise self._error(f"file is {size} bytes, too short for a header")
                header_len = int.from_bytes(prefix, "little")
                if header_len > MAX_HEADER_BYTES:
                    raise self._error(f"header length {header_len:,} is over the {MAX_HEADER_BYTES >> 20} MiB "
                                      "limit safetensors sets")
                if header_len > size - 8:
                    raise self._error(f"header length {header_len} runs past the end of the {size}-byte file")
                header_bytes = f.read(header_len)
                self._data_start, self._data_size = 8 + header_len, size - 8 - header_len
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except OSError as exc:
            raise WeightsError(f"cannot read weights {self.path}: {os_reason(exc)}") from None
        self.metadata, self.infos = self._parse(header_bytes)

    def _error(self, problem: str) -> WeightsError:
        from mimi_cli.weights.resolve import cached_repository

        cached = cached_repository(self.path)
        remedy = (f"a download cut short? delete {cached} and run again to download it anew" if cached else
                  "is it a complete .safetensors file?")
        return WeightsError(f"cannot read weights {self.path}: {problem} ({remedy})")

    def _parse(self, header_bytes: bytes) -> tuple[dict, dict[str, TensorInfo]]:
        try:
            header = loads_json(header_bytes, unique_keys=True)
        except ValueError as exc:  # not UTF-8, not JSON, nested too deeply
            raise self._error(f"header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise self._error("header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        infos = {}
        for name, entry in header.items():
            infos[name] = self._parse_entry(name, entry)
        spans = sorted((info.begin, info.end, info.name) for info in infos.values() if info.end > info.begin)
        for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:], strict=False):
            if begin_b < end_a:
                raise self._error(f"tensors {name_a} and {name_b} overlap")
        return metadata, infos

    def _parse_entry(self, name: str, entry) -> TensorInfo:
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise self._error(f"entry {name!r} lacks dtype, shape or data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPES:
            raise self._error(f"tensor {name} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise self._error(f"tensor {name} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= self._data_size):
            raise self._error(f"tensor {name} has data offsets {offsets!r} outside the "
                              f"{self._data_size}-byte data section")
        info = TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])
        expected = info.numel * np.dtype(_DTYPES[dtype][0]).itemsize
        if offsets[1] - offsets[0] != expected:
            raise self._error(f"tensor {name}: shape {shape} × {dtype} is {expected} bytes, "
                              f"but its data is {offsets[1] - offsets[0]} bytes")
        return info

    def raw(self, name: str) -> np.ndarray:
        """The tensor in its stored dtype, a read-only view of the mapping (bf16 and fp8 as raw codes)."""
        info = self.infos[name]
        storage = np.dtype(_DTYPES[info.dtype][0])
        if info.numel == 0:
            return np.zeros(info.shape, storage)
        return np.frombuffer(self._map, storage, info.numel, self._data_start + info.begin).reshape(info.shape)

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as float32: a zero-copy view for F32, a converted copy otherwise."""
        raw, conversion = self.raw(name), _DTYPES[self.infos[name].dtype][1]
        if conversion is not None:
            return _CONVERSIONS[conversion](raw)
        return raw if raw.dtype == np.float32 else raw.astype(np.float32)


# Float formats ``write_safetensors`` can store, with the conversion from float32.
_WRITERS = {
    "F32": lambda x: np.ascontiguousarray(x, "<f4"),
    "F16": lambda x: np.ascontiguousarray(x, "<f2"),
    "BF16": lambda x: f32_to_bf16(x).astype("<u2"),
}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "F32",
                      metadata: dict[str, str] | None = None, replace: bool = False) -> None:
    """Write float tensors as one safetensors file of ``dtype`` (F32, F16 or BF16), atomically.

    Tensors are converted and written one at a time, so memory stays at one tensor
    beyond the inputs. The header is padded with spaces to a multiple of 8 bytes,
    as the reference writer does, so that the data section is aligned.
    """
    from mimi_cli.fileio import atomic_output

    convert = _WRITERS[dtype]
    itemsize = np.dtype(_DTYPES[dtype][0]).itemsize
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, value in tensors.items():
        size = value.size * itemsize
        header[name] = {"dtype": dtype, "shape": list(value.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with atomic_output(Path(path), replace) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, value in tensors.items():
            data = convert(value)
            overflowed = np.isfinite(value) & ~np.isfinite(bf16_to_f32(data) if dtype == "BF16" else data)
            if overflowed.any():  # written, the weights would hold inf where the source held a number
                largest = float(np.max(np.abs(np.asarray(value, np.float64)[overflowed])))
                raise WeightsError(f"{name} holds values up to {largest:.4g} in magnitude, beyond the range of "
                                   f"{dtype}; write f32" + (" or bf16" if dtype == "F16" else "") + " instead")
            f.write(data.tobytes())
