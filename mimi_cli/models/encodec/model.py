"""EnCodec 24 kHz in one file, on the same core and pipeline shape as Mimi.

    encode: pcm [B, 1, N]
        → SEANet convs (strides 2, 4, 5, 8)   [B, 512, F]    F = ceil(N / 320), 75 Hz
        → LSTM (2 layers, + skip), ELU, conv  [B, 128, F]
        → residual VQ                          codes [B, K, F]   K = 2 … 32 levels of 1024
    decode: codes [B, K, F]
        → sum of code vectors                  [B, 128, F]
        → conv, LSTM (2 layers, + skip)        [B, 512, F]
        → SEANet transposed convs              pcm [B, 1, 320·F]

Parameter names follow the Hugging Face checkpoint (``encoder.layers.0.conv.weight``, ...),
with weight norm already folded (see ``checkpoint.py``). The numerics follow
transformers' ``EncodecModel``: causal convs, but padded by *reflection*, not zeros.
"""

from __future__ import annotations

import numpy as np

from mimi_cli.core import LSTM, elu, residual_codes
from mimi_cli.core.layers import Conv, ConvTranspose, run_layers
from mimi_cli.core.stream import Chain, Stream, Sum, run_chunks
from mimi_cli.core.module import Module
from mimi_cli.models.codec import Codec
from mimi_cli.models.encodec.config import EncodecConfig
from mimi_cli.models.seanet import SEANetLayers, residual_stream, seanet_decoder, seanet_encoder

# ----------------------------------------------------------------------------- SEANet


