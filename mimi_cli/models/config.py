"""What every codec's config provides (no NumPy here: the CLI reads configs for its defaults)."""

from __future__ import annotations

import math
from typing import ClassVar

from mimi_cli.errors import check_integer


class CodecConfig:
    """Mixin for a codec's frozen config dataclass; subclasses define these fields."""

    name: ClassVar[str]  # as written in codes files and given to --codec
    display_name: ClassVar[str]
    sample_rate: int
    dimension: int  # width of the quantizer's input
    frame_rate: float  # code frames per second
    codebook_size: int
    num_codebooks: int  # the most the model has
    default_num_codebooks: int

    @property
    def frame_size(self) -> int:
        """Samples per code frame."""
        return round(self.sample_rate / self.frame_rate)

    def bitrate(self, num_codebooks: int) -> float:
        """Bits per second of ``num_codebooks`` levels."""
        return self.frame_rate * num_codebooks * math.log2(self.codebook_size)

    def check_levels(self) -> None:
        """For ``__post_init__``: at least one level, and the default one of them (a config of 6 levels kept
        the default 8, and ``encode`` without ``num_codebooks`` failed in a reshape)."""
        if self.num_codebooks < 1:
            raise ValueError("num_codebooks must be at least 1")
        if not 1 <= self.default_num_codebooks <= self.num_codebooks:
            raise ValueError(f"default_num_codebooks must be in 1..num_codebooks ({self.num_codebooks}), not "
                             f"{self.default_num_codebooks}")

    def levels(self, num_codebooks: int | None) -> int:
        """``num_codebooks`` checked (an integer in 1..num_codebooks), or the default for None."""
        if num_codebooks is None:
            return self.default_num_codebooks
        return check_integer("num_codebooks", num_codebooks, 1, self.num_codebooks)

    def codebooks_for_bandwidth(self, kbps: float) -> int:
        """Levels that fit in ``kbps`` (as EnCodec counts: 6 kbps → 8 levels of 10 bits at 75 Hz)."""
        levels = kbps * 1000 / self.bitrate(1) + 1e-9  # a float first: 1e308 kbps has no integer floor
        if not 1 <= levels < self.num_codebooks + 1:
            low, high = self.bitrate(1) / 1000, self.bitrate(self.num_codebooks) / 1000
            raise ValueError(f"{self.display_name} offers {low:g} to {high:g} kbps "
                             f"({self.bitrate(1) / 1000:g} kbps per codebook), not {kbps:g}")
        return math.floor(levels)

    def flops(self, seconds: float, num_codebooks: int) -> tuple[float, float]:
        """(encode, decode) FLOPs for ``seconds`` of audio, counted from the architecture (1 MAC = 2 FLOPs)."""
        raise NotImplementedError

    def seanet_flops(self, samples: float, conv_shortcut: bool = False) -> tuple[float, float, float]:
        """(encoder, decoder, latent steps) of a SEANet built from this config; the decoder mirrors the encoder."""
        c = self

        def hidden(width: int) -> int:
            return width // c.compress

        def residual(width: int, t: float) -> float:
            shortcut = 2 * width * width * t if conv_shortcut else 0
            return c.n_residual_layers * (2 * width * c.residual_kernel_size * hidden(width) * t
                                          + 2 * hidden(width) * width * t + shortcut)

        encoder = 2 * c.channels * c.kernel_size * c.n_filters * samples  # first conv
        decoder = 2 * c.n_filters * c.last_kernel_size * c.channels * samples  # last conv
        width, t = c.n_filters, samples
        for ratio in reversed(c.ratios):
            encoder += residual(width, t)
            decoder += residual(width, t)
            t /= ratio
            strided = 2 * width * 2 * ratio * 2 * width * t  # conv down = transposed conv up
            encoder, decoder = encoder + strided, decoder + strided
            width *= 2
        encoder += 2 * width * c.last_kernel_size * c.dimension * t
        decoder += 2 * c.dimension * c.kernel_size * width * t
        return encoder, decoder, t
