"""Tiny ML Programs written as ``model.mil`` text, to run single ops through the whole interpreter.

    op("conv", ("y", "fp32", (1, 4, 9)), x="x", weight=w, strides=[2], pad_type=Text("same"))

Arguments: a str names a variable, ``Text`` is a string literal, arrays and Python numbers,
bools and lists become inline typed literals (ints as int32, floats as fp32 unless the array says).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_cli.coreml import load_program

MIL_TYPES = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16", np.dtype(np.int32): "int32",
             np.dtype(np.bool_): "bool", np.dtype(np.int64): "int32"}


@dataclass(frozen=True)
class Text:
    value: str


def type_text(dtype: str, shape) -> str:
    return f"tensor<{dtype}, [{', '.join(str(d) for d in shape)}]>"


def literal(value) -> str:
    if isinstance(value, Text):
        return f'tensor<string, []>("{value.value}")'
    array = np.asarray(value)
    if array.dtype.kind == "f" and array.dtype not in MIL_TYPES:
        array = array.astype(np.float32)
    if array.dtype.kind in "iu":
        array = array.astype(np.int32)
    dtype = MIL_TYPES[array.dtype]

    def show(item) -> str:
        if dtype == "bool":
            return "true" if item else "false"
        if dtype.startswith("fp"):
            return float(item).hex()
        return str(int(item))

    body = np.vectorize(show, otypes=[object])(array) if array.size else array
    text = show(array.item()) if array.ndim == 0 else _nested(body.tolist() if array.size else [])
    return f"{type_text(dtype, array.shape)}({text})"


def _nested(items) -> str:
    if isinstance(items, list):
        return "[" + ", ".join(_nested(i) for i in items) + "]"
    return str(items)


def op(kind: str, *outputs: tuple[str, str, tuple], **args) -> str:
    declared = ", ".join(f"{type_text(dtype, shape)} {name}" for name, dtype, shape in outputs)
    parts = []
    for key, value in args.items():
        if isinstance(value, str):
            parts.append(f"{key} = {value}")
        elif isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            parts.append(f"{key} = ({', '.join(value)})")
        else:
            parts.append(f"{key} = {literal(value)}")
    return f'{declared} = {kind}({", ".join(parts)})[name = tensor<string, []>("{outputs[0][0]}")];'


def build(folder: Path, inputs: dict[str, tuple[str, tuple]], lines: list[str], outputs: list[str],
          precision: str = "program"):
    """Write ``folder/model.mil`` and load it."""
    folder.mkdir(parents=True, exist_ok=True)
    signature = ", ".join(f"{type_text(dtype, shape)} {name}" for name, (dtype, shape) in inputs.items())
    body = "\n            ".join(lines)
    (folder / "model.mil").write_text(
        f"program(1.0)\n{{\n    func main<ios16>({signature}) {{\n            {body}\n"
        f"        }} -> ({', '.join(outputs)});\n}}\n")
    return load_program(folder, precision=precision)


def run_op(folder: Path, kind: str, inputs: dict[str, np.ndarray], out_shapes: list[tuple], out_dtype: str = "fp32",
           **args) -> list[np.ndarray]:
    """One op over the given inputs (fed at run time); its outputs, named o0, o1, ..."""
    declared = {name: (MIL_TYPES[value.dtype], value.shape) for name, value in inputs.items()}
    mentioned = {v for value in args.values() if isinstance(value, tuple) for v in value}
    args = {**{name: name for name in inputs if name not in mentioned}, **args}  # inputs by their own names
    names = [f"o{i}" for i in range(len(out_shapes))]
    outputs = [(n, out_dtype, s) for n, s in zip(names, out_shapes, strict=True)]
    program = build(folder, declared, [op(kind, *outputs, **args)], names)
    results = program.predict(inputs)
    prepared = program.prepare().run(inputs)
    for name in names:  # the prepared plan runs the same kernels into its own buffers: identical
        assert np.array_equal(results[name], prepared[name], equal_nan=True)
    return [results[name] for name in names]
