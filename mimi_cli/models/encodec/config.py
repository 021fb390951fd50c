"""EnCodec 24 kHz hyper-parameters: the released model's (transformers' ``EncodecConfig()`` defaults)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mimi_cli.models.config import CodecConfig


@dataclass(frozen=True)
class EncodecConfig(CodecConfig):
    name: ClassVar[str] = "encodec-24khz"
    display_name: ClassVar[str] = "EnCodec 24 kHz"
    sample_rate: int = 24000
    frame_rate: float = 75.0
    channels: int = 1
    # SEANet
    dimension: int = 128  # latent width, also the codebook vectors' width
    n_filters: int = 32
    ratios: tuple[int, ...] = (8, 5, 4, 2)  # decoder order; the encoder uses them reversed
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    n_residual_layers: int = 1
    dilation_base: int = 2
    compress: int = 2
    lstm_layers: int = 2
    # residual vector quantizer
    codebook_size: int = 1024
    num_codebooks: int = 32
    # 6 kbps, the default of Meta's `encodec` command (transformers defaults to its lowest, 1.5 kbps)
    default_num_codebooks: int = 8
    bandwidths: tuple[float, ...] = (1.5, 3.0, 6.0, 12.0, 24.0)  # kbps the model was trained for

    def __post_init__(self) -> None:
        if math.prod(self.ratios) != self.frame_size:
            raise ValueError(f"the SEANet hop {math.prod(self.ratios)} must equal the frame size {self.frame_size}")
        self.check_levels()

    @property
    def hop_length(self) -> int:
        """Samples per latent step (320: 75 Hz); one code frame per step."""
        return math.prod(self.ratios)

    @property
    def lstm_width(self) -> int:
        return self.n_filters * 2 ** len(self.ratios)

    def flops(self, seconds: float, num_codebooks: int) -> tuple[float, float]:
        """SEANet with 1×1 shortcuts, a 2-layer LSTM on each side, squared-distance VQ."""
        encoder, decoder, steps = self.seanet_flops(seconds * self.sample_rate, conv_shortcut=True)
        width = self.lstm_width
        lstm = self.lstm_layers * 2 * (4 * width * width) * 2 * steps  # input and recurrent products
        search = num_codebooks * 2 * self.codebook_size * self.dimension * steps
        return encoder + lstm + search, decoder + lstm
