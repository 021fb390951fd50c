"""The codes file: a pickle-free ``.npz`` that describes itself.

Keys (all loadable with ``np.load(path, allow_pickle=False)``):

=====================  ===========  ================================================
key                    type         meaning
=====================  ===========  ================================================
``codec``              str          ``mimi`` or ``encodec-24khz`` (files without it are Mimi's)
``codes``              uint16       ``[C, K, frames]``, each < ``codebook_size``; C = 1 (mixed to
                                    mono) or ``source_channels`` (each channel encoded on its own)
``format_version``     int          1
``sample_rate``        int          24000, the codec's rate
``frame_rate``         float        12.5 (Mimi) or 75 (EnCodec) frames per second
``codebook_size``      int          2048 (Mimi) or 1024 (EnCodec)
``num_samples``        int          length at the codec's rate before padding to whole frames
``source_sample_rate`` int          rate of the file that was encoded
``source_channels``    int          its channel count
``weights_id``         str          ``sha256:`` + 16 hex digits of the weights file
``streamed``           bool         made by ``--stream`` (moshi's streaming mode) or not; optional
=====================  ===========  ================================================
"""

from __future__ import annotations

import itertools
import json
import math
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mimi_cli.ecdc import MAGIC as ECDC_MAGIC
from mimi_cli.ecdc import check_streams, ecdc_model, is_ecdc_path, read_ecdc, write_ecdc
from mimi_cli.errors import (DATA_ERRORS, InvalidCodesError, counted, first_line, loads_json, malformed,
                             memory_said, os_reason, usable_memory)
from mimi_cli.fileio import (STDOUT, Target, as_target, atomic_output, file_kind, head_holds, holds, is_folder,
                             is_input_copy, missing, safetensors_head, write_stdout, zip_members)
from mimi_cli.models import CODECS, DEFAULT_CODEC, codec_spec
from mimi_cli.models.config import CodecConfig
from mimi_cli.npy import HeaderCheck, InvalidArrayError, open_member, read_header, read_npy, read_npy_member

FORMAT_VERSION = 1
_INT_KEYS = ("format_version", "sample_rate", "codebook_size", "num_samples", "source_sample_rate", "source_channels")
KEYS = ("codes", "frame_rate", "weights_id", *_INT_KEYS)  # required
OPTIONAL_KEYS = ("codec", "streamed")  # added later: a file without them is Mimi's, made either way


