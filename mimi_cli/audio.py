"""Reading, converting and writing audio files (soundfile + scipy.signal)."""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import math
import os
import re
import stat
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mimi_cli.c_stderr import CaughtStderr
from mimi_cli.errors import (InvalidAudioError, gigabytes, memory_said, over_memory, refusal_said, unloadable,
                             usable_memory)
from mimi_cli.fileio import (Target, as_target, atomic_output, cannot_write, file_kind, head_holds, holds,
                             is_input_copy, is_stdout, missing, native)
from mimi_cli.models.codec import MAX_PEAK


@dataclass
class Audio:
    """Audio as read from a file: float32 samples ``[T, channels]`` and their rate."""

    samples: np.ndarray
    sample_rate: int

    @property
    def channels(self) -> int:
        return self.samples.shape[1]

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate


# What a whole file read in memory costs per sample and channel: float32 samples, their mono mix and
# its resampled copy, with room to spare.
READ_BYTES_PER_SAMPLE = 16


def read_audio(path: Path) -> Audio:
    """Read anything libsndfile reads (WAV, FLAC, OGG, MP3, ...), with a clear error otherwise; refused
    before reading when the length its header declares (or the length read so far) would not fit in memory."""
    with open_audio(path) as f:

        def check(seconds: float) -> None:
            needed, memory = seconds * f.samplerate * f.channels * READ_BYTES_PER_SAMPLE, usable_memory()
            if memory and needed > memory // 2:
                raise InvalidAudioError(f"{path} declares {seconds / 60:.1f} min of audio, about {gigabytes(needed)} "
                                        f"once read, more than half {memory_said(memory)}: split "
                                        "it into shorter files (or its header is damaged)")

        check(f.frames / f.samplerate)
        return read_open(path, f, check)


def read_open(path: Path, f, past_declared: Callable[[float], None] | None = None) -> Audio:
    """The rest of a file opened with :func:`open_audio` (all of it, if nothing was read), checked.

    ``past_declared(seconds)`` is called as the read goes on past the length the file declared, and
    may refuse to go further: FFmpeg's containers declare an estimate, which a broken or hostile
    file makes as small as it likes, so a check of memory made from it would not hold.
    """
    from_start = f.tell() == 0
    if past_declared is None:
        samples = _read_block(path, f, -1)
    else:  # in blocks, not the declared length at once: a damaged FLAC header that declared an hour allocated it
        blocks, read = [], f.tell()
        while not blocks or len(blocks[-1]):
            blocks.append(_read_block(path, f, 1 << 20))
            read += len(blocks[-1])
            if read > f.frames:
                past_declared(read / f.samplerate)
        samples = joined(blocks)
    if from_start and not len(samples):
        raise _nothing_read(path, f)
    return Audio(samples, f.samplerate)


def joined(blocks: list[np.ndarray]) -> np.ndarray:
    """``blocks`` (of equal shapes but the first axis) in one array, each let go as it is copied, the last first
    (the top of the heap, where one was not mapped on its own): joined at once, the audio was held twice."""
    out = np.empty((sum(map(len, blocks)), *blocks[0].shape[1:]), blocks[0].dtype)
    end = len(out)
    while blocks:
        block = blocks.pop()
        out[end - len(block):end] = block
        end -= len(block)
    return out


def _nothing_read(path, f) -> InvalidAudioError:
    """A file that declared samples and gave none: a length estimated from an MP3's first frame (one
    without a Xing header), a damaged file, or a span that starts past the audio's real end."""
    reason = getattr(f, "when_empty", None)
    return InvalidAudioError(reason() if reason else f"{path} contains no audio samples (its header declares "
                                                      f"{f.frames:,}: an estimate, or the file is damaged)")


# Headerless samples (--raw), by the names FFmpeg gives its raw formats (`ffmpeg -f s16le`): libsndfile's
# subtype and byte order, and the bytes of a sample.
RAW_ENCODINGS = {
    "u8": ("PCM_U8", "FILE", 1), "s8": ("PCM_S8", "FILE", 1), "mulaw": ("ULAW", "FILE", 1), "alaw": ("ALAW", "FILE", 1),
    **{f"{kind}{bits}{order}": (subtype, endian, bits // 8)
       for kind, bits, subtype in (("s", 16, "PCM_16"), ("s", 24, "PCM_24"), ("s", 32, "PCM_32"), ("f", 32, "FLOAT"),
                                   ("f", 64, "DOUBLE"))
       for order, endian in (("le", "LITTLE"), ("be", "BIG"))}}
RAW_SUFFIXES = (".raw", ".pcm")  # what a folder gives with --raw: headerless files have no other common names


@dataclass(frozen=True)
class RawFormat:
    """How headerless samples are laid out (``--raw s16le:16000:1``): FFmpeg's name of the encoding, the rate,
    the channels (interleaved)."""

    encoding: str
    sample_rate: int
    channels: int = 1

    @classmethod
    def parse(cls, spec: str, default_rate: int) -> RawFormat:
        """``ENCODING[:RATE[:CHANNELS]]``, the rate ``default_rate`` and one channel where not given; ValueError
        saying what is wrong otherwise."""
        encoding, *numbers = spec.strip().lower().split(":")
        if encoding not in RAW_ENCODINGS:
            raise ValueError(f"{encoding!r} is no encoding of headerless samples here; give one of "
                             f"{', '.join(RAW_ENCODINGS)} (as FFmpeg names them: `ffmpeg -f s16le`)")
        if len(numbers) > 2 or not all(n.isdigit() for n in numbers):
            raise ValueError(f"{spec!r} is not ENCODING[:RATE[:CHANNELS]] (s16le, s16le:16000, s16le:48000:2)")
        rate = int(numbers[0]) if numbers else default_rate
        channels = int(numbers[1]) if len(numbers) > 1 else 1
        if not 1 <= rate <= MAX_SAMPLE_RATE:
            raise ValueError(f"a rate of {rate:,} Hz is outside the 1 to {MAX_SAMPLE_RATE:,} Hz this tool resamples")
        if not 1 <= channels <= MAX_RAW_CHANNELS:
            raise ValueError(f"{channels} channels: give 1 to {MAX_RAW_CHANNELS}")
        return cls(encoding, rate, channels)

    def __str__(self) -> str:
        return f"{self.encoding}:{self.sample_rate}:{self.channels}"

    @property
    def frame_bytes(self) -> int:
        """The bytes of one sample of every channel."""
        return RAW_ENCODINGS[self.encoding][2] * self.channels


MAX_RAW_CHANNELS = 1024  # as many as libsndfile's RAW reader takes


def raw_layout(encoding: str) -> dict:
    """libsndfile's options (``soundfile.write``'s, ``SoundFile``'s) for headerless samples in ``encoding``."""
    subtype, endian, _ = RAW_ENCODINGS[encoding]
    return {"format": "RAW", "subtype": subtype, "endian": endian}


def open_audio(path: Path, raw: RawFormat | None = None):
    """Open an audio file for block reading (a ``soundfile.SoundFile``), after the same checks as read_audio;
    ``raw``: a file of headerless samples laid out so."""
    path = Path(os.fsdecode(path))  # a name as str was taken for the audio's bytes (open_checked)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidAudioError(f"{path} is a directory; give an audio file")
        if not stat.S_ISREG(st.st_mode):  # a device reads forever; top-level pipes come as copies (fileio.readable)
            raise InvalidAudioError(f"{path} is {file_kind(st.st_mode)}, not an audio file; give a file, or pipe "
                                    "the audio into '-'")
        with open(path, "rb") as f:  # a permission problem is said as such, not as "not audio"
            empty = st.st_size == 0 and not f.read(1)  # /proc's files say 0 bytes and hold text
            if raw is not None:
                check_raw_head(f.read(512), str(path))
            header = None if empty or raw is not None else check_header(f, path)
    except FileNotFoundError:  # or a link to nothing, said as such
        raise InvalidAudioError(f"{path} {missing(path) or 'does not exist'}") from None
    except OSError as exc:
        raise InvalidAudioError(f"cannot read {path}: {os.strerror(exc.errno) if exc.errno else exc}") from None
    if empty:
        raise InvalidAudioError(f"{path} is empty (0 bytes)")
    return open_checked(path, header, path) if raw is None else open_raw(path, st.st_size, raw)


def check_raw_head(head: bytes, name: str) -> None:
    """Refuse, for --raw, data whose first bytes say it has a header (a WAV file, text, codes): read as samples,
    its header would be noise, and its format would be taken for the one --raw gives."""
    kind = head_holds(head)
    if kind is not None:
        also = "run without --raw, which reads its header" if kind.startswith("audio") else "give headerless samples"
        raise InvalidAudioError(f"{name} holds {kind}, not headerless samples as --raw reads them; {also}")


def open_raw(path: Path, size: int, raw: RawFormat):
    """A block reader over the headerless samples in the file ``path`` of ``size`` bytes, laid out as ``raw``."""
    from mimi_cli.libsndfile import SoundFile

    if size % raw.frame_bytes:  # a wrong encoding or channel count, or a copy cut in a sample
        raise InvalidAudioError(f"{path} holds {size:,} bytes, not a whole number of {raw.encoding} samples of "
                                f"{raw.channels} channel{'s' * (raw.channels > 1)} ({raw.frame_bytes} bytes each): "
                                f"check --raw {raw}, or the file is cut short")
    f = SoundFile(native(path), samplerate=raw.sample_rate, channels=raw.channels, **raw_layout(raw.encoding))
    return checked_reader(LibsndfileAudio(f, path, f.frames, f.frames), path)


def open_checked(source: Path | bytes, header: Header, name: Target):
    """A block reader over encoded audio (a file, or bytes held in memory) whose ``header`` was checked:
    libsndfile's, or FFmpeg's where libsndfile refuses the audio or would read only part of it."""
    import soundfile as sf

    from mimi_cli.libsndfile import SoundFile

    def fresh():  # the source opened anew: each decoder (and each try) reads from its start
        return source if isinstance(source, Path) else io.BytesIO(source)

    chatter = CaughtStderr() if header.mp3 else None  # mpg123 prints on stderr itself (mimi_cli/c_stderr.py)
    try:
        with chatter.caught() if chatter else contextlib.nullcontext():
            f = SoundFile(native(source) if isinstance(source, Path) else fresh())  # a name as its bytes
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        if chatter:
            chatter.close()
        return open_with_ffmpeg(fresh(), name, getattr(exc, "error_string", None) or str(exc))
    f = with_streamed_size(f, header.size_field, lambda: open(source, "rb") if isinstance(source, Path) else fresh())

    def close() -> None:
        f.close()
        if chatter:
            chatter.close()

    try:
        frames = _counted(f, name) if f.frames == UNKNOWN_LENGTH else f.frames
    except InvalidAudioError:
        close()
        raise
    part = header.read_in_part(frames, f.samplerate)
    if part:  # what mpg123 said of it (a Xing header's size "off") does not matter: FFmpeg reads it
        close()
        return open_with_ffmpeg(fresh(), name, part, whole=False)
    return checked_reader(LibsndfileAudio(f, name, frames, header.whole_read(frames), chatter), name)


def _counted(f, name: Target) -> int:
    """The samples of a file whose header does not give their number (:data:`UNKNOWN_LENGTH`), decoded once
    to count them (an hour of FLAC in 0.6 s), the file then rewound."""
    count = 0
    while block := len(_read_block(name, f, 1 << 16)):
        count += block
    f.seek(0)
    return count


# The highest rate audio interfaces offer. A header that declares more is damaged or hostile, and
# resampling from (or to) such a rate needs a filter longer than memory holds.
MAX_SAMPLE_RATE = 768_000
# The lowest rate decode writes: `--sample-rate 16`, meant as kHz, wrote 29 s of speech as 466 samples.
MIN_OUTPUT_RATE = 1000


def check_rate(rate: int, what: str) -> None:
    """``rate`` in 1..MAX_SAMPLE_RATE, or an error naming ``what`` declared it."""
    if not 1 <= rate <= MAX_SAMPLE_RATE:
        raise InvalidAudioError(f"{what} {rate:,} Hz, outside the 1 to {MAX_SAMPLE_RATE:,} Hz this tool resamples")


def checked_reader(f, name):
    """An opened reader ``f``, if it holds samples at a usable rate and is whole; else closed, and a one-line
    error."""
    try:
        if f.frames == 0:
            raise InvalidAudioError(f"{name} contains no audio samples")
        cut = _cut_short(f)
        if cut:
            raise InvalidAudioError(f"{name} is truncated: {cut}; re-copy or re-export it")
        check_rate(f.samplerate, f"{name} declares")
    except InvalidAudioError:
        f.close()
        raise
    return f


# What libsndfile does not read and FFmpeg (through PyAV, the ffmpeg extra) does: corpora ship these.
FFMPEG_FORMATS = "M4A, AAC, MP4, WebM, Opus in MP4/WebM"
# Audio files a folder contributes (and a WebDataset shard's audio members): libsndfile's, then FFmpeg's.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf", ".w64",
                  ".m4a", ".aac", ".mp4", ".webm", ".mka")


