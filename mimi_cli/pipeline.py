"""One file from input to output: the path every engine takes (single-file commands, --jobs workers, Ray).

    Task(input, output) ──► Worker.run ──► encode_file / decode_file ──► FileResult
                              │               read + check  → model (loaded once per codec, per worker)
                              │               → encode / decode → the one output writer (fileio)
                              └─ any problem with this file → FileResult(status="failed", error=one line)

The CLI, :mod:`mimi_cli.batch` and :mod:`mimi_cli.ray_engine` only display or
collect the :class:`FileResult`; none of them reads, computes or writes a file itself.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from mimi_cli.audio import (MAX_SAMPLE_RATE, MIN_OUTPUT_RATE, RAW_ENCODINGS, RESCALE_PEAK, Audio, RawFormat, RawPipe,
                            StreamResampler, audio_sink, check_audio_head, check_audio_output, check_raw_head,
                            open_audio, read_blocks, read_open, reader_warnings, resample, resample_bytes, rescaled,
                            to_mono, within_full_scale, write_audio)
from mimi_cli.codes import (JSON_LINES, MAX_CHANNELS, CodesFile, check_codes_head, frames_coming, is_bare_array_path,
                            lines_coming, load_codes, write_frame_lines)
from mimi_cli.ecdc import check_streams, is_ecdc_path
from mimi_cli.errors import (InvalidAudioError, MimiError, OutputExistsError, WeightsError, check_choice, check_flag,
                             check_integer, check_path, counted, dumps_json, first_line, no_room_to_load, no_thread,
                             os_reason, out_of_memory, over_memory, refusal_said, unnamable)
from mimi_cli.fileio import (STDIN, Readable, Target, check_stdin, file_kind, is_stdout, native, output_exists,
                             readable, standard_input)
from mimi_cli.models import BASE_BYTES, CODECS, DEFAULT_CODEC, codec_spec, other_codecs_weights
from mimi_cli.models.codec import Codec
from mimi_cli.sources import Item, carried_keys, open_item, row_codes
from mimi_cli.weights import resolve_weights, weights_files, weights_id


def check_batch_memory(seconds: float, codec: str = DEFAULT_CODEC, remedy: str | None = None,
                       also_per_second: float = 0.0) -> None:
    """Refuse a batch run that cannot fit in the memory this process may use, before doing any work; ``remedy``
    says what to do instead (default: encode's and decode's --stream, where the codec has it);
    ``also_per_second``: bytes the run takes per second of audio besides the codec's (more channels than one,
    another rate than the codec's: :func:`input_bytes`, :func:`output_bytes`; a round trip's scores)."""
    spec = codec_spec(codec)
    needed = spec.batch_bytes(1, seconds) + also_per_second * seconds
    memory = over_memory(needed)
    if memory:
        remedy = remedy or ("use --stream, which keeps memory flat" if spec.streaming
                            else "split the audio into shorter files (this codec has no streaming mode here)")
        about, limit = refusal_said(needed, memory)
        raise MimiError(f"{seconds / 60:.1f} min of audio would need {about} in batch mode, more than {limit}; "
                        f"{remedy}")


# A codec's batch figure (CodecSpec.batch_bytes_per_second) was measured on mono audio at the codec's own rate,
# and counts its arrays. Other audio holds more, per second (float32, 4 bytes a sample):
#   encoding: the file's samples [N, C] while the model works, and the model's input where that is a copy: the
#             channels' mean, resampled; or each channel resampled on its own (--channels split);
#   decoding: each further stream's audio, as decoded and in the result, and all of it resampled to the rate asked.
# Measured beside the same 3 min of one channel (docs/performance.md, "Many channels"), per second: 8 channels at
# 48 kHz encoded +1.31 MB (counted 1.54), split +2.01 (2.02); 8 code streams decoded +0.98 (1.34), to 48 kHz
# +2.68 (3.26).
FLOAT32_BYTES = 4


def input_bytes(codec: str, channels: int, rate: int, split: bool) -> float:
    """Per second of audio, what encoding a file of ``channels`` at ``rate`` (each channel on its own: ``split``)
    holds beyond the mono audio at the codec's rate its figure was measured with."""
    model_rate = codec_spec(codec).config().sample_rate

    def held(channels: int, rate: int, split: bool) -> float:
        samples = FLOAT32_BYTES * channels * rate
        if split:
            return samples + resample_bytes(channels, model_rate)
        mixed = FLOAT32_BYTES * rate if channels > 1 else 0
        return samples + mixed + (resample_bytes(1, model_rate) if rate != model_rate else 0)

    return held(channels, rate, split) - held(1, model_rate, False)


def output_bytes(codec: str, streams: int, rate: int | None = None) -> float:
    """Per second of audio, what decoding ``streams`` code streams to audio at ``rate`` (None: the codec's own)
    holds beyond one stream at the codec's rate."""
    model_rate = codec_spec(codec).config().sample_rate
    resampled = resample_bytes(streams, rate) if rate and rate != model_rate else 0
    return 2 * FLOAT32_BYTES * (streams - 1) * model_rate + resampled  # each decoded, then copied in the result


def read_for_batch(path: Path, f, codec: str, channels: Channels = "mix", remedy: str | None = None,
                   also_per_second: float = 0.0) -> Audio:
    """All of an open file, to be encoded in batch mode (its ``channels`` mixed or split): refused before reading
    when the length it declares would not fit in memory, and while reading when it goes on past that length and
    then would not."""
    held = input_bytes(codec, f.channels, f.samplerate, channels == "split")
    check = functools.partial(check_batch_memory, codec=codec, remedy=remedy, also_per_second=held + also_per_second)
    check(f.frames / f.samplerate)
    return read_open(path, f, check)


@dataclass
class LoadedModel:
    model: Codec
    weights_path: Path
    hashed: Background  # of weights_id(weights_path)
    load_seconds: float

    @property
    def weights_id(self) -> str:
        return self.hashed.result()


def load_model(weights: str | Path | None, codec: str = DEFAULT_CODEC) -> LoadedModel:
    """Resolve and load ``codec``'s weights (see :func:`mimi_cli.weights.resolve_weights`). Their id, a hash of
    every byte (0.28 s for Mimi's 385 MB here, a sixth of a 3 s clip's encode), is computed on a thread of its
    own (its reads and SHA-256 release the GIL) beside the loading and the first file's work, which need it
    only at the end."""
    start = time.perf_counter()
    spec = codec_spec(codec)
    path = resolve_weights(weights, spec)
    hashed = Background(weights_id, path)
    try:
        model = spec.model().from_file(path)
    except WeightsError as exc:
        raise WeightsError(f"{exc}{other_codecs_weights(path, spec)}") from None
    return LoadedModel(model, path, hashed, time.perf_counter() - start)


class Background:
    """``function(*args)`` computed on a daemon thread (an interrupted run never waits for it at exit);
    :meth:`result` waits for its value, or raises its exception."""

    def __init__(self, function: Callable, *args):
        self._done = threading.Event()
        self._value = self._error = None
        try:
            threading.Thread(target=self._run, args=(function, args), daemon=True, name="mimi-background").start()
        except RuntimeError:  # no thread to be had (ulimit -u): computed here and now
            self._run(function, args)

    def _run(self, function: Callable, args: tuple) -> None:
        try:
            self._value = function(*args)
        except BaseException as exc:  # handed to the caller of result(), in its thread
            self._error = exc
        finally:
            self._done.set()

    def result(self):
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


