"""File-level operations shared by the CLI commands: load a model, encode audio, decode codes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_cli.audio import Audio, StreamResampler, audio_format, open_audio, read_blocks, resample, to_mono
from mimi_cli.codes import CodesFile
from mimi_cli.errors import MimiError
from mimi_cli.fileio import atomic_output
from mimi_cli.models import DEFAULT_CODEC, codec_spec
from mimi_cli.models.codec import Codec
from mimi_cli.weights import resolve_weights, weights_id


# Upper bounds on peak RSS in batch mode, with margin: weights and libraries, then per second of
# audio. Both codecs run their SEANets in chunks; what grows with the input is Mimi's transformer
# activations (benchmarks/memory.py) and EnCodec's LSTM gates (≈2.1 MB/s between 60 s and 600 s of
# audio); see docs/performance.md.
BATCH_BYTES_PER_SECOND = {"mimi": 2e6, "encodec-24khz": 2.5e6}
_BATCH_BASE_BYTES = 0.6e9


def check_batch_memory(seconds: float, codec: str = DEFAULT_CODEC) -> None:
    """Refuse a batch run that cannot fit in this machine's memory, before doing any work."""
    import os

    needed = _BATCH_BASE_BYTES + BATCH_BYTES_PER_SECOND[codec] * seconds
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not available on this platform
        return
    if needed > 0.9 * physical:
        remedy = ("use --stream, which keeps memory flat" if codec == "mimi"
                  else "split the audio into shorter files (this codec has no streaming mode here)")
        raise MimiError(f"{seconds / 60:.1f} min of audio would need about {needed / 1e9:.0f} GB in batch mode "
                        f"(this machine has {physical / 1e9:.0f} GB); {remedy}")


@dataclass
class LoadedModel:
    model: Codec
    weights_path: Path
    weights_id: str
    load_seconds: float


def load_model(weights: str | Path | None, codec: str = DEFAULT_CODEC) -> LoadedModel:
    """Resolve and load ``codec``'s weights (see :func:`mimi_cli.weights.resolve_weights`)."""
    start = time.perf_counter()
    path = resolve_weights(weights, codec)
    model = codec_spec(codec).model().from_file(path)
    return LoadedModel(model, path, weights_id(path), time.perf_counter() - start)


@dataclass
class EncodeResult:
    codes: CodesFile
    pcm: np.ndarray | None  # the model's input, mono float32 at 24 kHz (None in --stream mode: not kept)
    seconds: float  # time spent in the model


def encode_audio(loaded: LoadedModel, audio: Audio, num_codebooks: int) -> EncodeResult:
    """Downmix and resample ``audio`` to the model's rate, then encode it."""
    config = loaded.model.config
    pcm = to_mono(audio, config.sample_rate)
    start = time.perf_counter()
    codes = loaded.model.encode(pcm, num_codebooks)
    seconds = time.perf_counter() - start
    codes_file = CodesFile.from_codes(codes, config, num_samples=len(pcm), source_sample_rate=audio.sample_rate,
                                      source_channels=audio.channels, weights_id=loaded.weights_id)
    return EncodeResult(codes_file, pcm, seconds)


def decode_codes(loaded: LoadedModel, codes: CodesFile, sample_rate: int | None = None) -> tuple[np.ndarray, float]:
    """Decode, trim to the original length, resample if asked; returns (pcm, seconds in the model)."""
    start = time.perf_counter()
    pcm = loaded.model.decode(codes.codes[0])[: codes.num_samples]
    seconds = time.perf_counter() - start
    if sample_rate is not None:
        pcm = resample(pcm, loaded.model.config.sample_rate, sample_rate)
    return pcm, seconds


# --stream works on steps of this many frames (1.28 s): enough to amortise reading the
# weights, small enough that memory stays flat. The codes are those of moshi's streaming
# mode, whatever the step (see models/mimi/streaming.py).
STREAM_FRAMES_PER_STEP = 16
# Source frames read per block in --stream mode.
STREAM_READ_FRAMES = 1 << 16

Progress = Callable[[float], None]  # called with seconds of audio done


def _require_streaming(model: Codec) -> None:
    if not hasattr(model, "stream_encoder"):
        raise MimiError(f"--stream is available for Mimi only; {model.config.display_name} runs in batch mode")


def encode_stream(loaded: LoadedModel, path: Path, num_codebooks: int,
                  progress: Progress | None = None) -> EncodeResult:
    """Encode a file block by block in flat memory (read, downmix, resample, encode as it comes)."""
    _require_streaming(loaded.model)
    config = loaded.model.config
    encoder = loaded.model.stream_encoder(num_codebooks=num_codebooks, frames_per_step=STREAM_FRAMES_PER_STEP)
    pieces, num_samples, seconds = [], 0, 0.0
    with open_audio(path) as f:
        resampler = StreamResampler(f.samplerate, config.sample_rate)
        source_rate, channels = f.samplerate, f.channels
        for block in read_blocks(path, f, STREAM_READ_FRAMES):
            pcm = resampler.push(block.mean(axis=1))
            num_samples += len(pcm)
            start = time.perf_counter()
            pieces.append(encoder.push(pcm))
            seconds += time.perf_counter() - start
            if progress:
                progress(num_samples / config.sample_rate)
    tail = resampler.flush()
    num_samples += len(tail)
    start = time.perf_counter()
    pieces += [encoder.push(tail), encoder.flush()]
    seconds += time.perf_counter() - start
    codes = CodesFile.from_codes(np.concatenate(pieces, axis=1), config, num_samples=num_samples,
                                 source_sample_rate=source_rate, source_channels=channels,
                                 weights_id=loaded.weights_id)
    return EncodeResult(codes, None, seconds)


def decode_stream(loaded: LoadedModel, codes: CodesFile, output: Path, sample_rate: int | None = None,
                  progress: Progress | None = None) -> tuple[float, int]:
    """Decode step by step straight into ``output`` (atomically); returns (seconds in the model, clipped samples)."""
    import soundfile as sf

    _require_streaming(loaded.model)
    config = loaded.model.config
    rate = sample_rate or config.sample_rate
    resampler = StreamResampler(config.sample_rate, rate)
    decoder = loaded.model.stream_decoder(frames_per_step=STREAM_FRAMES_PER_STEP)
    remaining, seconds, clipped = codes.num_samples, 0.0, 0
    step = STREAM_FRAMES_PER_STEP
    with atomic_output(output) as tmp, sf.SoundFile(tmp, "w", rate, 1, format=audio_format(output)) as f:
        def write(pcm: np.ndarray) -> None:
            nonlocal clipped
            clipped += int(np.count_nonzero(np.abs(pcm) > 1))
            f.write(np.clip(pcm, -1, 1))

        pieces = [codes.codes[0, :, first : first + step] for first in range(0, codes.num_frames, step)]
        for piece in [*pieces, None]:  # None: flush the frames still waiting for a whole step
            start = time.perf_counter()
            pcm = decoder.push(piece) if piece is not None else decoder.flush()
            seconds += time.perf_counter() - start
            pcm = pcm[:remaining]  # the last frame's padding is not audio
            remaining -= len(pcm)
            write(resampler.push(pcm))
            if progress:
                progress((codes.num_samples - remaining) / config.sample_rate)
        write(resampler.flush())
    return seconds, clipped
