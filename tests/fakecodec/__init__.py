"""A tiny third codec, registered by a test to show what adding a codec takes (docs/architecture.md).

    encode: pcm [B, 1, N] → causal conv k320 s160 → latent [B, 8, F] → residual VQ → codes [B, K, F]
    decode: codes → code vectors summed → transposed conv k320 s160 → pcm [B, 1, 160·F]

A config dataclass, a model file of core layers, a checkpoint reader and inspect hook,
realistic random weights (``synthetic.py``), and one registry line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mimi_cli.core import nearest_code
from mimi_cli.core.layers import Conv, ConvTranspose
from mimi_cli.core.module import Module
from mimi_cli.errors import WeightsError
from mimi_cli.models.codec import Checkpoint, Codec, Recognised
from mimi_cli.models.config import CodecConfig


@dataclass(frozen=True)
class FakeConfig(CodecConfig):
    name: ClassVar[str] = "fake-16khz"
    display_name: ClassVar[str] = "Fake 16 kHz"
    sample_rate: int = 16000
    frame_rate: float = 100.0  # 160 samples per frame
    dimension: int = 8
    codebook_size: int = 32
    num_codebooks: int = 4
    default_num_codebooks: int = 2

    def flops(self, seconds: float, num_codebooks: int) -> tuple[float, float]:
        frames = seconds * self.frame_rate
        conv = 2 * 2 * self.frame_size * self.dimension * frames
        return conv + num_codebooks * 2 * self.codebook_size * self.dimension * frames, conv


class Quantizer(Module):
    def __init__(self, c: FakeConfig):
        super().__init__()
        for level in range(c.num_codebooks):
            self.declare(f"codebooks.{level}", c.codebook_size, c.dimension)

    def books(self) -> list[np.ndarray]:
        return [self.params[f"codebooks.{level}"] for level in range(len(self.params))]

    def encode(self, z: np.ndarray, levels: int) -> np.ndarray:  # [B, D, F] → [B, K, F]
        batch, dim, frames = z.shape
        residual = np.ascontiguousarray(z.transpose(0, 2, 1)).reshape(-1, dim)
        codes = []
        for book in self.books()[:levels]:
            chosen = nearest_code(residual, book, np.einsum("kd,kd->k", book, book), squared=True)
            residual = residual - book[chosen]
            codes.append(chosen.reshape(batch, frames))
        return np.stack(codes, axis=1)

    def decode(self, codes: np.ndarray) -> np.ndarray:  # [B, K, F] → [B, D, F]
        books = self.books()
        total = sum(books[level][codes[:, level]] for level in range(codes.shape[1]))
        return np.ascontiguousarray(total.transpose(0, 2, 1)).astype(np.float32)


class Fake(Codec):
    config: FakeConfig

    def __init__(self, config: FakeConfig | None = None):
        c = config or FakeConfig()
        super().__init__(c)
        self.encoder = self.add("encoder", Conv(1, c.dimension, 2 * c.frame_size, stride=c.frame_size, name="conv"))
        self.quantizer = self.add("quantizer", Quantizer(c))
        self.decoder = self.add("decoder", ConvTranspose(c.dimension, 1, 2 * c.frame_size, c.frame_size,
                                                         name="convtr"))

    def pad_input(self, pcm: np.ndarray) -> np.ndarray:  # zeros to whole frames, as Mimi
        frame = self.config.frame_size
        x = np.zeros((pcm.shape[0], 1, -(-pcm.shape[-1] // frame) * frame), np.float32)
        x[:, 0, : pcm.shape[-1]] = pcm
        return x

    def encode_waveform(self, x):
        return self.encoder(x)

    def encode_sequence(self, x):
        return x

    def decode_sequence(self, z):
        return z

    def decode_waveform(self, x):
        return self.decoder(x)

    def encoder_stream(self):
        return self.encoder.streaming()

    def decoder_stream(self):
        return self.decoder.streaming()

    @classmethod
    def read_checkpoint(cls, path, config: FakeConfig) -> Checkpoint:
        from mimi_cli.weights import open_weights

        source = open_weights(path)
        if "encoder.conv.weight" not in source.tensors:
            raise WeightsError(f"{path} is not a {config.display_name} checkpoint")
        return Checkpoint(source.read_all(), "fake", source.container, [])

    @classmethod
    def inspect_checkpoint(cls, source) -> Recognised | None:
        if "encoder.conv.weight" not in source.tensors:
            return None
        shapes = {name: np.broadcast_to(np.float32(0), entry.shape) for name, entry in source.tensors.items()}
        return Recognised("Fake naming", cls().check_state(shapes))
