"""Number formats that NumPy lacks: bfloat16, the two 8-bit floats, and packed sub-byte integers.

Shared by the safetensors and Core ML readers (and the safetensors writer),
so each conversion exists once.
"""

from __future__ import annotations

import functools

import numpy as np


def bf16_to_f32(codes: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32. Exact: a bf16 is the top half of a float32."""
    return (codes.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounding to nearest even as PyTorch does; NaN stays NaN."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16
    nan = np.isnan(values)
    rounded[nan] = (bits[nan] >> 16) | 0x40  # keep it a NaN (quiet), whatever the low bits were
    return rounded.astype(np.uint16)


@functools.cache
def float8_table(exponent_bits: int, mantissa_bits: int, finite_only: bool) -> np.ndarray:
    """float32 value of each of the 256 codes of an OCP 8-bit float format.

    ``finite_only`` selects the E4M3FN convention (no infinities, only S.1111.111 is NaN);
    otherwise the format is IEEE-like (E5M2).
    """
    codes = np.arange(256)
    sign = np.where(codes >> 7, -1.0, 1.0)
    exponent = (codes >> mantissa_bits) & ((1 << exponent_bits) - 1)
    mantissa = codes & ((1 << mantissa_bits) - 1)
    bias = (1 << (exponent_bits - 1)) - 1
    normal = (1 + mantissa / (1 << mantissa_bits)) * 2.0 ** (exponent - bias)
    subnormal = mantissa / (1 << mantissa_bits) * 2.0 ** (1 - bias)
    values = sign * np.where(exponent == 0, subnormal, normal)
    top = exponent == (1 << exponent_bits) - 1
    if finite_only:
        values[top & (mantissa == (1 << mantissa_bits) - 1)] = np.nan
    else:
        values[top & (mantissa == 0)] = sign[top & (mantissa == 0)] * np.inf
        values[top & (mantissa != 0)] = np.nan
    table = values.astype(np.float32)
    table.flags.writeable = False  # cached and shared
    return table


def e4m3_to_f32(codes: np.ndarray) -> np.ndarray:
    return float8_table(4, 3, True)[codes]


def e5m2_to_f32(codes: np.ndarray) -> np.ndarray:
    return float8_table(5, 2, False)[codes]


def unpack_bits(packed: np.ndarray, count: int, bits: int, signed: bool = False) -> np.ndarray:
    """``count`` integers of ``bits`` bits each from an LSB-first bit stream.

    Element ``i`` occupies stream bits ``[i·bits, (i+1)·bits)``, and stream bit
    ``j`` is bit ``j mod 8`` of byte ``j // 8``; so an element may straddle two
    bytes (3- and 6-bit types)::

        byte 0: b7 b6 b5 b4 b3 b2 b1 b0    byte 1: ...
                └─ e1 ─┘ └─── e0 ───┘       e.g. 3-bit: e2 starts at b6 of byte 0

    Signed values are two's complement (int4: 8..15 → −8..−1). Unpacked a piece at a time (each bit
    takes a byte, then an int32, on its way): a large tensor's working memory stays small.
    """
    packed = np.asarray(packed, np.uint8).reshape(-1)
    if packed.size * 8 < count * bits:
        raise ValueError(f"{packed.size} bytes hold {packed.size * 8 // bits} values of {bits} bits, not {count}")
    out = np.empty(count, np.int8 if signed else (np.uint8 if bits <= 8 else np.uint16))
    weights = (1 << np.arange(bits, dtype=np.int32)).astype(np.int32)
    piece = 1 << 20  # values; a multiple of 8, so each piece starts on a byte
    for start in range(0, count, piece):
        n = min(piece, count - start)
        stream = np.unpackbits(packed[start * bits // 8:(start * bits + n * bits + 7) // 8], bitorder="little")
        values = stream[:n * bits].reshape(n, bits).astype(np.int32) @ weights
        if signed:
            values = np.where(values >= 1 << (bits - 1), values - (1 << bits), values)
        out[start:start + n] = values
    return out
