"""The weights of an ML Program: its constant tensors, with compressed ones rebuilt dense.

A weight is the output of a ``const`` op holding a tensor (from blob storage, or
an inline float tensor), or of a ``constexpr_*`` op. Constants that only feed a
``constexpr_*`` op (quantized data, tables, masks, scales) are parts of the dense
tensor it produces, not weights of their own.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mimi_cli.errors import WeightsError
from mimi_cli.weights.coreml import constexpr
from mimi_cli.weights.coreml.blob import BlobFile
from mimi_cli.weights.coreml.mil import BlobRef, Operation, Program, Ref, TensorType, Value
from mimi_cli.weights.coreml.paths import inside
from mimi_cli.weights.tensors import TensorEntry

MODEL_PATH = "@model_path/"
_FLOATS = {"fp16", "fp32", "fp64", "bf16", "fp8e4m3fn", "fp8e5m2"}
_LITERAL_DTYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "bf16": np.float32,
                   "bool": np.bool_, "int4": np.int8, "int8": np.int8, "int16": np.int16, "int32": np.int32,
                   "int64": np.int64, "uint1": np.uint8, "uint2": np.uint8, "uint3": np.uint8, "uint4": np.uint8,
                   "uint6": np.uint8, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
                   "uint64": np.uint64}


class ProgramWeights:
    def __init__(self, program: Program, model_dir: Path):
        self.model_dir = model_dir
        self._blob_files: dict[Path, BlobFile] = {}
        self._producer: dict[str, tuple[Operation, int]] = {}
        for op in program.operations():
            for index, (name, _) in enumerate(op.outputs):
                self._producer[name] = (op, index)
        self._operations = list(program.operations())

    def entries(self) -> dict[str, TensorEntry]:
        """Every weight, in program order, read on demand."""
        feeds_constexpr = {ref.name for op in self._operations if op.op.startswith("constexpr_")
                           for ref in _refs([*op.args.values(), *op.attrs.values()])}
        entries = {}
        for op in self._operations:
            for name, value_type in op.outputs:
                if name in feeds_constexpr or value_type is None or not self._is_weight(op, value_type):
                    continue
                shape = tuple(d or 0 for d in value_type.shape)
                entries[name] = TensorEntry(name, value_type.dtype, shape,
                                            lambda name=name: self.value(name).astype(np.float32, copy=False),
                                            self._encoding(op))
        return entries

    @staticmethod
    def _is_weight(op: Operation, value_type: TensorType) -> bool:
        if op.op.startswith("constexpr_"):
            return op.op not in ("constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale")
        if op.op != "const" or None in value_type.shape:
            return False
        val = op.attrs.get("val")
        return isinstance(getattr(val, "data", None), BlobRef) or (value_type.dtype in _FLOATS and
                                                                   len(value_type.shape) > 0)

    def _encoding(self, op: Operation) -> str:
        """How a compressed weight is stored, e.g. ``constexpr_lut_to_dense(uint4)``; empty for plain constants."""
        if not op.op.startswith("constexpr_"):
            return ""
        stored = []
        for item in [*op.args.values(), *op.attrs.values()]:
            if isinstance(item, Ref) and item.name in self._producer:
                item = self._producer[item.name][0].attrs.get("val", item)
            if isinstance(item, Value) and isinstance(item.data, BlobRef) and item.type is not None:
                stored.append(item.type.dtype)
        return f"{op.op}({', '.join(dict.fromkeys(stored))})"

    # -- values

    def value(self, name: str) -> np.ndarray:
        """The value of a constant variable (a ``const`` or ``constexpr_*`` output), decompressed."""
        if name not in self._producer:
            raise WeightsError(f"Core ML program refers to {name}, which no operation defines")
        op, index = self._producer[name]
        if op.op == "const":
            return self.literal(op.attrs.get("val"), op.outputs[0][1])
        if not op.op.startswith("constexpr_"):
            raise WeightsError(f"{name} is computed by {op.op} at run time, not a constant")
        outputs = self.constexpr(op)
        return outputs[index] if isinstance(outputs, tuple) else outputs

    def _input(self, op: Operation, key: str, required: bool = True) -> np.ndarray | None:
        item = op.input(key)
        if item is None:
            if required:
                raise WeightsError(f"{op.op} {op.outputs[0][0]} lacks its {key!r} input")
            return None
        if isinstance(item, Ref):
            return self.value(item.name)
        if isinstance(item, Value):
            return self.literal(item, item.type)
        raise WeightsError(f"{op.op} {op.outputs[0][0]}: unexpected {key!r} input")

    def constexpr(self, op: Operation) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        kind, get = op.op, lambda key, required=True: self._input(op, key, required)
        name = op.outputs[0][0]
        try:
            if kind == "constexpr_affine_dequantize":
                return constexpr.affine_dequantize(get("quantized_data"), get("zero_point"), get("scale"),
                                                   int(get("axis")))
            if kind == "constexpr_blockwise_shift_scale":
                return constexpr.blockwise_shift_scale(get("data"), get("scale"), get("offset", False))
            if kind == "constexpr_lut_to_dense":
                shape = get("shape", False)
                if shape is not None:
                    return constexpr.lut_to_dense_ios16(get("indices"), get("lut"), shape)
                axis = get("vector_axis", False)
                return constexpr.lut_to_dense(get("indices"), get("lut"), None if axis is None else int(axis))
            if kind == "constexpr_sparse_to_dense":
                return constexpr.sparse_to_dense(get("nonzero_data"), get("mask"), get("shape", False))
            if kind == "constexpr_lut_to_sparse":
                axis = get("vector_axis", False)
                return constexpr.lut_to_sparse(get("indices_mask"), get("indices_nonzero_data"), get("lut"),
                                               None if axis is None else int(axis))
            if kind == "constexpr_sparse_blockwise_shift_scale":
                return constexpr.sparse_blockwise_shift_scale(get("data_mask"), get("nonzero_data"), get("scale"),
                                                              get("offset", False))
            if kind == "constexpr_cast":
                return constexpr.cast(get("source_val"), str(op.input("output_dtype").data))
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            raise WeightsError(f"cannot rebuild {name} from {kind}: {exc}") from None
        raise WeightsError(f"{name} uses {kind}, a compression op this reader does not know")

    def literal(self, value: Value | None, declared: TensorType | None) -> np.ndarray:
        value_type = (value.type if value is not None and value.type is not None else declared)
        if value is None or value_type is None or None in value_type.shape:
            raise WeightsError("a Core ML constant has no value or no fixed shape")
        shape = tuple(value_type.shape)
        if isinstance(value.data, BlobRef):
            return self._blob(value.data, value_type.dtype, shape)
        if isinstance(value.data, np.ndarray):
            return value.data.reshape(shape)
        if value_type.dtype not in _LITERAL_DTYPES:
            raise WeightsError(f"a Core ML constant of type {value_type.dtype} is not a tensor")
        flat = _numbers(value.data, value_type.dtype)
        if flat.size != math.prod(shape):
            raise WeightsError(f"a Core ML constant declares shape {list(shape)} but lists {flat.size} values")
        return flat.astype(_LITERAL_DTYPES[value_type.dtype]).reshape(shape)

    def _blob(self, ref: BlobRef, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        if not ref.path.startswith(MODEL_PATH):
            raise WeightsError(f"refusing weight path {ref.path!r}: it does not start with {MODEL_PATH}")
        path = inside(self.model_dir, ref.path[len(MODEL_PATH):], "weight")
        if path not in self._blob_files:
            if not path.is_file():
                raise WeightsError(f"Core ML weight file {path} is missing")
            self._blob_files[path] = BlobFile(path)
        return self._blob_files[path].read(ref.offset, dtype, shape)


def _numbers(data, dtype: str) -> np.ndarray:
    """A literal's values, flat, refused unless each one fits ``dtype``: a float type takes any numbers, an
    integer type whole numbers in its range, ``bool`` true and false. NumPy would turn 1e308 or 2**70 into some
    other integer, and a nested or ``None`` value into an object array."""
    target = np.dtype(_LITERAL_DTYPES[dtype])
    try:
        flat = np.array(data, dtype=np.float64 if dtype in _FLOATS else None).reshape(-1)
    except (ValueError, TypeError, OverflowError):  # nested lists of other lengths, None, a number past float64
        flat = None
    if flat is None or flat.dtype.kind not in "biuf" or dtype not in _FLOATS and flat.dtype.kind == "f":
        raise WeightsError(f"a Core ML {dtype} constant holds {str(data)[:60]}, which is not a tensor of {dtype} "
                           "values; the program is damaged")
    if target.kind in "iu" and flat.size and flat.dtype.kind != "b":
        bits = int(dtype.removeprefix("u").removeprefix("int"))  # its own width: uint4 is held in a byte
        least, most = (0, 2 ** bits - 1) if dtype.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        low, high = int(flat.min()), int(flat.max())
        if low < least or high > most:
            raise WeightsError(f"a Core ML {dtype} constant holds {low if low < least else high}, beyond "
                               f"{dtype}'s range; the program is damaged")
    return flat


def _refs(items) -> list[Ref]:
    found = []
    for item in items:
        if isinstance(item, Ref):
            found.append(item)
        elif isinstance(item, list):
            found.extend(_refs(item))
    return found