@dataclass
class EncodeResult:
    codes: CodesFile
    pcm: np.ndarray | None  # the model's input at its rate: mono [N], or [C, N] when split (None in --stream mode)
    seconds: float  # time spent in the model


Channels = Literal["mix", "split"]
CHANNEL_MODES = ("mix", "split")


def encode_audio(loaded: LoadedModel, audio: Audio, num_codebooks: int, channels: Channels = "mix") -> EncodeResult:
    """Resample ``audio`` to the model's rate and encode it: downmixed to mono (``mix``), or each
    channel on its own (``split``: codes ``[C, K, F]``, channel c as if encoded alone)."""
    config = loaded.model.config
    pcm = model_input(audio, config.sample_rate, channels)
    start = time.perf_counter()
    codes = loaded.model.encode_channels(pcm, num_codebooks) if channels == "split" else \
        loaded.model.encode(pcm, num_codebooks)
    seconds = time.perf_counter() - start
    codes_file = CodesFile.from_codes(codes, config, num_samples=pcm.shape[-1], source_sample_rate=audio.sample_rate,
                                      source_channels=audio.channels, weights_id=loaded.weights_id, streamed=False)
    return EncodeResult(codes_file, pcm, seconds)


def model_input(audio: Audio, sample_rate: int, channels: Channels = "mix") -> np.ndarray:
    """What the model is given: ``audio`` downmixed (``[N]``) or each channel (``[C, N]``), at its rate."""
    if channels == "split":
        return resample(audio.samples.T, audio.sample_rate, sample_rate)  # [C, N], a channel at a time
    return to_mono(audio, sample_rate)


def decode_codes(loaded: LoadedModel, codes: CodesFile, sample_rate: int | None = None) -> tuple[np.ndarray, float]:
    """Decode each channel, trim to the original length, resample if asked; returns (pcm ``[C, N]``,
    seconds in the model)."""
    start = time.perf_counter()
    pcm = loaded.model.decode_channels(codes.codes)[:, : codes.num_samples]
    seconds = time.perf_counter() - start
    if sample_rate is not None:
        pcm = resample(pcm, loaded.model.config.sample_rate, sample_rate)
    return pcm, seconds


# --stream works on steps of this many frames (Mimi 1.28 s, EnCodec 0.21 s): enough to amortise
# reading the weights, small enough that memory stays flat. The codes do not depend on the step
# (see models/streaming.py).
STREAM_FRAMES_PER_STEP = 16
# Source frames read per block in --stream mode.
STREAM_READ_FRAMES = 1 << 16


