"""A parser for ``model.mil``, the text form of a compiled Core ML ML Program.

Only what weight reading needs is kept: every operation's outputs (name and
type), its arguments and its bracketed attributes, with literal values parsed.
Both printer dialects are accepted::

    program(1.0)   tensor<fp16, [4]> w = const()[name = tensor<string, []>("w"),
                       val = tensor<fp16, [4]>(BLOBFILE(path = tensor<string, []>("@model_path/weights/weight.bin"),
                                                        offset = tensor<uint64, []>(64)))];
    program(1.3)   tensor<fp16, [4]> w = const()[name = string("w"), val = tensor<fp16, [4]>(BLOBFILE(
                       path = string("@model_path/weights/weight.bin"), offset = uint64(64)))];

Floats are C99 hex floats (``-0x1.8p+1``), ``inf`` and ``nan``. Each function keeps its typed
inputs and its block (operations in order, then the names the block returns); nested blocks
(``while_loop``, ``cond``) hang off their operation, and ``operations()`` lists them after their parent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from mimi_cli.errors import WeightsError

_TOKEN = re.compile(r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]*\.?[0-9a-fA-F]*(?:[pP][-+]?\d+)?|\d+\.?\d*(?:[eE][-+]?\d+)?))
  | (?P<name>[A-Za-z_@][A-Za-z0-9_@.]*)
  | (?P<arrow>->)
  | (?P<punct>[()\[\]{}<>,=;?:\-])
""", re.VERBOSE)

# Type constructors that take angle-bracket parameters.
_GENERIC_TYPES = {"tensor", "list", "dict", "tuple", "state"}

# Limits checked while parsing, so that hostile text costs bounded time, memory and stack.
MAX_TEXT_BYTES = 256 << 20  # real programs are a few MB; weights live in weight.bin
MAX_DEPTH = 64  # nested blocks, lists, tuples and typed values
MAX_NUMBER_CHARS = 64  # a longer numeric literal is not one a converter wrote
MAX_RANK = 64  # NumPy's most dimensions: a tensor of more could be neither read nor fed


@dataclass(frozen=True)
class TensorType:
    """``tensor<dtype, [dims]>`` or a bare scalar dtype; unknown dims (``?`` or symbols) are None."""

    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class BlobRef:
    path: str  # as written, e.g. "@model_path/weights/weight.bin"
    offset: int  # of the blob's metadata record


@dataclass(frozen=True)
class Value:
    """A typed literal: nested Python lists/scalars, or a reference into blob storage."""

    type: TensorType | None
    data: object  # BlobRef, list, scalar, str, dict ...


@dataclass(frozen=True)
class Ref:
    """A reference to another variable (an earlier op's output or a function input)."""

    name: str


@dataclass
class Operation:
    op: str
    outputs: list[tuple[str, TensorType | None]]
    args: dict[str, Value | Ref | list] = field(default_factory=dict)
    attrs: dict[str, Value] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)  # the bodies of cond / while_loop

    def input(self, key: str) -> Value | Ref | list | None:
        """An input by name, from the arguments (iOS 18 style) or the attributes (iOS 16/17 style)."""
        return self.args.get(key, self.attrs.get(key))

    @property
    def name(self) -> str:
        """The op's own name (its ``name`` attribute), else its first output's."""
        value = self.attrs.get("name")
        return value.data if value is not None and isinstance(value.data, str) else self.outputs[0][0]


@dataclass
class Block:
    operations: list[Operation]  # this block's own, in program order
    outputs: list[str] = field(default_factory=list)  # the names after ``->``

    def walk(self) -> Iterator[Operation]:
        """Every operation, each nested block's right after the operation that holds it."""
        for op in self.operations:
            yield op
            for block in op.blocks:
                yield from block.walk()


@dataclass
class Function:
    name: str
    opset: str
    block: Block
    inputs: list[tuple[str, TensorType | None]] = field(default_factory=list)

    @property
    def operations(self) -> list[Operation]:
        return list(self.block.walk())


@dataclass
class Program:
    version: str
    functions: dict[str, Function]

    def operations(self) -> Iterator[Operation]:
        for function in self.functions.values():
            yield from function.operations


def parse(text: str, source: str = "model.mil") -> Program:
    """Parse a whole ``model.mil``; a malformed file raises WeightsError naming the line."""
    if len(text) > MAX_TEXT_BYTES:
        raise WeightsError(f"cannot parse Core ML program {source}: {len(text):,} characters is more than the "
                           f"{MAX_TEXT_BYTES >> 20} MiB a program text may have")
    return _Parser(text, source).program()


