"""Layers with parameters, shared by the codecs: causal convolutions and a sequential chain.

Each layer runs on a whole sequence (batch mode) and hands out a stream
(``layer.streaming()``, the protocol of :mod:`mimi_cli.core.stream`): a stateful
copy fed the sequence piece by piece, carrying what the next piece needs, with
the batch result.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mimi_cli.core.conv import conv1d, conv_transpose1d, pad_left
from mimi_cli.core.module import Module
from mimi_cli.core.stream import Chain, Pointwise, Stream


class Conv(Module):
    """Causal conv: left-pad by ``K_eff − stride`` (zeros, or copies of the first step), then a valid conv.

    Subclasses with other padding (EnCodec's reflection) override :meth:`pad_start`, :meth:`pad_end`
    and :meth:`can_start`; batch and streaming then agree by construction.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1,
                 bias: bool = True, pad_mode: str = "constant", name: str = "conv.conv"):
        super().__init__()
        self.stride, self.dilation, self.pad_mode = stride, dilation, pad_mode
        self.padding = (kernel - 1) * dilation + 1 - stride
        self.cout = cout
        self.weight_name, self.bias_name = f"{name}.weight", (f"{name}.bias" if bias else None)
        self.declare(self.weight_name, cout, cin, kernel)
        if bias:
            self.declare(self.bias_name, cout)
        self.prepare()

    def prepare(self) -> None:
        self.derived: dict = {}  # what conv1d derives from the weight, until the next load

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [B, C, T] → [B, O, T/stride]
        return self.valid(self.pad_start(x))

    def valid(self, x: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """The unpadded convolution of ``context`` (if given) then ``x``: together they carry the left context."""
        bias = self.params[self.bias_name] if self.bias_name else None
        return conv1d(x, self.params[self.weight_name], bias, self.stride, self.dilation, context=context,
                      derived=self.derived)

    def can_start(self, length: int) -> bool:
        """Can the left padding be made from the first ``length`` input steps? (Zeros or copies: yes.)"""
        return length > 0

    def pad_start(self, x: np.ndarray) -> np.ndarray:
        return pad_left(x, self.padding, self.pad_mode)

    def pad_end(self, x: np.ndarray, remainder: int) -> np.ndarray:
        """The end of the input, ``remainder`` steps past the last output's stride: no right padding here."""
        return x

    def streaming(self) -> ConvStream:
        return ConvStream(self)


class ConvStream(Stream):
    """A causal conv fed piece by piece: it emits every output its input so far determines and keeps
    the last ``K_eff − stride`` steps (plus any unused ones) for the next piece::

        held:  [ context (K_eff − S) | new input ........................ | r < S unused ]
                 ↳ outputs for every whole window; the context and r are kept

    The first piece gets the left padding (:meth:`Conv.pad_start`), ``flush`` the right one
    (:meth:`Conv.pad_end`); an input too short to start (a reflection needs more steps than
    it pads) is convolved whole at ``flush``, the batch path.
    """

    def __init__(self, conv: Conv):
        self.conv = conv
        self.reset()

    def reset(self) -> None:
        self._held: np.ndarray | None = None  # [B, C, context + unused]
        self._started = False

    def _emit(self, held: np.ndarray | None, x: np.ndarray) -> np.ndarray:
        """Every output ``held`` followed by ``x`` determines (never joined whole: see ``conv1d``)."""
        conv = self.conv
        skip = 0 if held is None else held.shape[2]  # steps before x
        window = conv.padding + conv.stride
        length = skip + x.shape[2]
        outputs = (length - window) // conv.stride + 1 if length >= window else 0
        keep = outputs * conv.stride  # the first step a later output still reads
        self._held = x[:, :, keep - skip :].copy() if keep >= skip else np.concatenate(
            [held[:, :, keep:], x], axis=2)
        if outputs == 0:
            return np.zeros((x.shape[0], conv.cout, 0), np.float32)
        return conv.valid(x[:, :, : (outputs - 1) * conv.stride + window - skip], held)

    def step(self, x: np.ndarray) -> np.ndarray:
        if self._started:
            return self._emit(self._held, x)
        held = x if self._held is None else np.concatenate([self._held, x], axis=2)
        if not self.conv.can_start(held.shape[2]):
            self._held = held
            return np.zeros((x.shape[0], self.conv.cout, 0), np.float32)
        self._started = True
        return self._emit(None, self.conv.pad_start(held))

    def flush(self) -> np.ndarray | None:
        held, started = self._held, self._started
        self.reset()
        if held is None or not held.shape[2]:
            return None
        if not started:
            return self.conv(held)
        y = self._emit(None, self.conv.pad_end(held, held.shape[2] - self.conv.padding))
        self.reset()
        return y if y.shape[2] else None


class ConvTranspose(Module):
    """Transposed conv keeping the first ``T·stride`` samples: the last ``K − stride`` are dropped."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1,
                 bias: bool = True, name: str = "convtr.convtr"):
        super().__init__()
        self.stride, self.groups = stride, groups
        self.weight_name, self.bias_name = f"{name}.weight", (f"{name}.bias" if bias else None)
        self.declare(self.weight_name, cin, cout // groups, kernel)
        if bias:
            self.declare(self.bias_name, cout)
        self.prepare()

    def prepare(self) -> None:
        self.derived: dict = {}  # what conv_transpose1d derives from the weight, until the next load

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [B, C, T] → [B, O, T·stride]
        return self.full(x)[:, :, : x.shape[-1] * self.stride]

    def full(self, x: np.ndarray) -> np.ndarray:
        """All ``(T-1)·stride + K`` output samples, bias included."""
        return conv_transpose1d(x, self.params[self.weight_name], self.bias, self.stride, self.groups, self.derived)

    @property
    def bias(self) -> np.ndarray | None:
        return self.params[self.bias_name] if self.bias_name else None

    def streaming(self) -> ConvTransposeStream:
        return ConvTransposeStream(self)


class ConvTransposeStream(Stream):
    """A transposed conv fed piece by piece.

    The last ``K − stride`` samples of each piece's output still await the
    next piece's contribution; they are carried (without the bias, which the
    next piece adds again) and added to the start of the next output::

        piece n:    [ emitted: T·S samples ][ partial: K−S ]
        piece n+1:                          [ emitted ...

    At the end the partial samples are dropped, as the batch path trims them.
    """

    def __init__(self, convtr: ConvTranspose):
        self.convtr = convtr
        self.reset()

    def reset(self) -> None:
        self.partial: np.ndarray | None = None  # [B, O, K − stride]

    def step(self, x: np.ndarray) -> np.ndarray:
        y = self.convtr.full(x)
        emitted = x.shape[2] * self.convtr.stride
        if self.partial is not None:
            y[:, :, : self.partial.shape[2]] += self.partial
        self.partial = y[:, :, emitted:].copy()
        if self.convtr.bias is not None:
            self.partial -= self.convtr.bias[:, None]
        return y[:, :, :emitted]


class Sequential(Module):
    """Layers run in order; a layer's position is its checkpoint index (ELUs take a slot too)."""

    def __init__(self, layers: list[Callable[[np.ndarray], np.ndarray]]):
        super().__init__()
        self.layers = layers
        self.stream_costs: dict = {}  # (start, stop) → the pipeline's times per piece (core.stream.run_chunks)
        for index, layer in enumerate(layers):
            if isinstance(layer, Module):
                self.add(str(index), layer)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return run_layers(self.layers, x)

    def streaming(self, start: int = 0, stop: int | None = None) -> Chain:
        """A stream of ``layers[start:stop]``: layers with state get their own stream, functions run as they are.

        A function after a layer writes over that layer's output (:class:`Pointwise`'s ``in_place``): a
        layer's stream makes a new array for every output (convolutions, sums, the LSTM block). The
        first function of the slice gets the caller's input, so makes its own.
        """
        indices = range(*slice(start, stop).indices(len(self.layers)))
        streams = []
        for i in indices:
            layer = self.layers[i]
            after_layer = i > indices.start and isinstance(self.layers[i - 1], Module)
            streams.append(layer.streaming() if isinstance(layer, Module) else Pointwise(layer, in_place=after_layer))
        return Chain(streams, self.stream_costs.setdefault((start, stop), {}))


def run_layers(layers, x: np.ndarray) -> np.ndarray:
    """Apply ``layers`` in order."""
    for layer in layers:
        x = layer(x)
    return x
