"""Layers with parameters, shared by the codecs: causal convolutions and a sequential chain.

Each layer runs on a whole sequence (batch mode) and can hand out a *stream*
(``layer.streaming()``): a stateful copy that is fed the sequence piece by
piece, carrying what the next piece needs, and gives the batch result.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mimi_cli.core.conv import conv1d, conv_transpose1d, pad_left
from mimi_cli.core.module import Module


class Conv(Module):
    """Causal conv: left-pad by ``K_eff − stride`` (zeros, or copies of the first step), then a valid conv."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1,
                 bias: bool = True, pad_mode: str = "constant", name: str = "conv.conv"):
        super().__init__()
        self.stride, self.dilation, self.pad_mode = stride, dilation, pad_mode
        self.padding = (kernel - 1) * dilation + 1 - stride
        self.weight_name, self.bias_name = f"{name}.weight", (f"{name}.bias" if bias else None)
        self.declare(self.weight_name, cout, cin, kernel)
        if bias:
            self.declare(self.bias_name, cout)

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [B, C, T] → [B, O, T/stride]
        return self.valid(pad_left(x, self.padding, self.pad_mode))

    def valid(self, x: np.ndarray) -> np.ndarray:
        """The convolution without padding: ``x`` already carries its left context."""
        bias = self.params[self.bias_name] if self.bias_name else None
        return conv1d(x, self.params[self.weight_name], bias, self.stride, self.dilation)

    def streaming(self) -> ConvStream:
        return ConvStream(self)


class ConvStream:
    """A causal conv fed piece by piece: it carries the last ``K_eff − stride`` input steps.

    ``previous`` starts as zeros, or as copies of the first step for replicate
    padding, exactly what the batch path prepends; so pieces whose lengths are
    multiples of the stride give the batch result.
    """

    def __init__(self, conv: Conv):
        self.conv = conv
        self.previous: np.ndarray | None = None  # [B, C, K_eff − stride]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.previous is None:
            self.previous = pad_left(x[:, :, :1], self.conv.padding, self.conv.pad_mode)[:, :, : self.conv.padding]
        x = np.concatenate([self.previous, x], axis=2)
        self.previous = x[:, :, x.shape[2] - self.conv.padding :].copy()
        return self.conv.valid(x)


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

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [B, C, T] → [B, O, T·stride]
        return self.full(x)[:, :, : x.shape[-1] * self.stride]

    def full(self, x: np.ndarray) -> np.ndarray:
        """All ``(T-1)·stride + K`` output samples, bias included."""
        return conv_transpose1d(x, self.params[self.weight_name], self.bias, self.stride, self.groups)

    @property
    def bias(self) -> np.ndarray | None:
        return self.params[self.bias_name] if self.bias_name else None

    def streaming(self) -> ConvTransposeStream:
        return ConvTransposeStream(self)


class ConvTransposeStream:
    """A transposed conv fed piece by piece.

    The last ``K − stride`` samples of each piece's output still await the
    next piece's contribution; they are carried (without the bias, which the
    next piece adds again) and added to the start of the next output::

        piece n:    [ emitted: T·S samples ][ partial: K−S ]
        piece n+1:                          [ emitted ...
    """

    def __init__(self, convtr: ConvTranspose):
        self.convtr = convtr
        self.partial: np.ndarray | None = None  # [B, O, K − stride]

    def __call__(self, x: np.ndarray) -> np.ndarray:
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
        for index, layer in enumerate(layers):
            if isinstance(layer, Module):
                self.add(str(index), layer)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return run_layers(self.layers, x)

    def streaming(self) -> Callable[[np.ndarray], np.ndarray]:
        """A stateful copy of the chain: layers with state get a stream, the others (ELU) are shared."""
        steps = [layer.streaming() if isinstance(layer, Module) else layer for layer in self.layers]
        return lambda x: run_layers(steps, x)


def run_layers(layers, x: np.ndarray) -> np.ndarray:
    """Apply ``layers`` in order."""
    for layer in layers:
        x = layer(x)
    return x


def run_in_chunks(stream: Callable[[np.ndarray], np.ndarray], x: np.ndarray, chunk: int) -> np.ndarray:
    """Run ``stream`` over ``x`` ``[B, C, T]`` in pieces of ``chunk`` steps; concatenate the outputs."""
    return np.concatenate([stream(x[:, :, start : start + chunk]) for start in range(0, x.shape[2], chunk)], axis=2)
