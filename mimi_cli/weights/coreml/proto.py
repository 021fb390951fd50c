"""The ML Program inside an ``.mlpackage``'s ``model.mlmodel`` (a protobuf), read without protobuf or coremltools.

Only the path to the weights is decoded, by field number (``Model.proto`` / ``MIL.proto``)::

    Model        1 specificationVersion   502 mlProgram: Program     (500 neuralNetwork, ...)
    Program      2 functions: map<string, Function>
    Function     1 inputs: NamedValueType*   2 opset   3 block_specializations: map<string, Block>
    Block        2 outputs: string*   3 operations: Operation*
    Operation    1 type    2 inputs: map<string, Argument>    3 outputs: NamedValueType*    4 blocks    5 attributes
    Argument     1 arguments: Binding*  (Binding: 1 name | 2 Value)
    Value        2 type: ValueType   3 immediateValue   5 blobFileValue {1 fileName, 2 offset}

The result is the same :class:`~mimi_cli.weights.coreml.mil.Program` the text parser builds,
so everything downstream is shared. Immediate tensors become NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mimi_cli.errors import DATA_ERRORS, WeightsError
from mimi_cli.weights.coreml.blob import TYPES_BY_NAME, decode
from mimi_cli.weights.coreml.mil import MAX_RANK, BlobRef, Block, Function, Operation, Program, Ref, TensorType, Value

# MIL.proto DataType → the dtype names model.mil uses (note: not the blob storage codes).
DATA_TYPES = {
    1: "bool", 2: "string", 10: "fp16", 11: "fp32", 12: "fp64", 13: "bf16", 21: "int8", 22: "int16",
    23: "int32", 24: "int64", 25: "int4", 31: "uint8", 32: "uint16", 33: "uint32", 34: "uint64",
    35: "uint4", 36: "uint2", 37: "uint1", 38: "uint6", 39: "uint3", 40: "fp8e4m3fn", 41: "fp8e5m2",
}
MODEL_TYPES = {500: "Neural Network", 502: "ML Program", 200: "pipeline classifier", 201: "pipeline regressor",
               202: "pipeline", 555: "custom model"}


class ProtoError(ValueError):
    pass


def fields(buffer: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """``(field number, value)`` pairs of one message: ints for varint/fixed fields, views for the rest."""
    position, end = 0, len(buffer)
    while position < end:
        key, position = _varint(buffer, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(buffer, position)
        elif wire == 1:
            value, position = int.from_bytes(buffer[position: position + 8], "little"), position + 8
        elif wire == 2:
            length, position = _varint(buffer, position)
            if length > end - position:
                raise ProtoError("a field runs past the end of its message")
            value, position = buffer[position: position + length], position + length
        elif wire == 5:
            value, position = int.from_bytes(buffer[position: position + 4], "little"), position + 4
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        if position > end:
            raise ProtoError("message is truncated")
        yield number, value


def _varint(buffer: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(buffer) or shift > 63:
            raise ProtoError("truncated or overlong varint")
        byte = buffer[position]
        result |= (byte & 0x7F) << shift
        position += 1
        shift += 7
        if not byte & 0x80:
            return result, position


def _map_entries(entries: list[memoryview]) -> Iterator[tuple[str, memoryview]]:
    """Protobuf maps are repeated (1: key, 2: value) messages."""
    for entry in entries:
        key, value = "", memoryview(b"")
        for number, item in fields(_message(entry)):
            if number == 1:
                key = _text(item)
            elif number == 2:
                value = _message(item)
        yield key, value


def _group(buffer: memoryview) -> dict[int, list]:
    grouped: dict[int, list] = {}
    for number, value in fields(_message(buffer)):
        grouped.setdefault(number, []).append(value)
    return grouped


MAX_DEPTH = 32  # nested operation blocks (while_loop, cond) in one program


def read_model(data: bytes, source: str) -> tuple[int, str, Program | None]:
    """``(specification version, model type, program or None)`` of a serialized Model."""
    def invalid(problem: str) -> WeightsError:
        return WeightsError(f"cannot read Core ML model {source}: not a valid model.mlmodel protobuf ({problem})")

    if not data:
        raise invalid("the file is empty")
    try:
        model = _group(memoryview(data))
        version = model.get(1, [0])[0]
        if not isinstance(version, int):
            raise ProtoError("the specification version is not a number")
        kinds = [number for number in model if number >= 200]
        kind = MODEL_TYPES.get(kinds[0], f"type {kinds[0]}") if kinds else "unknown"
        program = _program(_message(model[502][0])) if 502 in model else None
    except ProtoError as exc:
        raise invalid(str(exc)) from None
    except DATA_ERRORS as exc:
        raise invalid(f"{type(exc).__name__}: {exc}") from None
    if not version and not kinds:
        raise invalid("no specification version and no model")
    return version, kind, program


def _message(value) -> memoryview:
    """A field that must hold a nested message (length-delimited), not a number."""
    if not isinstance(value, memoryview):
        raise ProtoError("a number where a message was expected")
    return value


def _text(value) -> str:
    return bytes(_message(value)).decode()


def _program(buffer: memoryview) -> Program:
    message = _group(buffer)
    functions = {}
    for name, body in _map_entries(message.get(2, [])):
        function = _group(body)
        opset = _text(function.get(2, [memoryview(b"")])[0])
        blocks = dict(_map_entries(function.get(3, [])))
        block = blocks.get(opset) or next(iter(blocks.values()), memoryview(b""))
        inputs = [_named_type(item) for item in function.get(1, [])]
        functions[name] = Function(name, opset, _block(block), inputs)
    return Program(str(message.get(1, [1])[0]), functions)


def _block(block: memoryview, depth: int = 0) -> Block:
    if depth > MAX_DEPTH:
        raise ProtoError(f"operation blocks nested deeper than {MAX_DEPTH} levels")
    block_message = _group(block)
    operations = []
    for body in block_message.get(3, []):
        message = _group(body)
        outputs = [_named_type(item) for item in message.get(3, [])]
        operation = Operation(_text(message.get(1, [memoryview(b"")])[0]), outputs)
        if not outputs:  # every op names what it makes (MIL text cannot even write one without)
            raise ProtoError(f"an operation {operation.op[:40]!r} with no outputs")
        for key, argument in _map_entries(message.get(2, [])):
            bindings = [_binding(item) for number, item in fields(argument) if number == 1]
            operation.args[key] = bindings[0] if len(bindings) == 1 else bindings
        for key, value in _map_entries(message.get(5, [])):
            operation.attrs[key] = _value(value)
        operation.blocks = [_block(nested, depth + 1) for nested in message.get(4, [])]
        operations.append(operation)
    return Block(operations, [_text(name) for name in block_message.get(2, [])])


def _binding(buffer: memoryview) -> Ref | Value:
    for number, item in fields(buffer):
        if number == 1:
            return Ref(_text(item))
        if number == 2:
            return _value(item)
    raise ProtoError("empty argument binding")


def _named_type(buffer: memoryview) -> tuple[str, TensorType | None]:
    message = _group(buffer)
    name = _text(message.get(1, [memoryview(b"")])[0])
    return name, _value_type(message[2][0]) if 2 in message else None


def _value_type(buffer: memoryview) -> TensorType | None:
    message = _group(buffer)
    if 1 not in message:
        return None  # list, tuple or dict: never a weight
    tensor = _group(message[1][0])
    dtype = DATA_TYPES.get(tensor.get(1, [0])[0], "unknown")
    shape: list[int | None] = []
    for dimension in tensor.get(3, []):
        kind = _group(dimension)
        shape.append(_group(kind[1][0]).get(1, [0])[0] if 1 in kind else None)
        if len(shape) > MAX_RANK:
            raise ProtoError(f"a tensor type of more than {MAX_RANK} dimensions, which no array has")
    return TensorType(dtype, tuple(shape))


def _value(buffer: memoryview) -> Value:
    message = _group(buffer)
    value_type = _value_type(message[2][0]) if 2 in message else None
    if 5 in message:
        blob = _group(message[5][0])
        offset = blob.get(2, [0])[0]
        if not isinstance(offset, int):
            raise ProtoError("a blob offset that is not a number")
        return Value(value_type, BlobRef(_text(blob.get(1, [memoryview(b"")])[0]), offset))
    if 3 in message and value_type is not None:
        immediate = _group(message[3][0])
        if 1 in immediate:
            return Value(value_type, _tensor_value(immediate[1][0], value_type))
    return Value(value_type, None)


def _tensor_value(buffer: memoryview, value_type: TensorType) -> object:
    """An immediate tensor as a NumPy array of its declared shape (strings as a Python str or list)."""
    shape = tuple(d or 0 for d in value_type.shape)
    for number, payload in fields(buffer):
        values = [item for field_number, item in fields(payload) if field_number == 1]
        if number == 4:  # strings
            strings = [_text(v) for v in values]
            return strings[0] if not shape and strings else strings
        packed = b"".join(bytes(v) for v in values if isinstance(v, memoryview))
        scalars = [v for v in values if isinstance(v, int)]  # unpacked encodings
        if number == 1:  # floats
            array = np.frombuffer(packed, "<f4") if packed else np.array(scalars, np.uint32).view(np.float32)
        elif number == 6:  # doubles
            array = np.frombuffer(packed, "<f8")
        elif number in (2, 3, 5):  # ints, bools, long ints: varints
            array = np.array(_varints(packed) if packed else scalars, np.uint64).view(np.int64)
        elif number == 7:  # raw bytes: fp16, sub-byte and 8-bit types
            return decode(packed, value_type.dtype, shape) if value_type.dtype in TYPES_BY_NAME else None
        else:
            continue
        return array.astype(_numpy_dtype(value_type.dtype)).reshape(shape)
    return None


def _varints(packed: bytes) -> list[int]:
    view, position, out = memoryview(packed), 0, []
    while position < len(view):
        value, position = _varint(view, position)
        out.append(value & 0xFFFFFFFFFFFFFFFF)
    return out


def _numpy_dtype(dtype: str) -> np.dtype:
    table = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "bool": np.bool_, "bf16": np.float32}
    if dtype in table:
        return np.dtype(table[dtype])
    if dtype.startswith(("int", "uint")):
        bits = int(dtype.lstrip("uint"))
        return np.dtype(f"{'u' if dtype.startswith('u') else 'i'}{max(1, bits // 8) if bits >= 8 else 1}")
    return np.dtype(np.float32)
