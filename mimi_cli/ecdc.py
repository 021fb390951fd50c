"""EnCodec's own compressed file (``.ecdc``, what Meta's ``encodec`` command writes), without its language model.

Layout (big-endian)::

    b"ECDC" | version: u8 (0) | header length: u32 | JSON header | codes
    header: {"m": "encodec_24khz", "al": samples, "nc": codebooks, "lm": false}
    codes:  frame 0: level 0, level 1, … level nc-1 | frame 1: … | … (ceil(al / 320) frames)
            each code in log2(codebook_size) bits (10), lowest bit first, packed from each
            byte's lowest bit up; the last byte's unused high bits are zeros

    e.g. two 10-bit codes a, b:  byte 0 = a[7:0] | byte 1 = b[5:0] a[9:8] | byte 2 = 0000 b[9:6]

A file written with ``encodec --lm`` holds the codes arithmetic-coded under EnCodec's small language
model, which mimi-cli does not have: it is refused, with what to do. The 48 kHz model's files (``--hq``)
are refused too (mimi-cli runs the 24 kHz model). The header's sizes are checked against the file's
before anything is read, as for every file here.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import IO

import numpy as np

from mimi_cli.errors import InvalidCodesError, MimiError, loads_json
from mimi_cli.models import CODECS, codec_spec

MAGIC = b"ECDC"
_HEAD = struct.Struct("!4sBI")  # magic, version, header length
MAX_HEADER_BYTES = 4096  # encodec writes ~60 bytes: four short keys
_BLOCK = 1 << 20  # codes packed or unpacked at a time: a multiple of 8, so each block is whole bytes


def is_ecdc_path(path) -> bool:
    return Path(str(path)).suffix.lower() == ".ecdc"


def ecdc_model(codec: str) -> str:
    """The name ``encodec`` gives ``codec``'s model in an .ecdc header; a MimiError for a codec it has not."""
    name = CODECS[codec].ecdc_model
    if name is None:
        able = ", ".join(f"--codec {spec.name}" for spec in CODECS.values() if spec.ecdc_model)
        raise MimiError(f".ecdc is EnCodec's own format, and {codec} codes have no place in it: write .npz (or .npy), "
                        f"or encode with {able}")
    return name


def check_streams(streams: int) -> None:
    """An .ecdc file holds one code stream: a MimiError for more."""
    if streams != 1:
        raise MimiError(f".ecdc holds one code stream, and these codes have {streams} (--channels split): "
                        "write .npz, or encode the channels mixed")


def write_ecdc(f: IO[bytes], codec: str, codes: np.ndarray, num_samples: int) -> None:
    """Write ``codec``'s codes ``[K, F]`` of ``num_samples`` samples as ``encodec`` writes them (without --lm)."""
    header = json.dumps({"m": ecdc_model(codec), "al": int(num_samples), "nc": codes.shape[0], "lm": False}).encode()
    f.write(_HEAD.pack(MAGIC, 0, len(header)) + header)
    values = codes.T.reshape(-1)  # [F * K]: frame after frame, levels in order
    bits = _bits(codec)
    for start in range(0, values.size, _BLOCK):
        f.write(_pack(values[start:start + _BLOCK], bits))


def _bits(codec: str) -> int:
    """Bits per code: log2 of the codebook size (EnCodec: 10)."""
    return int(math.log2(codec_spec(codec).config().codebook_size))


def _pack(values: np.ndarray, bits: int) -> bytes:
    """``values`` in ``bits`` bits each, lowest first, one after the other from each byte's lowest bit."""
    low_first = np.unpackbits(values.astype("<u2").view(np.uint8), bitorder="little").reshape(-1, 16)[:, :bits]
    return np.packbits(low_first.reshape(-1), bitorder="little").tobytes()  # zero-padded to whole bytes


