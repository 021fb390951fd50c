"""What every codec here shares: one pipeline shape, input checks and loading.

    encode:  pcm [B, N]
             → encode_waveform   strided convs            [B, C, T]   (SEANet encoder)
             → encode_sequence   sequence model + proj.   [B, D, F]   (transformer / LSTM)
             → quantizer.encode  residual VQ              codes [B, K, F]
    decode:  codes [B, K, F]
             → quantizer.decode  sum of code vectors      [B, D, F]
             → decode_sequence   proj. + sequence model   [B, C, T]
             → decode_waveform   transposed convs         pcm [B, frame_size·F]

A codec is a config (:class:`~mimi_cli.models.config.CodecConfig`) and a :class:`Codec` subclass that fills
in those four stages and its quantizer; validation, batching, loading and the
codes file come from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_cli.core.module import Module
from mimi_cli.core.threads import one_blas_thread
from mimi_cli.errors import InvalidAudioError, InvalidCodesError, MimiError, WeightsError
from mimi_cli.models.config import CodecConfig



@dataclass
class Checkpoint:
    """What a codec's checkpoint reader returns: tensors in the model's own naming, ready to load."""

    state: dict[str, np.ndarray]  # the model's naming (Module.declare), float32
    layout: str  # the naming it was read from, e.g. "original", "hf"
    container: str  # "safetensors", "Core ML ML Program (.mlmodelc)" ...
    warnings: list[str]  # unusual values (see mimi_cli.weights.validate)


@dataclass(frozen=True)
class Recognised:
    """What a codec's ``inspect_checkpoint`` says of a weight file it recognises."""

    label: str  # the naming, e.g. "Mimi Hugging Face", "EnCodec 24 kHz original"
    problems: list[str]  # why it would not load into the released model (empty: it would)

# Float audio may go a little past full scale (1.0); 60 dB past it is a scaling mistake (integer
# samples read as floats, say), which the network would turn into all-zero codes without a word.
MAX_PEAK = 1e3

# A row count above one frame's samples with rows this short or shorter is read as an array of
# [samples, channels] given where [B, T] goes (64: microphone arrays; a clip of 64 samples lasts 3 ms).
LAYOUT_CHANNELS = 64


