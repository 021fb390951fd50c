"""Streaming encode and decode: push audio or codes as they arrive, 80 ms frames come out.

Results equal moshi's streaming mode (``with model.streaming(1):`` fed one
1920-sample frame, or one code frame, per call), including its attention
quirk past 10 s (see :class:`mimi_cli.core.KVCache`). Within the first 10 s
they equal batch mode to float rounding.

Work is done on a fixed grid of ``frames_per_step`` frames (default 1) and
input is buffered until a whole step is there, so how the input is chunked
never changes a single bit of the output. A larger step trades latency for
throughput (fewer, larger matrix products).
"""

from __future__ import annotations

import numpy as np

from mimi_cli.errors import InvalidAudioError, InvalidCodesError
from mimi_cli.models.mimi.config import DEFAULT_NUM_CODEBOOKS
from mimi_cli.models.mimi.model import Mimi


class StreamEncoder:
    """``push(pcm)`` → codes of every frame completed so far; ``flush()`` ends the stream.

    >>> enc = model.stream_encoder()
    >>> codes = enc.push(chunk)        # chunk float32 [T] (or [B, T]) → int64 [K, n] (or [B, K, n])
    >>> codes = enc.flush()            # the last, zero-padded frame; the encoder is then reset
    """

    def __init__(self, model: Mimi, batch_size: int = 1, num_codebooks: int = DEFAULT_NUM_CODEBOOKS,
                 frames_per_step: int = 1):
        if not 1 <= num_codebooks <= model.config.num_codebooks:
            raise ValueError(f"num_codebooks must be in 1..{model.config.num_codebooks}, got {num_codebooks}")
        if batch_size < 1 or frames_per_step < 1:
            raise ValueError("batch_size and frames_per_step must be at least 1")
        self.model, self.batch_size = model, batch_size
        self.num_codebooks, self.frames_per_step = num_codebooks, frames_per_step
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next push starts a new stream."""
        m = self.model
        self._seanet = m.encoder.streaming()
        self._transformer = m.encoder_transformer.streaming(steps_per_call=m.config.downsample_stride)
        self._downsample = m.downsample.streaming()
        self._pending = np.zeros((self.batch_size, 0), np.float32)
        self.frames_done = 0

    def _check(self, pcm: np.ndarray) -> tuple[np.ndarray, bool]:
        pcm = np.asarray(pcm)
        if not np.issubdtype(pcm.dtype, np.floating):
            raise InvalidAudioError(f"audio must be floating point in [-1, 1], got {pcm.dtype}")
        squeeze = pcm.ndim == 1 and self.batch_size == 1
        if squeeze:
            pcm = pcm[None]
        elif pcm.ndim != 2 or pcm.shape[0] != self.batch_size:
            raise InvalidAudioError(f"this stream takes audio of shape [{self.batch_size}, T]"
                                    f"{' or [T]' if self.batch_size == 1 else ''}, got {list(pcm.shape)}")
        if not np.all(np.isfinite(pcm)):
            raise InvalidAudioError("audio contains NaN or Inf samples")
        return pcm.astype(np.float32, copy=False), squeeze

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Add samples; return the codes of the frames they complete (possibly none).

        A rejected push raises before touching the stream, which stays usable.
        """
        pcm, squeeze = self._check(pcm)
        self._pending = np.concatenate([self._pending, pcm], axis=1)
        step = self.frames_per_step * self.model.config.frame_size
        whole = self._pending.shape[1] // step * step
        codes = [self._encode(self._pending[:, start : start + step]) for start in range(0, whole, step)]
        self._pending = self._pending[:, whole:]
        return self._output(codes, squeeze)

    def flush(self) -> np.ndarray:
        """Encode what is left, zero-padded to whole frames as batch mode does; then reset."""
        frame = self.model.config.frame_size
        pending = self._pending
        codes = []
        if pending.shape[1]:
            frames = -(-pending.shape[1] // frame)
            padded = np.zeros((self.batch_size, frames * frame), np.float32)
            padded[:, : pending.shape[1]] = pending
            codes.append(self._encode(padded))
        result = self._output(codes, self.batch_size == 1)
        self.reset()
        return result

    def _encode(self, pcm: np.ndarray) -> np.ndarray:  # [B, n·1920] → [B, K, n]
        latent = self._downsample(self._transformer(self._seanet(pcm[:, None, :])))
        self.frames_done += latent.shape[2]
        return self.model.quantizer.encode(latent, self.num_codebooks)

    def _output(self, codes: list[np.ndarray], squeeze: bool) -> np.ndarray:
        if codes:
            out = np.concatenate(codes, axis=2)
        else:
            out = np.zeros((self.batch_size, self.num_codebooks, 0), np.int64)
        return out[0] if squeeze else out


class StreamDecoder:
    """``push(codes)`` → 1920 samples per frame decoded so far.

    >>> dec = model.stream_decoder()
    >>> pcm = dec.push(codes)          # int [K, n] (or [B, K, n]) → float32 [1920·n] (or [B, 1920·n])
    """

    def __init__(self, model: Mimi, batch_size: int = 1, frames_per_step: int = 1):
        if batch_size < 1 or frames_per_step < 1:
            raise ValueError("batch_size and frames_per_step must be at least 1")
        self.model, self.batch_size, self.frames_per_step = model, batch_size, frames_per_step
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next push starts a new stream (and may use another K)."""
        m = self.model
        self._upsample = m.upsample.streaming()
        self._transformer = m.decoder_transformer.streaming(steps_per_call=m.config.downsample_stride)
        self._seanet = m.decoder.streaming()
        self._pending: np.ndarray | None = None  # [B, K, < frames_per_step]
        self.frames_done = 0

    def _check(self, codes: np.ndarray) -> tuple[np.ndarray, bool]:
        codes = np.asarray(codes)
        squeeze = codes.ndim == 2 and self.batch_size == 1
        if squeeze:
            codes = codes[None]
        if codes.ndim != 3 or codes.shape[0] != self.batch_size:
            raise InvalidCodesError(f"this stream takes codes of shape [{self.batch_size}, K, frames]"
                                    f"{' or [K, frames]' if self.batch_size == 1 else ''}, got {list(np.shape(codes))}")
        codes = self.model.check_codes(codes)
        if self._pending is not None and codes.shape[1] != self._pending.shape[1]:
            raise InvalidCodesError(f"this stream decodes {self._pending.shape[1]} codebooks, got {codes.shape[1]}; "
                                    "call reset() to change")
        return codes, squeeze

    def push(self, codes: np.ndarray) -> np.ndarray:
        """Add code frames; return the audio of the frames decoded so far (possibly none).

        A rejected push raises before touching the stream, which stays usable.
        """
        codes, squeeze = self._check(codes)
        pending = codes if self._pending is None else np.concatenate([self._pending, codes], axis=2)
        whole = pending.shape[2] // self.frames_per_step * self.frames_per_step
        audio = [self._decode(pending[:, :, start : start + self.frames_per_step])
                 for start in range(0, whole, self.frames_per_step)]
        self._pending = pending[:, :, whole:]
        return self._output(audio, squeeze)

    def flush(self) -> np.ndarray:
        """Decode frames still waiting for a whole step; then reset."""
        audio = [self._decode(self._pending)] if self._pending is not None and self._pending.shape[2] else []
        result = self._output(audio, self.batch_size == 1)
        self.reset()
        return result

    def _decode(self, codes: np.ndarray) -> np.ndarray:  # [B, K, n] → [B, n·1920]
        latent = self.model.quantizer.decode(codes)
        self.frames_done += codes.shape[2]
        return self._seanet(self._transformer(self._upsample(latent)))[:, 0, :]

    def _output(self, audio: list[np.ndarray], squeeze: bool) -> np.ndarray:
        out = np.concatenate(audio, axis=1) if audio else np.zeros((self.batch_size, 0), np.float32)
        return out[0] if squeeze else out
