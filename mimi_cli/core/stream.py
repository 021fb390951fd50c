"""One streaming protocol for every stateful layer: ``step``, ``flush``, ``reset``.

``layer.streaming()`` hands out a :class:`Stream`, a stateful copy of the layer
that is fed a sequence ``[B, C, T]`` piece by piece along ``T``::

    y = stream.step(x)     the outputs ``x`` completes (possibly none: ``T`` of 0)
    y = stream.flush()     the input has ended: what the layer still holds or now can
                           compute (a right padding, say); None if nothing; then reset
    stream.reset()         forget everything: the next step starts a new sequence

A layer emits every output its inputs so far determine, and keeps what the next
piece needs (carried context, partial sums, recurrent state), so any split of a
sequence into pieces, then ``flush()``, gives the batch result (float rounding
aside: BLAS may sum in another order on pieces of another size). Chains
(:class:`Chain`) and sums (:class:`Sum`) are streams of streams, and
:func:`run_chunks` is the one runner: batch mode runs a codec's convolutional
stacks through it in chunks that stay in cache; streaming mode feeds the same
streams as audio or codes arrive.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _join(pieces: list[np.ndarray | None]) -> np.ndarray | None:
    """Outputs of successive calls, concatenated along time (None and empty pieces skipped)."""
    pieces = [p for p in pieces if p is not None and p.shape[-1]]
    if not pieces:
        return None
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=-1)


class Stream:
    """The protocol (see the module docstring); subclasses implement ``step`` and, if they hold anything,
    ``flush`` and ``reset``."""

    def step(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def flush(self) -> np.ndarray | None:
        self.reset()
        return None

    def reset(self) -> None:
        pass


class Pointwise(Stream):
    """A stateless function of each step (ELU, GELU ...): ``step`` is the function itself."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]):
        self.fn = fn

    def step(self, x: np.ndarray) -> np.ndarray:
        return self.fn(x) if x.shape[-1] else x


class Identity(Stream):
    def step(self, x: np.ndarray) -> np.ndarray:
        return x


class Chain(Stream):
    """Streams in order. ``flush`` ends them in turn: what one flushes is the next one's last input."""

    def __init__(self, streams: list[Stream]):
        self.streams = streams

    def step(self, x: np.ndarray) -> np.ndarray:
        for stream in self.streams:
            x = stream.step(x)
        return x

    def flush(self) -> np.ndarray | None:
        y = None
        for stream in self.streams:
            y = _join([stream.step(y) if y is not None else None, stream.flush()])
        return y

    def reset(self) -> None:
        for stream in self.streams:
            stream.reset()


class Sum(Stream):
    """``a(x) + b(x)`` for two streams of the same input whose outputs may arrive at different times
    (a shortcut is ready at once, a padded branch may wait): each output waits for its partner."""

    def __init__(self, a: Stream, b: Stream):
        self.a, self.b = a, b
        self.reset()

    def reset(self) -> None:
        self.a.reset()
        self.b.reset()
        self._a: np.ndarray | None = None
        self._b: np.ndarray | None = None

    def _emit(self, a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        a, b = _join([self._a, a]), _join([self._b, b])
        if a is None or b is None:
            self._a, self._b = a, b
            return None
        n = min(a.shape[-1], b.shape[-1])
        self._a, self._b = a[..., n:], b[..., n:]
        return a[..., :n] + b[..., :n]

    def step(self, x: np.ndarray) -> np.ndarray:  # [B, C, T] → [B, C, T'] (a residual keeps its width)
        y = self._emit(self.a.step(x), self.b.step(x))
        return y if y is not None else np.zeros((x.shape[0], x.shape[1], 0), np.float32)

    def flush(self) -> np.ndarray | None:
        y = self._emit(self.a.flush(), self.b.flush())
        self.reset()
        return y


def run_chunks(stream: Stream, x: np.ndarray, chunk: int) -> np.ndarray:
    """``x`` ``[B, C, T]`` through ``stream`` in pieces of ``chunk`` steps, then ``flush``: the batch result."""
    pieces = [stream.step(x[:, :, start : start + chunk]) for start in range(0, x.shape[2], chunk)]
    return _join([*pieces, stream.flush()])
