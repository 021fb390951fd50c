"""Speed measurements shared by `mimi bench` and the scripts in benchmarks/.

Everything runs on realistic random weights of the released size built in
memory, so it works on a fresh install with no weights file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np

from mimi_cli.models.codec import Codec


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


def stream_latency(model: Codec, frames: int = 200, frames_per_step: int = 1, warmup: int = 5,
                   num_codebooks: int | None = None) -> list[StepLatency]:
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


@dataclass
class StreamsStep:
    """B streams advanced together, one frame each per step (encode and decode)."""

    streams: int
    step_ms: float  # p50 of one step: B frames encoded and B frames decoded
    frame_ms: float  # the audio one step adds to each stream
    duplex: bool = False  # encode and decode at once (stream_duplex), not the one after the other
    encode_ms: float | None = None  # p50 of the encode alone (one after the other only)
    decode_ms: float | None = None

    @property
    def real_time(self) -> bool:
        """Do the B streams keep up: encode + decode of a step within one frame of audio?"""
        return self.step_ms <= self.frame_ms

    def as_dict(self) -> dict:
        return {**asdict(self), "ms_per_stream_frame": self.step_ms / self.streams, "real_time": self.real_time}


def many_streams(model: Codec, counts: tuple[int, ...] = (1, 4, 8, 16), frames: int = 40, warmup: int = 5,
                 num_codebooks: int | None = None, find_limit: bool = True, duplex: bool = False) -> list[StreamsStep]:
    """Per-step time of B concurrent streams in one call, 1 frame per step: the weights are read once
    per step for all B streams, which is what serving many users needs. One after the other
    (``stream_encoder(batch_size=B)``, then ``stream_decoder``: a step decodes the codes it just made),
    or with ``duplex`` both at once (``stream_duplex``: a step decodes the codes of the step before, as
    a server decodes a model's answer while encoding what the user says).

    With ``find_limit``, the B between the largest real-time count and the next one are then halved
    until they meet (:func:`next_streams_count`), so the largest real-time B in the results is the
    most streams this machine keeps real-time (up to the largest count tried). Sorted by B.
    """
    def measure(count: int) -> StreamsStep:
        return _streams_step(model, count, frames, warmup, num_codebooks, duplex)

    results = [measure(count) for count in counts]
    while find_limit and (count := next_streams_count(results)) is not None:
        results.append(measure(count))
    return sorted(results, key=lambda r: r.streams)


def next_streams_count(results: list[StreamsStep]) -> int | None:
    """The B halfway between the largest real-time B measured and the smallest B measured above it;
    None when those two are adjacent or no B above it was measured."""
    held = max((r.streams for r in results if r.real_time), default=0)
    above = [r.streams for r in results if r.streams > held]  # none of them real-time, by the max above
    if not above or min(above) - held <= 1:
        return None
    return (held + min(above)) // 2


def _streams_step(model: Codec, count: int, frames: int, warmup: int, num_codebooks: int | None,
                  duplex: bool) -> StreamsStep:
    """Median step times of ``count`` streams advancing one frame each per step."""
    frame = model.config.frame_size
    pcm = np.stack([speech_like((frames + warmup) * frame / model.config.sample_rate, seed=i)
                    for i in range(count)])
    step = (_duplex_step if duplex else _sequential_step)(model, count, num_codebooks)
    times = [step(pcm[:, index * frame:(index + 1) * frame]) for index in range(frames + warmup)][warmup:]
    step_ms, frame_ms = float(np.median([t[0] for t in times])), 1000 / model.config.frame_rate
    if duplex:
        return StreamsStep(count, step_ms, frame_ms, duplex=True)
    return StreamsStep(count, step_ms, frame_ms, encode_ms=float(np.median([t[1] for t in times])),
                       decode_ms=float(np.median([t[0] - t[1] for t in times])))


def _sequential_step(model: Codec, count: int, num_codebooks: int | None) -> Callable:
    """``step(pcm)`` → (step ms, encode ms): encode B frames, then decode the codes just made."""
    encoder = model.stream_encoder(batch_size=count, num_codebooks=num_codebooks)
    decoder = model.stream_decoder(batch_size=count)

    def step(pcm: np.ndarray) -> tuple[float, float]:
        t0 = time.perf_counter()
        codes = encoder.push(pcm)
        t1 = time.perf_counter()
        decoder.push(codes)
        return (time.perf_counter() - t0) * 1e3, (t1 - t0) * 1e3

    return step


def _duplex_step(model: Codec, count: int, num_codebooks: int | None) -> Callable:
    """``step(pcm)`` → (step ms, None): encode B frames and decode the previous step's codes, at once."""
    both = model.stream_duplex(batch_size=count, num_codebooks=num_codebooks)
    codes = None

    def step(pcm: np.ndarray) -> tuple[float, None]:
        nonlocal codes
        t0 = time.perf_counter()
        codes, _ = both.push(pcm, codes)
        return (time.perf_counter() - t0) * 1e3, None

    return step


# ----------------------------------------------------------------------------- timing helpers


def best_time(fn, repeat: int = 3, min_seconds: float = 0.05) -> float:
    """Best wall time of ``fn()`` over ``repeat`` runs (each run loops until ``min_seconds``)."""
    best = float("inf")
    for _ in range(repeat):
        runs, start = 0, time.perf_counter()
        while True:
            fn()
            runs += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / runs)
    return best


