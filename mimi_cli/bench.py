"""Speed measurements shared by `mimi bench` and the scripts in benchmarks/.

Everything runs on realistic random weights of the released size built in
memory, so it works on a fresh install with no weights file.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from mimi_cli.models.mimi.model import Mimi


@dataclass
class StepLatency:
    """Milliseconds per 80 ms frame for one streaming direction."""

    direction: str  # "encode" or "decode"
    frames_per_step: int
    p50_ms: float
    p95_ms: float
    max_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise shaped like speech (syllable-rate envelope), 24 kHz float32; only for timing."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    return (0.1 * envelope * rng.standard_normal(t.shape)).astype(np.float32)


def stream_latency(model: Mimi, frames: int = 200, frames_per_step: int = 1, warmup: int = 5,
                   num_codebooks: int = 8) -> list[StepLatency]:
    """Time every encoder and decoder push of a ``frames``-frame stream, per frame.

    200 frames (16 s) by default, so that the steps past the 250-step attention
    window, the steady state of a long stream, dominate. The first ``warmup``
    steps are not counted.
    """
    frame = model.config.frame_size
    step = frames_per_step * frame
    pcm = speech_like((frames + warmup * frames_per_step) * frame / model.config.sample_rate)
    encoder = model.stream_encoder(num_codebooks=num_codebooks, frames_per_step=frames_per_step)
    decoder = model.stream_decoder(frames_per_step=frames_per_step)
    times: dict[str, list[float]] = {"encode": [], "decode": []}
    for index, start in enumerate(range(0, len(pcm) - step + 1, step)):
        t0 = time.perf_counter()
        codes = encoder.push(pcm[start : start + step])
        t1 = time.perf_counter()
        decoder.push(codes)
        t2 = time.perf_counter()
        if index >= warmup:
            times["encode"].append((t1 - t0) / frames_per_step * 1e3)
            times["decode"].append((t2 - t1) / frames_per_step * 1e3)
    return [StepLatency(direction, frames_per_step, float(np.median(ms)), float(np.percentile(ms, 95)),
                        float(np.max(ms))) for direction, ms in times.items()]
