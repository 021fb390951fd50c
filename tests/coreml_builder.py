"""Writing small Core ML compiled models for tests, following the documented byte layout.

Independent of the reader: the blob records and the MIL text are produced here
from the format description (docs/weights.md, Core ML and blob storage).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

BLOB_CODES = {"fp16": 1, "fp32": 2, "uint8": 3, "int8": 4, "bf16": 5, "int16": 6, "uint16": 7, "int4": 8,
              "uint1": 9, "uint2": 10, "uint4": 11, "uint3": 12, "uint6": 13, "int32": 14, "uint32": 15}


def pack_bits(values, bits: int) -> bytes:
    """LSB-first bit stream, element i at bits [i·bits, (i+1)·bits) — a plain loop, the reference for tests."""
    out = bytearray((len(values) * bits + 7) // 8)
    for i, v in enumerate(values):
        v &= (1 << bits) - 1
        for b in range(bits):
            if v >> b & 1:
                j = i * bits + b
                out[j // 8] |= 1 << (j % 8)
    return bytes(out)


def write_blob_storage(path: Path, blobs: list[tuple[str, bytes]], garbage: bool = False) -> list[int]:
    """A weight.bin holding ``(dtype name, payload)`` blobs; returns each blob's record offset.

    ``garbage`` fills the padding and reserved fields with pointer-like junk, as tools before iOS 18 did.
    """
    data = bytearray(struct.pack("<II", len(blobs), 2) + bytes(56))
    offsets = []
    for dtype, payload in blobs:
        data += bytes(-len(data) % 64)
        offset = len(data)
        junk = 0x7F3A12345678 if garbage else 0
        data += struct.pack("<IIQQQ4Q", 0xDEADBEEF, BLOB_CODES[dtype], len(payload), offset + 64, junk, *[junk] * 4)
        data += payload
        offsets.append(offset)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return offsets


def _quoted(text: str) -> str:
    return '"' + text + '"'


def _tensor_type(dtype: str, shape, dialect: str) -> str:
    return f"tensor<{dtype}, [{', '.join(map(str, shape))}]>"


def _scalar(dtype: str, literal: str, dialect: str) -> str:
    return f"tensor<{dtype}, []>({literal})" if dialect == "1.0" else f"{dtype}({literal})"


def write_mlmodelc(folder: Path, tensors: dict[str, np.ndarray], dialect: str = "1.3",
                   weight_path: str = "@model_path/weights/weight.bin", garbage: bool = False) -> Path:
    """A compiled ML Program whose ``const`` ops hold ``tensors`` (float16 or float32) in blob storage."""
    blobs = [("fp16" if v.dtype == np.float16 else "fp32", np.ascontiguousarray(v).tobytes()) for v in tensors.values()]
    offsets = write_blob_storage(folder / "weights" / "weight.bin", blobs, garbage)
    opset = "ios15" if dialect == "1.0" else "ios18"
    lines = [f"program({dialect})",
             '[buildInfo = dict<string, string>({{"coremlc-version", "test"}})]',
             "{", f"    func main<{opset}>({_tensor_type('fp32', [1, 1920], dialect)} audio) {{"]
    for (name, value), (dtype, _), offset in zip(tensors.items(), blobs, offsets, strict=True):
        ttype = _tensor_type(dtype, value.shape, dialect)
        blob = (f"BLOBFILE(path = {_scalar('string', _quoted(weight_path), dialect)}, "
                f"offset = {_scalar('uint64', str(offset), dialect)})")
        lines.append(f"        {ttype} {name} = const()[name = {_scalar('string', _quoted(name), dialect)}, "
                     f"val = {ttype}({blob})];")
    lines += [f"        {_tensor_type('fp32', [1, 1920], dialect)} out = identity(x = audio)"
              f"[name = {_scalar('string', _quoted('out'), dialect)}];",
              "    } -> (out);", "}"]
    (folder / "model.mil").write_text("\n".join(lines) + "\n")
    return folder


def varint(n: int) -> bytes:
    """A protobuf varint: 7 bits a byte, low first, the high bit set on all but the last."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def proto_field(number: int, value) -> bytes:
    """One protobuf field: a varint for an int, length-delimited for bytes or text."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    value = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(value)) + value