def stream_read_frames(source_rate: int, codec_rate: int) -> int:
    """Source frames read per --stream block: STREAM_READ_FRAMES, fewer when a very low rate is upsampled, so
    that no block resamples to more than 4 × STREAM_READ_FRAMES samples (a 1 Hz file's 65,536 frames would
    become 1.6 billion samples at 24 kHz: 6 GB at once, while memory is meant to stay flat)."""
    return max(1, min(STREAM_READ_FRAMES, 4 * STREAM_READ_FRAMES * source_rate // codec_rate))


Progress = Callable[[float], None]  # called with seconds of audio done


def _check_streaming(model: Codec, streams: int, remedy: str) -> None:
    """Refuse --stream's work where the codec has no streaming mode, and, before any work, on more code streams
    at once (a file's channels with --channels split) than the memory this process may use holds: each holds
    its own state and buffers (``step_stream_bytes``), so 16 channels took 1.25 GB where one took 0.67 GB.
    ``remedy``: what to do instead."""
    spec = codec_spec(model.config.name)
    if not spec.streaming:
        streaming = [name for name, spec in CODECS.items() if spec.streaming]
        raise MimiError(f"{model.config.display_name} has no streaming mode here (--stream works with "
                        f"{', '.join(streaming)}); run without --stream")
    needed = BASE_BYTES + streams * spec.step_stream_bytes
    memory = over_memory(needed) if streams > 1 else 0  # one stream is what --stream is for
    if memory:
        about, limit = refusal_said(needed, memory)
        raise MimiError(f"{streams} code streams at once in --stream mode would hold {about} "
                        f"({spec.step_stream_bytes / 1e6:.0f} MB each), more than {limit}; {remedy}")


def encode_stream(loaded: LoadedModel, path: Path, num_codebooks: int, progress: Progress | None = None,
                  channels: Channels = "mix", opened=None,
                  on_codes: Callable[[np.ndarray], None] | None = None) -> EncodeResult:
    """Encode a file (or an ``opened`` block reader) block by block in flat memory: read, downmix or
    split, resample, encode as it comes (``on_codes``: see encode_blocks)."""
    with opened or open_audio(path) as f:
        frames = stream_read_frames(f.samplerate, loaded.model.config.sample_rate)
        return encode_blocks(loaded, read_blocks(path, f, frames), f.samplerate, f.channels, num_codebooks,
                             progress, channels, on_codes)


def encode_blocks(loaded: LoadedModel, blocks: Iterable[np.ndarray], source_rate: int, source_channels: int,
                  num_codebooks: int, progress: Progress | None = None, channels: Channels = "mix",
                  on_codes: Callable[[np.ndarray], None] | None = None) -> EncodeResult:
    """Encode audio ``blocks`` (float32 ``[n, source_channels]`` each, in order) in the codec's streaming mode:
    downmix or split, resample and encode each as it comes; ``on_codes`` is called with the frames each block
    completes (``[C, K, n]``, n ≥ 1), as they come."""
    streams = source_channels if channels == "split" else 1
    _check_streaming(loaded.model, streams, "mix the channels (--channels mix), or run without --stream "
                       "(for short audio, batch mode holds less)")
    config = loaded.model.config
    encoders = [loaded.model.stream_encoder(num_codebooks=num_codebooks, frames_per_step=STREAM_FRAMES_PER_STEP)
                for _ in range(streams)]
    resamplers = [StreamResampler(source_rate, config.sample_rate) for _ in range(streams)]
    pieces: list[list[np.ndarray]] = [[] for _ in range(streams)]
    num_samples, seconds = 0, 0.0

    def push(signals: list[np.ndarray | None]) -> None:
        nonlocal num_samples, seconds
        for c, (encoder, resampler, signal) in enumerate(zip(encoders, resamplers, signals, strict=True)):
            pcm = resampler.push(signal) if signal is not None else resampler.flush()
            if c == 0:
                num_samples += len(pcm)
            start = time.perf_counter()
            pieces[c].append(encoder.push(pcm))
            if signal is None:
                pieces[c][-1] = np.concatenate([pieces[c][-1], encoder.flush()], axis=1)
            seconds += time.perf_counter() - start
        if on_codes is not None and pieces[0][-1].shape[1]:  # (the streams step together: the same frames)
            on_codes(np.stack([p[-1] for p in pieces]))

    for block in blocks:
        push(list(block.T) if channels == "split" else [block.mean(axis=1)])
        if progress:
            progress(num_samples / config.sample_rate)
    push([None] * streams)
    codes = np.stack([np.concatenate(p, axis=1) for p in pieces])
    codes = CodesFile.from_codes(codes if channels == "split" else codes[0], config, num_samples=num_samples,
                                 source_sample_rate=source_rate, source_channels=source_channels,
                                 weights_id=loaded.weights_id, streamed=True)
    return EncodeResult(codes, None, seconds)


def decode_stream(loaded: LoadedModel, codes: CodesFile, output: Target, sample_rate: int | None = None,
                  progress: Progress | None = None, replace: bool = False, comment: str = "",
                  raw: str | None = None) -> tuple[float, int]:
    """Decode step by step straight into ``output`` (atomically), its comment tag ``comment`` (decoded_comment),
    or headerless samples in the encoding ``raw``; returns (seconds in the model, clipped samples)."""
    return write_steps(decoded_steps(loaded, codes), loaded.model.config.sample_rate, codes.channels,
                       codes.num_samples, output, sample_rate, progress, replace, comment, raw)


def write_steps(steps: Iterable[tuple[np.ndarray, float]], model_rate: int, channels: int, samples: int | None,
                output: Target, sample_rate: int | None = None, progress: Progress | None = None,
                replace: bool = False, comment: str = "", raw: str | None = None) -> tuple[float, int]:
    """Decoded ``steps`` (:func:`stepped`'s) of ``channels`` channels at ``model_rate``, ``samples`` in all (None:
    not known before the end), written into ``output`` as they come, at ``sample_rate``; returns (seconds in the
    model, clipped samples)."""
    rate = sample_rate or model_rate
    resamplers = [StreamResampler(model_rate, rate) for _ in range(channels)]
    done, seconds, clipped = 0, 0.0, 0
    frames = None if samples is None else resamplers[0].output_length(samples)
    with audio_sink(output, rate, channels, frames, replace, comment, raw) as put:
        def write(pcm: np.ndarray) -> None:  # [C, n]
            nonlocal clipped
            pcm, beyond = within_full_scale(pcm)
            put(pcm.T)
            clipped += beyond

        for pcm, spent in steps:
            seconds, done = seconds + spent, done + pcm.shape[1]
            write(np.stack([r.push(channel) for r, channel in zip(resamplers, pcm, strict=True)]))
            if progress:
                progress(done / model_rate)
        write(np.stack([r.flush() for r in resamplers]))
    return seconds, clipped


def decoded_steps(loaded: LoadedModel, codes: CodesFile) -> Iterator[tuple[np.ndarray, float]]:
    """``codes`` decoded step by step in the codec's streaming mode: pieces ``[C, n]`` at its rate, in order, up
    to the original length, each with the seconds it took in the model."""
    step = STREAM_FRAMES_PER_STEP
    return stepped(loaded, (codes.codes[:, :, first:first + step] for first in range(0, codes.num_frames, step)),
                   codes.channels, codes.num_samples, step)


def stepped(loaded: LoadedModel, chunks: Iterable[np.ndarray], channels: int, samples: int | None,
            frames_per_step: int) -> Iterator[tuple[np.ndarray, float]]:
    """Code ``chunks`` (``[C, K, n]`` each, in order, as they come) decoded in the codec's streaming mode, a
    decoder per stream: pieces ``[C, n]`` at its rate, each with the seconds it took in the model; up to
    ``samples`` (the last frame's padding is not audio), or all of them where None."""
    _check_streaming(loaded.model, channels, "run without --stream (for short audio, batch mode holds "
                     "less)")  # now, not at the first step: before an output is opened
    decoders = [loaded.model.stream_decoder(frames_per_step=frames_per_step) for _ in range(channels)]

    def steps() -> Iterator[tuple[np.ndarray, float]]:
        remaining = samples
        for chunk in itertools.chain(chunks, [None]):  # None: flush the frames waiting for a step
            start = time.perf_counter()  # (after the chunk came: a pipe's wait is not the model's time)
            pcm = np.stack([decoder.push(chunk[c]) if chunk is not None else decoder.flush()
                            for c, decoder in enumerate(decoders)])
            seconds = time.perf_counter() - start
            if remaining is not None:
                pcm = pcm[:, :remaining]
                remaining -= pcm.shape[1]
            yield pcm, seconds

    return steps()


# ----------------------------------------------------------------------------- one file, every engine

Kind = Literal["encode", "decode", "roundtrip"]
Status = Literal["done", "skipped", "failed", "not run"]
Report = Callable[[str, float, "float | None"], None]  # (stage, seconds of audio done, total or None)


def no_report(stage: str, done: float = 0.0, total: float | None = None) -> None:
    pass


@dataclass(frozen=True)
class Settings:
    """What every file of a run is done with; plain values, so it crosses process (and Ray) boundaries."""

    kind: Kind
    weights: str | None = None
    codec: str | None = DEFAULT_CODEC  # encode; decode: of bare arrays (.npy), None when not given (see load_codes)
    num_codebooks: int | None = None  # encode: None for the codec's default; decode: the first levels, None: all
    stream: bool = False
    sample_rate: int | None = None  # decode: output rate (default: the codec's)
    channels: Channels = "mix"  # encode: downmix to mono, or encode each channel on its own
    rescale: bool = False  # decode: audio louder than full scale scaled down (audio.rescaled), not clipped
    threads: int = 1
    replace: bool = False  # -f: existing outputs (regular files, never inputs) may be replaced
    skip_existing: bool = False  # also skip an output that another run made after planning
    keep_codes: bool = False  # return the codes in the result (for Parquet)
    raw: RawFormat | None = None  # encode, roundtrip: inputs of headerless samples so laid out (--raw; or its text)
    raw_output: str | None = None  # decode: headerless samples in this encoding (--raw: s16le...), to standard output
    stdout_suffix: str | None = None  # encode: the format of -o - (--suffix .jsonl), set by batch.plan

    def __post_init__(self):
        """Refuse values the command line's options would refuse, when built from Python: left unchecked,
        channels="left" was mixed in silence, kind="bogus" raised a KeyError, and num_codebooks=0 failed every
        file one by one after planning."""
        check_choice("kind", self.kind, get_args(Kind))
        if self.weights is not None:
            object.__setattr__(self, "weights", check_path("weights", self.weights))
        if self.codec is None and self.kind != "decode":  # decode: the file's own codec; else the default
            object.__setattr__(self, "codec", DEFAULT_CODEC)
        check_choice("channels", self.channels, CHANNEL_MODES)
        if self.codec is not None:
            check_choice("codec", self.codec, tuple(CODECS))
        for flag in ("stream", "rescale", "replace", "skip_existing", "keep_codes"):
            object.__setattr__(self, flag, check_flag(flag, getattr(self, flag)))
        # kept as Python ints (np.int64(16000) reached FileResult.sample_rate)
        object.__setattr__(self, "threads", check_integer("threads", self.threads, 1))
        if self.num_codebooks is not None:
            levels = check_integer("num_codebooks", self.num_codebooks, 1) if self.kind == "decode" else \
                codec_spec(self.codec).config().levels(self.num_codebooks)  # decode: the file's codec's, read later
            object.__setattr__(self, "num_codebooks", levels)
        if isinstance(self.raw, str):  # as --raw gives it: ENCODING[:RATE[:CHANNELS]], the rate the codec's
            object.__setattr__(self, "raw", RawFormat.parse(self.raw, codec_spec(self.codec or DEFAULT_CODEC)
                                                            .config().sample_rate))
        if self.raw is not None and (self.kind == "decode" or not isinstance(self.raw, RawFormat)):
            raise ValueError("raw is how audio inputs are laid out: a RawFormat or its text ('s16le:16000:1'), for "
                             "encode and roundtrip")
        if self.raw_output is not None:
            check_choice("raw_output", self.raw_output, tuple(RAW_ENCODINGS))
            if self.kind != "decode":
                raise ValueError("raw_output is how decode writes its audio; encode and roundtrip read with raw")
        if self.sample_rate is not None:
            object.__setattr__(self, "sample_rate", check_integer("sample_rate", self.sample_rate, MIN_OUTPUT_RATE,
                                                                  MAX_SAMPLE_RATE))


@dataclass(frozen=True, slots=True)
class Task:
    input: Path  # the file; for an item, its name (``shard.tar#0001.flac``, ``manifest.jsonl:12``)
    output: Target | None  # a file, "-" for standard output, or None (codes kept for Parquet only)
    skip: bool = False  # the output exists and --skip-existing was given
    item: Item | None = None  # audio inside something larger: a span, a tar member, a table row
    redo: bool = False  # the output exists, made otherwise (made_otherwise), and -f replaces it
    plot: Path | None = None  # roundtrip: its spectrograms drawn into this image too
    new_folder: bool = False  # roundtrip: its outputs' folders may be made (planned: -o DIR/, --plot DIR/)

    @property
    def key(self) -> tuple[str, str]:
        """What its result says of it (``FileResult.key``), whichever engine ran it."""
        return str(self.input), "" if self.output is None else str(self.output)


def open_input(task: Task, settings: Settings):
    """A block reader (``soundfile.SoundFile`` or alike) over the task's audio, checked like read_audio; standard
    input's headerless samples as they come, for ``encode --stream --raw -`` (see :func:`reads_as_it_comes`)."""
    if reads_as_it_comes(task, settings):
        return RawPipe(standard_input(), settings.raw, "standard input")
    return open_audio(task.input, settings.raw) if task.item is None else open_item(task.item, str(task.input),
                                                                                   settings.raw)


def reads_as_it_comes(task: Task, settings: Settings) -> bool:
    """Whether the task's input is read as it comes, not copied whole first: ``encode --stream --raw -``, whose
    headerless samples need no seek (a recorder's: ``arecord -t raw | mimi encode --stream --raw s16le -``)."""
    return settings.kind == "encode" and settings.stream and settings.raw is not None and str(task.input) == STDIN


MANIFEST_KEYS = ("input", "output", "status", "duration_s", "frames", "error", "warnings")


@dataclass
class FileResult:
    """What happened to one file: the manifest's line, and everything a command shows about it."""

    input: str
    output: str
    status: Status
    duration_s: float | None = None  # seconds of audio (the input's when encoding, the output's when decoding)
    frames: int | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. clipped samples, a weights mismatch
    notes: list[str] = field(default_factory=list)  # e.g. "2 channels downmixed to mono"
    num_codebooks: int | None = None
    bitrate_kbps: float | None = None
    sample_rate: int | None = None  # of the audio written (decode)
    model_seconds: float = 0.0
    codes: CodesFile | None = field(default=None, repr=False)  # with Settings.keep_codes
    carried: dict | None = None  # an item's keys carried to the manifest and Parquet (manifest text, shard key)
    node: str | None = None  # the Ray node that did the work (--engine ray)
    metrics: dict | None = field(default=None, repr=False)  # roundtrip

    @classmethod
    def of(cls, task: Task, status: Status, **fields) -> FileResult:
        return cls(*task.key, status, **fields)

    @property
    def key(self) -> tuple[str, str]:
        """The key of its task (``Task.key``)."""
        return self.input, self.output

    def manifest_line(self) -> str:
        own = {**{key: getattr(self, key) for key in MANIFEST_KEYS}, **({"node": self.node} if self.node else {})}
        # the run's own fields win over an item's keys of the same names (an earlier run's manifest given
        # as this run's input carries its "status" and "error": they would be taken for this run's)
        record = {**own, **{k: v for k, v in (self.carried or {}).items() if k not in own}}
        line = dumps_json(record, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a file name that is not UTF-8 (Python holds its bytes as surrogates):
            line = dumps_json(record)  # \udcXX escapes, which json.loads and os.fsencode undo
        return line


class Models:
    """Weights loaded once per codec met; a loading error is kept and raised again, not retried per file."""

    def __init__(self, weights: str | None):
        self.weights = weights
        self._loaded: dict[str, LoadedModel | WeightsError] = {}

    def get(self, codec: str, report: Report = no_report) -> LoadedModel:
        if codec not in self._loaded:
            report("Loading weights", 0.0, None)
            try:
                self._loaded[codec] = load_model(self.weights, codec)
            except WeightsError as exc:
                self._loaded[codec] = exc
        loaded = self._loaded[codec]
        if isinstance(loaded, WeightsError):
            raise loaded
        return loaded

    def loaded(self) -> dict[str, LoadedModel]:
        """The models loaded so far, by codec."""
        return {codec: m for codec, m in self._loaded.items() if not isinstance(m, WeightsError)}


def weights_warnings(loaded: LoadedModel, limit: int = 5) -> list[str]:
    """The loader's findings about unusual values (zeros, huge magnitudes), at most ``limit`` of them."""
    found = [f"weights: {w}" for w in loaded.model.warnings[:limit]]
    if len(loaded.model.warnings) > limit:
        found.append(f"weights: {len(loaded.model.warnings) - limit} more warnings; "
                     f"see `mimi inspect {loaded.weights_path}`")
    return found


def conversion_notes(channels: int, rate: int, target_rate: int, mode: Channels = "mix") -> list[str]:
    notes = [] if channels == 1 else ([f"{channels} channels encoded separately"] if mode == "split"
                                      else [f"{channels} channels downmixed to mono"])
    return notes + ([f"resampled from {rate} Hz to {target_rate} Hz"] if rate != target_rate else [])


def encode_file(task: Task, settings: Settings, models: Models, report: Report = no_report) -> FileResult:
    """Read, check, encode and write one audio file's codes."""
    lines = settings.stream and is_stdout(task.output) and settings.stdout_suffix == JSON_LINES
    with open_input(task, settings) as f:  # opened once (its header walked once): --stream reads it as it encodes
        rate, channels = f.samplerate, f.channels
        duration = None if f.frames is None else f.frames / f.samplerate  # (a pipe's samples as they come)
        check_split(task.input, channels, settings.channels)
        if settings.channels == "split" and task.output is not None and is_ecdc_path(task.output):
            check_streams(channels)  # before the work
        if not settings.stream:
            audio = read_for_batch(task.input, f, settings.codec, settings.channels)
        loaded = models.get(settings.codec, report)
        config = loaded.model.config
        levels = config.levels(settings.num_codebooks)
        if settings.stream:  # JSON lines to standard output: each step's frames as they come
            result = encode_stream(loaded, task.input, levels, lambda done: report("Encoding", done, duration),
                                   settings.channels, f, write_frame_lines if lines else None)
        else:
            report(f"Encoding {duration:.1f} s", 0.0, None)
            result = encode_audio(loaded, audio, levels, settings.channels)
    if task.output is not None and not lines:
        result.codes.save(task.output, settings.replace, settings.stdout_suffix)
    codes = result.codes
    notes = conversion_notes(channels, rate, config.sample_rate, settings.channels)
    if task.output is not None and not is_stdout(task.output) and is_bare_array_path(task.output):
        codec = "" if config.name == DEFAULT_CODEC else f" with --codec {config.name}"
        notes.append(f"{Path(task.output).name} holds the codes alone (a bare array, no metadata): "
                     f"`mimi decode`{codec} gives back whole frames, not the original length")
    return FileResult.of(task, "done", duration_s=round(codes.num_samples / config.sample_rate, 3),
                         frames=codes.num_frames, notes=notes, warnings=reader_warnings(task.input, f),
                         num_codebooks=levels, bitrate_kbps=round(config.bitrate(levels) / 1000, 3),
                         model_seconds=result.seconds, codes=codes if settings.keep_codes else None,
                         carried=None if task.item is None else carried_keys(task.item))


def read_codes(name: Path, item: Item | None, codec: str | None) -> CodesFile:
    """A codes file, or a table's row of codes (``item``), read and checked as decode reads it; ``codec``: a bare
    array's (see :func:`mimi_cli.codes.load_codes`)."""
    if item is None:
        return load_codes(name, codec)
    row = row_codes(item, str(name), codec or DEFAULT_CODEC)
    return dataclasses.replace(row, codec_assumed=row.bare and codec is None)


def _clipped(samples: int) -> str:
    return f"{counted(samples, 'sample')} beyond [-1, 1] {'were' if samples > 1 else 'was'} clipped"


def _clipped_in_decoding(samples: int, stream: bool) -> list[str]:
    """decode's warning of ``samples`` clipped (none: no warning), with how to scale them down instead."""
    remedy = "decode without --stream, with --rescale," if stream else "--rescale"
    return [f"{_clipped(samples)} ({remedy} scales the audio down instead)"] if samples else []


def codes_warnings(name: Target, codes: CodesFile) -> list[str]:
    """What decode and inspect say of codes read from ``name`` that they take, but may have taken wrongly: a bare
    array of another codec's codes (:func:`another_codec`), or whose axes may be [frames, codebooks]."""
    found = another_codec(name, codes.codec, int(codes.codes.max(initial=0)), codes.codes.size) \
        if codes.codec_assumed else []
    if codes.bare and codes.num_codebooks > codes.num_frames:  # [frames, K] fits [K, frames] for 1..32 frames
        found.append(f"{name} holds {counted(codes.num_codebooks, 'codebook')} over "
                     f"{counted(codes.num_frames, 'frame')}; if its axes are [frames, codebooks], transpose it: "
                     "codes are [K, frames]")
    return found


def another_codec(name: Target, codec: str, top: int, count: int) -> list[str]:
    """Bare arrays read as ``codec``'s, the default, none having named one, whose ``count`` codes (the highest
    ``top``) all fit a smaller codebook of another codec: most likely that codec's (64 codes of Mimi's 2048 all
    below EnCodec's 1024: once in 2⁶⁴)."""
    if count < 64:
        return []
    own = codec_spec(codec).config()
    fits = [spec for spec in CODECS.values() if top < spec.config().codebook_size < own.codebook_size]
    return [f"{name}: every code is below {spec.config().codebook_size}, as {spec.config().display_name}'s are, "
            f"and it was read as {own.display_name}'s (the default for a bare array): if it holds "
            f"{spec.config().display_name} codes, give --codec {spec.name}" for spec in fits[:1]]


def decode_file(task: Task, settings: Settings, models: Models, report: Report = no_report) -> FileResult:
    """Read and check one codes file, decode it and write the audio."""
    codes = read_codes(task.input, task.item, settings.codec)
    if settings.num_codebooks is not None:
        codes = codes.first_levels(settings.num_codebooks, task.input)
    config = codec_spec(codes.codec).config()
    warnings, notes = [], []
    if settings.codec is not None and codes.codec != settings.codec:  # a codes file names its own
        warnings.append(f"{task.input} holds {config.display_name} codes, as it says; --codec {settings.codec} "
                        "is for bare arrays (.npy) and was not used")
    warnings += codes_warnings(task.input, codes)
    rate = settings.sample_rate or config.sample_rate
    if settings.raw_output is None:  # (headerless samples hold any rate and channels)
        check_audio_output(task.output, rate, codes.channels)
    if not settings.stream:
        check_batch_memory(codes.num_samples / codes.sample_rate, codes.codec,
                           also_per_second=output_bytes(codes.codec, codes.channels, settings.sample_rate))
    loaded = models.get(codes.codec, report)
    if codes.weights_id and codes.weights_id != loaded.weights_id:  # a bare array (.npy) names no weights
        warnings.append(f"{task.input} was encoded with weights {codes.weights_id}, decoding with "
                        f"{loaded.weights_id}")
    duration = codes.num_samples / config.sample_rate
    if settings.stream:
        seconds, clipped = decode_stream(loaded, codes, task.output, settings.sample_rate,
                                         lambda done: report("Decoding", done, duration), settings.replace,
                                         decoded_comment(codes, settings), settings.raw_output)
    else:
        report(f"Decoding {codes.num_frames} frames", 0.0, None)
        pcm, seconds = decode_codes(loaded, codes, settings.sample_rate)
        if settings.rescale:
            pcm, factor = rescaled(pcm)
            if factor < 1:
                notes.append(f"scaled by {factor:.3g} (its peak was {RESCALE_PEAK / factor:.3g}) so that nothing clips")
        clipped = write_audio(task.output, pcm, rate, settings.replace, decoded_comment(codes, settings),
                              settings.raw_output)
    warnings += _clipped_in_decoding(clipped, settings.stream)
    return FileResult.of(task, "done", duration_s=round(duration, 3), frames=codes.num_frames, warnings=warnings,
                         notes=notes,
                         num_codebooks=codes.num_codebooks, sample_rate=rate, model_seconds=seconds,
                         carried=None if task.item is None else carried_keys(task.item))


def decode_coming(task: Task, lines: list[bytes], settings: Settings, models: Models,
                  report: Report = no_report) -> FileResult:
    """``decode --stream -`` of codes as JSON lines, a frame each, what a model prints as it generates them (the
    first ``lines``, the rest still coming on standard input): each frame decoded as it comes, a frame a step, and
    its audio written at once (-o -: to a player at the end of the pipe). A bare array's, for --codec (Mimi by
    default): every frame as long as it is, the last one's padding too."""
    codec = settings.codec or DEFAULT_CODEC
    config = codec_spec(codec).config()
    frames = frames_coming(lines, standard_input(), codec, "standard input")
    first = next(frames)  # [C, K, 1] (lines_coming found it a frame)
    head = CodesFile.from_codes(first, config, config.frame_size, config.sample_rate, first.shape[0], weights_id="")
    if settings.num_codebooks is not None:
        head = head.first_levels(settings.num_codebooks, "standard input")
    levels, rate, count, top = head.num_codebooks, settings.sample_rate or config.sample_rate, 0, 0
    if settings.raw_output is None:
        check_audio_output(task.output, rate, head.channels)
    loaded = models.get(codec, report)

    def chunks() -> Iterator[np.ndarray]:
        nonlocal count, top
        for frame in itertools.chain([first], frames):
            count, top = count + 1, max(top, int(frame.max()))
            yield frame[:, :levels]

    seconds, clipped = write_steps(
        stepped(loaded, chunks(), head.channels, None, 1), config.sample_rate, head.channels, None, task.output,
        settings.sample_rate, lambda done: report("Decoding", done, None), settings.replace,
        decoded_comment(head, settings), settings.raw_output)
    warnings = _clipped_in_decoding(clipped, stream=True)
    if settings.codec is None:  # (said once all have come, as of a file's)
        warnings += another_codec("standard input", codec, top, count * first.shape[0] * first.shape[1])
    return FileResult.of(task, "done", duration_s=round(count * config.frame_size / config.sample_rate, 3),
                         frames=count, warnings=warnings, num_codebooks=levels, sample_rate=rate, model_seconds=seconds)


class Worker:
    """One engine's unit of work: weights loaded once per codec, then files one at a time."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.models = Models(settings.weights)
        self._warned: set[str] = set()

    def run(self, task: Task, report: Report | None = None) -> FileResult:
        """Process one file. Every problem with the file is a "failed" result; weights errors propagate
        (they would fail every file the same way), and so do interrupts."""
        if task.skip or (self.settings.skip_existing and not task.redo and output_exists(task.output)):
            return skipped(task, self.settings)  # skipped when planned, or made since by another run
        step = {"encode": encode_file, "decode": decode_file, "roundtrip": roundtrip_file}[self.settings.kind]
        head_check = (check_codes_head if self.settings.kind == "decode" else
                      check_raw_head if self.settings.raw is not None else check_audio_head)
        try:
            name = str(task.input)  # an item is read from its container, never by its name (which may be "-")
            read, coming = self._as_it_comes(task)
            if coming is not None:
                result = decode_coming(task, coming, self.settings, self.models, report or no_report)
            else:
                copied = task.item is None and not reads_as_it_comes(task, self.settings)
                with (readable(task.input, head_check, read) if copied else
                      nullcontext(Readable(Path(name), name))) as source:
                    result = step(dataclasses.replace(task, input=source.path), self.settings, self.models,
                                  report or no_report)
                    result.input, result.warnings = name, [source.named(w) for w in result.warnings]
                    if result.metrics is not None:
                        result.metrics["input"] = name
        except FILE_ERRORS as exc:
            return failed(task, exc, self.settings)
        for codec, loaded in self.models.loaded().items():  # the loader's findings, once per worker
            if codec not in self._warned:
                self._warned.add(codec)
                result.warnings[:0] = weights_warnings(loaded)
        return result


    def _as_it_comes(self, task: Task) -> tuple[bytes, list[bytes] | None]:
        """What of standard input is read as it comes, not copied whole first, with ``--stream``: codes as JSON
        lines (decode: their first lines, see codes.lines_coming; else the bytes read to tell, and None), or
        headerless samples (encode --raw: see reads_as_it_comes)."""
        if str(task.input) != STDIN or not self.settings.stream or self.settings.kind == "roundtrip" or (
                self.settings.kind == "encode" and self.settings.raw is None):
            return b"", None
        check_stdin("'-'", "the codes" if self.settings.kind == "decode" else "the samples")
        return lines_coming(standard_input()) if self.settings.kind == "decode" else (b"", None)


# what a file's work may raise: its own problem (failed), or what ``failed`` raises again
FILE_ERRORS = (MimiError, MemoryError, OSError, ValueError, RuntimeError, LookupError, TypeError, ArithmeticError,
               ImportError)


def failed(task: Task, exc: BaseException, settings: Settings) -> FileResult:
    """``exc``, met doing ``task``, as the task's failed result in one line; raised again when it is not this
    file's: weights (every file would fail the same way), a reader of standard output gone (| head: the run ends,
    in silence, cli.main)."""
    if isinstance(exc, (WeightsError, BrokenPipeError)):
        raise exc
    if isinstance(exc, OutputExistsError) and settings.skip_existing:
        return skipped(task, settings)  # another run made it while this one worked
    if isinstance(exc, MimiError):
        error = str(exc)
    elif isinstance(exc, MemoryError):  # this file's, maybe (a long file with a full machine)
        more = ", or use fewer --jobs" if settings.stream else ", or use --stream (memory stays flat) and fewer --jobs"
        error = str(out_of_memory(exc, "" if settings.kind == "roundtrip" else more))
    elif isinstance(exc, UnicodeEncodeError):
        error = str(unnamable(exc) or f"{type(exc).__name__}: {exc}")
    elif isinstance(exc, OSError):  # the system's words, with what to do at a limit (as the command line says)
        error = f"{exc.filename}: {os_reason(exc)}" if exc.filename else os_reason(exc)
    elif (refused := no_thread(exc) or no_room_to_load(exc)) is not None:  # the machine's limits, met on this file
        error = str(refused)
    else:  # unexpected, but only this file's: a library's error on a hostile file (pyarrow's ArrowIndexError,
        # a decoder's KeyError) fails the file in one line, not the run; one line even where the library's own
        # message takes several (matplotlib's parse errors point at a column on the next)
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return FileResult.of(task, "failed", error=error)


def skipped(task: Task, settings: Settings) -> FileResult:
    """A task whose output exists (--skip-existing). With ``keep_codes`` (--parquet) its codes and carried
    keys are read back from that output, so that a resumed run's shards still hold a row for every input."""
    if not settings.keep_codes or task.output is None or is_bare_array_path(task.output):
        return FileResult.of(task, "skipped")
    try:
        codes = load_codes(Path(task.output), settings.codec)
    except MimiError as exc:
        return FileResult.of(task, "skipped", warnings=[f"its existing output cannot be read back for --parquet, "
                                                        f"so it has no row there ({exc})"])
    return FileResult.of(task, "skipped", frames=codes.num_frames, codes=codes,
                         carried=None if task.item is None else carried_keys(task.item))


def made_otherwise(task: Task, settings: Settings, run_weights_id: Callable[[], str]) -> str | None:
    """How a task's existing output differs from what this run would write there, or None if it does not.
    Codes: another codec, number of codebooks or channel layout, made with or without --stream where the codec's
    two modes give other codes (as the file records it), or other weights (``run_weights_id`` is
    called only when the rest matches); a bare array (.npy) records neither codec nor weights, so its shape
    alone is compared. Audio: another sample rate, number of channels or length. One that cannot be read back
    differs."""
    if settings.kind == "decode":
        return _audio_made_otherwise(task, settings)
    spec = codec_spec(settings.codec)
    config = spec.config()
    try:
        codes = load_codes(Path(task.output), config.name)
    except MimiError as exc:
        return f"it cannot be read back as codes ({exc})"
    levels = config.levels(settings.num_codebooks)
    streams = codes.source_channels if settings.channels == "split" else 1
    differences = [
        *([f"codec {codes.codec}, not {config.name}"] if codes.codec != config.name else []),
        *([f"{counted(codes.num_codebooks, 'codebook')}, not {levels}"] if codes.num_codebooks != levels else []),
        *([f"{codes.channels} code stream(s), not {streams} (--channels {settings.channels})"]
          if codes.channels != streams else []),
        *([f"encoded {'with' if codes.streamed else 'without'} --stream"] if codes.streamed is not None and
          codes.streamed != settings.stream and spec.stream_codes_differ else []),
    ]
    if not differences and codes.weights_id and codes.weights_id != run_weights_id():
        differences.append(f"weights {codes.weights_id}, not {run_weights_id()}")
    return "; ".join(differences) or None


DECODED = re.compile(r"mimi-cli: (\S+) codes, (\d+) codebooks((?:, --[a-z]+)*)")  # decoded_comment's, read back


def decoded_comment(codes: CodesFile, settings: Settings) -> str:
    """What decoded audio says made it, in its comment tag: "mimi-cli: mimi codes, 8 codebooks" (the levels
    decoded), then ", --stream" (Mimi's streaming audio differs from batch mode's past 10 s) and ", --rescale"
    (loud audio scaled, not clipped) where they were given. --skip-existing compares them: nothing else in the
    audio records them."""
    given = "".join(f", {option}" for option, on in _tagged_options(settings).items() if on)
    return f"mimi-cli: {codes.codec} codes, {codes.num_codebooks} codebooks{given}"


def _tagged_options(settings: Settings) -> dict[str, bool]:
    """The options decoded audio's comment tag records, each with whether this run gives it."""
    return {"--stream": settings.stream, "--rescale": settings.rescale}


def _audio_made_otherwise(task: Task, settings: Settings) -> str | None:
    """Decoded audio records its rate and channels, and in its comment tag the levels decoded, --stream and
    --rescale (decoded_comment): those this run writes for the task's codes (a table's row is not read while
    planning: only a --sample-rate and -n given are compared then). Audio without the tag (another tool's, an
    earlier version's) says none of the latter. A codes file's audio has its length too: a WAV or Ogg file cut
    short (a copy stopped part way) holds fewer samples, an MP3 one makes its decoder complain on opening."""
    import soundfile as sf

    from mimi_cli.c_stderr import CaughtStderr

    try:  # a pipe would block the open, a device (a link to /dev/zero) be read for ever
        kind = file_kind(os.stat(native(task.output)).st_mode)
    except OSError as exc:
        return f"it cannot be read back as audio ({os_reason(exc)})"
    if kind is not None:
        return f"it is {kind}, not an audio file"
    chatter = CaughtStderr() if Path(task.output).suffix.lower() == ".mp3" else None  # mpg123 prints on stderr itself
    try:
        with chatter.caught() if chatter else nullcontext(), sf.SoundFile(native(task.output)) as found:
            made = DECODED.fullmatch(found.comment or "")
            exact_length = found.format != "MP3"  # an MP3 file's length is its LAME tag's, as its decoder reads it
    except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        return f"it cannot be read back as audio ({getattr(exc, 'error_string', None) or first_line(str(exc))})"
    finally:
        if chatter:
            chatter.close()
    if chatter and chatter.count:  # "Xing stream size off by more than 1%": a file cut short
        return f"its MP3 decoder says: {chatter.lines[0]}; it is cut short or damaged"
    rate, channels, levels, length = settings.sample_rate, None, settings.num_codebooks, None
    if task.item is None:
        try:
            codes = load_codes(Path(task.input), settings.codec)
        except MimiError:  # the input's own problem: nothing to compare with
            return None
        codec_rate = codec_spec(codes.codec).config().sample_rate
        rate, channels = rate or codec_rate, codes.channels
        levels = min(levels or codes.num_codebooks, codes.num_codebooks)  # more than it holds fails on its own
        length = -(-codes.num_samples * rate // codec_rate)  # resample_poly's length, as decode_codes writes
    if exact_length and length and found.samplerate == rate and found.frames != length:  # (a WAV or Ogg file cut short)
        return f"it holds {found.frames:,} samples, not {length:,}: it is cut short or damaged"
    differences = [*([f"{found.samplerate} Hz, not {rate}"] if rate and found.samplerate != rate else []),
                   *([f"{found.channels} channel(s), not {channels}"] if channels and found.channels != channels
                     else []),
                   *([f"decoded from {made[2]} codebooks, not {levels}"] if made and levels and int(made[2]) != levels
                     else []),
                   *(_options_differ(made, settings) if made else [])]
    return "; ".join(differences) or None


def _options_differ(made: re.Match, settings: Settings) -> list[str]:
    """How the options decoded audio's tag records (``DECODED``) differ from this run's: --rescale always,
    --stream where the codec's streaming audio differs from its batch audio."""
    given = set(made[3].split(", ")[1:])
    stream_differs = made[1] in CODECS and codec_spec(made[1]).stream_codes_differ
    return [f"decoded {'with' if option in given else 'without'} {option}"
            for option, on in _tagged_options(settings).items()
            if (option in given) != on and (option != "--stream" or stream_differs)]


def roundtrip_file(task: Task, settings: Settings, models: Models, report: Report = no_report) -> FileResult:
    """Encode then decode one file (or item) in memory; metrics (``null`` where undefined) in ``result.metrics``;
    the decoded audio to ``task.output`` and the spectrograms to ``task.plot`` where given.

    ``settings.channels``: the mono mix is measured (``mix``), or each channel encoded, decoded and measured on
    its own (``split``: the quality metrics are the channels' mean, each channel's in ``per_channel``).
    ``settings.stream``: the codec's streaming mode (encode and decode --stream's codes and audio), the file
    still held whole. The outputs (decoded audio, plot) are checked before any work, like every output.
    """
    from mimi_cli import metrics
    from mimi_cli.fileio import check_output, file_ids, is_input_copy

    input, output, plot = task.input, task.output, task.plot
    inputs = file_ids([input if task.item is None else Path(task.item.container),
                       *weights_files(settings.weights, CODECS.values())])
    for target in (output, plot):
        if target is not None:
            check_output(target, settings.replace, inputs, create_parents=task.new_folder)
    if output is not None and plot is not None and Path(output).resolve() == plot.resolve():
        raise MimiError("-o and --plot name the same file; give two names")
    rate = codec_spec(settings.codec).config().sample_rate
    with open_input(task, settings) as f:
        streams = check_split(input, f.channels, settings.channels)
        if output is not None:
            check_audio_output(output, rate, streams)
        audio = read_for_batch(input, f, settings.codec, settings.channels, "roundtrip works on the whole file: "
                               "split it into shorter files, or use encode --stream and decode --stream",
                               output_bytes(settings.codec, streams) + metrics.BYTES_PER_SECOND)
    if plot is not None:  # before any work, so that no output is written by a run that then fails
        from mimi_cli.plot import plot_checks

        plot_checks(len(audio.samples) * rate // audio.sample_rate, rate, streams)
    loaded = models.get(settings.codec, report)
    config = loaded.model.config
    levels = config.levels(settings.num_codebooks)
    encoded, reference, decoded, decode_seconds = _round_trip(loaded, audio, levels, settings, report)
    warnings = reader_warnings(input, f)
    if output is not None:
        clipped = write_audio(output, decoded, config.sample_rate, settings.replace,
                              decoded_comment(encoded.codes, settings))
        if clipped:
            warnings.append(_clipped(clipped))
    duration = reference.shape[1] / config.sample_rate
    problems: list[str] = []
    per_channel = [_quality(ours, theirs, config.sample_rate, problems)
                   for ours, theirs in zip(reference, decoded, strict=True)]
    warnings += dict.fromkeys(problems)  # once, however many channels had it
    metrics = {
        "input": str(input), "codec": config.name, "duration_s": round(duration, 3), "codebooks": levels,
        "frames": encoded.codes.num_frames, "channels": len(per_channel),
        "bitrate_kbps": round(config.bitrate(levels) / 1000, 3),
        **_rounded(_mean(per_channel)),
        "streamed": settings.stream,
        "encode_rtf": round(encoded.seconds / duration, 4), "decode_rtf": round(decode_seconds / duration, 4),
        **({"per_channel": [_rounded(channel) for channel in per_channel]} if settings.channels == "split" else {}),
        **{key: str(path) for key, path in (("output", output), ("plot", plot)) if path is not None},
    }
    if plot is not None:
        from mimi_cli.plot import plot_roundtrip

        report("Plotting", 0.0, None)
        sdr = "undefined" if metrics["si_sdr_db"] is None else f"{metrics['si_sdr_db']:.1f} dB"
        mel = "undefined" if metrics["log_mel_distance"] is None else f"{metrics['log_mel_distance']:.3f}"
        mean = f" (mean of {streams} channels)" if streams > 1 else ""
        title = (f"{config.display_name}, {counted(levels, 'codebook')} ({metrics['bitrate_kbps']:g} kbps): "
                 f"SI-SDR {sdr}, log-mel distance {mel}{mean}"
                 + ("" if is_input_copy(input) else f"\n{input.name}"))  # a copy of a stream has no name of its own
        plot_roundtrip(plot, reference, decoded, config.sample_rate, title, settings.replace)
    return FileResult.of(task, "done", duration_s=round(duration, 3), frames=encoded.codes.num_frames,
                         warnings=warnings, metrics=metrics,
                         notes=conversion_notes(audio.channels, audio.sample_rate, config.sample_rate,
                                                settings.channels))


def roundtrip_mean(results: list[FileResult]) -> dict:
    """The mean of round trips' metrics over the files done (duration: their sum; real-time factors: the time
    over the audio, all files together, or the files' mean when all are too short to count in milliseconds);
    empty when none was."""
    done = [r.metrics for r in results if r.status == "done"]
    if not done:
        return {}
    seconds = sum(m["duration_s"] for m in done)
    weights = [m["duration_s"] / seconds for m in done] if seconds else [1 / len(done)] * len(done)
    names = _quality_names(done[0])  # every file has the same (the metrics extra is installed or not)
    quality = _rounded(_mean([{name: m[name] for name in names} for m in done]))
    return {"files": len(done), "duration_s": round(seconds, 3), **quality,
            **{rtf: round(sum(m[rtf] * w for m, w in zip(done, weights, strict=True)), 4)
               for rtf in ("encode_rtf", "decode_rtf")}}


def _quality_names(metrics: dict) -> list[str]:
    """The quality metrics in a round trip's ``metrics`` (PESQ and STOI where their packages are installed)."""
    return [name for name in ("si_sdr_db", "log_mel_distance", "pesq_wb", "stoi") if name in metrics]


def _round_trip(loaded: LoadedModel, audio: Audio, levels: int, settings: Settings,
                report: Report) -> tuple[EncodeResult, np.ndarray, np.ndarray, float]:
    """Encode ``audio`` and decode its codes, in batch or streaming mode: (the encoding, what the model was given
    ``[C, N]``, what the decoder gave back ``[C, N]``, the decoder's seconds)."""
    report(f"Encoding {audio.duration:.1f} s", 0.0, None)
    if not settings.stream:
        encoded = encode_audio(loaded, audio, levels, settings.channels)
        report("Decoding", 0.0, None)
        decoded, seconds = decode_codes(loaded, encoded.codes)
        return encoded, np.atleast_2d(encoded.pcm), decoded, seconds
    # the blocks encode --stream reads, and the steps decode --stream writes
    step = stream_read_frames(audio.sample_rate, loaded.model.config.sample_rate)
    blocks = (audio.samples[i:i + step] for i in range(0, len(audio.samples), step))
    encoded = encode_blocks(loaded, blocks, audio.sample_rate, audio.channels, levels, None, settings.channels)
    report("Decoding", 0.0, None)
    steps = list(decoded_steps(loaded, encoded.codes))
    reference = model_input(audio, loaded.model.config.sample_rate, settings.channels)  # what the blocks became
    return (encoded, np.atleast_2d(reference), np.concatenate([pcm for pcm, _ in steps], axis=1),
            sum(seconds for _, seconds in steps))


def check_split(name: Path | str, channels: int, mode: Channels) -> int:
    """How many code streams a file of ``channels`` channels makes in ``mode``; refused, before any work, past
    what a codes file holds."""
    if mode == "split" and channels > MAX_CHANNELS:  # a file decode would refuse
        raise InvalidAudioError(f"{name} has {channels} channels; --channels split writes at most {MAX_CHANNELS} "
                                "code streams to a codes file: split the file, or mix it")
    return channels if mode == "split" else 1


DIGITS = {"si_sdr_db": 2, "log_mel_distance": 4}  # shown; the rest (PESQ, STOI) to 3


def _quality(reference: np.ndarray, decoded: np.ndarray, sample_rate: int,
             problems: list[str]) -> dict[str, float | None]:
    """One channel's quality metrics, NaN or None where undefined (silence, a clip shorter than its window;
    ``problems`` gets why, where a library could not score the audio)."""
    from mimi_cli.metrics import log_mel_distance, perceptual, si_sdr

    return {"si_sdr_db": si_sdr(reference, decoded),
            "log_mel_distance": log_mel_distance(reference, decoded, sample_rate),
            **perceptual(reference, decoded, sample_rate, problems)}


def _mean(rows: list[dict[str, float | None]]) -> dict[str, float]:
    """Each metric's mean over the rows (channels, files) where it is defined (NaN where it is in none)."""
    import math

    values = {name: [row[name] for row in rows if row[name] is not None and math.isfinite(row[name])]
              for name in rows[0]}
    return {name: sum(found) / len(found) if found else math.nan for name, found in values.items()}


def _rounded(metrics: dict[str, float | None]) -> dict[str, float | None]:
    """Metrics rounded, None (JSON null) where undefined."""
    return {name: None if value is None else _defined(value, DIGITS.get(name, 3)) for name, value in metrics.items()}


def _defined(value: float, digits: int) -> float | None:
    """A metric rounded, or None (JSON null) where it is undefined (silence, a clip shorter than its window)."""
    import math

    return round(value, digits) if math.isfinite(value) else None