def open_with_ffmpeg(source, name, soundfile_reason: str, whole: bool = True):
    """A file or file-like object libsndfile refused (or, ``whole=False``, would read only in part, for the
    reason given), opened with PyAV when it is installed."""
    try:
        import av
    except ModuleNotFoundError:
        if not whole:
            raise InvalidAudioError(f"{name} would be read only in part: {soundfile_reason}; install the ffmpeg "
                                    'extra, which reads all of it (pip install "mimi-cli[ffmpeg]"), or re-export '
                                    "it") from None
        raise _not_audio(name, soundfile_reason, _holds(source)) from None
    except ImportError as exc:  # installed, but it does not load: said as such, not as this file's problem
        raise unloadable(exc, "av") from None
    try:
        reader = FFmpegAudio(av.open(source if not isinstance(source, Path) else str(source)), name)
    except (av.FFmpegError, ValueError, StopIteration, IndexError) as exc:
        raise _not_audio(name, soundfile_reason, _holds(source), getattr(exc, "strerror", None) or str(exc)) \
            from None
    return checked_reader(reader, name)


def _holds(source) -> str | None:
    return holds(source) if isinstance(source, Path) else None  # bytes in memory: a member of a shard, a row


def _not_audio(name, soundfile_reason: str, kind: str | None, ffmpeg_reason: str | None = None) -> InvalidAudioError:
    """"cannot read NAME as audio (the readers' reasons); what to give", for data that holds ``kind``
    (fileio.holds); ``ffmpeg_reason`` None: FFmpeg is not installed."""
    raw = "; for headerless samples, give --raw (--raw s16le:16000, say)" if kind is None and (
        is_input_copy(name) or Path(str(name)).suffix.lower() in RAW_SUFFIXES) else ""  # a pipe's, or so named
    if ffmpeg_reason is None:
        return InvalidAudioError(f"cannot read {name} as audio ({soundfile_reason}); "
                                 f"{_what_to_give(kind, ffmpeg=False)}{raw}")
    return InvalidAudioError(f"cannot read {name} as audio (libsndfile: {soundfile_reason}; FFmpeg: "
                             f"{ffmpeg_reason}); {_what_to_give(kind)}{raw}")