def _nested(method):
    """Count the parser's nesting depth around ``method`` and refuse to go past MAX_DEPTH."""
    def wrapper(self, *args):
        if self.depth >= MAX_DEPTH:
            raise self._error(f"nesting deeper than {MAX_DEPTH} levels")
        self.depth += 1
        try:
            return method(self, *args)
        finally:
            self.depth -= 1
    return wrapper


class _Parser:
    def __init__(self, text: str, source: str):
        self.text, self.source = text, source
        self.depth = 0
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, offset)
        self.i = position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:
                raise self._error(f"unexpected character {text[position]!r}", position)
            if match.lastgroup != "ws":
                self.tokens.append((match.lastgroup, match.group(), position))
            position = match.end()

    # -- token helpers

    def _error(self, problem: str, offset: int | None = None) -> WeightsError:
        if offset is None:
            offset = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text)
        line = self.text.count("\n", 0, offset) + 1
        return WeightsError(f"cannot parse Core ML program {self.source} (line {line}): {problem}")

    def peek(self, ahead: int = 0) -> str:
        j = self.i + ahead
        return self.tokens[j][1] if j < len(self.tokens) else ""

    def kind(self) -> str:
        return self.tokens[self.i][0] if self.i < len(self.tokens) else "end"

    def take(self, expected: str | None = None) -> str:
        if self.i >= len(self.tokens):
            raise self._error(f"file ends where {expected or 'more'} was expected")
        token = self.tokens[self.i][1]
        if expected is not None and token != expected:
            raise self._error(f"expected {expected!r}, found {token!r}")
        self.i += 1
        return token

    def take_name(self) -> str:
        if self.kind() != "name":
            raise self._error(f"expected a name, found {self.peek()!r}")
        return self.take()

    def skip_balanced(self, opening: str, closing: str) -> None:
        depth = 0
        while True:
            token = self.take()
            depth += (token == opening) - (token == closing)
            if depth == 0:
                return

    # -- grammar

    def program(self) -> Program:
        self.take("program")
        self.take("(")
        version = self.take()
        self.take(")")
        if self.peek() == "[":
            self.skip_balanced("[", "]")  # buildInfo
        self.take("{")
        functions = {}
        while self.peek() == "func":
            function = self.function()
            functions[function.name] = function
        self.take("}")
        return Program(version, functions)

    def function(self) -> Function:
        self.take("func")
        name = self.take_name()
        self.take("<")
        opset = self.take_name()
        self.take(">")
        inputs = self.names_in_parentheses(typed=True)
        if self.peek() == "[":
            self.skip_balanced("[", "]")  # e.g. FlexibleShapeInformation
        block = self.block()
        self.take(";")
        return Function(name, opset, block, inputs)

    def names_in_parentheses(self, typed: bool) -> list:
        """``(type name, ...)`` (a function's inputs) or ``(name, ...)`` (a block's outputs)."""
        self.take("(")
        items = []
        while self.peek() != ")":
            items.append(self.output() if typed else self.take_name())
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        return items

    @_nested
    def block(self) -> Block:
        """``{ stmt* } -> (outputs)``."""
        self.take("{")
        operations: list[Operation] = []
        while self.peek() != "}":
            operations.append(self.statement())
        self.take("}")
        outputs = []
        if self.peek() == "->":
            self.take("->")
            outputs = self.names_in_parentheses(typed=False)
        return Block(operations, outputs)

    def statement(self) -> Operation:
        outputs = [self.output()]
        while self.peek() == ",":
            self.take(",")
            outputs.append(self.output())
        self.take("=")
        operation = Operation(self.take_name(), outputs)
        self.take("(")
        while self.peek() != ")":
            key = self.take_name()
            self.take("=")
            operation.args[key] = self.argument()
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        if self.peek() == "[":
            self.take("[")
            while self.peek() != "]":
                key = self.take_name()
                self.take("=")
                operation.attrs[key] = self.value()
                if self.peek() == ",":
                    self.take(",")
            self.take("]")
        while self.peek() == "{":
            operation.blocks.append(self.block())
        self.take(";")
        return operation

    def output(self) -> tuple[str, TensorType | None]:
        value_type = self.type()
        return self.take_name(), value_type

    @_nested
    def argument(self) -> Value | Ref | list:
        if self.peek() == "(":  # a tuple of references or values, e.g. concat(values = (a, b))
            self.take("(")
            items = []
            while self.peek() != ")":
                items.append(self.argument())
                if self.peek() == ",":
                    self.take(",")
            self.take(")")
            return items
        if self.kind() == "name" and self.peek(1) not in ("<", "("):
            return Ref(self.take())
        return self.value()

    def type(self) -> TensorType | None:
        """A type; tensor and scalar types become TensorType, containers None (skipped)."""
        head = self.take_name()
        if head not in _GENERIC_TYPES:
            return TensorType(head, ())  # a bare scalar type (program 1.3)
        if head != "tensor":
            self.skip_balanced("<", ">")
            return None
        self.take("<")
        dtype = self.take_name()
        self.take(",")
        self.take("[")
        shape: list[int | None] = []
        while self.peek() != "]":
            kind, token = self.kind(), self.take()
            if token.isdigit() and len(token) > 18:
                raise self._error(f"dimension {token[:24]}… is larger than any tensor")
            if not (token.isdigit() or token == "?" or kind == "name"):
                raise self._error(f"a tensor's dimension is {token[:24]!r}, neither a size nor a symbol")
            shape.append(int(token) if token.isdigit() else None)  # ? or a symbolic dim
            if len(shape) > MAX_RANK:
                raise self._error(f"a tensor type of more than {MAX_RANK} dimensions, which no array has")
            if self.peek() == ",":
                self.take(",")
        self.take("]")
        self.take(">")
        return TensorType(dtype, tuple(shape))

    @_nested
    def value(self) -> Value:
        value_type = self.type()
        self.take("(")
        if self.peek() == "BLOBFILE":
            self.take("BLOBFILE")
            self.take("(")
            fields = {}
            while self.peek() != ")":
                key = self.take_name()
                self.take("=")
                fields[key] = self.value().data
                if self.peek() == ",":
                    self.take(",")
            self.take(")")
            path, offset = fields.get("path"), fields.get("offset")
            if not isinstance(path, str) or not isinstance(offset, int) or isinstance(offset, bool):
                raise self._error(f"BLOBFILE needs a string path and an integer offset, got {path!r} and {offset!r}")
            data: object = BlobRef(path, offset)
        else:
            data = self.literal()
        self.take(")")
        return Value(value_type, data)

    @_nested
    def literal(self) -> object:
        token, kind = self.peek(), self.kind()
        if token in ("[", "{", "("):  # list, dict or tuple literal: nested Python lists
            closing = {"[": "]", "{": "}", "(": ")"}[token]
            self.take()
            items = []
            while self.peek() != closing:
                items.append(self.literal())
                if self.peek() == ",":
                    self.take(",")
            self.take(closing)
            return items
        self.take()
        if kind == "string":
            text = _unescaped(token[1:-1])
            if text is None:
                raise self._error(f"string {token[:40]!r} has a broken escape (C's escapes are "
                                  "\\n, \\t, \\\\, \\\", octal \\ooo, \\xHH, \\uHHHH and the like)")
            return text
        if kind == "number":
            if len(token) > MAX_NUMBER_CHARS:
                raise self._error(f"a {len(token)}-character number is not a literal a converter writes")
            try:
                return _number(token)
            except (ValueError, OverflowError) as exc:
                raise self._error(f"number {token!r} cannot be read ({exc})") from None
        if token == "-" and self.peek() in ("inf", "nan"):
            return -float(self.take())
        if token in ("inf", "nan"):
            return float(token)
        if token in ("true", "false"):
            return token == "true"
        if kind == "name" and self.peek() in ("<", "("):  # a typed value inside a container literal
            self.i -= 1
            return self.value().data
        raise self._error(f"unexpected {token!r} in a literal")


