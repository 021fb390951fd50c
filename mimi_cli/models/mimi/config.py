"""Mimi hyper-parameters. The defaults are the released model's (moshi ``_mimi_config``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mimi_cli.models.config import CodecConfig

# Codebooks used when the caller does not say: moshi's ``get_mimi`` and Moshi itself use 8.
DEFAULT_NUM_CODEBOOKS = 8


@dataclass(frozen=True)
class MimiConfig(CodecConfig):
    name: ClassVar[str] = "mimi"
    display_name: ClassVar[str] = "Mimi"
    sample_rate: int = 24000
    frame_rate: float = 12.5
    channels: int = 1
    # SEANet
    dimension: int = 512  # latent width, also the transformers' d_model
    n_filters: int = 64
    ratios: tuple[int, ...] = (8, 6, 5, 4)  # decoder order; the encoder uses them reversed
    kernel_size: int = 7
    last_kernel_size: int = 3
    residual_kernel_size: int = 3
    n_residual_layers: int = 1
    dilation_base: int = 2
    compress: int = 2
    # transformers (encoder and decoder alike)
    num_layers: int = 8
    num_heads: int = 8
    dim_feedforward: int = 2048
    context: int = 250  # attention window in 25 Hz steps (10 s)
    max_period: float = 10000.0
    norm_eps: float = 1e-5
    # split residual vector quantizer: 1 semantic level + (num_codebooks - 1) acoustic levels
    codebook_size: int = 2048
    codebook_dim: int = 256
    num_codebooks: int = 32
    default_num_codebooks: int = DEFAULT_NUM_CODEBOOKS

    def __post_init__(self) -> None:
        if self.frame_size % self.hop_length:
            raise ValueError(f"frame size {self.frame_size} is not a multiple of the SEANet hop {self.hop_length}")
        if self.dimension % self.num_heads or (self.dimension // self.num_heads) % 2:
            raise ValueError("dimension must split into heads of even width")
        self.check_levels()

    @property
    def hop_length(self) -> int:
        """Samples per SEANet latent step (960: 25 Hz)."""
        return math.prod(self.ratios)

    @property
    def downsample_stride(self) -> int:
        """Latent steps per code frame (2: 25 Hz → 12.5 Hz)."""
        return self.frame_size // self.hop_length

    @property
    def head_dim(self) -> int:
        return self.dimension // self.num_heads

    def flops(self, seconds: float, num_codebooks: int) -> tuple[float, float]:
        """≈ 5.5 GFLOP per second of audio each way for the released config (docs/performance.md)."""
        encoder, decoder, steps = self.seanet_flops(seconds * self.sample_rate)
        d = self.dimension
        window = min(steps, self.context)
        keys = window * (window + 1) / 2 + max(0.0, steps - self.context) * self.context  # banded attention
        transformer = self.num_layers * (2 * steps * (4 * d * d + 2 * d * self.dim_feedforward) + 4 * keys * d)
        frames = steps / self.downsample_stride
        projections = 2 * (2 * d * self.codebook_dim * frames)
        encode = (encoder + transformer + 2 * d * 2 * self.downsample_stride * d * frames + projections
                  + num_codebooks * 2 * self.codebook_size * self.codebook_dim * frames)
        decode = decoder + transformer + 2 * d * 2 * self.downsample_stride * frames + projections
        return encode, decode
