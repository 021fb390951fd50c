"""Dense weights from Core ML's compile-time compression ops (``constexpr_*``).

Each function takes the op's inputs as NumPy arrays and returns its output(s).
Arithmetic is done in the output dtype, step by step, as coremltools does, so
that the results are bit-identical to its own decompression (checked on the
synthetic fixtures).

iOS 16 forms carry a flat bit-packed ``uint8`` stream and a ``shape``; iOS 18
forms carry sub-byte tensors already shaped like the output (unpacked when the
blob is read).
"""

from __future__ import annotations

import math

import numpy as np

from mimi_cli.errors import memory_said, usable_memory
from mimi_cli.weights.dtypes import unpack_bits

# Bytes a rebuilt value takes while it is made: its index and group as 8-byte integers, and itself.
_REBUILD_BYTES = 20


def _room_for(count: int) -> None:
    """Refuse, before allocating, a tensor of ``count`` values that this machine cannot rebuild: a few bytes
    of 1-bit indices and a long look-up vector, or a shape literal, can declare billions of values."""
    memory = usable_memory()
    if memory and count * _REBUILD_BYTES > memory:
        raise ValueError(f"it would make {count:,} values, more than {memory_said(memory)} can rebuild")


def affine_dequantize(quantized_data: np.ndarray, zero_point: np.ndarray, scale: np.ndarray,
                      axis: int) -> np.ndarray:
    """iOS 16: ``(q − zero_point) · scale``, with per-channel vectors along ``axis``."""
    def along_axis(v: np.ndarray) -> np.ndarray:
        if v.ndim == 0 or v.size == 1:
            return v.reshape(())
        shape = [1] * quantized_data.ndim
        shape[axis] = -1
        return v.reshape(shape)

    out_dtype = scale.dtype
    centred = quantized_data.astype(np.float32) - along_axis(zero_point).astype(np.float32)
    return (centred * along_axis(scale).astype(np.float32)).astype(out_dtype)


def blockwise_shift_scale(data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """iOS 18: ``scale · (data − offset)`` where each scale covers a block (data.shape / scale.shape per axis)."""
    if scale.ndim != data.ndim or any(d % s for d, s in zip(data.shape, scale.shape, strict=True)):
        raise ValueError(f"scale shape {list(scale.shape)} does not tile data shape {list(data.shape)}")
    values = data.astype(scale.dtype)
    for axis, (d, s) in enumerate(zip(data.shape, scale.shape, strict=True)):
        if d != s:
            scale = np.repeat(scale, d // s, axis)
            if offset is not None:
                offset = np.repeat(offset, d // s, axis)
    if offset is not None:
        values = values - offset.astype(scale.dtype)
    return scale * values


def lut_to_dense_ios16(indices: np.ndarray, lut: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """iOS 16: a packed stream of log2(len(lut))-bit indices into one table."""
    bits = int(math.log2(lut.size))
    if 1 << bits != lut.size:
        raise ValueError(f"look-up table has {lut.size} entries, not a power of two")
    out_shape = tuple(int(d) for d in shape)
    _room_for(math.prod(out_shape))
    return lut.reshape(-1)[unpack_bits(indices, math.prod(out_shape), bits)].reshape(out_shape)


def lut_to_dense(indices: np.ndarray, lut: np.ndarray, vector_axis: int | None = None) -> np.ndarray:
    """iOS 18: grouped tables, optionally of vectors.

    ``lut`` is ``[g_0, …, g_{K−1}, palettes, vector]``: axis k of the indices is cut
    into g_k equal blocks, each block with its own table. A vector entry (vector > 1)
    is laid along ``vector_axis``, which grows by that factor.
    """
    rank = indices.ndim
    groups, (palettes, vector) = lut.shape[:rank], lut.shape[rank:]
    if lut.ndim != rank + 2 or any(n % g for n, g in zip(indices.shape, groups, strict=True)):
        raise ValueError(f"look-up table shape {list(lut.shape)} does not fit indices {list(indices.shape)}")
    _room_for(indices.size * vector)
    table = np.zeros(indices.shape, np.int64)
    for axis in range(rank):
        block = indices.shape[axis] // groups[axis]
        coordinate = (np.arange(indices.shape[axis]) // block).reshape([-1 if a == axis else 1 for a in range(rank)])
        table = table * groups[axis] + coordinate
    values = lut.reshape(-1, palettes, vector)[table, indices.astype(np.int64)]  # [*indices.shape, vector]
    if vector == 1:
        return values[..., 0]
    if vector_axis is None:
        raise ValueError("vector look-up table without a vector_axis")
    vector_axis %= rank
    out_shape = list(indices.shape)
    out_shape[vector_axis] *= vector
    return np.moveaxis(values, -1, vector_axis + 1).reshape(out_shape)


def sparse_to_dense(nonzero_data: np.ndarray, mask: np.ndarray, shape: np.ndarray | None = None) -> np.ndarray:
    """Zeros, with ``nonzero_data`` placed in row-major order where the mask bit is 1.

    iOS 16 gives a packed ``uint8`` mask and a ``shape``; iOS 18 a ``uint1`` mask of the output shape.
    """
    if shape is not None:
        out_shape = tuple(int(d) for d in shape)
        _room_for(math.prod(out_shape))
        mask = unpack_bits(mask, math.prod(out_shape), 1).reshape(out_shape)
    selected = mask != 0
    if int(selected.sum()) != nonzero_data.size:
        raise ValueError(f"mask has {int(selected.sum())} set bits for {nonzero_data.size} values")
    dense = np.zeros(mask.shape, nonzero_data.dtype)
    dense[selected] = nonzero_data.reshape(-1)
    return dense


def lut_to_sparse(indices_mask: np.ndarray, indices_nonzero_data: np.ndarray, lut: np.ndarray,
                  vector_axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """iOS 18: de-palettize only the stored entries; returns ``(mask, nonzero values)``."""
    indices = sparse_to_dense(indices_nonzero_data, indices_mask)
    dense = lut_to_dense(indices, lut, vector_axis)
    mask = indices_mask if lut.shape[-1] == 1 else np.repeat(indices_mask, lut.shape[-1], axis=vector_axis)
    return mask, dense[mask != 0]


def sparse_blockwise_shift_scale(data_mask: np.ndarray, nonzero_data: np.ndarray, scale: np.ndarray,
                                 offset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """iOS 18: shift-scale only the stored entries; returns ``(mask, nonzero values)``."""
    dense = blockwise_shift_scale(sparse_to_dense(nonzero_data, data_mask), scale, offset)
    return data_mask, dense[data_mask != 0]


def cast(source_val: np.ndarray, output_dtype: str) -> np.ndarray:
    """iOS 16: widen (fp16 → fp32)."""
    return source_val.astype({"fp32": np.float32, "fp16": np.float16}[output_dtype])