def check_audio_head(head: bytes, name: str) -> None:
    """Refuse data whose first bytes (``head``, of a pipe still coming: see fileio.readable) no reader here
    opens as audio, with the error the whole would get: ``cat /dev/urandom | mimi encode -`` was kept until
    the disk was full. A known audio signature passes at once (an MP4's index may stand at its end, beyond
    these bytes); else libsndfile or FFmpeg must open them, as they open a file by its header."""
    import soundfile as sf

    from mimi_cli.libsndfile import SoundFile

    kind = head_holds(head)
    if (kind or "").startswith("audio") or head[4:8] == b"ftyp":
        return
    try:
        with contextlib.closing(CaughtStderr()) as chatter, chatter.dropped():  # mpg123's words on what it skips
            SoundFile(io.BytesIO(head)).close()
        return
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        soundfile_reason = getattr(exc, "error_string", None) or str(exc)
    try:
        import av
    except ModuleNotFoundError:
        raise _not_audio(name, soundfile_reason, kind) from None
    except ImportError as exc:
        raise unloadable(exc, "av") from None
    try:
        with av.open(io.BytesIO(head)) as container:
            if any(stream.type == "audio" for stream in container.streams):
                return
            reason = "no audio stream"
    except (av.FFmpegError, ValueError, IndexError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
    raise _not_audio(name, soundfile_reason, kind, reason)


def _what_to_give(kind: str | None, ffmpeg: bool = True) -> str:
    """The advice after "cannot read X as audio", for data that holds ``kind`` (fileio.holds); a codes file or
    weights given where audio goes is named."""
    formats = (f"or {FFMPEG_FORMATS}" if ffmpeg else
               f'or for {FFMPEG_FORMATS} install the ffmpeg extra: pip install "mimi-cli[ffmpeg]"')
    if not kind or kind.startswith("audio"):
        return f"give a WAV, FLAC, OGG or MP3 file, {formats}"
    then = (" (a list of files? give it with --inputs-from)" if kind == "text" else
            "; `mimi decode` reads codes" if "np" in kind else "")
    return f"it holds {kind}, not audio{then}; give a WAV, FLAC, OGG or MP3 file, {formats}"


class BlockReader:
    """What reads like an open ``soundfile.SoundFile`` (``samplerate``, ``channels``, ``frames``, ``read``,
    ``tell``, ``close``) is a context manager too."""

    def close(self) -> None:
        raise NotImplementedError

    def seek(self, frame: int) -> None:  # forward only, by reading and dropping (a manifest's spans)
        while self.tell() < frame and len(self.read(min(frame - self.tell(), 1 << 16))):
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RawPipe(BlockReader):
    """Headerless samples as they come on a pipe (``encode --stream --raw -``), read like a ``SoundFile``: each
    read gives the whole samples that have come, at least one (it waits for one), none at the end. Nothing is
    kept but a sample cut between two reads; the length is not known (``frames`` is None)."""

    def __init__(self, source, raw: RawFormat, name: str):
        self._source, self._raw, self.name = source, raw, name
        self.samplerate, self.channels, self.frames = raw.sample_rate, raw.channels, None
        self._rest, self._position = b"", 0

    def read(self, frames: int = -1, dtype: str = "float32", always_2d: bool = True) -> np.ndarray:
        import soundfile as sf

        size = self._raw.frame_bytes
        wanted = size * frames if frames > 0 else 1 << 20
        data, ended = self._rest, False
        while len(data) < max(size, 64 if self._position == 0 else 0) and not ended:  # the first: is it a header?
            more = self._source.read1(max(1, wanted - len(data)))
            data, ended = data + more, not more
        if self._position == 0 and data:
            check_raw_head(data[:512], self.name)
        whole = min(len(data) // size, frames if frames > 0 else len(data)) * size
        if ended and len(data) % size:
            raise InvalidAudioError(f"{self.name} ends {len(data) % size} bytes into a sample of {size} bytes: check "
                                    f"--raw {self._raw}, or it was cut short")
        self._rest = data[whole:]
        block, _ = sf.read(io.BytesIO(data[:whole]), dtype=dtype, always_2d=always_2d, samplerate=self.samplerate,
                           channels=self.channels, **raw_layout(self._raw.encoding))
        self._position += len(block)
        return block

    def tell(self) -> int:
        return self._position

    def when_empty(self) -> str:
        return f"{self.name} is empty (0 bytes)"

    def close(self) -> None:
        pass


# FFmpeg's demuxers of containers that store their audio's length ("matroska,webm", "mov,mp4,m4a,…", "caf"), by the
# first of their names; others' (ADTS AAC, MP3) is an estimate from the bit rate
STORED_LENGTHS = ("matroska", "mov", "caf")


class FFmpegAudio(BlockReader):
    """The first audio stream of a container decoded by FFmpeg, read like a ``soundfile.SoundFile``:
    ``samplerate``, ``channels``, ``frames`` (from the container's duration: an estimate; reading
    goes to the real end), ``read(frames)`` as float32 ``[frames, channels]``, ``tell()``."""

    def __init__(self, container, name):
        import av

        self._container, self.name = container, name
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:  # (headerless samples are taken for an image: FFmpeg's image2 reads any bytes)
            raise ValueError("no audio stream")
        context = stream.codec_context  # None for a codec FFmpeg has no decoder for (a WAV format tag of 0)
        if context is None or not context.sample_rate or not context.channels:
            raise ValueError("the audio stream has no decoder, rate or channels")
        self._packets = container.decode(stream)
        # the rate and channels of the first frame: FFmpeg's probe of the stream may report a later frame's (MP3
        # files joined end to end), and every frame is then held to them
        first = next(self._packets, None)
        layout = context.layout if first is None else first.layout
        self.samplerate = context.sample_rate if first is None else first.sample_rate
        self.channels = layout.nb_channels
        self._packets = itertools.chain([] if first is None else [first], self._packets)
        seconds = (float(stream.duration * stream.time_base) if stream.duration
                   else (container.duration or 0) / av.time_base)
        self.frames = max(1, round(seconds * self.samplerate))
        # the length a container stores for this stream (not one FFmpeg estimated from the bit rate, nor a longer
        # video's): what a cut file lacks
        own = stream.duration or len(container.streams) == 1
        self._stored = self.frames if own and seconds and container.format.name.split(",")[0] in STORED_LENGTHS \
            else None
        self._resampler = av.AudioResampler(format="flt", layout=layout, rate=self.samplerate)
        self._pending: list[np.ndarray] = []
        self._position = 0

    def _decode_more(self) -> bool:
        import av

        try:
            frame = next(self._packets)
        except StopIteration:
            self._check_whole()
            return False
        except av.FFmpegError as exc:
            raise InvalidAudioError(f"cannot read {self.name} as audio (FFmpeg: {exc.strerror or exc}); the file may "
                                    "be corrupt") from None
        if (frame.sample_rate, frame.layout.nb_channels) != (self.samplerate, self.channels):
            at = (self._position + sum(len(p) for p in self._pending)) / self.samplerate
            raise InvalidAudioError(f"{self.name} changes at {at:.2f} s from {self.samplerate} Hz and {self.channels} "
                                    f"channel(s) to {frame.sample_rate} Hz and {frame.layout.nb_channels}: it is "
                                    "damaged, or files of different formats were joined; re-export it as one file")
        try:
            converted = self._resampler.resample(frame)
        except ValueError:  # PyAV's resampler takes the format of its first frame only: a new one for this format
            self._resampler = av.AudioResampler(format="flt", layout=self._resampler.layout, rate=self.samplerate)
            try:
                converted = self._resampler.resample(frame)
            except (ValueError, av.FFmpegError) as exc:  # FFmpeg converts at most 64 channels (a damaged count)
                raise InvalidAudioError(f"cannot read {self.name} as audio: FFmpeg cannot convert its {self.channels} "
                                        f"channel(s) of {frame.format.name} samples ({exc}); the file may be corrupt, "
                                        "else re-export it as WAV or FLAC") from None
        self._pending += [c.to_ndarray().reshape(-1, self.channels) for c in converted]
        return True

    def _check_whole(self) -> None:
        """At the end of the decoded audio: refuse a file that ends well before the length its container stores
        (FFmpeg reads the part of a cut Matroska file that is there, silently). An encoder's priming and
        padding make the two differ by a few ms."""
        read = self._position + sum(len(p) for p in self._pending)
        if self._stored and falls_short(self._stored, read, self.samplerate):
            raise InvalidAudioError(f"{self.name} is truncated: its container declares "
                                    f"{self._stored / self.samplerate:.2f} s of audio, the file holds "
                                    f"{read / self.samplerate:.2f} s; re-copy or re-export it")

    def read(self, frames: int = -1, dtype: str = "float32", always_2d: bool = True) -> np.ndarray:
        have, counted = 0, 0  # counted: the pending blocks in ``have`` (a long file decodes to 10⁵ blocks)
        while True:
            have += sum(len(p) for p in self._pending[counted:])
            counted = len(self._pending)
            if (frames >= 0 and have >= frames) or not self._decode_more():
                break
        joined = np.concatenate(self._pending) if self._pending else np.zeros((0, self.channels), np.float32)
        taken, rest = (joined, joined[:0]) if frames < 0 else (joined[:frames], joined[frames:])
        self._pending = [rest] if len(rest) else []
        self._position += len(taken)
        return taken.astype(dtype, copy=False)

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._container.close()


# Float audio louder than this (6 dB past full scale) is encoded with a warning: a mix summed without
# headroom, or samples scaled by mistake, short of MAX_PEAK's refusal.
LOUD_PEAK = 2.0

# libsndfile's length of a file that does not give one (SF_COUNT_MAX): a FLAC stream written to a pipe, whose
# STREAMINFO says 0 samples (its writer could not seek back to fill it in). libsndfile reads it whole (it failed
# part way, "Internal psf_fseek() failed", only when python-soundfile seeked it after each read:
# mimi_cli/libsndfile.py); its samples are counted before it is read.
UNKNOWN_LENGTH = (1 << 63) - 1


def falls_short(declared: int, read: int, rate: int) -> bool:
    """Whether a read that gave ``read`` samples of the ``declared`` ones lacks audio, beyond what encoders'
    priming and padding make the two differ by (a few ms): 0.25 s, and 1 %."""
    return declared - read > max(0.25 * rate, 0.01 * declared)


class LibsndfileAudio(BlockReader):
    """A ``soundfile.SoundFile`` of ``frames`` samples (libsndfile's number, or the count where the file gives
    none), whose position is counted as it is read (``tell`` fails in formats libsndfile cannot seek in, GSM
    6.10 in WAV…, and drifts in a damaged MP3), and which is refused at its end when it gave fewer samples
    than the file holds (``whole``): libsndfile's Ogg decoders skip a damaged page and its MP3 decoder may stop
    at damaged frames, silently. What that decoder prints on stderr itself is caught in ``stderr`` (see
    :func:`reader_warnings`)."""

    def __init__(self, f, name: Target, frames: int, whole: int, stderr: CaughtStderr | None = None):
        self._f, self._name, self.frames, self._whole, self._position, self.stderr = f, name, frames, whole, 0, stderr

    def __getattr__(self, name: str):  # samplerate, channels, format, extra_info: the file's own
        return getattr(self._f, name)

    def seek(self, frame: int) -> None:
        if self._f.seekable():
            # a seek decodes from a second before ``frame`` (libsndfile.SoundFile): mpg123's complaints of
            # the frames it starts without the bit reservoir of are expected, and those samples dropped
            with self.stderr.dropped() if self.stderr else contextlib.nullcontext():
                self._position = self._f.seek(frame)
        else:
            super().seek(frame)

    def read(self, frames: int = -1, **options) -> np.ndarray:
        if frames < 0:  # to the end: soundfile needs a count for unseekable files
            blocks = [self.read(1 << 16, **options)]
            while len(blocks[-1]):
                blocks.append(self.read(1 << 16, **options))
            return np.concatenate(blocks)
        with self.stderr.caught() if self.stderr else contextlib.nullcontext():
            block = self._f.read(frames, **options)
        self._position += len(block)
        if frames and not len(block) and falls_short(self._whole, self._position, self.samplerate):
            raise InvalidAudioError(f"{self._name} is damaged: it holds {self._whole / self.samplerate:.2f} s of "
                                    f"audio, and decoding it gave {self._position / self.samplerate:.2f} s (a "
                                    "damaged part was skipped); re-copy or re-export it")
        return block

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._f.close()
        if self.stderr:
            self.stderr.close()


def reader_warnings(name: Target, reader) -> list[str]:
    """What is worth a word about the file ``reader`` read, once it is read:

    - what its decoder printed on stderr (the reader a span reads included), as one warning: mpg123's notes
      about damaged frames it skipped, as players do. None when it printed nothing;
    - float samples beyond LOUD_PEAK: the codec is made for audio within full scale.
    """
    found = []
    caught = getattr(reader, "stderr", None)
    if caught is not None and caught.count:
        more = f" (and {caught.count - 1} more lines)" if caught.count > 1 else ""
        found.append(f"libsndfile's MP3 decoder (mpg123) said: {caught.lines[0]}{more}")
    loud = getattr(reader, "loud", None)
    if loud is not None:
        peak, first = loud
        found.append(f"{name} peaks at {peak:.3g}, {20 * math.log10(peak):.0f} dB above full scale (the first "
                     f"sample beyond {LOUD_PEAK:g} is at {first / reader.samplerate:.3f} s): the codec is made for "
                     "audio within [-1, 1]; scale it down before encoding")
    return found


def read_blocks(path: Path, f, block_frames: int):
    """Yield float32 ``[frames, channels]`` blocks of an open file, each checked like read_audio."""
    from_start = f.tell() == 0
    while True:
        block = _read_block(path, f, block_frames)
        if not len(block):
            if from_start:
                raise _nothing_read(path, f)
            return
        from_start = False
        yield block


def _read_block(path: Path, f, frames: int) -> np.ndarray:
    import soundfile as sf

    position = f.tell()
    try:
        block = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise InvalidAudioError(f"cannot read {path} as audio ({exc}); the file may be corrupt") from None
    peak = float(np.max(np.abs(block))) if block.size else 0.0
    if not math.isfinite(peak):
        peak = _peak_beyond_float32(f, position, len(block))
        if peak is None:
            bad = position + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise InvalidAudioError(f"{path} contains NaN or Inf samples (first at {bad / f.samplerate:.3f} s)")
    if peak > MAX_PEAK:
        raise InvalidAudioError(f"{path} has samples of magnitude {peak:.3g} (first at "
                                f"{_first_beyond(block, MAX_PEAK, position) / f.samplerate:.3f} s), far beyond full "
                                "scale (1.0); it is not audio as recorded: rescale it to [-1, 1]")
    if peak > LOUD_PEAK:  # kept on the reader for reader_warnings: the loudest sample, and the first loud one
        loud = getattr(f, "loud", None)
        f.loud = (max(peak, loud[0]), loud[1]) if loud else (peak, _first_beyond(block, LOUD_PEAK, position))
    return block


def _peak_beyond_float32(f, position: int, frames: int) -> float | None:
    """The peak of a 64-bit float file's ``frames`` samples from ``position``, read again as float64 (the file
    left where it was): finite samples beyond float32's range (1e300) read as Inf in float32. None if the file
    holds a true NaN or Inf there, or is not such a file."""
    if getattr(f, "subtype", None) != "DOUBLE" or not getattr(f, "seekable", lambda: False)():
        return None
    end = f.tell()
    try:
        f.seek(position)
        peak = float(np.max(np.abs(f.read(frames, dtype="float64"))))
        f.seek(end)
    except (RuntimeError, ValueError):
        return None
    return peak if math.isfinite(peak) else None


def _first_beyond(block: np.ndarray, limit: float, position: int) -> int:
    """The file position of the first sample of ``block`` (``[frames, channels]``, read at ``position``) whose
    magnitude is beyond ``limit``."""
    return position + int(np.flatnonzero((np.abs(block) > limit).any(axis=1))[0])


# What a WAV writer that cannot seek back (its output is a pipe: sox, ffmpeg, arecord, a recorder or a
# speech service streaming its answer) leaves in the data chunk's size field for "until the end": 0,
# or a large placeholder (sox's 0x7ffff000 rounded to its block, 0x7fffffff, 0xffffffff, 0xffffffff
# less the header).
_UNKNOWN_SIZES = (range(0, 1), range(0x7FFF0000, 0x80000000), range(0xFFFF0000, 0x100000000))
MAX_WAV_CHUNKS = 1000  # before the data chunk: real files have a handful (fmt, fact, LIST, bext, JUNK…)


def wav_length_unknown(f: BinaryIO, name: Target) -> tuple[int, int] | None:
    """For a WAV file whose header leaves the audio's length unknown, ``(where its data chunk's size field
    is, the bytes after it)``; None for a WAV file of known length, or another format. A WAV file whose
    data chunk announces more than the file holds, and no placeholder, is cut short: refused, as
    libsndfile would silently read whatever part is there.

        RIFF <size> WAVE fmt <16> …  data <size> samples…
                                          ^^^^^^ 0, or a placeholder, when the writer streamed
    """
    f.seek(0)
    if f.read(12)[:4] != b"RIFF":
        return None
    file_size = f.seek(0, os.SEEK_END)
    f.seek(12)
    for _ in range(MAX_WAV_CHUNKS):  # a hostile file of tiny chunks would keep the walk going for hours
        header = f.read(8)
        if len(header) < 8:
            return None
        chunk_id, size = header[:4], int.from_bytes(header[4:], "little")
        if chunk_id == b"data":
            present = file_size - f.tell()
            if any(size in unknown for unknown in _UNKNOWN_SIZES):
                field = f.tell() - 4
                if size >= present:  # a placeholder past the end: libsndfile reads to the end itself
                    return None
                return None if size == 0 and _a_chunk(f.read(8), present) else (field, present)
            if size > present:
                raise InvalidAudioError(f"{name} is truncated: its header announces {size:,} bytes of audio, "
                                        f"the file holds {present:,}; re-copy or re-export it")
            return None
        f.seek(size + (size & 1), 1)  # chunks are padded to an even size
    return None


@dataclass(frozen=True)
class Header:
    """What a file's own bytes say before a decoder opens it (:func:`check_header`)."""

    size_field: tuple[int, int] | None = None  # a streamed WAV's data size field (:func:`wav_length_unknown`)
    mp3: bool = False  # the file starts with an MPEG Layer III frame (after an ID3v2 tag)
    mp3_samples: int | None = None  # the samples an MP3 stream's frames hold, counted (:func:`_mp3_samples`)
    ogg_streams: int = 1  # Ogg streams one after another: more than one in a chained file

    def read_in_part(self, frames: int, rate: int) -> str | None:
        """Why libsndfile, which reads ``frames`` samples of this file (its length as libsndfile takes it, and
        never more), would read only part of the audio; None when it reads all of it."""
        if self.ogg_streams > 1:
            return (f"it holds {self.ogg_streams} Ogg streams one after another (files joined, or a chained "
                    f"recording), and libsndfile reads the first ({frames / rate:.2f} s)")
        if self.mp3_samples is not None and falls_short(self.mp3_samples, frames, rate):
            return (f"its MP3 frames hold {self.mp3_samples / rate:.2f} s of audio, and libsndfile reads "
                    f"{frames / rate:.2f} s: the length its first frame's header gives (files joined end to end "
                    "keep the first one's), or without one an estimate from the bit rate")
        return None

    def whole_read(self, frames: int) -> int:
        """The samples a read of the whole file gives: libsndfile's length, or, for an MP3 file, the samples its
        frames hold when fewer (libsndfile's estimate of a length no header gives can be too long)."""
        return frames if self.mp3_samples is None else min(frames, self.mp3_samples)


def check_header(f: BinaryIO, name: Target) -> Header:
    """What a file's own bytes say before a decoder opens it: a cut copy of a WAV, MP3 or Ogg file is refused
    (their decoders read the part that is there, silently); the rest is for :func:`open_checked`."""
    start = _mp3_start(f)
    f.seek(start)
    head = f.read(64)  # an MP3 stream's first frame header, and the Xing or VBRI header its frame may hold
    mp3 = _mp3_frame(head) is not None
    ogg_cut, damage, ogg_streams = _ogg_pages(f)
    cut = (_mp3_cut_short(f, start, head) if mp3 else None) or ogg_cut
    if cut or damage:
        raise InvalidAudioError(f"{name} is {'truncated' if cut else 'damaged'}: {cut or damage}; re-copy or "
                                "re-export it")
    return Header(wav_length_unknown(f, name), mp3, _mp3_samples(f, start, head, name) if mp3 else None, ogg_streams)


# MPEG audio Layer III frame headers: bit rates in kbit/s by index (MPEG-1; MPEG-2 and 2.5), and sample rates by
# version (3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5) and index.
_MP3_KBPS = {3: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
             2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)}
_MP3_HZ = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
MAX_MP3_FRAMES = 1 << 21  # 14 h of audio at 24 kHz or more; walking that many takes a few seconds


def _mp3_frame(header: bytes, kind: tuple[int, int] | None = None) -> tuple[int, int, tuple[int, int], int] | None:
    """``(bytes, samples, kind, channels)`` of the MPEG Layer III frame whose header ``header`` starts with, or
    None (not one, a free-format one, or not of the ``kind`` given: the version and rate every frame of a stream
    shares). Channels: 1 for the mode mono, else 2.

        11111111 111VVLLP BBBBRRp. MM......      V version, L layer (01: III), P no CRC,
                                                  B bit rate, R sample rate, p padding byte, M mode (11: mono)
    """
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return None
    version, layer, bitrate, rate = (header[1] >> 3) & 3, (header[1] >> 1) & 3, header[2] >> 4, (header[2] >> 2) & 3
    if version == 1 or layer != 1 or bitrate in (0, 15) or rate == 3 or (kind and kind != (version, rate)):
        return None
    samples = 1152 if version == 3 else 576
    size = samples // 8 * 1000 * _MP3_KBPS[3 if version == 3 else 2][bitrate] // _MP3_HZ[version][rate]
    return size + ((header[2] >> 1) & 1), samples, (version, rate), 1 if header[3] >> 6 == 3 else 2


def _mp3_start(f: BinaryIO) -> int:
    """Where an MP3 file's stream starts: after its ID3v2 tag, if it has one."""
    f.seek(0)
    head = f.read(10)
    if head[:3] == b"ID3" and len(head) == 10 and all(b < 0x80 for b in head[6:10]):
        return 10 + sum(b << (7 * (3 - i)) for i, b in enumerate(head[6:10])) + (10 if head[5] & 0x10 else 0)
    return 0


def _mp3_info(frame: bytes) -> tuple[str, int | None] | None:
    """The Xing (or "Info") header LAME, FFmpeg and libsndfile write in an MP3 stream's first ``frame`` (its first
    64 bytes), or Fraunhofer's VBRI header: its label, and where it gives the stream's size in bytes (None when it
    does not); None when the frame holds neither (it is audio).

        FF Fx ?? ??  [CRC]  side info  Xing <flags> [frames] [bytes] …
        frame header                                         ^^^^^ the stream's size in bytes
                     …  VBRI <version, delay, quality> <bytes> <frames>   (32 bytes after the header)
    """
    version, mono = (frame[1] >> 3) & 3, frame[3] >> 6 == 3
    side_info = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    at = 4 + (0 if frame[1] & 1 else 2) + side_info  # the protection bit 0: a CRC follows the header
    if frame[at : at + 4] in (b"Xing", b"Info"):
        flags = int.from_bytes(frame[at + 4 : at + 8], "big")
        return "Xing", at + 8 + (4 if flags & 1 else 0) if flags & 2 else None
    return ("VBRI", 46) if frame[36:40] == b"VBRI" else None


def _mp3_cut_short(f: BinaryIO, start: int, frame: bytes) -> str | None:
    """What an MP3 file lacks by the stream size its first frame (``frame``, its first 64 bytes, at ``start``)
    declares in a Xing or VBRI header (see :func:`_mp3_info`). None for a whole file, or one without such a
    header (its length is an estimate from the bit rate: nothing to check against). Encoders disagree on whether
    the size counts the ID3v2 tag before the stream, so only a file smaller than the size as a whole is short."""
    info = _mp3_info(frame) if len(frame) == 64 else None
    if info is None or info[1] is None:
        return None
    (label, field), size = info, f.seek(0, os.SEEK_END)
    declared = int.from_bytes(frame[field : field + 4], "big")
    if declared <= size:
        return None
    return f"its {label} header announces {declared:,} bytes of MP3 stream, the file holds {size - start:,}"


def _mp3_samples(f: BinaryIO, start: int, head: bytes, name: Target) -> int | None:
    """The samples an MP3 stream's frames hold, counted by walking their headers from the first frame (at
    ``start``, ``head`` its first 64 bytes) to the file's end; over damaged bytes, on from the next two frames of
    the stream in a row, as decoders resync. None for a walk of more than MAX_MP3_FRAMES steps (very long, or
    hostile). A Xing or VBRI frame holds no audio. The count includes the encoder's delay and padding, which
    decoders drop (a few ms). (A stream whose first frame is not at its start, after an ID3v2 tag, or is free
    format, is not walked: :func:`check_header` finds no MP3 there.)

    Files of two formats joined end to end, which decoders read in part or refuse part way, are refused
    (InvalidAudioError): two frames in a row of another rate where the next frame is due, or of other channels
    after two or more of the same (one frame's damaged mode is read through, as decoders do)."""
    first = _mp3_frame(head)
    data, kind, at = _Window(f), first[2], start + (first[0] if len(head) == 64 and _mp3_info(head) else 0)
    total, synced, channels, run = 0, True, first[3], 0  # run: frames in a row of these channels

    def changed(to: tuple[int, int], to_channels: int) -> InvalidAudioError:
        hz = _MP3_HZ[kind[0]][kind[1]]
        return InvalidAudioError(f"{name} changes at {total / hz:.2f} s from {hz} Hz and {channels} channel(s) to "
                                 f"{_MP3_HZ[to[0]][to[1]]} Hz and {to_channels}: it is damaged, or files of different "
                                 "formats were joined; re-export it as one file")

    for _ in range(MAX_MP3_FRAMES):
        if at >= data.end:
            return total
        frame = _mp3_frame(data.at(at, 4), kind)
        if frame and at + frame[0] <= data.end:
            after = at + frame[0]
            # the next frame's header is read ahead only where it decides: to resync, or at a change of channels
            following = _mp3_frame(data.at(after, 4), kind) if not synced or frame[3] != channels else None
            if synced or after == data.end or following:
                if frame[3] != channels:
                    if run >= 2 and following and following[3] == frame[3]:
                        raise changed(kind, frame[3])
                    channels, run = frame[3], 0
                total, at, synced, run = total + frame[1], after, True, run + 1
                continue
        other = _mp3_frame(data.at(at, 4)) if synced else None
        if other and _mp3_frame(data.at(at + other[0], 4), other[2]):
            raise changed(other[2], other[3])
        synced = False  # damaged bytes, a cut last frame, or a tag after the stream (ID3v1, APE)
        at = data.find(b"\xff", at + 1)
    return None


class _Window:
    """A file read through a window of 1 MB that moves as it is read: a walk over the headers of a long file's
    frames or pages, without a read for each header."""

    SIZE = 1 << 20

    def __init__(self, f: BinaryIO):
        self._f, self._base, self._data, self.end = f, 0, b"", f.seek(0, os.SEEK_END)

    def at(self, at: int, size: int) -> bytes:
        """The file's ``size`` bytes from ``at`` (fewer at its end)."""
        if not self._base <= at <= at + size <= self._base + len(self._data):
            self._f.seek(at)
            self._base, self._data = at, self._f.read(max(size, self.SIZE))
        return self._data[at - self._base : at - self._base + size]

    def find(self, what: bytes, at: int) -> int:
        """Where ``what`` next starts from ``at`` on (``end`` if nowhere)."""
        while at + len(what) <= self.end:
            if len(self.at(at, len(what))) < len(what):  # the file got shorter meanwhile
                break
            found = self._data.find(what, at - self._base)
            if found >= 0:
                return self._base + found
            at = self._base + len(self._data) - len(what) + 1
        return self.end


# An Ogg page: its header, then one lacing value a segment, then the segments (their sum, in bytes).
#     OggS <version 0> <type> <granule 8> <serial 4> <sequence 4> <CRC 4> <n> <n lacing values> <payload>
#                      ^^^^^^ bit 2: the first page of a stream        ^^^^^ of the whole page, this field zeroed
_OGG_HEADER = 27
MAX_OGG_PAGES = 1 << 20  # a page is 4–8 KB in real files, a second or two of audio: a million take ≈ 2 s to walk
_BITS_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _ogg_crc(page: bytes) -> int:
    """Ogg's checksum of a page whose checksum field is zeroed: CRC-32 of polynomial 0x04C11DB7, most significant
    bit first, no inversion. zlib's CRC-32 has the same polynomial least significant bit first, and inverts
    before and after: on bit-reversed bytes, less the inversions (zlib's CRC of as many zero bytes), it is
    Ogg's, bit-reversed."""
    crc = zlib.crc32(page.translate(_BITS_REVERSED)) ^ zlib.crc32(bytes(len(page)))
    return int(f"{crc:032b}"[::-1], 2)


def _ogg_pages(f: BinaryIO) -> tuple[str | None, str | None, int]:
    """An Ogg file's (Vorbis, Opus, FLAC in Ogg) pages walked: ``(cut, damage, streams)``, what it lacks when its
    last page runs past its end, where a page is damaged, and how many streams it holds one after another
    (more than one: a chained file). Ogg stores no length, but each page its size and checksum, and decoders
    skip a damaged page silently (libsndfile's Vorbis decoder fills its time with other samples). A cut exactly
    between two pages is not seen, nor bytes after the last page (a tag). ``(None, None, 1)`` for another format;
    the walk ends after MAX_OGG_PAGES pages (hostile: tiny ones)."""
    f.seek(0)
    if f.read(5) != b"OggS\0":
        return None, None, 1
    data, at, streams, after_audio = _Window(f), 0, 0, False
    size = data.end
    for _ in range(MAX_OGG_PAGES):
        if at >= size:
            break
        header = data.at(at, _OGG_HEADER)
        if header[:4] != b"OggS"[: len(header)]:
            if data.find(b"OggS", at) < size:
                return None, f"bytes at {at:,} are not an Ogg page, and pages follow", 1
            break
        lacing = data.at(at + _OGG_HEADER, header[26]) if len(header) == _OGG_HEADER else b""
        if len(header) < _OGG_HEADER or len(lacing) < header[26]:
            return f"its last Ogg page's header is cut after {size - at:,} bytes", None, 1
        page = _OGG_HEADER + len(lacing) + sum(lacing)
        if at + page > size:
            return f"its last Ogg page declares {page:,} bytes, the file holds {size - at:,} of them", None, 1
        whole = data.at(at, page)
        if _ogg_crc(whole[:22] + bytes(4) + whole[26:]) != int.from_bytes(header[22:26], "little"):
            return None, f"its Ogg page at byte {at:,} fails its checksum", 1
        first = bool(header[5] & 2)  # a stream's first page: a group of them starts a link of the chain (streams
        streams += first and (not streams or after_audio)  # side by side, Vorbis and Theora say, start together)
        after_audio, at = not first, at + page
    return None, None, max(streams, 1)


# libsndfile logs a size in a header that the file does not match as "NAME : <declared> (should be <found>)"
_SIZE_MISMATCH = re.compile(r"^\s*(\w[\w ]*?)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)


def _cut_short(f) -> str | None:
    """What a file libsndfile opened lacks at its end, by its header (AIFF, AU, W64, RF64…: libsndfile reads
    the part that is there, silently); None for a whole file, a streamed one's placeholder sizes, or a
    WAV file (checked before opening, see :func:`wav_length_unknown`)."""
    log = getattr(f, "extra_info", None)  # libsndfile's; FFmpeg's readers check as they read
    if log is None or f.format in ("WAV", "WAVEX"):
        return None
    for label, declared, found in _SIZE_MISMATCH.findall(log):
        declared, found = int(declared), int(found)
        if declared - found > 16 and not any(declared in unknown for unknown in _UNKNOWN_SIZES):  # 16: padding
            return f"its header announces {declared:,} bytes ({label}), the file holds {found:,}"
    return None


def _a_chunk(header: bytes, room: int) -> bool:
    """Whether 8 bytes after an empty data chunk are another chunk's header (a recording of no samples,
    then its metadata), not samples."""
    return len(header) == 8 and all(32 <= c < 127 for c in header[:4]) and \
        int.from_bytes(header[4:], "little") <= room - 8


def with_streamed_size(f, size_field: tuple[int, int] | None, reopen: Callable[[], BinaryIO]):
    """``f``; or, for a WAV file whose size field says 0 (:func:`wav_length_unknown`), which libsndfile takes at
    its word (no samples), the file opened again (``reopen``) with the size it holds filled in."""
    if size_field is None or f.frames:
        return f
    from mimi_cli.libsndfile import SoundFile

    f.close()
    return SoundFile(_WavWithSize(reopen(), *size_field))


class _WavWithSize(io.RawIOBase):
    """A WAV file read as it is, but for its data chunk's size field, which says ``size`` bytes (at most
    what 32 bits hold): for libsndfile, which reads no samples where the field says 0."""

    def __init__(self, f, field: int, size: int):
        self._f, self._field, self._value = f, field, min(size, 0xFFFFFFFF).to_bytes(4, "little")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buffer) -> int:
        start = self._f.tell()
        count = self._f.readinto(buffer)
        first, end = max(start, self._field), min(start + count, self._field + 4)
        if first < end:
            buffer[first - start:end - start] = self._value[first - self._field:end - self._field]
        return count

    def close(self) -> None:
        self._f.close()
        super().close()


def resample_bytes(rows: int, to_rate: int) -> float:
    """What :func:`resample` holds per second of audio: its result, float32 ``[rows, N]``, and one row's result
    as the resampler gives it (float64 from older SciPy; float32, 4 bytes, from SciPy 1.17)."""
    return (4 * rows + 8) * to_rate


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis (scipy ``resample_poly``), float32 out (contiguous), a row at a
    time (each row's result is what resampling it alone gives); refused before any work when the result would
    not fit in memory (a 1 Hz file's samples taken to 768 kHz)."""
    if from_rate == to_rate:
        return np.ascontiguousarray(pcm, dtype=np.float32)
    check_rate(from_rate, "resampling from")
    check_rate(to_rate, "resampling to")
    length = pcm.shape[-1] if pcm.ndim else 1
    needed = resample_bytes(pcm.size // max(1, length), to_rate) * length / from_rate
    memory = over_memory(needed)
    if memory:
        about, limit = refusal_said(needed, memory)
        raise InvalidAudioError(f"resampling {length / from_rate:,.1f} s of audio from {from_rate:,} Hz to "
                                f"{to_rate:,} Hz would take {about}, more than {limit}: give shorter audio, or a "
                                "rate nearer its own")
    g = math.gcd(from_rate, to_rate)
    up, down, poly = to_rate // g, from_rate // g, scipy_signal().resample_poly
    if pcm.ndim < 2:
        return poly(pcm, up, down).astype(np.float32, copy=False)
    out = np.empty(pcm.shape[:-1] + (-(-length * up // down),), np.float32)
    for row in np.ndindex(pcm.shape[:-1]):  # [C, N] at once held all rows' results twice (SciPy's, then float32)
        out[row] = poly(pcm[row], up, down)
    return out


# What SciPy takes of the address space as it loads, and then some: its own OpenBLAS maps a 32 MB buffer as it
# loads, and, refused it under a limit on memory (ulimit -v), tries again for ever: the process hung, deaf to
# Ctrl-C and SIGTERM, at `import scipy.signal` (with 64 to 112 MB left; with 130 to 150 MB, another of its
# libraries could not be mapped; with 200 MB it loaded).
SCIPY_ROOM = 256 << 20


def scipy_signal():
    """``scipy.signal``, loaded once there is room for it in the address space (SCIPY_ROOM, mapped and let go
    first): MemoryError where there is not, rather than a process that never ends."""
    if "scipy.signal" not in sys.modules:
        import mmap

        try:
            mmap.mmap(-1, SCIPY_ROOM).close()
        except OSError as exc:  # ENOMEM: what a refused allocation is, for Python
            raise MemoryError(f"no room to load SciPy: {exc.strerror}") from None
    import scipy.signal

    return scipy.signal


class StreamResampler:
    """``resample_poly`` fed piece by piece, with the same output as one call on the whole signal.

    ``resample_poly`` filters the zero-stuffed input with a Kaiser-windowed FIR
    of ``2·10·max(up, down) + 1`` taps, then keeps every ``down``-th sample,
    skipping the filter's delay. Here the input is kept from a start index that
    is a multiple of ``down`` (so output indices line up with the one-shot
    call); an output is emitted once every input its taps reach has arrived::

        input  ──────────────[ kept: from s0 (multiple of down) ... last received ]
        output ... emitted ][ ready: all taps inside the kept input ][ waits for more input

    ``flush()`` treats the signal as ending there (zeros beyond, as
    ``resample_poly`` does) and emits the rest, ``ceil(n·up/down)`` samples in all.
    """

    def __init__(self, from_rate: int, to_rate: int):
        firwin = scipy_signal().firwin
        g = math.gcd(from_rate, to_rate)
        self.up, self.down = to_rate // g, from_rate // g
        self.taps, self.delay = np.ones(1, np.float32), 0  # same rate: push() passes samples through
        if self.up != self.down:
            check_rate(from_rate, "resampling from")
            check_rate(to_rate, "resampling to")
            half_len = 10 * max(self.up, self.down)
            taps = firwin(2 * half_len + 1, 1.0 / max(self.up, self.down), window=("kaiser", 5.0))
            taps = taps.astype(np.float32) * np.float32(self.up)  # float32, as resample_poly on float32
            pre_pad = self.down - half_len % self.down
            self.taps = np.concatenate([np.zeros(pre_pad, np.float32), taps])
            self.delay = (half_len + pre_pad) // self.down  # filter outputs skipped at the start
        self.reset()

    def reset(self) -> None:
        self._kept = np.zeros(0, np.float32)
        self._start = 0  # input index of _kept[0], a multiple of down
        self._received = 0
        self._next = self.delay  # next filter output to emit

    def push(self, x: np.ndarray) -> np.ndarray:
        """Add mono samples; return the output samples they complete."""
        if self.up == self.down == 1:
            return np.asarray(x, np.float32)
        self._kept = np.concatenate([self._kept, np.asarray(x, np.float32)])
        self._received += len(x)
        return self._emit(((self._received - 1) * self.up) // self.down if self._received else -1)

    def output_length(self, samples: int) -> int:
        """How many samples ``samples`` input samples give in all (pushed, then flushed)."""
        return -(-samples * self.up // self.down)

    def flush(self) -> np.ndarray:
        """The remaining output, as if the signal ended here; then reset."""
        if self.up == self.down == 1:
            return np.zeros(0, np.float32)
        total = self.output_length(self._received)
        self._kept = np.concatenate([self._kept, np.zeros(len(self.taps) // self.up + 2, np.float32)])
        out = self._emit(self.delay + total - 1)
        self.reset()
        return out

    def _emit(self, last: int) -> np.ndarray:
        upfirdn = scipy_signal().upfirdn
        if last < self._next:
            return np.zeros(0, np.float32)
        filtered = upfirdn(self.taps, self._kept, self.up, self.down)  # filtered[j] is output j + base
        base = self._start * self.up // self.down
        out = filtered[self._next - base : last + 1 - base].astype(np.float32)
        self._next = last + 1
        # Drop input that no later output reaches, keeping the start a multiple of down.
        needed = max(0, -(-(self._next * self.down - (len(self.taps) - 1)) // self.up))
        start = needed // self.down * self.down
        self._kept = self._kept[start - self._start :]
        self._start = start
        return out


def to_mono(audio: Audio, sample_rate: int) -> np.ndarray:
    """Downmix (channel mean) and resample to ``sample_rate``: float32 ``[N]``."""
    mono = audio.samples.mean(axis=1) if audio.channels > 1 else audio.samples[:, 0]
    return resample(mono, audio.sample_rate, sample_rate)


RESCALE_PEAK = 0.99  # the peak --rescale scales loud audio down to, as encodec's -r does


def rescaled(pcm: np.ndarray) -> tuple[np.ndarray, float]:
    """``pcm`` scaled down, in place, so that its peak is RESCALE_PEAK, when it is beyond that (decode --rescale;
    encodec's ``-r``): (the audio, the factor applied, 1.0 when none was). In place, and its peak found without
    a copy of its magnitudes: the decoded audio was held three times over."""
    peak = max(float(pcm.max()), -float(pcm.min())) if pcm.size else 0.0
    if peak <= RESCALE_PEAK:
        return pcm, 1.0
    factor = RESCALE_PEAK / peak
    pcm *= np.float32(factor)
    return pcm, factor


def write_audio(path: Target, pcm: np.ndarray, sample_rate: int, replace: bool = False, comment: str = "",
                raw: str | None = None) -> int:
    """Write float audio ``[N]`` or ``[C, N]`` atomically; the format follows the extension (WAV, FLAC,
    OGG...; WAV to stdout), or it is headerless samples in the encoding ``raw`` (:data:`RAW_ENCODINGS`);
    ``comment``: its comment tag (see :func:`audio_writer`).

    Samples beyond [-1, 1] are clipped (integer formats would wrap them);
    returns how many were.
    """
    path, pcm = as_target(path), np.atleast_2d(pcm)
    clipped, step = 0, CLIP_SAMPLES // pcm.shape[0] + 1
    with atomic_output(path, replace) as tmp, soundfile_errors(path, tmp), \
            audio_writer(tmp, path, sample_rate, pcm.shape[0], comment, raw) as f:
        for start in range(0, pcm.shape[1], step):  # clipped all at once, [C, N] was held three times over
            block, beyond = within_full_scale(pcm[:, start:start + step])
            write_in_blocks(f, block.T)
            clipped += beyond
    return clipped


CLIP_SAMPLES = 1 << 20  # clipped at a time (4 MB)


def within_full_scale(pcm: np.ndarray) -> tuple[np.ndarray, int]:
    """``pcm`` clipped to [-1, 1] (integer formats would wrap what is beyond), and how many samples were beyond."""
    return np.clip(pcm, -1, 1), int(np.count_nonzero(np.abs(pcm) > 1))


# The most samples (of all channels) handed to libsndfile in one write. libvorbis's encoder takes room on the
# stack for each sample of a write, per channel (alloca in _preextrapolate_helper): one write of two minutes at
# 24 kHz (11 MB) overran the 8 MB stack, and `decode -o x.ogg` died of a segmentation fault; so did writes of
# 65,536 samples (256 KB) under `ulimit -s 256`, or in a thread with a small stack (musl's are 128 KB). 8,192
# (32 KB) leave room in any stack a thread is given, and write a two-minute file in the time blocks of 65,536
# take (0.88, 1.04, 0.98 and 0.98 of it for Ogg, WAV, FLAC and MP3: medians of 7, alternating). Vorbis's
# encoding of blocks differs from one write's in its last bits, as lossy encodings may; PCM, FLAC, MP3 and
# Opus files are the same.
WRITE_SAMPLES = 1 << 13


def write_in_blocks(f, pcm: np.ndarray) -> None:
    """Write ``pcm`` [n, C] to the soundfile writer ``f`` in blocks of at most WRITE_SAMPLES samples."""
    step = max(1, WRITE_SAMPLES // pcm.shape[1])
    for start in range(0, len(pcm), step):
        f.write(pcm[start:start + step])


@contextlib.contextmanager
def audio_sink(path: Target, sample_rate: int, channels: int, frames: int | None, replace: bool = False,
               comment: str = "", raw: str | None = None) -> Iterator[Callable[[np.ndarray], None]]:
    """Where audio made block by block goes: a function taking float ``[n, C]`` blocks within [-1, 1], of
    ``frames`` samples in all (None: not known). A file is written atomically (in its format, with ``comment``, see
    :func:`audio_writer`); standard output gets a WAV as it is made (:func:`wav_to_stdout`); ``raw``: headerless
    samples in that encoding instead (:data:`RAW_ENCODINGS`)."""
    if is_stdout(path):
        with wav_to_stdout(sample_rate, channels, frames, raw) as write:
            yield write
        return
    with atomic_output(path, replace) as tmp, soundfile_errors(path, tmp), \
            audio_writer(tmp, path, sample_rate, channels, comment, raw) as f:
        yield functools.partial(write_in_blocks, f)


@contextlib.contextmanager
def wav_to_stdout(sample_rate: int, channels: int, frames: int | None, raw: str | None = None,
                  ) -> Iterator[Callable[[np.ndarray], None]]:
    """A 16-bit WAV of ``frames`` samples to standard output, each block written as it comes (a player at the
    end of the pipe starts at once); ``raw``: the samples alone, in that encoding (:data:`RAW_ENCODINGS`). The
    length is known first, so the header written first is final (beyond a WAV's 4 GB, or not known, as of codes
    still coming, it says "to the end", as sox does on a pipe). libsndfile makes each block's samples (as
    headerless 16-bit PCM), so the data is that of the WAV file decode writes. A run that fails part way leaves
    what it wrote: a pipe cannot take it back.

        RIFF <36 + data bytes> WAVE | fmt  <16> PCM, C, rate, rate·C·2, C·2, 16 bits | data <data bytes> samples…
    """
    import struct

    import soundfile as sf

    from mimi_cli.fileio import write_stdout

    layout = raw_layout(raw or "s16le")

    def write(block: np.ndarray) -> None:  # [n, C]
        pcm = io.BytesIO()
        sf.write(pcm, block, sample_rate, **layout)
        write_stdout(pcm.getvalue(), flush=True)

    if raw is not None:
        yield write
        return
    size = 0xFFFFFFFF - 36 if frames is None else min(frames * channels * 2, 0xFFFFFFFF - 36)
    write_stdout(struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + size, b"WAVE", b"fmt ", 16, 1, channels,
                             sample_rate, sample_rate * channels * 2, channels * 2, 16, b"data", size), flush=True)
    yield write


def audio_writer(tmp: Path, path: Target, sample_rate: int, channels: int, comment: str = "", raw: str | None = None):
    """An open soundfile writer at ``tmp`` in ``path``'s format, or of headerless samples in the encoding ``raw``;
    ``comment`` in its comment tag (a WAV's INFO ICMT, a FLAC's or Ogg's Vorbis comment): what made the audio,
    read back by ``--skip-existing``."""
    import soundfile as sf

    file_format = audio_format(path) if raw is None else raw_layout(raw)
    reason = _beyond_encoder(file_format, sample_rate, channels)
    if reason:  # (check_audio_output said so before any work)
        raise InvalidAudioError(f"cannot write {path}: {reason}")
    f = sf.SoundFile(native(tmp), "w", sample_rate, channels, **file_format)
    if comment:
        with contextlib.suppress(RuntimeError):  # a format without tags keeps none
            f.comment = comment
    return f


@contextlib.contextmanager
def soundfile_errors(path: Target, tmp: Path):
    """libsndfile reports a failed write as "System error": say what it was (a full disk, mostly)."""
    import shutil

    import soundfile as sf

    try:
        yield
    except sf.LibsndfileError as exc:
        import errno

        free = shutil.disk_usage(tmp).free  # tmp's own disk (tmp may be /proc/self/fd/N)
        if free < (1 << 20):
            raise cannot_write(path, OSError(errno.ENOSPC, "No space left on device")) from None
        if _beyond_size_limit(tmp):
            raise cannot_write(path, OSError(errno.EFBIG, "File too large")) from None
        raise cannot_write(path, f"libsndfile: {exc.error_string}") from None


def _beyond_size_limit(tmp: Path) -> bool:
    """Whether ``tmp`` has reached the process's file size limit (``ulimit -f``; Python ignores SIGXFSZ,
    so a write past it fails with EFBIG, which libsndfile reports as a "System error" too)."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    try:
        return limit != resource.RLIM_INFINITY and tmp.stat().st_size + (1 << 16) >= limit
    except OSError:
        return False


# Suffixes that are not libsndfile's format names: (format, subtype; None for the format's default).
_SUFFIX_FORMATS = {".opus": ("OGG", "OPUS"), ".oga": ("OGG", None), ".aif": ("AIFF", None)}


# Formats libsndfile writes and this tool does not. Sound Designer II keeps its header in a second file (._NAME,
# a Mac resource fork) that libsndfile names after the file it writes: written atomically, that is
# /proc/self/fd/N, and the write failed after all the work, leaving an empty "._" in the working folder.
_NOT_WRITTEN = ("SD2",)


def audio_format(path: Target, folder_hint: bool = False) -> dict[str, str | None]:
    """soundfile's ``format`` and ``subtype`` for ``path``'s extension (WAV for stdout), or an error naming the
    usable ones (a format with no default encoding, such as headerless RAW, is not one). ``folder_hint``: -o
    could name a folder (as fileio.check_suffix's)."""
    import soundfile as sf

    if is_stdout(path):
        return {"format": "WAV", "subtype": None}
    suffix = path.suffix.lower()
    name, subtype = _SUFFIX_FORMATS.get(suffix, (suffix.lstrip(".").upper(), None))
    if not name or name not in sf.available_formats() or (subtype is None and not sf.default_subtype(name)) or \
            name in _NOT_WRITTEN:
        folder = ", or end it with / for a folder" if folder_hint and not path.suffix else ""
        raise InvalidAudioError(f"cannot write audio as {path.suffix or 'a file without extension'}; "
                                f"use .wav, .flac, .ogg, .opus or .mp3 (or another format libsndfile writes: .aiff, "
                                f".au, .caf, .w64…){folder}")
    return {"format": name, "subtype": subtype}


# Encoders' limits that libsndfile does not check when it opens a file. Past libvorbis's, its encoder is set up
# in part and the first samples written end the process with a segmentation fault; past FLAC's, the first
# samples fail with "problem with initialization of the flac decoder".
VORBIS_MAX_RATE = 200_000  # the highest rate of its encoder's setups
VORBIS_MAX_CHANNELS = 255  # the count is one byte of its header
FLAC_MAX_HERTZ_RATE = 65_535  # above it, a FLAC frame's header gives the rate in tens of Hz


def _beyond_encoder(file_format: dict[str, str | None], sample_rate: int, channels: int) -> str | None:
    """Why libsndfile's encoder of ``file_format`` (audio_format's) cannot take such audio, which libsndfile
    opens without a word; None where it can."""
    import soundfile as sf

    if file_format["format"] == "OGG" and (file_format["subtype"] or sf.default_subtype("OGG")) == "VORBIS":
        if sample_rate > VORBIS_MAX_RATE:
            return f"Vorbis encodes at most {VORBIS_MAX_RATE:,} Hz"
        if channels > VORBIS_MAX_CHANNELS:
            return f"Vorbis holds at most {VORBIS_MAX_CHANNELS} channels"
    if file_format["format"] == "FLAC" and sample_rate > FLAC_MAX_HERTZ_RATE and sample_rate % 10:
        return f"FLAC holds a rate above {FLAC_MAX_HERTZ_RATE:,} Hz only in whole tens of Hz"
    return None


@functools.lru_cache(maxsize=64)
def _trial_refusal(major: str, subtype: str | None, sample_rate: int, channels: int) -> str | None:
    """Why libsndfile cannot write this format at this rate and channel count, or would write another into the
    file, found by writing one frame in memory and reading it back; None where it can. Kept: a batch checks
    each output (2 ms for Ogg Vorbis, 1 ms for MP3), and its outputs mostly share one format."""
    import soundfile as sf

    trial = io.BytesIO()
    try:
        with sf.SoundFile(trial, "w", sample_rate, channels, format=major, subtype=subtype) as f:
            f.write(np.zeros((1, channels), np.float32))  # some encoders start (and check) at the first samples
        trial.seek(0)
        written = sf.info(trial)
    except (sf.LibsndfileError, ValueError, TypeError) as exc:
        return getattr(exc, "error_string", str(exc)).removeprefix("Error : ")
    if written.samplerate != sample_rate:
        return f"the file would say {written.samplerate} Hz"
    return None if written.channels == channels else f"the file would say {written.channels} channels"


def check_audio_output(path: Target, sample_rate: int, channels: int) -> None:
    """Before any work: libsndfile can write ``path``'s format at this rate and channel count, and the file says
    that rate and count when read (a trial in memory). Some formats hold other rates than they are given, without
    a word: XI says 44,100 Hz and WVE 8,000 whatever was written (decoded speech played 1.8× too fast, or 3× too
    slow), HTK a rate rounded to its 100 ns steps (24,038 Hz for 24,000)."""
    file_format = audio_format(path)
    check_rate(sample_rate, "cannot write audio at")

    def refusal(count: int) -> str | None:
        return _beyond_encoder(file_format, sample_rate, count) or \
            _trial_refusal(file_format["format"], file_format["subtype"], sample_rate, count)

    reason = refusal(channels)
    if reason is None:
        return
    shown = file_format["subtype"] or file_format["format"]
    if channels > 1 and refusal(1) is None:  # the rate is fine: too many channels for the format (MP3: 2, FLAC: 8)
        raise InvalidAudioError(f"cannot write {shown} audio of {channels} channels ({reason}); choose another output "
                                "format (WAV holds any number)")
    raise InvalidAudioError(f"cannot write {shown} audio at {sample_rate} Hz ({reason}); choose another "
                            "--sample-rate or output format")
