"""What every codec's config provides (no NumPy here: the CLI reads configs for its defaults)."""

from __future__ import annotations

import math
from typing import ClassVar


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

    def codebooks_for_bandwidth(self, kbps: float) -> int:
        """Levels that fit in ``kbps`` (as EnCodec counts: 6 kbps → 8 levels of 10 bits at 75 Hz)."""
        levels = math.floor(kbps * 1000 / self.bitrate(1) + 1e-9)
        if not 1 <= levels <= self.num_codebooks:
            low, high = self.bitrate(1) / 1000, self.bitrate(self.num_codebooks) / 1000
            raise ValueError(f"{self.display_name} offers {low:g} to {high:g} kbps "
                             f"({self.bitrate(1) / 1000:g} kbps per codebook), not {kbps:g}")
        return levels
