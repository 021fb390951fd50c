"""How many bytes reading an Arrow IPC file or stream decompresses, from its messages' metadata.

An Arrow file that ``save_to_disk`` writes is memory-mapped: its buffers are read in place, nothing is
allocated. But IPC buffers may be compressed (LZ4 or ZSTD), and pyarrow decompresses every one when it reads
a record batch: an 18 KB file of zeros held 600 MB. Each compressed buffer starts with its length once
decompressed, so the total is known before anything is decompressed::

    message:  metadata (a FlatBuffer: Message → RecordBatch) | body: buffer, buffer, …
    RecordBatch  2: buffers [Buffer {offset: int64, length: int64}]   3: compression (absent: none)
    compressed buffer at body[offset]:  uncompressed length: int64 LE (-1: stored as is) | codec's bytes
    DictionaryBatch  1: data (a RecordBatch)

pyarrow reads the messages (``MessageReader``); their FlatBuffers are read here, every offset checked
against the metadata's size, so that damaged bytes raise a ValueError, as pyarrow's own errors are, which its
readers in :mod:`mimi_cli.sources` say in one line.
"""

from __future__ import annotations

import struct

# MessageHeader's union: the tables whose buffers a message's body holds
DICTIONARY_BATCH, RECORD_BATCH = 2, 3
FILE_MAGIC = b"ARROW1"  # an IPC file: magic, padding, the stream, its footer, the footer's length, magic


class DamagedArrowError(ValueError):
    """Metadata that points outside itself or its body: a ValueError, as pyarrow's own ArrowInvalid is, so that a
    reader says it as it says those."""


class _FlatBuffer:
    """Tables of a FlatBuffer: ``field(table, i)``, the position of a table's i-th field (None when absent)."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, form: str, at: int):
        if not 0 <= at <= len(self.data) - struct.calcsize(form):
            raise DamagedArrowError("an offset beyond its metadata")
        return struct.unpack_from(form, self.data, at)[0]

    def root(self) -> int:
        return self.read("<I", 0)

    def field(self, table: int, i: int) -> int | None:
        vtable = table - self.read("<i", table)
        if 4 + 2 * i >= self.read("<H", vtable):
            return None
        offset = self.read("<H", vtable + 4 + 2 * i)
        return table + offset if offset else None

    def target(self, at: int) -> int:
        """Where the offset (a table's or a vector's) stored at ``at`` points."""
        return at + self.read("<I", at)


def decompressed_bytes(metadata: bytes, body) -> int:
    """What pyarrow allocates to decompress the buffers of one message (0 for an uncompressed body, which is
    read in place, or a message without buffers: a schema)."""
    fb = _FlatBuffer(metadata)
    message = fb.root()
    kind, header = fb.field(message, 1), fb.field(message, 2)
    if kind is None or header is None or fb.read("<B", kind) not in (DICTIONARY_BATCH, RECORD_BATCH):
        return 0
    batch = fb.target(header)
    if fb.read("<B", kind) == DICTIONARY_BATCH:
        data = fb.field(batch, 1)
        if data is None:
            return 0
        batch = fb.target(data)
    buffers = fb.field(batch, 2)
    if fb.field(batch, 3) is None or buffers is None:  # no compression: read in place
        return 0
    vector = fb.target(buffers)
    total = 0
    for i in range(fb.read("<I", vector)):
        offset, length = fb.read("<q", vector + 4 + 16 * i), fb.read("<q", vector + 12 + 16 * i)
        if length == 0:
            continue
        if not (0 <= offset and 8 <= length and offset + length <= body.size):
            raise DamagedArrowError("a buffer beyond its body")
        total += max(0, int.from_bytes(body[offset:offset + 8].to_pybytes(), "little", signed=True))
    return total


def declared_bytes(source) -> int:
    """What reading every batch of the Arrow IPC stream or file mapped in ``source`` (a ``pa.memory_map``)
    decompresses: a stream's messages in turn, as pyarrow's stream reader reads them; a file's, where its
    footer's blocks point, as its file reader does. A damaged file raises pyarrow's errors or
    DamagedArrowError, ValueErrors both."""
    import pyarrow as pa

    source.seek(0)
    if source.read(6) != FILE_MAGIC:
        source.seek(0)
        messages = pa.ipc.MessageReader.open_stream(source)
    else:
        messages = (_message_at(source, offset) for offset in _footer_blocks(source))
    try:
        return sum(decompressed_bytes(m.metadata.to_pybytes(), m.body) for m in messages)
    except EOFError:  # pyarrow's, for a message cut short
        raise DamagedArrowError("it ends inside a message") from None


def _footer_blocks(source) -> list[int]:
    """The offsets of a file's dictionary and record batch messages, from its footer (a FlatBuffer: Footer
    2: dictionaries, 3: recordBatches, vectors of Block {offset: int64, metaDataLength: int32, bodyLength: int64})."""
    size = source.size()
    if size < 2 * len(FILE_MAGIC) + 4:
        raise DamagedArrowError("it is shorter than an Arrow file's magic numbers")
    source.seek(size - len(FILE_MAGIC) - 4)
    length = int.from_bytes(source.read(4), "little", signed=True)
    if not 0 < length <= size - 2 * len(FILE_MAGIC) - 4:
        raise DamagedArrowError("its footer's length is beyond the file")
    source.seek(size - len(FILE_MAGIC) - 4 - length)
    fb = _FlatBuffer(source.read(length))
    footer, offsets = fb.root(), []
    for i in (2, 3):
        blocks = fb.field(footer, i)
        if blocks is not None:
            vector = fb.target(blocks)
            offsets += [fb.read("<q", vector + 4 + 24 * j) for j in range(fb.read("<I", vector))]
    return offsets


def _message_at(source, offset: int):
    import pyarrow as pa

    if not 0 <= offset < source.size():
        raise DamagedArrowError("a block beyond the file")
    source.seek(offset)
    return pa.ipc.read_message(source)
