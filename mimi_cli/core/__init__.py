"""A small float32 tensor core in NumPy/SciPy, shaped for BLAS.

Layout convention: sequences are ``[B, C, T]`` for convolutions and
``[B, T, C]`` (or ``[B, H, T, D]`` per head) for the transformer and the recurrent layers.
"""

from mimi_cli.core.attention import KVCache, apply_rope, rope_frequencies, rope_rotation, windowed_causal_attention
from mimi_cli.core.conv import conv1d, conv_transpose1d, pad_left
from mimi_cli.core.ops import elu, gelu, layer_norm, linear, softmax
from mimi_cli.core.recurrent import GRU, LSTM
from mimi_cli.core.vq import codebook_distances, nearest_code, residual_codes

__all__ = [
    "GRU",
    "KVCache",
    "LSTM",
    "apply_rope",
    "codebook_distances",
    "conv1d",
    "conv_transpose1d",
    "elu",
    "gelu",
    "layer_norm",
    "linear",
    "nearest_code",
    "pad_left",
    "residual_codes",
    "rope_frequencies",
    "rope_rotation",
    "softmax",
    "windowed_causal_attention",
]