# A string literal's escapes, as C writes them. Every other character stands for itself: the text is
# UTF-8 (a name "café" stays "café"; Python's unicode_escape codec would read its bytes as Latin-1).
_ESCAPE = re.compile(r"\\(?:[0-7]{1,3}|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "?": "?", "a": "\a", "b": "\b", "f": "\f", "n": "\n",
                   "r": "\r", "t": "\t", "v": "\v"}


def _unescaped(body: str) -> str | None:
    """``body`` (a literal between its quotes) with its escapes replaced; None if one is not an escape."""
    broken = False

    def replace(match: re.Match) -> str:
        nonlocal broken
        escape = match.group()[1:]
        if escape in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[escape]
        code = int(escape, 8) if escape[0] in "01234567" else int(escape[1:], 16) if len(escape) > 1 else -1
        if not 0 <= code <= 0x10FFFF or 0xD800 <= code <= 0xDFFF:  # not an escape, or no character
            broken = True
            return ""
        return chr(code)

    text = _ESCAPE.sub(replace, body)
    return None if broken else text


def _number(token: str) -> int | float:
    body = token.lstrip("+-")
    if body.lower().startswith("0x"):
        if "p" in body.lower() or "." in body:
            return float.fromhex(token)
        return int(token, 16)
    if any(c in body for c in ".eE"):
        return float(token)
    return int(token)