def _unpack(data: bytes, count: int, bits: int) -> np.ndarray:
    """The first ``count`` values of ``bits`` bits each in ``data`` (what :func:`_pack` wrote)."""
    stream = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:count * bits].reshape(count, bits)
    return (stream.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(axis=1, dtype=np.uint16)


def read_ecdc(path: Path, max_samples: int) -> tuple[str, np.ndarray, int]:
    """An .ecdc file's ``(codec, codes [K, F] uint16, num_samples)``; an InvalidCodesError for any other bytes."""
    def fail(problem: str) -> InvalidCodesError:
        return InvalidCodesError(f"{path}: {problem}")

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            raise fail("an .ecdc file cut short in its first 9 bytes; write it again")
        _, version, length = _HEAD.unpack(head)
        if version != 0:
            raise fail(f"an .ecdc file of version {version}, where EnCodec writes version 0; this one is damaged or "
                       "newer than mimi-cli")
        if length > min(MAX_HEADER_BYTES, size - _HEAD.size):
            raise fail(f"its .ecdc header declares {length:,} bytes, more than the file holds or an .ecdc header "
                       f"needs ({MAX_HEADER_BYTES:,}); the file is damaged")
        try:
            header = loads_json(f.read(length).decode("utf-8"), unique_keys=True)
        except ValueError as exc:  # UnicodeDecodeError and json's errors are ValueErrors
            raise fail(f"its .ecdc header is not JSON ({exc}); the file is damaged") from None
        model, samples, levels, lm = _fields(header, fail)
        spec = next((s for s in CODECS.values() if s.ecdc_model == model), None)
        if spec is None:
            known = ", ".join(s.ecdc_model for s in CODECS.values() if s.ecdc_model)
            raise fail(f"compressed with EnCodec's model {model[:40]!r}, which mimi-cli does not run (it reads .ecdc "
                       f"files of {known}; `encodec --hq` writes the 48 kHz model's)")
        if lm:
            raise fail("compressed with EnCodec's language model (encodec --lm), which mimi-cli does not have; "
                       "decompress it with `encodec`, or compress it again without --lm")
        config = spec.config()
        if not 1 <= samples <= max_samples:
            raise fail(f"its header says {samples} samples; an .ecdc file holds 1 to {max_samples:,}")
        if not 1 <= levels <= config.num_codebooks:
            raise fail(f"its header says {levels} codebooks; {config.display_name} has 1 to {config.num_codebooks}")
        frames = -(-samples // config.frame_size)
        bits = _bits(spec.name)
        needed, held = -(-frames * levels * bits // 8), size - _HEAD.size - length
        if held != needed:
            state = "is cut short" if held < needed else f"has {held - needed:,} more bytes"
            raise fail(f"its header says {frames:,} frames of {levels} codes ({needed:,} bytes), and the file "
                       f"{state}: it is damaged; write it again")
        values = np.concatenate([_unpack(f.read(_BLOCK * bits // 8), min(_BLOCK, frames * levels - start), bits)
                                 for start in range(0, frames * levels, _BLOCK)])  # at least one code
    return spec.name, values.reshape(frames, levels).T, samples  # [K, F]


def _fields(header, fail) -> tuple[str, int, int, bool]:
    """The header's ``m``, ``al``, ``nc``, ``lm``, each of the type encodec writes."""
    if not isinstance(header, dict):
        raise fail(f"its .ecdc header is {type(header).__name__} JSON, not an object; the file is damaged")
    missing = [key for key in ("m", "al", "nc", "lm") if key not in header]
    if missing:
        raise fail(f"its .ecdc header lacks {', '.join(missing)}; the file is damaged")
    model, samples, levels, lm = (header[key] for key in ("m", "al", "nc", "lm"))
    for key, value, kind in (("m", model, str), ("al", samples, int), ("nc", levels, int), ("lm", lm, bool)):
        if not isinstance(value, kind) or kind is int and isinstance(value, bool):
            raise fail(f"its .ecdc header's {key} is {json.dumps(value)[:40]}, not {kind.__name__}; the file is "
                       "damaged")
    return model, samples, levels, lm
