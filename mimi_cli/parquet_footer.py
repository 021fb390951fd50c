"""How many values each column chunk of a Parquet file declares, read from the file's footer by hand.

Why not pyarrow's metadata: its object for a column chunk whose statistics do not fit the schema ends the
process (an uncaught C++ exception), so only row-group metadata is read through it (see
:func:`mimi_cli.sources._row_group`). And a row group's ``total_byte_size`` is no bound on what reading it
takes: a run of one value, encoded as RLE, is a few bytes, so a 700-byte file can hold a row of 10⁹ zeros.
A chunk's ``num_values`` is that bound.

The footer is a Thrift struct in the compact protocol, at the end of the file::

    … data pages … | FileMetaData (compact Thrift) | length: 4 bytes LE | "PAR1"

    FileMetaData  4: row_groups  list<RowGroup>
    RowGroup      1: columns     list<ColumnChunk>
    ColumnChunk   3: meta_data   ColumnMetaData
    ColumnMetaData 1: type (i32), 3: path_in_schema (list<string>), 5: num_values (i64)

Every field is decoded generically (a struct as {field id: value}), each size checked against the bytes
left, nesting at most :data:`MAX_DEPTH` deep, so that damaged bytes raise a ValueError, as pyarrow's own errors
are, which its readers in :mod:`mimi_cli.sources` say in one line.
"""

from __future__ import annotations

import os
import struct
from functools import lru_cache
from pathlib import Path

MAGIC = b"PAR1"
MAX_DEPTH = 64  # Parquet's footer nests 5 deep; a damaged one could nest without end
# Compact protocol type ids (Thrift's TCompactProtocol).
STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)


class DamagedFooterError(ValueError):
    """A footer that is not Parquet's: a ValueError, as pyarrow's own ArrowInvalid is, so that a reader says it
    as it says those."""


class _Reader:
    """Compact-protocol values from ``data``, position ``at``."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise DamagedFooterError("it ends inside a value")
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 70:
                raise DamagedFooterError("a number of more than 10 bytes")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def size(self, each: int = 1) -> int:
        """A count of items of at least ``each`` bytes, which must fit in the bytes left."""
        n = self.varint()
        if n * each > len(self.data) - self.at:
            raise DamagedFooterError(f"a size of {n:,} beyond its end")
        return n

    def value(self, kind: int, depth: int):
        if depth > MAX_DEPTH:
            raise DamagedFooterError(f"values nested more than {MAX_DEPTH} deep")
        if kind in (TRUE, FALSE):  # a bool in a list or map is a byte of its own (1 true, else false)
            return kind == TRUE
        if kind == BYTE:
            return self.byte()
        if kind in (I16, I32, I64):
            return self.zigzag()
        if kind == DOUBLE:
            if self.at + 8 > len(self.data):
                raise DamagedFooterError("it ends inside a value")
            self.at += 8
            return struct.unpack("<d", self.data[self.at - 8:self.at])[0]
        if kind == BINARY:
            n = self.size()
            self.at += n
            return self.data[self.at - n:self.at]
        if kind in (LIST, SET):
            header = self.byte()
            n, item = header >> 4, header & 0x0F
            if n == 15:
                n = self.size()
            elif n > len(self.data) - self.at:
                raise DamagedFooterError(f"a size of {n:,} beyond its end")
            return [self.byte() == 1 if item in (TRUE, FALSE) else self.value(item, depth + 1) for _ in range(n)]
        if kind == MAP:  # (none in Parquet's footer; an unknown field may be one) as a list of pairs
            n = self.size(2)
            types = self.byte() if n else 0
            return [(self.value(types >> 4, depth + 1), self.value(types & 0x0F, depth + 1)) for _ in range(n)]
        if kind == STRUCT:
            return self.struct(depth + 1)
        raise DamagedFooterError(f"a value of unknown type {kind}")

    def struct(self, depth: int = 0) -> dict[int, object]:
        fields, last = {}, 0
        while True:
            header = self.byte()
            kind = header & 0x0F
            if kind == STOP:
                return fields
            delta = header >> 4
            last = last + delta if delta else self.zigzag()
            fields[last] = self.value(kind, depth)


def footer(path: Path | str) -> dict[int, object]:
    """The FileMetaData struct of the Parquet file at ``path``, as nested {field id: value}."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 12:
            raise DamagedFooterError("it is shorter than a Parquet file's two magic numbers and footer length")
        f.seek(size - 8)
        tail = f.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != MAGIC or length > size - 12:
            raise DamagedFooterError("its end is not a Parquet footer")
        f.seek(size - 8 - length)
        return _Reader(f.read(length)).struct()


@lru_cache(maxsize=8)
def column_values(path: str) -> list[list[tuple[str, int, int]]]:
    """For each row group of the Parquet file at ``path``, each column chunk's top-level column name, physical
    type (Parquet's Type: 0 BOOLEAN … 5 DOUBLE, 6 BYTE_ARRAY, 7 FIXED_LEN_BYTE_ARRAY) and declared number of
    values (nulls and list levels included). A damaged footer raises DamagedFooterError."""
    groups = []
    try:
        for group in footer(path).get(4, []):
            chunks = []
            for chunk in group.get(1, []):
                meta = chunk.get(3, {})
                path_in_schema, kind, values = meta.get(3, [b""]), meta.get(1, 6), meta.get(5, 0)
                name = path_in_schema[0] if isinstance(path_in_schema, list) and path_in_schema else b""
                if not isinstance(name, bytes) or not isinstance(kind, int) or not isinstance(values, int) \
                        or values < 0:
                    raise TypeError("a column's name, type or count is not of Parquet's types")
                chunks.append((name.decode("utf-8", "replace"), kind, values))
            groups.append(chunks)
    except (AttributeError, TypeError, LookupError) as exc:  # a field of another type than Parquet's
        raise DamagedFooterError(f"its footer holds {exc}") from None
    return groups
