"""The SEANet convolutional encoder and decoder, as both codecs build it from their own layers.

    encoder: conv k7 → per ratio (reversed): residual blocks, ELU, strided conv (channels ×2)
             → [sequence model] → ELU → conv → [B, dimension, N/hop]
    decoder: conv k7 → [sequence model] → per ratio: ELU, transposed conv (channels ÷2), residual blocks
             → ELU → conv → [B, channels, T·hop]

Layer positions are checkpoint indices (ELUs take a slot too). Mimi puts its transformer outside
the SEANet (no sequence model here); EnCodec puts its LSTM inside, at the narrowest point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mimi_cli.core import elu
from mimi_cli.core.layers import Sequential
from mimi_cli.core.module import Module
from mimi_cli.core.stream import Chain, Pointwise, Stream, Sum


@dataclass(frozen=True)
class SEANetLayers:
    """A codec's own layer types, with these signatures."""

    conv: Callable[..., Module]  # (cin, cout, kernel, stride=1, dilation=1): a causal conv
    conv_transpose: Callable[..., Module]  # (cin, cout, kernel, stride)
    residual_block: Callable[..., Module]  # (dim, hidden, kernel, dilation)
    sequence: Callable[[int], Module] | None = None  # (width) → a sequence model at the narrowest point


def residual_stream(shortcut: Stream, reduce: Module, expand: Module) -> Sum:
    """The stream of a residual block ``shortcut(x) + expand(elu(reduce(elu(x))))`` (both codecs' blocks).

    The second ELU and the sum are written over the ``reduce`` and ``expand`` convs' new outputs; the
    first ELU's input is the shortcut's too, so it makes its own array.
    """
    return Sum(shortcut, Chain([Pointwise(elu), reduce.streaming(), Pointwise(elu, in_place=True),
                                expand.streaming()]), in_place=True)


def _residual_blocks(width: int, c, layers: SEANetLayers) -> list[Module]:
    return [layers.residual_block(width, width // c.compress, c.residual_kernel_size, c.dilation_base**j)
            for j in range(c.n_residual_layers)]


def seanet_encoder(c, layers: SEANetLayers) -> Sequential:
    """pcm ``[B, channels, N]`` → ``[B, dimension, N/hop]``; channels double at each stride."""
    width = c.n_filters
    chain: list = [layers.conv(c.channels, width, c.kernel_size)]
    for ratio in reversed(c.ratios):
        chain += _residual_blocks(width, c, layers)
        chain += [elu, layers.conv(width, 2 * width, 2 * ratio, stride=ratio)]
        width *= 2
    sequence_index = len(chain)  # where the sequence model sits (or would): the convolutions end here
    if layers.sequence is not None:
        chain.append(layers.sequence(width))
    chain += [elu, layers.conv(width, c.dimension, c.last_kernel_size)]
    return _named(Sequential(chain), sequence_index)


def seanet_decoder(c, layers: SEANetLayers) -> Sequential:
    """``[B, dimension, T]`` → pcm ``[B, channels, T·hop]``; channels halve at each stride."""
    width = c.n_filters * 2 ** len(c.ratios)
    chain: list = [layers.conv(c.dimension, width, c.kernel_size)]
    sequence_index = len(chain)  # the sequence model's place (or where it would be): convolutions follow it
    if layers.sequence is not None:
        chain.append(layers.sequence(width))
    for ratio in c.ratios:
        chain += [elu, layers.conv_transpose(width, width // 2, 2 * ratio, ratio)]
        width //= 2
        chain += _residual_blocks(width, c, layers)
    chain += [elu, layers.conv(width, c.channels, c.last_kernel_size)]
    return _named(Sequential(chain), sequence_index)


def _named(chain: Sequential, sequence_index: int) -> Sequential:
    """Name the slice point between the convolutions and the sequence model (EnCodec's LSTM)::

        encoder.layers[:sequence_index]   convolutions    decoder.layers[:sequence_index + 1]   conv, LSTM
        encoder.layers[sequence_index:]   LSTM, ELU, conv decoder.layers[sequence_index + 1:]   convolutions
    """
    chain.sequence_index = sequence_index
    return chain
