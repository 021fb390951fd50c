"""Streaming encode and decode for every codec: push audio or codes as they arrive, frames come out.

A codec provides two streams (:mod:`mimi_cli.core.stream`): ``encoder_stream()``,
waveform ``[B, 1, T]`` → latent ``[B, D, F]``, and ``decoder_stream()``, latent →
waveform; its quantizer turns latents into codes and back. These classes add the
frame grid and the end of the stream::

    push(pcm) ──► whole steps of frames_per_step frames ──► encoder_stream.step ──► quantizer ──► codes
    flush()   ──► the rest, padded as batch mode pads it (pad_input) ──► step, then the stream's flush

Work is done on that fixed grid and input is buffered until a whole step is
there, so how the input is chunked never changes a single bit of the output.
A batch of 8 or more streams steps in groups, one per thread
(:class:`mimi_cli.core.stream.Groups`); the groups depend on the batch size alone.
:class:`StreamDuplex` runs an encoder and a decoder at once instead, one thread each.
Mimi's results equal moshi's streaming mode (``with model.streaming(1):`` fed one
frame per call), including its attention quirk past 10 s (see
:class:`mimi_cli.core.KVCache`); EnCodec's, being causal with exact carried context,
equal its batch mode.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from mimi_cli.core.stream import Groups
from mimi_cli.core.threads import one_blas_thread, run_blocks
from mimi_cli.errors import InvalidAudioError, InvalidCodesError, check_integer

if TYPE_CHECKING:  # the codec imports this module; at run time only its methods are used here
    from mimi_cli.models.codec import Codec


def _in_turn(method):
    """A stream's method whose calls from several threads run one at a time, each whole, in the order they
    take the stream's locks (:class:`_Turns`): four threads pushing a second of audio each at once into one
    encoder had their steps interleave, and got 86 frames for 4 s of audio."""
    @functools.wraps(method)
    def in_turn(self, *args, **kwargs):
        with contextlib.ExitStack() as held:
            for lock in self._turns:
                held.enter_context(lock)
            return method(self, *args, **kwargs)
    return in_turn


class _Turns:
    """A stream's locks (``_turns``, made by ``_locks``), which are not its state: a copy
    (``copy.deepcopy``, to try two continuations of one stream) or a pickle gets locks of its own."""

    def _locks(self) -> tuple[threading.Lock, ...]:
        return (threading.Lock(),)

    def __getstate__(self) -> dict:
        return {name: value for name, value in self.__dict__.items() if name != "_turns"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._turns = self._locks()


class StreamEncoder(_Turns):
    """``push(pcm)`` → codes of every frame completed so far; ``flush()`` ends the stream.

    >>> enc = model.stream_encoder()
    >>> codes = enc.push(chunk)        # chunk float32 [T] (or [B, T]) → int64 [K, n] (or [B, K, n])
    >>> codes = enc.flush()            # the last, zero-padded frame; the encoder is then reset

    A batch of 8 or more streams steps in groups, one per thread; ``split=False`` keeps it one group
    (for an encoder that has a thread to itself, as a :class:`StreamDuplex` side has). Calls from
    several threads take turns (:func:`_in_turn`).
    """

    def __init__(self, model: Codec, batch_size: int = 1, num_codebooks: int | None = None,
                 frames_per_step: int = 1, split: bool = True):
        num_codebooks = model.config.levels(num_codebooks)
        _check_streams(model, batch_size, frames_per_step)
        self.model, self.batch_size, self.split = model, batch_size, split
        self.num_codebooks, self.frames_per_step = num_codebooks, frames_per_step
        self._turns = self._locks()
        self._reset()

    @_in_turn
    def reset(self) -> None:
        """Forget everything: the next push starts a new stream."""
        self._reset()

    def _reset(self) -> None:
        self._stream = Groups(self.model.encoder_stream, self.batch_size, self.split)
        self._pending = np.zeros((self.batch_size, 0), np.float32)

    def _check(self, pcm: np.ndarray) -> tuple[np.ndarray, bool]:
        pcm = np.asarray(pcm)
        self.model.check_audio(pcm)
        pcm, squeeze = _batched(pcm, self.batch_size, ["T"], InvalidAudioError, "audio")
        return pcm.astype(np.float32, copy=False), squeeze

    @_in_turn
    @one_blas_thread()  # our own threads share the cores: the same bits at any count
    def push(self, pcm: np.ndarray) -> np.ndarray:
        """Add samples; return the codes of the frames they complete (possibly none).

        A rejected push raises before touching the stream, which stays usable.
        """
        return self._push(*self._check(pcm))

    def _push(self, pcm: np.ndarray, squeeze: bool) -> np.ndarray:  # push, once _check has passed
        self._pending = np.concatenate([self._pending, pcm], axis=1)
        step = self.frames_per_step * self.model.config.frame_size
        whole = self._pending.shape[1] // step * step
        codes = [self._encode(self._pending[:, start : start + step]) for start in range(0, whole, step)]
        self._pending = self._pending[:, whole:]
        return self._output(codes, squeeze)

    @_in_turn
    @one_blas_thread()
    def flush(self) -> np.ndarray:
        """Encode what is left, padded as batch mode pads (``pad_input``), and end the stream; then reset."""
        return self._flush()

    def _flush(self) -> np.ndarray:
        codes = []
        if self._pending.shape[1]:
            codes.append(self._quantize(self._stream.step(self.model.pad_input(self._pending))))
        tail = self._stream.flush()
        if tail is not None:
            codes.append(self._quantize(tail))
        result = self._output(codes, self.batch_size == 1)
        self._reset()
        return result

    def _encode(self, pcm: np.ndarray) -> np.ndarray:  # [B, n·frame_size] → [B, K, frames ready]
        return self._quantize(self._stream.step(pcm[:, None, :]))

    def _quantize(self, latent: np.ndarray) -> np.ndarray:
        return self.model.quantizer.encode(latent, self.num_codebooks)

    def _output(self, codes: list[np.ndarray], squeeze: bool) -> np.ndarray:
        if codes:
            out = np.concatenate(codes, axis=2)
        else:
            out = np.zeros((self.batch_size, self.num_codebooks, 0), np.int64)
        return out[0] if squeeze else out


class StreamDecoder(_Turns):
    """``push(codes)`` → 1920 samples per frame decoded so far.

    >>> dec = model.stream_decoder()
    >>> pcm = dec.push(codes)          # int [K, n] (or [B, K, n]) → float32 [frame_size·n] (or [B, ...])

    ``split``, and calls from several threads, as for :class:`StreamEncoder`.
    """

    def __init__(self, model: Codec, batch_size: int = 1, frames_per_step: int = 1, split: bool = True):
        _check_streams(model, batch_size, frames_per_step)
        self.model, self.batch_size, self.frames_per_step, self.split = model, batch_size, frames_per_step, split
        self._turns = self._locks()
        self._reset()

    @_in_turn
    def reset(self) -> None:
        """Forget everything: the next push starts a new stream (and may use another K)."""
        self._reset()

    def _reset(self) -> None:
        self._stream = Groups(self.model.decoder_stream, self.batch_size, self.split)
        self._pending: np.ndarray | None = None  # [B, K, < frames_per_step]

    def _check(self, codes: np.ndarray) -> tuple[np.ndarray, bool]:
        codes = np.asarray(codes)
        codes, squeeze = _batched(codes, self.batch_size, ["K", "frames"], InvalidCodesError, "codes")
        codes = self.model.check_codes(codes)
        if self._pending is not None and codes.shape[1] != self._pending.shape[1]:
            raise InvalidCodesError(f"this stream decodes {self._pending.shape[1]} codebooks, got {codes.shape[1]}; "
                                    "call reset() to change")
        return codes, squeeze

    @_in_turn
    @one_blas_thread()  # our own threads share the cores: the same bits at any count
    def push(self, codes: np.ndarray) -> np.ndarray:
        """Add code frames; return the audio of the frames decoded so far (possibly none).

        A rejected push raises before touching the stream, which stays usable.
        """
        return self._push(*self._check(codes))

    def _push(self, codes: np.ndarray, squeeze: bool) -> np.ndarray:  # push, once _check has passed
        pending = codes if self._pending is None else np.concatenate([self._pending, codes], axis=2)
        whole = pending.shape[2] // self.frames_per_step * self.frames_per_step
        audio = [self._decode(pending[:, :, start : start + self.frames_per_step])
                 for start in range(0, whole, self.frames_per_step)]
        self._pending = pending[:, :, whole:]
        return self._output(audio, squeeze)

    @_in_turn
    @one_blas_thread()
    def flush(self) -> np.ndarray:
        """Decode frames still waiting for a whole step and end the stream; then reset."""
        return self._flush()

    def _flush(self) -> np.ndarray:
        audio = [self._decode(self._pending)] if self._pending is not None and self._pending.shape[2] else []
        tail = self._stream.flush()
        if tail is not None:
            audio.append(tail[:, 0, :])
        result = self._output(audio, self.batch_size == 1)
        self._reset()
        return result

    def _decode(self, codes: np.ndarray) -> np.ndarray:  # [B, K, n] → [B, samples ready]
        return self._stream.step(self.model.quantizer.decode(codes))[:, 0, :]

    def _output(self, audio: list[np.ndarray], squeeze: bool) -> np.ndarray:
        out = np.concatenate(audio, axis=1) if audio else np.zeros((self.batch_size, 0), np.float32)
        return out[0] if squeeze else out


class StreamDuplex(_Turns):
    """Both directions of B conversations in one call: ``push(pcm, codes)`` → ``(codes, pcm)``.

    A server for a Moshi-style model, every frame, encodes what each user said and decodes what the
    model answers. The two directions share nothing, so they run at once, the encoder on one thread
    and the decoder on another, and each keeps its whole batch as one group (``split=False``): each
    weight is read once per step for all B streams, and no step waits for a hand-off between
    threads (docs/performance.md, "Many streams per step")::

        thread 1:  encoder, B streams  [pcm frame n  → codes]
        thread 2:  decoder, B streams  [codes frame m → pcm ]    (m is whatever the caller has)

    >>> duplex = model.stream_duplex(batch_size=8)
    >>> codes, pcm = duplex.push(user_pcm, model_codes)  # [8, 1920·n], [8, K, m] → [8, K', n], [8, 1920·m]
    >>> codes, pcm = duplex.push(user_pcm, None)         # one direction only: the other returns nothing

    ``encoder`` and ``decoder`` are the two sides (a :class:`StreamEncoder`, a :class:`StreamDecoder`).
    Each side's bits depend on its batch alone, not on the thread count; with fewer than 8 streams they
    are exactly those of a lone encoder or decoder of that batch.
    """

    def __init__(self, model: Codec, batch_size: int = 1, num_codebooks: int | None = None,
                 frames_per_step: int = 1):
        self.encoder = StreamEncoder(model, batch_size, num_codebooks, frames_per_step, split=False)
        self.decoder = StreamDecoder(model, batch_size, frames_per_step, split=False)
        self._turns = self._locks()

    def _locks(self) -> tuple[threading.Lock, ...]:
        return (*self.encoder._turns, *self.decoder._turns)  # a side may be pushed alone meanwhile

    @_in_turn
    @one_blas_thread()  # our own threads share the cores: the same bits at any count
    def push(self, pcm: np.ndarray | None = None, codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``pcm`` and decode ``codes`` (either may be None) at once: ``(codes, pcm)`` completed so far.

        Both inputs are checked before either side moves, so a rejected push leaves both usable.
        """
        checked = [None if x is None else side._check(x) for side, x in ((self.encoder, pcm), (self.decoder, codes))]
        # a side given nothing returns nothing, with the batch axis as the other side has it
        squeeze = next((c[1] for c in checked if c is not None), self.encoder.batch_size == 1)
        return self._both(lambda side, i: side._push(*checked[i]) if checked[i] is not None
                          else side._output([], squeeze))

    @_in_turn
    @one_blas_thread()
    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        """End both directions (see :meth:`StreamEncoder.flush`, :meth:`StreamDecoder.flush`); then reset."""
        return self._both(lambda side, _: side._flush())

    @_in_turn
    def reset(self) -> None:
        """Forget everything in both directions."""
        self.encoder._reset()
        self.decoder._reset()

    def _both(self, work: Callable[[StreamEncoder | StreamDecoder, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out: list[np.ndarray] = [np.empty(0), np.empty(0)]
        sides = (self.encoder, self.decoder)

        def one(i: int) -> None:
            out[i] = work(sides[i], i)

        run_blocks(one, 2)  # one thread each when there are two; else one after the other
        return out[0], out[1]


def _check_streams(model: Codec, batch_size: int, frames_per_step: int) -> None:
    """A batch of streams whose state fits this machine's memory (a stream's bytes: the codec's registry
    entry), refused before it is built: a million streams were built one group at a time for hours."""
    from mimi_cli.errors import gigabytes, memory_said, usable_memory
    from mimi_cli.models import CODECS

    check_integer("batch_size", batch_size, 1)
    check_integer("frames_per_step", frames_per_step, 1)
    spec = CODECS.get(model.config.name)
    each, memory = (spec.stream_bytes if spec else 0.0), usable_memory()
    if each and memory and batch_size * each > memory:
        raise ValueError(f"{batch_size:,} streams would hold about {gigabytes(batch_size * each)} "
                         f"({each / 1e6:.0f} MB each), more than {memory_said(memory)}: at most "
                         f"{int(memory // each):,} streams here")


def _batched(x: np.ndarray, batch_size: int, dims: list[str], error: type[Exception], what: str
             ) -> tuple[np.ndarray, bool]:
    """``x`` as ``[B, *dims]``: one stream may also be pushed without the batch axis (then squeeze the output)."""
    squeeze = x.ndim == len(dims) and batch_size == 1
    if squeeze:
        x = x[None]
    if x.ndim != len(dims) + 1 or x.shape[0] != batch_size:
        alone = f" or [{', '.join(dims)}]" if batch_size == 1 else ""
        raise error(f"this stream takes {what} of shape [{batch_size}, {', '.join(dims)}]{alone}, got {list(x.shape)}")
    return x, squeeze