def reflect_pad(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """Reflection padding of ``[B, C, T]`` that also works when ``T`` is not longer than the padding.

    A reflection needs ``T > pad``. For shorter inputs (a few samples, or the
    last layers of a short clip) zeros are appended first and cut again after,
    as transformers' ``_pad1d`` does::

        x = [a b]   left 3:   [a b 0 0]  →  [0 0 b | a b 0 0]  →  [0 0 b a b]
    """
    length = x.shape[-1]
    extra = max(0, max(left, right) - length + 1)
    if extra:
        x = np.pad(x, ((0, 0), (0, 0), (0, extra)))
    padded = np.pad(x, ((0, 0), (0, 0), (left, right)), mode="reflect")
    return padded[:, :, : padded.shape[-1] - extra]


class EncodecConv(Conv):
    """Causal conv padded by reflection: ``K_eff − stride`` on the left, and on the right
    whatever makes the length a whole number of strides (so every input sample is seen)::

        stride 4, length 10:  [pad 4 | x0 … x9 | pad 2]  →  3 outputs = ceil(10 / 4)

    Streaming (the shared :class:`~mimi_cli.core.layers.ConvStream`) reflects the first piece on
    the left once it is longer than the padding, and the tail on the right at ``flush``::

        batch:    [refl | p0 p1 p2 | refl]
        pieces:   [refl | p0]  [ctx | p1]  [ctx | p2 | refl]   (ctx: carried input steps)
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1):
        super().__init__(cin, cout, kernel, stride, dilation, name="conv")

    def __call__(self, x: np.ndarray) -> np.ndarray:  # [B, C, T] → [B, O, ceil(T / stride)]
        length = x.shape[-1]
        right = -(-length // self.stride) * self.stride - length
        return self.valid(reflect_pad(x, self.padding, right))

    def can_start(self, length: int) -> bool:
        return length > self.padding  # a reflection needs more steps than it mirrors

    def pad_start(self, x: np.ndarray) -> np.ndarray:
        return reflect_pad(x, self.padding, 0)

    def pad_end(self, x: np.ndarray, remainder: int) -> np.ndarray:
        return reflect_pad(x, 0, -remainder % self.stride)


class EncodecConvTranspose(ConvTranspose):
    """Transposed conv keeping the first ``T·stride`` samples (causal: all of ``K − stride`` trimmed on the right)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        super().__init__(cin, cout, kernel, stride, name="conv")


class ResnetBlock(Module):
    """``shortcut(x) + conv_k1(elu(conv_k3(elu(x))))``, the shortcut a 1×1 conv."""

    def __init__(self, dim: int, hidden: int, kernel: int, dilation: int):
        super().__init__()
        self.reduce = self.add("block.1", EncodecConv(dim, hidden, kernel, dilation=dilation))
        self.expand = self.add("block.3", EncodecConv(hidden, dim, 1))
        self.shortcut = self.add("shortcut", EncodecConv(dim, dim, 1))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.shortcut(x) + self.expand(elu(self.reduce(elu(x))))

    def streaming(self) -> Sum:
        return residual_stream(self.shortcut.streaming(), self.reduce, self.expand)


class LSTMBlock(Module):
    """``x + lstm(x)`` on ``[B, C, T]`` latents (the LSTM runs over time)."""

    def __init__(self, width: int, layers: int):
        super().__init__()
        self.lstm = self.add("lstm", LSTM(width, width, layers))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y, _ = self.run(x, None)
        return y

    def run(self, x: np.ndarray, state) -> tuple[np.ndarray, tuple]:
        """``[B, C, T]`` from ``state`` (None: zeros) → (output, state after the last step)."""
        steps = np.ascontiguousarray(x.transpose(0, 2, 1))  # [B, T, C]
        y, state = self.lstm(steps, state)
        return (y + steps).transpose(0, 2, 1), state

    def streaming(self) -> LSTMStream:
        return LSTMStream(self)


class LSTMStream(Stream):
    """The LSTM block fed piece by piece: the recurrent state (h, c) carries over."""

    def __init__(self, block: LSTMBlock):
        self.block = block
        self.reset()

    def reset(self) -> None:
        self.state = None

    def step(self, x: np.ndarray) -> np.ndarray:
        if not x.shape[2]:
            return x
        y, self.state = self.block.run(x, self.state)
        return y


# ----------------------------------------------------------------------------- quantizer


class Codebook(Module):
    """One VQ level: ``embed`` ``[codebook_size, dimension]``."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.declare("embed", size, dim)

    def prepare(self) -> None:
        self.embedding = self.params["embed"]
        self.sqnorm = np.einsum("kd,kd->k", self.embedding, self.embedding)


class ResidualVQ(Module):
    """Quantize level by level on the running residual; decoding sums the chosen vectors."""

    def __init__(self, c: EncodecConfig):
        super().__init__()
        self.codebooks = [self.add(f"layers.{i}.codebook", Codebook(c.codebook_size, c.dimension))
                          for i in range(c.num_codebooks)]

    def encode(self, z: np.ndarray, num_levels: int) -> np.ndarray:  # [B, D, F] → [B, n, F]
        batch, dim, frames = z.shape
        rows = np.ascontiguousarray(z.transpose(0, 2, 1)).reshape(batch * frames, dim)
        # The reference takes the largest −(|x|² − 2x·e + |e|²): squared distances, no root.
        codes = residual_codes(rows, [(book.embedding, book.sqnorm) for book in self.codebooks[:num_levels]],
                               squared=True)
        return codes.reshape(num_levels, batch, frames).transpose(1, 0, 2)

    def decode(self, codes: np.ndarray) -> np.ndarray:  # [B, n, F] → [B, D, F]
        total = np.zeros(codes.shape[:1] + codes.shape[2:] + (self.codebooks[0].embedding.shape[1],), np.float32)
        for level in range(codes.shape[1]):  # summed in codebook order
            total = total + self.codebooks[level].embedding[codes[:, level]]
        return np.ascontiguousarray(total.transpose(0, 2, 1))


# ----------------------------------------------------------------------------- the codec


SEANET_CHUNK_FRAMES = 96  # 1.28 s: 30,720 samples, 32 channels of them in 4 MB at the widest layer


class Encodec(Codec):
    """EnCodec 24 kHz: mono audio ↔ up to 32 levels of 10-bit codes at 75 Hz (1.5 – 24 kbps).

    >>> model = Encodec.from_file("model.safetensors")   # facebook/encodec_24khz
    >>> codes = model.encode(pcm, 8)                       # float32 [N] at 24 kHz → [8, ceil(N/320)] (6 kbps)
    >>> audio = model.decode(codes)                        # → [320·F]
    """

    config: EncodecConfig

    def __init__(self, config: EncodecConfig | None = None):
        c = config or EncodecConfig()
        super().__init__(c)
        layers = SEANetLayers(EncodecConv, EncodecConvTranspose, ResnetBlock,
                              sequence=lambda width: LSTMBlock(width, c.lstm_layers))
        self.encoder = self.add("encoder.layers", seanet_encoder(c, layers))
        self.decoder = self.add("decoder.layers", seanet_decoder(c, layers))
        self.quantizer = self.add("quantizer", ResidualVQ(c))

    @classmethod
    def inspect_checkpoint(cls, source):
        """For ``mimi inspect``: does this WeightFile hold a Encodec checkpoint, and would it load? (Recognised.)"""
        from mimi_cli.models.encodec.checkpoint import inspect_checkpoint

        return inspect_checkpoint(source, cls)

    @classmethod
    def read_checkpoint(cls, path, config: EncodecConfig):
        """Safetensors in the Hugging Face or original naming, weight norm folded or not."""
        from mimi_cli.models.encodec.checkpoint import load_checkpoint

        return load_checkpoint(path)

    # The SEANet's convolutions run over chunks of SEANET_CHUNK_FRAMES with exact carried context
    # (the batch result): activations stay in cache, and memory does not grow with the input beyond
    # the waveform and the latents. The LSTM block and what follows it (the sequence model, at the
    # SEANet's narrowest point) run in one pass.
    def encode_waveform(self, x: np.ndarray) -> np.ndarray:  # [B, 1, N] → [B, 512, F]
        convs = self.encoder.streaming(0, self.encoder.sequence_index)
        return run_chunks(convs, x, SEANET_CHUNK_FRAMES * self.config.hop_length)

    def encode_sequence(self, x: np.ndarray) -> np.ndarray:  # [B, 512, F] → [B, 128, F]
        return run_layers(self.encoder.layers[self.encoder.sequence_index :], x)

    def decode_sequence(self, z: np.ndarray) -> np.ndarray:  # [B, 128, F] → [B, 512, F]
        return run_layers(self.decoder.layers[: self.decoder.sequence_index + 1], z)

    def decode_waveform(self, x: np.ndarray) -> np.ndarray:  # [B, 512, F] → [B, 1, 320·F]
        convs = self.decoder.streaming(self.decoder.sequence_index + 1)
        return run_chunks(convs, x, SEANET_CHUNK_FRAMES)

    # -- streaming: the whole SEANet, LSTM included, is causal with exact carried context

    def encoder_stream(self) -> Chain:  # pcm [B, 1, T] → latent [B, 128, frames ready]
        return self.encoder.streaming()

    def decoder_stream(self) -> Chain:  # latent [B, 128, F] → pcm [B, 1, samples ready]
        return self.decoder.streaming()