@dataclass
class CodesFile:
    codes: np.ndarray  # uint16 [C, K, F]: C = 1 (mono mix) or source_channels (split)
    num_samples: int
    source_sample_rate: int
    source_channels: int
    weights_id: str
    sample_rate: int
    frame_rate: float
    codebook_size: int
    codec: str = DEFAULT_CODEC
    format_version: int = FORMAT_VERSION
    streamed: bool | None = None  # by a stream encoder (--stream), or by a batch encode; None: not recorded
    bare: bool = field(default=False, compare=False)  # read from a bare array: nothing says its axes are [K, F]
    codec_assumed: bool = field(default=False, compare=False)  # a bare array's codec taken by default: none named

    @classmethod
    def from_codes(cls, codes: np.ndarray, config: CodecConfig, num_samples: int, source_sample_rate: int,
                   source_channels: int, weights_id: str, streamed: bool | None = None) -> CodesFile:
        """Wrap model codes ``[K, F]`` (one stream) or ``[C, K, F]`` (one per channel) with the metadata
        decode needs, and how they were made (``streamed``), which --skip-existing compares."""
        codes = codes.astype(np.uint16)
        return cls(codes=codes[None] if codes.ndim == 2 else codes, num_samples=num_samples,
                   source_sample_rate=source_sample_rate, source_channels=source_channels,
                   weights_id=weights_id, sample_rate=config.sample_rate, frame_rate=config.frame_rate,
                   codebook_size=config.codebook_size, codec=config.name, streamed=streamed)

    def first_levels(self, num_codebooks: int, name: Path | str) -> CodesFile:
        """The first ``num_codebooks`` levels alone: what encoding with that many would have given (each level
        quantizes what the levels before it left), so decoding them plays the file at that bitrate."""
        if num_codebooks > self.num_codebooks:
            raise InvalidCodesError(f"{name} holds {counted(self.num_codebooks, 'codebook')}; -n {num_codebooks} asks "
                                    f"for more (give -n {self.num_codebooks} or fewer)")
        return replace(self, codes=self.codes[:, :num_codebooks])

    @property
    def channels(self) -> int:
        """Code streams in the file: 1, or one per source channel (``--channels split``)."""
        return self.codes.shape[0]

    @property
    def num_codebooks(self) -> int:
        return self.codes.shape[1]

    @property
    def num_frames(self) -> int:
        return self.codes.shape[2]

    def save(self, path: Target, replace: bool = False, suffix: str | None = None) -> None:
        """Write atomically through :func:`mimi_cli.fileio.atomic_output` ("-": standard output, in the format
        ``suffix`` names, else as ``.npz``).

        A path ending in ``.npy`` gets the codes alone, as a bare array (:meth:`bare_array`): what a
        language model trains on, and what ``mimi decode`` takes back (whole frames, no metadata); one ending in
        ``.jsonl``, the same as JSON lines, a frame each (:func:`frame_lines`). One ending
        in ``.ecdc`` gets EnCodec's codes as Meta's ``encodec`` writes them (:mod:`mimi_cli.ecdc`).
        """
        path = as_target(path)
        named = Path(f"codes{suffix}") if suffix is not None and path == STDOUT else path  # (what names the format)
        if is_ecdc_path(named):
            ecdc_model(self.codec)  # refused before any file is made
        with atomic_output(path, replace) as tmp, open(tmp, "wb") as f:
            if named != STDOUT and named.suffix.lower() == JSON_LINES:
                f.write(frame_lines(self.codes))
            elif is_bare_array_path(named):
                np.save(f, self.bare_array())
            elif is_ecdc_path(named):
                check_streams(self.channels)
                write_ecdc(f, self.codec, self.codes[0], self.num_samples)
            else:
                np.savez(f, **{key: np.asarray(getattr(self, key)) for key in (*KEYS, *OPTIONAL_KEYS)
                               if getattr(self, key) is not None})

    def bare_array(self) -> np.ndarray:
        """The codes as a plain uint16 array: ``[K, frames]`` for one stream, ``[C, K, frames]`` for several."""
        return self.codes[0] if self.channels == 1 else self.codes

    @classmethod
    def load(cls, path: Path | str) -> CodesFile:
        """Read and validate a codes file against its codec's config; every problem is an InvalidCodesError.

        Sizes are checked before anything is read (see :data:`MAX_NUM_SAMPLES` and docs/codes-format.md):
        each member's uncompressed size in the zip directory, then the ``codes`` array's shape in its
        ``.npy`` header against ``num_samples``, so a small hostile file never inflates in memory.
        """
        path = Path(path)
        problem = missing(path)
        if problem:
            raise InvalidCodesError(f"{path} {problem}")
        if is_folder(path):
            raise InvalidCodesError(f"{path} is a directory; give a .npz codes file")
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
        except OSError as exc:
            raise InvalidCodesError(f"cannot read {path}: {os_reason(exc)}") from None
        if magic == b"\x93NUMPY":
            raise InvalidCodesError(f"{path} is a .npy array, not a codes file (.npz written by mimi encode)")
        if not magic.startswith(b"PK"):
            raise _not_codes(path, holds(path))
        try:
            with zipfile.ZipFile(path) as archive:
                return cls._validated(path, archive, _read_members(path, archive))
        except InvalidCodesError:
            raise
        except InvalidArrayError as exc:  # a member's .npy header or size (mimi_cli.npy)
            raise InvalidCodesError(str(exc)) from None
        except zipfile.BadZipFile as exc:  # a truncated download or a broken pipe's output, a flipped bit
            raise InvalidCodesError(f"{path} is not a readable codes file ({exc}): it is cut short or damaged; "
                                    "write it again") from None
        except (OSError, zipfile.LargeZipFile, NotImplementedError) as exc:
            raise InvalidCodesError(f"{path} is not a readable codes file ({exc})") from None
        except DATA_ERRORS as exc:
            raise malformed(InvalidCodesError, f"codes file {path}", exc) from None

    @classmethod
    def from_array(cls, path: Path, codec: str, member: zipfile.ZipInfo | str | None = None) -> CodesFile:
        """Codes from a bare integer array (a ``.npy`` file or a JSON array of arrays of integers, the one
        ``member`` of an ``.npz`` archive, or the one tensor of a ``.safetensors`` file, named by ``member``):
        every value checked as a codes file's are; length = frames × frame size."""
        config = codec_spec(codec).config()
        name = member if isinstance(member, str) else member and member.filename.removesuffix(".npy")
        shown = str(path) if member is None else f"{path} ({name})"

        def fail(problem: str) -> InvalidCodesError:
            return InvalidCodesError(f"{shown}: {problem}")

        max_bytes = MAX_CHANNELS * config.num_codebooks * (MAX_NUM_SAMPLES // config.frame_size) * 8
        check = _declared(config, fail)
        lines = False  # JSON lines, a frame each: their axes are said
        try:
            if member is None and is_json_codes(path):
                array, lines = _json_array(path, fail)
            elif member is None:
                array = read_npy(path, max_bytes, check)
            elif isinstance(member, str):
                array = _tensor(path, member, max_bytes, fail, check)
            else:
                with zipfile.ZipFile(path) as archive:
                    array = read_npy_member(archive, member, shown, max_bytes, check=check)
        except InvalidArrayError as exc:
            raise InvalidCodesError(str(exc)) from None
        except (OSError, zipfile.BadZipFile) as exc:
            raise InvalidCodesError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        codes = _checked_array(array, config, fail)
        return replace(cls.from_codes(codes, config, num_samples=codes.shape[2] * config.frame_size,
                                      source_sample_rate=config.sample_rate, source_channels=codes.shape[0],
                                      weights_id=""), bare=not lines)

    @classmethod
    def from_row(cls, row: dict, shown: str, codec: str) -> CodesFile:
        """Codes from a table's row: a ``--parquet`` shard's, whose columns name the codec, the length and the
        source (each checked as a codes file's is), or any table's integer ``codes`` (``[K, frames]`` or
        ``[C, K, frames]``) alone, a bare array for ``codec``."""
        def fail(problem: str) -> InvalidCodesError:
            return InvalidCodesError(f"{shown}: {problem}")

        named = row.get("codec")
        if named is not None and (not isinstance(named, str) or named not in CODECS):
            raise fail(f"codec must name one of {', '.join(CODECS)}, got {str(named)[:40]!r}")
        config = codec_spec(named or codec).config()
        codes = _checked_array(row["codes"], config, fail)
        channels, _, frames = codes.shape
        given = {key: row.get(key) for key in ("num_samples", "source_sample_rate", "source_channels")}
        for key, value in given.items():
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise fail(f"{key} must be a positive integer, got {value!r}")
        num_samples = given["num_samples"] or frames * config.frame_size
        if not (frames - 1) * config.frame_size < num_samples <= frames * config.frame_size:
            raise fail(f"num_samples {num_samples} does not fit {frames} frames of {config.frame_size} samples")
        source_channels = given["source_channels"] or channels
        if channels not in (1, source_channels):
            raise fail(f"codes have {channels} channels, but source_channels is {source_channels}")
        weights_id = row.get("weights_id") or ""
        if not isinstance(weights_id, str):
            raise fail(f"weights_id must be a string, got {weights_id!r}")
        streamed = row.get("streamed")
        if streamed is not None and not isinstance(streamed, bool):
            raise fail(f"streamed must be true or false, got {str(streamed)[:40]!r}")
        made = cls.from_codes(codes, config, num_samples, given["source_sample_rate"] or config.sample_rate,
                              source_channels, weights_id, streamed)
        return replace(made, bare=named is None)  # a --parquet shard's row names its codec

    @classmethod
    def _validated(cls, path: Path, archive: zipfile.ZipFile, a: dict[str, object]) -> CodesFile:
        def fail(problem: str) -> InvalidCodesError:
            return InvalidCodesError(f"{path}: {problem}")

        if a["codec"].shape != () or a["codec"].dtype.kind != "U" or str(a["codec"]) not in CODECS:
            codec = a["codec"]
            got = repr(str(codec)[:40]) if codec.shape == () else f"an array of shape {list(codec.shape)}"
            raise fail(f"codec must name one of {', '.join(CODECS)}, got {got}")
        config = codec_spec(str(a["codec"])).config()

        for key in (*_INT_KEYS, "frame_rate", "weights_id"):
            if a[key].shape != ():
                raise fail(f"{key} must be a single value, got shape {list(a[key].shape)}")
        for key in _INT_KEYS:
            if not np.issubdtype(a[key].dtype, np.integer):
                raise fail(f"{key} must be an integer, got {a[key].dtype}")
        version = int(a["format_version"])
        if version > FORMAT_VERSION:
            raise fail(f"format_version {version} is newer than this mimi-cli reads ({FORMAT_VERSION}); "
                       "upgrade mimi-cli")
        if version < 1:
            raise fail(f"format_version {version} was never written by mimi-cli (versions start at 1); the file "
                       "is damaged or not a codes file")
        expected = {"sample_rate": config.sample_rate, "codebook_size": config.codebook_size}
        for key, value in expected.items():
            if int(a[key]) != value:
                raise fail(f"{key} is {int(a[key])}, but {config.display_name} uses {value}")
        if not np.issubdtype(a["frame_rate"].dtype, np.number) or float(a["frame_rate"]) != config.frame_rate:
            raise fail(f"frame_rate is {a['frame_rate']}, but {config.display_name} uses {config.frame_rate}")
        if a["weights_id"].dtype.kind != "U":
            raise fail(f"weights_id must be a string, got {a['weights_id'].dtype}")
        streamed = a.get("streamed")
        if streamed is not None and (streamed.shape != () or streamed.dtype != np.bool_):
            raise fail(f"streamed must be one true or false, got {streamed.dtype} of shape {list(streamed.shape)}")
        # the codes, from their .npy header first: nothing is read before its size is known to fit
        shape, dtype, info = a["codes"]
        num_samples = int(a["num_samples"])
        if not 0 < num_samples <= MAX_NUM_SAMPLES:
            raise fail(f"num_samples {num_samples} is outside 1..{MAX_NUM_SAMPLES} (a week at 24 kHz)")
        if dtype != np.uint16:
            raise fail(f"codes must be uint16, got {dtype}")
        if len(shape) != 3 or not (shape[0] == 1 or shape[0] == int(a["source_channels"])):
            raise fail(f"codes must have shape [C, K, frames] with C = 1 or source_channels "
                       f"({int(a['source_channels'])}), got {list(shape)}")
        if not 1 <= shape[0] <= MAX_CHANNELS:
            raise fail(f"codes have {shape[0]} channels; a codes file holds 1..{MAX_CHANNELS}")
        if not 1 <= shape[1] <= config.num_codebooks:
            raise fail(f"codes have {shape[1]} codebooks; expected 1..{config.num_codebooks}")
        if not (shape[2] - 1) * config.frame_size < num_samples <= shape[2] * config.frame_size:
            raise fail(f"num_samples {num_samples} does not fit {shape[2]} frames of {config.frame_size} samples")
        expected = 2 * shape[0] * shape[1] * shape[2]
        if not expected <= info.file_size <= expected + MAX_SCALAR_BYTES:
            raise fail(f"member codes is {info.file_size:,} bytes, but its header declares {expected:,}")
        codes = read_npy_member(archive, info, f"{path} (codes)", expected)
        if codes.size and int(codes.max()) >= config.codebook_size:
            raise fail(f"codes contain {int(codes.max())}, but codes must be below {config.codebook_size}")
        return cls(codes=codes, num_samples=num_samples, source_sample_rate=int(a["source_sample_rate"]),
                   source_channels=int(a["source_channels"]), weights_id=str(a["weights_id"]),
                   sample_rate=int(a["sample_rate"]), frame_rate=float(a["frame_rate"]),
                   codebook_size=int(a["codebook_size"]), codec=config.name, format_version=version,
                   streamed=None if streamed is None else bool(streamed))


def _checked_array(array: np.ndarray, config: CodecConfig, fail) -> np.ndarray:
    """An integer array of codes as ``[C, K, frames]``, every value checked: ``fail(problem)`` otherwise."""
    if array.dtype.kind not in "iu":
        raise fail(_not_integers(array.dtype, array))
    codes = array.reshape(_code_shape(array.shape, config, fail))
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= config.codebook_size:
        raise fail(f"holds values {low}..{high}; {config.display_name} codes are 0..{config.codebook_size - 1} "
                   "(strip special tokens or offsets first)")
    return codes


# The largest array of floats read to say whether they are whole numbers; a larger one is refused unread.
MAX_HINTED_BYTES = 64 << 20


def _not_integers(dtype: np.dtype, array: np.ndarray | None = None) -> str:
    """Why codes of ``dtype`` are refused, with a hint for floats: from their values (``array``), or both when they
    are not read."""
    said = f"holds {dtype} values; codes are integers"
    if dtype.kind != "f":
        return said
    whole = "store them as integers, e.g. array.astype(np.int64)"
    scores = "take the argmax over the vocabulary first"
    if array is None:
        return f"{said} (whole numbers? {whole}; logits or probabilities? {scores})"
    # whole numbers kept as floats (np.loadtxt, a list with a null) or an LM's scores
    if array.size and np.isfinite(array).all() and (array == np.round(array)).all():
        return f"{said} (these are whole numbers: {whole})"
    return f"{said} (logits or probabilities? {scores})"


def _code_shape(shape: tuple[int, ...], config: CodecConfig, fail) -> tuple[int, int, int]:
    """An array of codes' ``shape`` as ``[C, K, frames]``, checked: ``fail(problem)`` otherwise."""
    given = shape
    while len(shape) > 3 and shape[0] == 1:  # a batch of one: transformers' EnCodec gives [1, 1, K, frames]
        shape = shape[1:]
    if len(shape) not in (2, 3):
        raise fail(f"has shape {list(given)}; codes are [K, frames] or [C, K, frames] (leading axes of size 1 "
                   "are dropped)")
    channels, levels, frames = shape if len(shape) == 3 else (1, *shape)
    if not 1 <= channels <= MAX_CHANNELS:
        raise fail(f"has {channels} channels; 1..{MAX_CHANNELS} are decoded")
    if not 1 <= levels <= config.num_codebooks:
        transposed = " — is the array transposed? codes are [K, frames]" if frames <= config.num_codebooks else ""
        raise fail(f"has {levels} codebooks (axis -2); {config.display_name} has 1..{config.num_codebooks}"
                   f"{transposed}")
    if frames < 1 or frames * config.frame_size > MAX_NUM_SAMPLES:
        raise fail(f"has {frames} frames; 1..{MAX_NUM_SAMPLES // config.frame_size} are decoded")
    return channels, levels, frames


def _declared(config: CodecConfig, fail) -> HeaderCheck:
    """What a bare array of codes must be by its header alone, checked before it is read: a small compressed
    member can declare gigabytes of zeros."""
    def check(shape: tuple[int, ...], dtype: np.dtype) -> None:
        size = math.prod(shape) * dtype.itemsize
        if dtype.kind in "iu":
            _code_shape(shape, config, fail)
        elif size > MAX_HINTED_BYTES:
            raise fail(_not_integers(dtype))
        memory = usable_memory()
        if memory and size > memory // 2:
            raise fail(f"its {list(shape)} {dtype} values would take {size / 1e9:.1f} GB, more than half "
                       f"{memory_said(memory)}; split the codes into shorter files")
    return check


def is_bare_array_path(path: Target) -> bool:
    """Whether :meth:`CodesFile.save` writes the codes alone to ``path``: a bare ``.npy`` array, or JSON lines."""
    return path != STDOUT and Path(path).suffix.lower() in (".npy", JSON_LINES)


JSON_LINES = ".jsonl"  # codes as JSON lines, a frame each


def frame_lines(codes: np.ndarray) -> bytes:
    """Codes ``[C, K, frames]`` as JSON lines, a frame each: ``[K]`` codes for one stream, ``[C][K]`` for several
    (as :meth:`CodesFile.bare_array` keeps one stream's codes ``[K, frames]``); what frame_line reads back."""
    frames = np.moveaxis(codes[0] if len(codes) == 1 else codes, -1, 0).tolist()
    return "".join(f"{json.dumps(frame, separators=(',', ':'))}\n" for frame in frames).encode()


def write_frame_lines(codes: np.ndarray) -> None:
    """``codes`` ``[C, K, n]`` as JSON lines to standard output, at once (a reader at the end of the pipe takes
    each frame as it comes)."""
    write_stdout(frame_lines(codes), flush=True)


def load_codes(path: Path, codec: str | None = None) -> CodesFile:
    """A codes file (the ``.npz`` of ``mimi encode``), a bare integer array (``.npy``, e.g. what a language
    model generated: ``[K, frames]`` or ``[C, K, frames]``), or EnCodec's ``.ecdc``; told apart by content.
    A bare array's codec is ``codec``, else the one a ``codec_info.json`` beside it names (codec-bpe's), else
    Mimi."""
    try:
        kind = file_kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        kind = None  # CodesFile.load says what is wrong with the path
    if kind not in (None, "a folder"):  # a device reads forever; top-level pipes come as copies (fileio.readable)
        raise InvalidCodesError(f"{path} is {kind}, not a codes file; give a file, or pipe the codes into '-'")
    try:
        with open(path, "rb") as f:
            head = f.read(_JSON_PEEK)
    except OSError:
        head = b""  # CodesFile.load says what is wrong with the path
    def bare(member: str | zipfile.ZipInfo | None = None) -> CodesFile:
        named = codec or described_codec(path)
        return replace(CodesFile.from_array(path, named or DEFAULT_CODEC, member), codec_assumed=named is None)

    if head.startswith(b"\x93NUMPY") or _json_start(head):
        return bare()
    if head.startswith(ECDC_MAGIC):
        try:
            named, codes, num_samples = read_ecdc(path, MAX_NUM_SAMPLES)
        except OSError as exc:
            raise InvalidCodesError(f"cannot read {path}: {os_reason(exc)}") from None
        config = codec_spec(named).config()  # its source's rate, channels and weights are not kept
        return CodesFile.from_codes(codes, config, num_samples, config.sample_rate, 1, weights_id="")
    lone = _lone_array(path) or _lone_tensor(path)
    return bare(lone) if lone else CodesFile.load(path)


CODEC_INFO = "codec_info.json"  # codec-bpe's description of a tree of .npy codes, at the tree's top


def described_codec(path: Path) -> str | None:
    """The codec a ``codec_info.json`` in the folder of ``path`` or above names (codec-bpe writes one at the top
    of its tree of ``.npy`` codes: ``codec_type``, ``sampling_rate``, ``codebook_size``…); None without one.
    One that names a codec mimi-cli does not run (DAC, say, whose codes would pass for Mimi's) is an error, as is
    one that cannot be read: decoding such codes as Mimi's would give noise without a word. Standard input and
    pipes have no folder: the working folder stands for it, as it does for the relative paths a list read
    from standard input names."""
    start = Path.cwd() / "-" if is_input_copy(path) else Path(os.path.abspath(path))
    for folder in start.parents:
        info = folder / CODEC_INFO
        if os.path.isfile(info):
            break
    else:
        return None

    shown = info if Path(path).is_absolute() else os.path.relpath(info)

    def fail(problem: str) -> InvalidCodesError:
        return InvalidCodesError(f"{path}: {shown}, which describes the codes below it, {problem}; correct or remove "
                                 f"it, or give --codec ({', '.join(CODECS)})")

    try:
        with open(info, "rb") as f:
            text = f.read((1 << 16) + 1)
        described = loads_json(text) if len(text) <= 1 << 16 else None
    except OSError as exc:
        raise fail(f"cannot be read ({os_reason(exc)})") from None
    except ValueError as exc:  # not UTF-8, not JSON
        raise fail(f"is not JSON ({exc})") from None
    if not isinstance(described, dict) or not isinstance(described.get("codec_type"), str):
        raise fail("is no codec-bpe codec_info.json (a JSON object of at most 64 KiB naming a codec_type)")
    kind, rate, size = (described.get(key) for key in ("codec_type", "sampling_rate", "codebook_size"))
    for spec in CODECS.values():
        config = spec.config()
        if spec.family == kind and rate == config.sample_rate and size == config.codebook_size:
            return spec.name
    model = described.get("codec_model")
    facts = [str(model)[:60] if model else None, None if rate is None else f"{str(rate)[:20]} Hz",
             None if size is None else f"{str(size)[:20]} per codebook"]
    said = f"says they are {kind[:40]} codes ({', '.join(fact for fact in facts if fact)})".replace(" ()", "")
    missing = [key for key, value in (("sampling_rate", rate), ("codebook_size", size)) if value is None]
    if missing:  # a rate and a size tell apart two codecs of one family
        raise fail(f"{said} but not their {' or '.join(missing)}, which mimi-cli needs to know which codec made them")
    raise fail(f"{said}, which mimi-cli does not decode")


def _lone_tensor(path: Path) -> str | None:
    """The name of the one tensor of a ``.safetensors`` file that holds nothing else (a language model's codes
    saved with ``safetensors.torch.save_file``), read as a bare array; None for anything else (weights hold
    many tensors)."""
    from mimi_cli.errors import WeightsError
    from mimi_cli.weights.safetensors import SafetensorsFile

    try:
        with open(path, "rb") as f:
            if f.read(2) == b"PK":  # a zip archive (.npz), whose first bytes would read as a huge header length
                return None
        infos = SafetensorsFile(path).infos
    except (OSError, WeightsError):
        return None
    return next(iter(infos)) if len(infos) == 1 else None


def _tensor(path: Path, name: str, max_bytes: int, fail, check: HeaderCheck) -> np.ndarray:
    """A safetensors file's tensor as stored (memory-mapped), refused before reading when over ``max_bytes`` or
    refused by ``check``."""
    from mimi_cli.errors import WeightsError
    from mimi_cli.weights.safetensors import SafetensorsFile

    try:
        tensors = SafetensorsFile(path)
    except WeightsError as exc:
        raise fail(str(exc)) from None
    info = tensors.infos[name]
    if info.end - info.begin > max_bytes:
        raise fail(f"holds {info.end - info.begin:,} bytes, more than the codes of a week of audio")
    raw = tensors.raw(name)  # a view of the mapping: nothing is read yet
    floats = info.dtype in ("BF16", "F8_E4M3", "F8_E5M2")  # stored as raw bits: say what they are
    check(raw.shape, np.dtype(np.float32) if floats else raw.dtype)
    return tensors.tensor(name) if floats else np.array(raw)  # a copy: the file may be replaced while it is decoded


MAX_JSON_BYTES = 64 << 20  # a JSON array of codes: ~12 M codes, 8 hours of Mimi's 32 levels; larger ones as .npy


_JSON_PEEK = 64  # bytes read to tell a JSON array from other codes


def _json_start(head: bytes) -> bool:
    """A file's first bytes begin, after any white space, with "[" or "{": a JSON array (a language model's codes,
    as an HTTP service returns them: ``[[…], […]]``) or an object holding one (``{"codes": [[…]], …}``)."""
    return head.lstrip()[:1] in (b"[", b"{") and not safetensors_head(head)


def is_json_codes(path: Path) -> bool:
    """Whether the file at ``path``, whatever its name, holds a JSON array, or an object (see _json_start)."""
    try:
        with open(path, "rb") as f:
            return _json_start(f.read(_JSON_PEEK))
    except OSError:
        return False


def _json_array(path: Path, fail) -> tuple[np.ndarray, bool]:
    """A JSON array of arrays of integers as a NumPy array, its size bounded before it is parsed, and whether it
    came as JSON lines, a frame each; what is not a rectangle of numbers fails in one line (its values' type is
    checked as an array's: _checked_array)."""
    with open(path, "rb") as f:
        text = f.read(MAX_JSON_BYTES + 1)
    if len(text) > MAX_JSON_BYTES:
        raise fail(f"is a JSON array of more than {MAX_JSON_BYTES >> 20} MB; save such codes as .npy (np.save)")
    shape = "codes are an array [K, frames] or [C, K, frames] of integers, or JSON lines of a frame's [K] each"
    try:
        codes = _codes_in(loads_json(text), fail)
    except ValueError as exc:
        if "Extra data" not in str(exc):  # (more after one document: JSON lines, or what follows says why not)
            raise fail(f"is not JSON ({first_line(exc)}); {shape}") from None
        return _frame_lines(text.splitlines(), fail), True  # a line a frame: what a model printed as it went
    return _array(codes, fail, shape), False


def _array(codes, fail, shape: str) -> np.ndarray:
    """``codes`` (nested lists from JSON) as a NumPy array of numbers, or one line saying why not."""
    depth, first = 0, codes
    while isinstance(first, list) and first:
        depth, first = depth + 1, first[0]
    if depth > 64:  # NumPy's most dimensions; said so, not as rows of different lengths
        raise fail(f"nests its arrays {depth} deep; {shape}")
    try:
        array = np.array(codes)
    except ValueError:  # NumPy's "inhomogeneous shape"
        raise fail(f"holds rows of different lengths; {shape}") from None
    if not array.size:
        raise fail(f"holds no codes (an empty array); {shape}")
    if array.dtype.kind not in "iufb":  # said by type below: floats (logits?) and true/false
        raise fail(f"holds values that are not numbers (strings, objects, or integers beyond 64 bits); {shape}")
    return array


FRAME_SHAPE = "each line a frame: [K] codes, or [C][K] with a code stream per channel"


def frame_line(line: bytes, number: int, fail, like: tuple[int, ...] | None = None) -> np.ndarray | None:
    """One line of codes as JSON lines (the frame a model generated: ``[K]`` codes, ``[C][K]`` for several
    streams, or an object holding them, ``{"codes": […], …}``) as an array; None for a blank line. ``like``: the
    shape the first frame had, which every frame keeps."""
    if not line.strip():
        return None
    where = f"line {number}"
    try:
        frame = _array(_codes_in(loads_json(line), fail), fail, FRAME_SHAPE)
    except InvalidCodesError as exc:  # what fail said, of this line
        raise fail(f"{where} {str(exc).split(': ', 1)[1]}") from None
    except ValueError as exc:
        raise fail(f"{where} is not JSON ({first_line(exc)}); {FRAME_SHAPE}") from None
    if frame.ndim not in (1, 2) or (like is not None and frame.shape != like):
        expected = f"[{', '.join(map(str, like))}] as line 1" if like else FRAME_SHAPE
        raise fail(f"{where} holds an array of shape [{', '.join(map(str, frame.shape))}], not {expected}")
    return frame


LINE_BYTES = 1 << 16  # the longest line of a frame: 64 streams of 32 levels of codes take about 12 KB


def lines_coming(source) -> tuple[bytes, list[bytes] | None]:
    """Whether ``source`` (standard input, a reader with ``readline``) holds codes as JSON lines, told by its
    first two lines, each a frame (see frame_line): those lines, the rest to be read as it comes; else the bytes
    read, which begin something else (a file, one JSON document), and None."""
    read: list[bytes] = []
    for _ in range(2):
        read.append(source.readline(LINE_BYTES))
        try:
            if frame_line(read[-1], len(read), InvalidCodesError) is None:
                return b"".join(read), None
        except InvalidCodesError:
            return b"".join(read), None
    return b"", read


def frames_coming(lines: list[bytes], source, codec: str, shown: str) -> Iterator[np.ndarray]:
    """Codes as JSON lines, a frame each (see frame_line), as ``[C, K, 1]`` arrays, each checked as a codes
    file's codes are as it comes: the ``lines`` read already, then ``source``'s to its end."""
    config = codec_spec(codec).config()

    def fail(problem: str) -> InvalidCodesError:
        return InvalidCodesError(f"{shown}: {problem}")

    def whole(number: int, line: bytes) -> bytes:
        if len(line) == LINE_BYTES and not line.endswith(b"\n"):
            raise fail(f"line {number} is longer than {LINE_BYTES >> 10} KiB; {FRAME_SHAPE}")
        return line

    coming = itertools.chain(lines, iter(lambda: source.readline(LINE_BYTES), b""))
    for number, frame in _frames((whole(number, line) for number, line in enumerate(coming, 1)), fail):
        yield _checked_array(frame[..., None], config, lambda problem, at=number: fail(f"line {at} {problem}"))


def _frames(lines: Iterable[bytes], fail) -> Iterator[tuple[int, np.ndarray]]:
    """Codes as JSON lines (see frame_line): each frame with its line's number, as it is read; every frame of
    the first one's shape."""
    like = None
    for number, line in enumerate(lines, 1):
        frame = frame_line(line, number, fail, like)
        if frame is not None:
            like = frame.shape
            yield number, frame


def _frame_lines(lines: list[bytes], fail) -> np.ndarray:
    """Codes as JSON lines, a frame each (see frame_line), as the array ``[K, frames]`` or ``[C, K, frames]``."""
    return np.stack([frame for _, frame in _frames(lines, fail)], axis=-1)  # frames along the last axis


def _codes_in(value, fail):
    """The array of a JSON document: the document itself, or an object's ``codes`` (a service's response,
    ``{"codes": [[…]], "sample_rate": …}``), or the one array an object holds, as a lone array of an .npz."""
    if not isinstance(value, dict):
        return value
    arrays = [key for key, member in value.items() if isinstance(member, list)]
    key = "codes" if "codes" in value else arrays[0] if len(arrays) == 1 else None
    if key is None:
        keys = ", ".join(map(repr, list(value)[:8])) + (", …" if len(value) > 8 else "")
        raise fail(f"is a JSON object ({keys or 'empty'}) without a codes array or a lone array; give the array "
                   "itself (jq .KEY)")
    return value[key]


def _lone_array(path: Path) -> zipfile.ZipInfo | None:
    """The member of an ``.npz`` archive that holds one array and nothing else (another tool's container:
    ``np.savez("x.npz", audio_codes=…)``), read as a bare array; None for anything else."""
    members = zip_members(path) or []
    return members[0] if len(members) == 1 and members[0].filename.endswith(".npy") else None


def _not_codes(name: Target, kind: str | None) -> InvalidCodesError:
    """What to say of data that is no codes file, holding ``kind`` (fileio.holds)."""
    if kind and "pickle" in kind:
        return _pickled(name)
    hint = f"; it holds {kind}" if kind else ""
    if kind and "audio" in kind:
        hint += ", which `mimi encode` turns into codes"
    elif kind and "weights" in kind:
        hint += ", which commands take as --weights and `mimi inspect` shows one file at a time"
    return InvalidCodesError(f"{name} is not a codes file (expected the .npz archive written by mimi encode, or an "
                             f"integer array: .npy, JSON, or one array in .npz or .safetensors){hint}")


def check_codes_head(head: bytes, name: str) -> None:
    """Refuse data whose first bytes (``head``, of a pipe still coming: see fileio.readable) begin none of the
    formats load_codes tells apart, with the error the whole would get: ``cat /dev/urandom | mimi decode -``
    was kept until the disk was full."""
    if not (head.startswith((b"PK", b"\x93NUMPY", ECDC_MAGIC)) or _json_start(head) or safetensors_head(head)):
        raise _not_codes(name, head_holds(head))


def _pickled(path: Target) -> InvalidCodesError:
    return InvalidCodesError(f"{path} is a pickle (what torch.save and pickle.dump write), which is never loaded: "
                             "loading one can run code; save the codes with np.save(path, codes.numpy()) or "
                             "safetensors' save_file")


# Limits of the reader, checked before any array is read (docs/codes-format.md).
MAX_SCALAR_BYTES = 4096  # a scalar member: a .npy header and one value
MAX_CHANNELS = 64  # channels encoded separately (--channels split) in one file
MAX_NUM_SAMPLES = 24000 * 3600 * 24 * 7  # a week of audio at 24 kHz: codes of at most ~0.4 GB


def _read_members(path: Path, archive: zipfile.ZipFile) -> dict[str, object]:
    """The scalar members, read after checking their sizes; ``codes`` as (shape, dtype, zip entry) from its
    ``.npy`` header, not read yet."""
    if any(name.rpartition("/")[2] == "data.pkl" for name in archive.namelist()):  # torch.save's zip
        raise _pickled(path)
    members = {name.removesuffix(".npy"): info for info in archive.infolist()
               if (name := info.filename).endswith(".npy")}
    absent = [key for key in KEYS if key not in members]
    if not any(key in members for key in KEYS if key != "codes"):  # another tool's arrays, no metadata
        raise InvalidCodesError(f"{path} is not a codes file: it holds {', '.join(sorted(members)) or 'no arrays'}; "
                                "for codes alone, give one integer array [K, frames] (.npy, or an .npz of that "
                                "array only)")
    if absent:
        raise InvalidCodesError(f"{path} is not a complete codes file: missing {', '.join(absent)}")
    arrays: dict[str, object] = {"codec": np.array(DEFAULT_CODEC)}
    for key in (*KEYS, *OPTIONAL_KEYS):
        if key == "codes" or key not in members:
            continue
        if members[key].file_size > MAX_SCALAR_BYTES:
            raise InvalidCodesError(f"{path}: member {key} is {members[key].file_size:,} bytes; a codes file "
                                    f"stores it in under {MAX_SCALAR_BYTES}")
        arrays[key] = read_npy_member(archive, members[key], f"{path} ({key})", MAX_SCALAR_BYTES, kinds=None)
    with open_member(archive, members["codes"], f"{path} (codes)") as f:
        shape, _, dtype = read_header(f, members["codes"].file_size, f"{path} (codes)")
    arrays["codes"] = (shape, dtype, members["codes"])
    return arrays