class Codec(Module):
    """Audio ↔ codes through encode_waveform → encode_sequence → quantizer → decode_sequence → decode_waveform."""

    config: CodecConfig
    quantizer: Module  # encode(latent [B, D, F], levels) → [B, K, F]; decode(codes) → [B, D, F]

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        self.source: Path | None = None  # the weights file, when loaded from one
        self.warnings: list[str] = []  # unusual values found while loading

    # -- the stages, filled in by each codec

    def encode_waveform(self, x: np.ndarray) -> np.ndarray:
        """``[B, 1, N]`` (N a multiple of frame_size after :meth:`pad_input`) → ``[B, C, T]``."""
        raise NotImplementedError

    def encode_sequence(self, x: np.ndarray) -> np.ndarray:
        """``[B, C, T]`` → the quantizer's input ``[B, D, F]``."""
        raise NotImplementedError

    def decode_sequence(self, z: np.ndarray) -> np.ndarray:
        """The quantizer's output ``[B, D, F]`` → ``[B, C, T]``."""
        raise NotImplementedError

    def decode_waveform(self, x: np.ndarray) -> np.ndarray:
        """``[B, C, T]`` → ``[B, 1, frame_size·F]``."""
        raise NotImplementedError

    def pad_input(self, pcm: np.ndarray) -> np.ndarray:
        """``[B, N]`` → ``[B, 1, N']``: the waveform as the encoder takes it (by default, unchanged)."""
        return pcm[:, None, :]

    # -- construction

    @classmethod
    def inspect_checkpoint(cls, source) -> Recognised | None:
        """For ``mimi inspect``: a :class:`Recognised` if the WeightFile holds this codec's checkpoint."""
        return None

    @classmethod
    def read_checkpoint(cls, path: str | Path, config: CodecConfig) -> Checkpoint:
        """This codec's checkpoint reader (any naming and container it knows) → :class:`Checkpoint`."""
        raise NotImplementedError

    @classmethod
    def from_file(cls, path: str | Path, config: CodecConfig | None = None) -> Codec:
        """Load a checkpoint in any naming and container this codec reads (see its ``checkpoint.py``).

        Warnings about unusual values (see ``mimi_cli.weights.validate``) are kept in ``model.warnings``.
        """
        path = _as_path(path, f"{cls.__name__}.from_file()")
        if not path:  # Path("") is the working folder, which was then read as a Core ML model
            raise WeightsError(f"the weights path given to {cls.__name__}.from_file() is empty; give a file's path")
        model = cls(config)
        checkpoint = cls.read_checkpoint(path, model.config)
        model._load_checked(checkpoint.state)
        model.source, model.warnings = Path(path), checkpoint.warnings
        return model

    @classmethod
    def from_pretrained(cls, weights: str | Path | None = None) -> Codec:
        """The weights the command line would load: ``weights`` (a file, a folder holding it, or a Hugging Face
        repo, ``OWNER/REPO`` or ``OWNER/REPO/FILE``), else the codec's environment variable (``$MIMI_WEIGHTS``,
        ``$ENCODEC_WEIGHTS``), else its released file through the Hugging Face cache (fetched once)."""
        from mimi_cli.models import CODECS
        from mimi_cli.weights import resolve_weights

        spec = next(spec for spec in CODECS.values() if spec.model() is cls)
        given = f"{cls.__name__}.from_pretrained()"
        return cls.from_file(resolve_weights(None if weights is None else _as_path(weights, given), spec, given))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, np.ndarray], config: CodecConfig | None = None) -> Codec:
        """Build from tensors in this model's naming; any missing, unexpected or mis-shaped tensor is an error."""
        model = cls(config)
        model._load_checked(state)
        return model

    def _load_checked(self, state: Mapping[str, np.ndarray]) -> None:
        problems = self.check_state(state)
        if problems:
            raise WeightsError(f"weights do not match the {self.config.display_name} model: " + "; ".join(problems))
        self.load(state)

    def check_state(self, state: Mapping[str, np.ndarray]) -> list[str]:
        """Describe every difference between ``state`` and this model's tensors (empty when they match)."""
        expected = dict(self.named_shapes())
        problems = []
        missing = [name for name in expected if name not in state]
        unexpected = [name for name in state if name not in expected]
        misshaped = [f"{name} {tuple(state[name].shape)} (expected {shape})"
                     for name, shape in expected.items() if name in state and tuple(state[name].shape) != shape]
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if names:
                problems.append(f"{len(names)} {label}: {', '.join(names)}")
        return problems

    # -- encode

    def _as_batch(self, pcm: np.ndarray) -> tuple[np.ndarray, bool]:
        """Validate audio and return it as float32 ``[B, N]`` plus whether the input was 1-D."""
        pcm = np.asarray(pcm)
        if pcm.ndim in (1, 2):  # sizes before values: checking the values reads every sample, beside a copy
            self.check_rows(pcm)
            self.check_memory(np.atleast_2d(pcm).shape, "encoding", "stream_encoder()")
        self.check_audio(pcm)
        if pcm.ndim not in (1, 2):
            hint = "; for moshi's [B, 1, T] give pcm[:, 0]" if pcm.ndim == 3 and pcm.shape[1] == 1 else ""
            raise InvalidAudioError(f"audio must have shape [T] or [B, T], got {list(pcm.shape)}{hint}")
        return np.atleast_2d(pcm).astype(np.float32, copy=False), pcm.ndim == 1

    def check_rows(self, pcm: np.ndarray) -> None:
        """Refuse ``[samples, channels]`` (soundfile's layout) where rows of samples go: it would be encoded as
        thousands of clips of a few samples each (about 1 MB of memory a row: codes of no use, or more memory
        than the machine has)."""
        if pcm.ndim == 2 and pcm.shape[1] <= LAYOUT_CHANNELS and pcm.shape[0] > self.config.frame_size:
            rows, samples = pcm.shape
            each = f"{samples} sample{'s' if samples != 1 else ''}"
            raise InvalidAudioError(f"audio has shape {list(pcm.shape)}: {rows:,} rows of {each}; if it is "
                                    "[samples, channels], as soundfile reads a file, give pcm[:, 0] (or "
                                    "pcm.mean(axis=1) to mix the channels) or pcm.T (a row per channel)")

    def check_memory(self, shape: tuple[int, int], doing: str, stream: str) -> None:
        """Refuse a batch call on ``shape`` = ``(rows, samples)`` whose peak memory (the codec's registry entry:
        docs/performance.md) would not fit this machine's, before allocating: the kernel would kill the process
        instead (decoding 10⁷ frames at once grew past 24 GB)."""
        from mimi_cli.errors import over_memory, refusal_said
        from mimi_cli.models import CODECS

        spec = CODECS.get(self.config.name)
        rows, seconds = shape[0], shape[1] / self.config.sample_rate
        needed = spec.batch_bytes(rows, seconds) if spec else 0.0
        memory = over_memory(needed)
        if memory:
            length = f"{seconds:.3g} s" if seconds < 120 else f"{seconds / 60:,.1f} min"
            remedy = ("give fewer rows or shorter pieces at a time" if not spec.streaming else
                      f"give fewer rows at a time, or stream them: model.{stream} keeps memory flat" if rows > 1
                      else f"stream it: model.{stream} keeps memory flat")
            about, limit = refusal_said(needed, memory)
            raise MimiError(f"{doing} {rows:,} row{'s' if rows > 1 else ''} of {length} of audio at once would need "
                            f"{about}, more than {limit}; {remedy}")

    @staticmethod
    def check_audio(pcm: np.ndarray) -> None:
        """The one audio validator (batch and stream, files included): floating-point samples, finite, near full
        scale."""
        if not np.issubdtype(pcm.dtype, np.floating):
            hint = "; convert integer PCM first (e.g. int16 / 32768)" if pcm.dtype.kind in "iu" else ""
            raise InvalidAudioError(f"audio must be floating point in [-1, 1], got {pcm.dtype}{hint}")
        if not np.all(np.isfinite(pcm)):
            raise InvalidAudioError("audio contains NaN or Inf samples")
        peak = float(np.max(np.abs(pcm))) if pcm.size else 0.0
        if peak > MAX_PEAK:
            raise InvalidAudioError(f"audio has samples of magnitude {peak:.3g}, far beyond full scale (1.0); "
                                    "rescale it to [-1, 1]")

    @one_blas_thread()  # our own threads share the cores: the same bits at any count
    def encode_latent(self, pcm: np.ndarray) -> np.ndarray:
        """The latent the quantizer sees: ``[B, N]`` → ``[B, D, F]``, F = ceil(N / frame_size)."""
        return self._latent(self._as_batch(pcm)[0])

    def _latent(self, pcm: np.ndarray) -> np.ndarray:
        """encode_latent of audio already checked (float32 ``[B, N]``): each sample is checked once."""
        if pcm.size == 0:  # no samples, or no rows: nothing to run the layers on
            frames = -(-pcm.shape[-1] // self.config.frame_size)
            return np.zeros((pcm.shape[0], self.latent_dim, frames), np.float32)
        return self.encode_sequence(self.encode_waveform(self.pad_input(pcm)))

    @one_blas_thread()  # our own threads share the cores: the same bits at any count
    def encode(self, pcm: np.ndarray, num_codebooks: int | None = None) -> np.ndarray:
        """Codes (int64) ``[K, F]`` for ``pcm`` ``[N]``, or ``[B, K, F]`` for ``[B, N]``."""
        num_codebooks = self.config.levels(num_codebooks)
        batch, squeeze = self._as_batch(pcm)
        codes = self.quantizer.encode(self._latent(batch), num_codebooks)
        return codes[0] if squeeze else codes

    @property
    def latent_dim(self) -> int:
        """Width of the quantizer's input."""
        return self.config.dimension

    # -- decode

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        """Validate codes and return them as int64 ``[B, K, F]``."""
        codes = np.asarray(codes)
        if codes.ndim not in (2, 3):
            raise InvalidCodesError(f"codes must have shape [K, F] or [B, K, F], got {list(codes.shape)}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise InvalidCodesError(f"codes must be integers, got {codes.dtype}")
        levels = codes.shape[-2]
        if not 1 <= levels <= self.config.num_codebooks:
            raise InvalidCodesError(f"codes have {levels} levels; this model has 1..{self.config.num_codebooks}")
        rows = codes.shape[0] if codes.ndim == 3 else 1
        self.check_memory((rows, codes.shape[-1] * self.config.frame_size), "decoding", "stream_decoder()")
        if codes.size and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
            raise InvalidCodesError(f"codes must be in 0..{self.config.codebook_size - 1}, "
                                    f"found {codes.min()}..{codes.max()}")
        codes = codes.astype(np.int64, copy=False)
        return codes if codes.ndim == 3 else codes[None]

    @one_blas_thread()  # our own threads share the cores: the same bits at any count
    def decode_latent(self, latent: np.ndarray) -> np.ndarray:
        """Quantized latent ``[B, D, F]`` → pcm ``[B, frame_size·F]``."""
        if latent.shape[0] == 0 or latent.shape[-1] == 0:
            return np.zeros((latent.shape[0], self.config.frame_size * latent.shape[-1]), np.float32)
        return self.decode_waveform(self.decode_sequence(latent))[:, 0, :]

    @one_blas_thread()  # our own threads share the cores: the same bits at any count
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """pcm float32 ``[frame_size·F]`` for codes ``[K, F]``, or ``[B, frame_size·F]`` for ``[B, K, F]``."""
        squeeze = np.ndim(codes) == 2
        pcm = self.decode_latent(self.quantizer.decode(self.check_codes(codes)))
        return pcm[0] if squeeze else pcm

    def encode_channels(self, pcm: np.ndarray, num_codebooks: int | None = None) -> np.ndarray:
        """Each channel of ``pcm [C, N]`` encoded on its own: codes ``[C, K, F]``, row c identical to
        ``encode(pcm[c])`` (a batch of rows may round differently in BLAS, so rows go one at a time)."""
        pcm = np.atleast_2d(pcm)
        self.check_rows(pcm)
        return np.stack([self.encode(channel, num_codebooks) for channel in pcm])

    def decode_channels(self, codes: np.ndarray) -> np.ndarray:
        """Codes ``[C, K, F]`` → pcm ``[C, frame_size·F]``, each channel decoded on its own (into the result: a
        stack of the channels' audio held it twice)."""
        codes = np.asarray(codes)
        pcm = None
        for c, channel in enumerate(codes):
            audio = self.decode(channel)  # [frame_size·F]
            if pcm is None:
                pcm = np.empty((len(codes), *audio.shape), audio.dtype)
            pcm[c] = audio
        if pcm is None:
            raise ValueError("no channels to decode: give codes [C, K, F] with C ≥ 1")
        return pcm

    # -- streaming (see models/streaming.py)

    def encoder_stream(self):
        """A :class:`~mimi_cli.core.stream.Stream`: waveform ``[B, 1, T]`` → latent ``[B, D, F]``."""
        raise NotImplementedError(f"{self.config.display_name} has no streaming mode")

    def decoder_stream(self):
        """A :class:`~mimi_cli.core.stream.Stream`: latent ``[B, D, F]`` → waveform ``[B, 1, frame_size·F]``."""
        raise NotImplementedError(f"{self.config.display_name} has no streaming mode")

    def stream_encoder(self, batch_size: int = 1, num_codebooks: int | None = None, frames_per_step: int = 1):
        """Push audio, get codes: a :class:`~mimi_cli.models.streaming.StreamEncoder` over this model."""
        from mimi_cli.models.streaming import StreamEncoder

        return StreamEncoder(self, batch_size, num_codebooks, frames_per_step)

    def stream_decoder(self, batch_size: int = 1, frames_per_step: int = 1):
        """Push codes, get audio: a :class:`~mimi_cli.models.streaming.StreamDecoder` over this model."""
        from mimi_cli.models.streaming import StreamDecoder

        return StreamDecoder(self, batch_size, frames_per_step)

    def stream_duplex(self, batch_size: int = 1, num_codebooks: int | None = None, frames_per_step: int = 1):
        """Push audio and codes, get codes and audio, at once: a :class:`~mimi_cli.models.streaming.StreamDuplex`."""
        from mimi_cli.models.streaming import StreamDuplex

        return StreamDuplex(self, batch_size, num_codebooks, frames_per_step)


def _as_path(path, given_to: str) -> str:
    """A weights path from Python as a str: a str, a Path, or bytes as the file system gives them (bytes were
    shown as "b'w.safetensors'", and an int reached the resolver as "weights file 3")."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{given_to} takes a path (str or Path), got {path!r}")
    return os.fsdecode(path)
