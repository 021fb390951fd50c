"""File-level operations shared by the CLI commands: load a model, encode audio, decode codes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_cli.audio import Audio, resample, to_mono
from mimi_cli.codes import CodesFile
from mimi_cli.models.mimi import Mimi
from mimi_cli.weights import resolve_weights, weights_id


@dataclass
class LoadedModel:
    model: Mimi
    weights_path: Path
    weights_id: str
    load_seconds: float


def load_model(weights: str | Path | None) -> LoadedModel:
    """Resolve and load the weights (see :func:`mimi_cli.weights.resolve_weights`)."""
    start = time.perf_counter()
    path = resolve_weights(weights)
    model = Mimi.from_file(path)
    return LoadedModel(model, path, weights_id(path), time.perf_counter() - start)


@dataclass
class EncodeResult:
    codes: CodesFile
    pcm: np.ndarray  # the model's input: mono float32 at 24 kHz
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