@dataclass
class KernelResult:
    name: str
    shape: str
    strategy: str
    seconds: float
    gflops: float  # achieved GFLOP/s
    peak_fraction: float  # of the measured BLAS peak

    def as_dict(self) -> dict:
        return asdict(self)


def blas_library() -> dict:
    """The BLAS NumPy runs (threadpoolctl): its name, version, the kernels it chose for this CPU and
    ``OPENBLAS_CORETYPE`` when set (it overrides that choice: ``Haswell`` runs AVX2 kernels on an AVX-512
    CPU, whose products then take 1.7× longer; docs/performance.md)."""
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info.get("user_api") == "blas":
            return {"name": info.get("internal_api"), "version": info.get("version"),
                    "kernels": info.get("architecture"), "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}
    return {}


def describe_blas(blas: dict) -> str:
    """One line for :func:`blas_library`'s report: ``openblas 0.3.31, Haswell kernels (OPENBLAS_CORETYPE=Haswell)``."""
    line = f"{blas.get('name') or 'unknown'} {blas.get('version') or ''}".rstrip()
    if blas.get("kernels"):
        line += f", {blas['kernels']} kernels"
    if blas.get("openblas_coretype"):
        line += f" (OPENBLAS_CORETYPE={blas['openblas_coretype']})"
    return line


def blas_peak(size: int = 2048) -> float:
    """GFLOP/s of a large square float32 matmul: the ceiling every kernel is compared to."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size), np.float32), rng.standard_normal((size, size), np.float32)
    return 2 * size**3 / best_time(lambda: a @ b) / 1e9


# ----------------------------------------------------------------------------- kernels


def _seanet_layers(model: Codec, seconds: float):
    """(name, kind, weight, stride, input length) of every SEANet conv for ``seconds`` of audio."""
    from mimi_cli.core.layers import Conv, ConvTranspose, Module

    c = model.config
    for part, seq, length in (("encoder", model.encoder.model, int(seconds * c.sample_rate)),
                              ("decoder", model.decoder.model, int(seconds * c.sample_rate) // c.hop_length)):
        for index, layer in enumerate(seq.layers):
            convs = list(layer.modules()) if isinstance(layer, Module) else []  # a block's convs, in order
            for conv in convs:
                if isinstance(conv, Conv):
                    yield f"{part}.{index}", "conv", conv.params[conv.weight_name], conv.stride, length + conv.padding
                elif isinstance(conv, ConvTranspose):
                    yield f"{part}.{index}", "convtr", conv.params[conv.weight_name], conv.stride, length
                    length *= conv.stride
            if isinstance(layer, Conv):
                length //= layer.stride


def kernel_benchmarks(model: Codec, seconds: float = 1.0, peak: float | None = None,
                      progress=None) -> list[KernelResult]:
    """Time the codec's kernels at their real shapes for ``seconds`` of audio, each strategy where several exist."""
    from mimi_cli.core import conv1d, conv_transpose1d, linear, windowed_causal_attention
    from mimi_cli.core.conv import conv_transpose1d_strategy

    peak = peak or blas_peak()
    rng = np.random.default_rng(0)
    results = []

    def add(name, shape, strategy, flops, fn):
        t = best_time(fn)
        results.append(KernelResult(name, shape, strategy, t, flops / t / 1e9, flops / t / 1e9 / peak))
        if progress:
            progress()

    for name, kind, weight, stride, length in _seanet_layers(model, seconds):
        if kind == "conv":
            out_ch, in_ch, kernel = weight.shape
            x = rng.standard_normal((1, in_ch, length), np.float32)
            out_len = (length - kernel) // stride + 1
            flops = 2 * in_ch * kernel * out_ch * out_len
            for strategy in ("unfold", "phases"):
                add(name, f"{list(weight.shape)} s{stride} T{length}", strategy, flops,
                    partial(conv1d, x, weight, None, stride, strategy=strategy))
        else:
            in_ch, out_ch, kernel = weight.shape
            x = rng.standard_normal((1, in_ch, length), np.float32)
            add(name, f"{list(weight.shape)} s{stride} T{length}", conv_transpose1d_strategy(length, kernel, stride),
                2 * in_ch * kernel * out_ch * length, partial(conv_transpose1d, x, weight, None, stride))
    c = model.config
    steps = max(1, int(seconds * c.sample_rate / c.hop_length))
    h = rng.standard_normal((1, steps, c.dimension), np.float32)
    layer = model.encoder_transformer.layers[0].params
    for name in ("self_attn.in_proj_weight", "linear1.weight"):
        w = layer[name]
        add(f"transformer {name.split('.')[0]}", f"[{steps}, {w.shape[1]}] x {list(w.shape[::-1])}", "BLAS",
            2 * steps * w.size, partial(linear, h, w))
    q = rng.standard_normal((1, c.num_heads, steps, c.head_dim), np.float32)
    keys = np.minimum(np.arange(steps) + 1, c.context).sum()
    add("attention (window 250)", f"{c.num_heads} heads x {steps} steps", "blocked",
        4 * keys * c.dimension, lambda: windowed_causal_attention(q, q, q, c.context))
    return results


# ----------------------------------------------------------------------------- the whole codec


def codec_flops(c, seconds: float, num_codebooks: int) -> tuple[float, float]:
    """(encode, decode) FLOPs for ``seconds`` of audio, counted from the architecture by the codec's config."""
    return c.flops(seconds, num_codebooks)


@dataclass
class ModelResult:
    name: str
    seconds: float
    rtf: float  # seconds of compute per second of audio
    gflops: float
    peak_fraction: float

    def as_dict(self) -> dict:
        return asdict(self)


def model_benchmarks(model: Codec, seconds: float, peak: float, progress=None) -> list[ModelResult]:
    """One-shot encode and decode of ``seconds`` of audio at the default and the most codebooks."""
    pcm = speech_like(seconds)
    results = []
    c = model.config
    for levels in sorted({c.default_num_codebooks, c.num_codebooks}):  # Mimi, EnCodec: 8 and 32
        encode_flops, decode_flops = codec_flops(model.config, seconds, levels)
        codes = model.encode(pcm, levels)  # warm-up, and the codes to decode
        for name, fn, flops in ((f"encode, {levels} codebooks", partial(model.encode, pcm, levels), encode_flops),
                                (f"decode, {levels} codebooks", partial(model.decode, codes), decode_flops)):
            t = best_time(fn, repeat=2, min_seconds=0)
            results.append(ModelResult(name, t, t / seconds, flops / t / 1e9, flops / t / 1e9 / peak))
            if progress:
                progress()
    return results


def random_model(spec) -> tuple[Codec, float]:
    """Random weights of the released size in a temporary safetensors file, and the time to load them."""
    import tempfile
    import time

    from safetensors.numpy import save_file

    from mimi_cli.fileio import temporary_folder

    with tempfile.TemporaryDirectory(dir=temporary_folder("the benchmark (its random weights)")) as tmp:
        path = f"{tmp}/{spec.name}.safetensors"
        save_file(spec.random_state(), path)
        start = time.perf_counter()
        model = spec.model().from_file(path)
        return model, time.perf_counter() - start


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
