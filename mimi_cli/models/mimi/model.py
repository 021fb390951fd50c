"""The Mimi codec in one file.

    encode: pcm [B, 1, N]  (N zero-padded to a multiple of 1920)
        → SEANet encoder          [B, 512, N/960]   25 Hz latent
        → transformer (8 layers)  [B, 512, N/960]
        → downsample k4 s2        [B, 512, F]       12.5 Hz, F = N/1920
        → split RVQ               codes [B, K, F]   1 semantic + K-1 acoustic levels
    decode: codes [B, K, F]
        → RVQ lookup + projections [B, 512, F]
        → depthwise upsample       [B, 512, 2F]
        → transformer (8 layers)   [B, 512, 2F]
        → SEANet decoder           pcm [B, 1, 1920·F]

Parameter names follow the released checkpoint (``encoder.model.0.conv.conv.weight``, ...).
Everything is causal: output frame ``t`` depends only on input samples before ``1920·(t+1)``.
"""

from __future__ import annotations

import numpy as np

from mimi_cli.core import (
    KVCache,
    apply_rope,
    elu,
    gelu,
    layer_norm,
    linear,
    residual_codes,
    rope_frequencies,
    rope_rotation,
)
from mimi_cli.core.attention import attend_block
from mimi_cli.core.layers import Conv, ConvTranspose, Sequential
from mimi_cli.core.stream import Chain, Identity, Stream, Sum, run_chunks, split_layers
from mimi_cli.core.module import Module
from mimi_cli.core.threads import even_pieces, run_blocks
from mimi_cli.models.codec import Codec
from mimi_cli.models.mimi.config import MimiConfig
from mimi_cli.models.seanet import SEANetLayers, residual_stream, seanet_decoder, seanet_encoder

# ----------------------------------------------------------------------------- SEANet


class ResidualBlock(Module):
    """``x + conv_k1(elu(conv_k3(elu(x))))``: pre-activated bottleneck with an identity shortcut."""

    def __init__(self, dim: int, hidden: int, kernel: int, dilation: int):
        super().__init__()
        self.reduce = self.add("block.1", Conv(dim, hidden, kernel, dilation=dilation))
        self.expand = self.add("block.3", Conv(hidden, dim, 1))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x + self.expand(elu(self.reduce(elu(x))))

    def streaming(self) -> Sum:
        return residual_stream(Identity(), self.reduce, self.expand)


MIMI_SEANET = SEANetLayers(conv=Conv, conv_transpose=ConvTranspose, residual_block=ResidualBlock)

# A transformer layer's batch work goes in blocks of steps, shared out to the threads. The blocks depend
# on the length alone, so the result does not depend on the thread count. An even number of blocks of at
# most 512 steps gives two cores an equal share (30 s are 750 steps: two blocks of 375 took 0.55 s at
# 2 threads where blocks of 256, three of them, took 0.69 s; docs/performance.md).
MAX_BLOCK_STEPS = 512
MIN_SPLIT_STEPS = 64  # shorter sequences (streaming's steps, short clips) stay one block


def row_blocks(steps: int) -> list[slice]:
    """``steps`` cut into an even number of near-equal blocks of at most :data:`MAX_BLOCK_STEPS`."""
    return [slice(0, steps)] if steps < MIN_SPLIT_STEPS else even_pieces(steps, steps, MAX_BLOCK_STEPS)


class SEANet(Module):
    """Holds the ``model`` Sequential under its checkpoint name."""

    def __init__(self, model: Sequential):
        super().__init__()
        self.model = self.add("model", model)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.model(x)

    def streaming(self) -> Chain:
        return self.model.streaming()


# ----------------------------------------------------------------------------- transformer


class TransformerLayer(Module):
    """Norm-first layer: windowed self-attention with RoPE, then a GELU MLP, each layer-scaled."""

    def __init__(self, c: MimiConfig):
        super().__init__()
        self.c = c
        d = c.dimension
        self.declare("self_attn.in_proj_weight", 3 * d, d)  # rows: q, k, v; heads of 64 within each
        self.declare("self_attn.out_proj.weight", d, d)
        self.declare("norm1.weight", d)
        self.declare("norm1.bias", d)
        self.declare("norm2.weight", d)
        self.declare("norm2.bias", d)
        self.declare("linear1.weight", c.dim_feedforward, d)
        self.declare("linear2.weight", d, c.dim_feedforward)
        self.declare("layer_scale_1.scale", d)
        self.declare("layer_scale_2.scale", d)

    def __call__(self, x: np.ndarray, positions: np.ndarray, rotation: tuple[np.ndarray, np.ndarray],
                 cache: KVCache | None = None) -> np.ndarray:
        """``x`` ``[B, T, D]`` at absolute ``positions`` ``[T]``, rotated by ``rotation`` (``rope_rotation``);
        with a ``cache``, earlier steps are attended too.

        Without one (batch mode) the steps go in blocks (:func:`row_blocks`), spread over the
        threads (:func:`~mimi_cli.core.threads.run_blocks`): every row's work but the attention is
        its own, and a block of queries needs only the keys and values, computed first.
        """
        if cache is not None:
            q, k, v = self.project(x, rotation)
            return self.finish(x, cache.attend(q, k, v, positions))
        batch, steps, _ = x.shape
        c = self.c
        q, k, v = (np.empty((batch, c.num_heads, steps, c.head_dim), np.float32) for _ in range(3))
        out = np.empty_like(x)
        blocks = row_blocks(steps)

        cos, sin = rotation

        def project(i: int) -> None:
            rows = blocks[i]
            q[:, :, rows], k[:, :, rows], v[:, :, rows] = self.project(x[:, rows], (cos[rows], sin[rows]))

        def finish(i: int) -> None:
            rows = blocks[i]
            out[:, rows] = self.finish(x[:, rows], attend_block(q, k, v, rows.start, rows.stop, c.context))

        run_blocks(project, len(blocks))
        run_blocks(finish, len(blocks))
        return out

    def project(self, x: np.ndarray, rotation: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
        """``x`` ``[B, T, D]`` → queries, keys and values ``[B, H, T, Dh]``, positions rotated in."""
        p, c = self.params, self.c
        batch, steps, _ = x.shape
        h = layer_norm(x, p["norm1.weight"], p["norm1.bias"], c.norm_eps)
        qkv = linear(h, p["self_attn.in_proj_weight"])  # [B, T, 3D]
        q, k, v = qkv.reshape(batch, steps, 3, c.num_heads, c.head_dim).transpose(2, 0, 3, 1, 4)  # [B, H, T, Dh]
        return apply_rope(q, rotation), apply_rope(k, rotation), np.ascontiguousarray(v)

    def finish(self, x: np.ndarray, attended: np.ndarray) -> np.ndarray:
        """The rest of the layer for rows ``x`` ``[B, T, D]`` given their attention output ``[B, H, T, Dh]``."""
        p, c = self.params, self.c
        batch, steps, d = x.shape
        attended = attended.transpose(0, 2, 1, 3).reshape(batch, steps, d)
        # x + scale · linear(...), each in place in the product's new array (+ and × commute exactly:
        # the same bits as with new arrays for each term).
        x = _scaled_add(linear(attended, p["self_attn.out_proj.weight"]), p["layer_scale_1.scale"], x)
        h = layer_norm(x, p["norm2.weight"], p["norm2.bias"], c.norm_eps)
        hidden = gelu(linear(h, p["linear1.weight"]), in_place=True)  # [B, T, 4D]
        return _scaled_add(linear(hidden, p["linear2.weight"]), p["layer_scale_2.scale"], x)


def _scaled_add(y: np.ndarray, scale: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``x + scale · y``, C-contiguous, written over ``y`` (a product's own new array) when that is.

    A few rows' product is a transposed view (``linear``); the sum then gets an array of its own,
    as LayerNorm's sums over the last axis take another order when it is strided (other bits).
    """
    if not y.flags.c_contiguous:
        return x + scale * y
    y *= scale
    y += x
    return y


class Transformer(Module):
    """Stack of layers on ``[B, C, T]`` latents (moshi's ProjectedTransformer with no projections)."""

    def __init__(self, c: MimiConfig):
        super().__init__()
        self.layers = [self.add(f"transformer.layers.{i}", TransformerLayer(c)) for i in range(c.num_layers)]
        self.freqs = rope_frequencies(c.head_dim, c.max_period)

    def __call__(self, x: np.ndarray, start: int = 0, caches: list[KVCache] | None = None) -> np.ndarray:
        """``[B, C, T]`` → ``[B, C, T]`` for steps ``start .. start+T-1``."""
        x = np.ascontiguousarray(x.transpose(0, 2, 1))  # [B, T, C]
        positions = np.arange(start, start + x.shape[1])
        rotation = rope_rotation(positions, self.freqs)  # once for every layer
        for layer, cache in zip(self.layers, caches or [None] * len(self.layers), strict=True):
            x = layer(x, positions, rotation, cache)
        return np.ascontiguousarray(x.transpose(0, 2, 1))

    def streaming(self, steps_per_call: int) -> TransformerStream:
        return TransformerStream(self, steps_per_call)


class TransformerStream(Stream):
    """A transformer fed a few steps at a time: one KV cache per layer and the running position.

    ``steps_per_call`` is the ring-buffer write size the caches reproduce (moshi's: one frame, 2 steps).
    """

    def __init__(self, transformer: Transformer, steps_per_call: int):
        self.transformer, self.steps_per_call = transformer, steps_per_call
        self.reset()

    def reset(self) -> None:
        c = self.transformer.layers[0].c
        self.caches = [KVCache(c.context, self.steps_per_call) for _ in self.transformer.layers]
        self.position = 0

    def step(self, x: np.ndarray) -> np.ndarray:
        if not x.shape[2]:
            return x
        y = self.transformer(x, self.position, self.caches)
        self.position += x.shape[2]
        return y


# ----------------------------------------------------------------------------- quantizer


class Codebook(Module):
    """One VQ level. The codebook is ``embedding_sum / max(cluster_usage, 1e-5)``, computed once."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.declare("_initialized", 1)
        self.declare("cluster_usage", size)
        self.declare("embedding_sum", size, dim)

    def prepare(self) -> None:
        usage = np.maximum(self.params["cluster_usage"], np.float32(1e-5))
        self.embedding = self.params["embedding_sum"] / usage[:, None]  # [size, dim]
        self.sqnorm = np.einsum("kd,kd->k", self.embedding, self.embedding)


class ResidualVQ(Module):
    """Project 512 → 256, quantize level by level on the running residual, sum back, project 256 → 512."""

    def __init__(self, c: MimiConfig, num_levels: int):
        super().__init__()
        self.declare("input_proj.weight", c.codebook_dim, c.dimension, 1)
        self.declare("output_proj.weight", c.dimension, c.codebook_dim, 1)
        self.codebooks = [self.add(f"vq.layers.{i}._codebook", Codebook(c.codebook_size, c.codebook_dim))
                          for i in range(num_levels)]

    def project_in(self, z: np.ndarray) -> np.ndarray:
        """``[B, D, F]`` → ``[B, F, codebook_dim]``."""
        return np.matmul(self.params["input_proj.weight"][:, :, 0], z).transpose(0, 2, 1)

    def encode(self, z: np.ndarray, num_levels: int) -> np.ndarray:  # [B, D, F] → [B, n, F]
        x = self.project_in(z)
        batch, frames, dim = x.shape
        codes = residual_codes(x.reshape(batch * frames, dim),
                               [(book.embedding, book.sqnorm) for book in self.codebooks[:num_levels]])
        return codes.reshape(num_levels, batch, frames).transpose(1, 0, 2)

    def decode(self, codes: np.ndarray) -> np.ndarray:  # [B, n, F] → [B, D, F]
        total = np.zeros(codes.shape[:1] + codes.shape[2:] + (self.codebooks[0].embedding.shape[1],), np.float32)
        for level in range(codes.shape[1]):  # summed in codebook order, before the projection
            total = total + self.codebooks[level].embedding[codes[:, level]]
        return np.matmul(self.params["output_proj.weight"][:, :, 0], total.transpose(0, 2, 1))


class SplitResidualVQ(Module):
    """Level 0 is the semantic codebook; levels 1.. are acoustic. Both project the same latent."""

    def __init__(self, c: MimiConfig):
        super().__init__()
        self.semantic = self.add("rvq_first", ResidualVQ(c, 1))
        self.acoustic = self.add("rvq_rest", ResidualVQ(c, c.num_codebooks - 1))

    def encode(self, z: np.ndarray, num_codebooks: int) -> np.ndarray:  # [B, D, F] → [B, K, F]
        codes = self.semantic.encode(z, 1)
        if num_codebooks > 1:
            codes = np.concatenate([codes, self.acoustic.encode(z, num_codebooks - 1)], axis=1)
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:  # [B, K, F] → [B, D, F]
        z = self.semantic.decode(codes[:, :1])
        if codes.shape[1] > 1:
            z += self.acoustic.decode(codes[:, 1:])
        return z


# ----------------------------------------------------------------------------- the codec

# Batch mode runs the SEANets over chunks of this many frames (1.28 s and 1.92 s) with the
# streaming state carried between them: the same result as one pass (causal
# convs, exact carried context; float rounding aside), but activations stay in
# cache instead of streaming hundreds of MB through memory at every layer, and
# memory no longer grows with the input (measured in docs/performance.md). Since the 24 kHz layers
# take parts of a chunk (below), the decoder runs faster on 24 frames than on 16 (30 s, SkylakeX kernels,
# paired: 0.983 on two threads, 0.923 on one); the encoder did not (1.006 and 1.019; docs/performance.md,
# "The 24 kHz layers on quarter pieces").
ENCODER_CHUNK_FRAMES, DECODER_CHUNK_FRAMES = 16, 24
# The decoder's first layers (its k7 conv, an ELU and the first upsampling, whose weight is 32 MB) take
# pieces of this many chunks: a chunk of 16 frames gave the upsampling only 32 steps, so it read its whole
# weight again every 32 steps (one-thread 30 s SEANet decoder 1,352 → 1,301 ms; docs/performance.md, "The
# decoder's first layers on pieces of two chunks").
DECODER_HEAD_LAYERS, DECODER_HEAD_CHUNKS = 3, 2
# The encoder's last layers (its last downsampling, whose weight is 32 MB, an ELU and the final conv) take
# pieces of this many chunks, for the same reason at the other end: 32 steps a chunk made products of 32
# columns (one-thread 30 s SEANet encoder with OpenBLAS's SkylakeX kernels, those layers 140 → 84 ms;
# docs/performance.md, "The encoder's last layers on pieces of four chunks").
ENCODER_TAIL_LAYERS, ENCODER_TAIL_CHUNKS = 3, 4
# The 24 kHz layers (the encoder's first four: its k7 conv, first residual block, an ELU and the first
# downsampling; the decoder's last four: its last upsampling, residual block, an ELU and the output conv)
# step on parts of a chunk of this many frames (7,680 steps), which stay in a core's own cache where a
# chunk of 16 frames (64 channels × 30,720 steps, 7.8 MB) did not (30 s, SkylakeX kernels: encode 1.09–1.12
# → 1.05 s on one thread, decode 1.06–1.09 → 1.01 s; docs/performance.md, "The 24 kHz layers on quarter
# pieces").
WIDE_LAYERS, WIDE_PART_FRAMES = 4, 4


class Mimi(Codec):
    """Mimi: 24 kHz mono audio ↔ up to 32 levels of 11-bit codes at 12.5 Hz.

    >>> model = Mimi.from_file("tokenizer-e351c8d8-checkpoint125.safetensors")
    >>> codes = model.encode(pcm)      # pcm float32 [T] or [B, T] at 24 kHz → [K, F] or [B, K, F]
    >>> audio = model.decode(codes)    # → [1920·F] or [B, 1920·F]
    """

    config: MimiConfig

    def __init__(self, config: MimiConfig | None = None):
        c = config or MimiConfig()
        super().__init__(c)
        self.encoder = self.add("encoder", SEANet(seanet_encoder(c, MIMI_SEANET)))
        self.encoder_transformer = self.add("encoder_transformer", Transformer(c))
        self.downsample = self.add("downsample", Conv(c.dimension, c.dimension, 2 * c.downsample_stride,
                                                      stride=c.downsample_stride, bias=False,
                                                      pad_mode="replicate", name="conv.conv.conv"))
        self.quantizer = self.add("quantizer", SplitResidualVQ(c))
        self.upsample = self.add("upsample", ConvTranspose(c.dimension, c.dimension, 2 * c.downsample_stride,
                                                           c.downsample_stride, groups=c.dimension, bias=False,
                                                           name="convtr.convtr.convtr"))
        self.decoder_transformer = self.add("decoder_transformer", Transformer(c))
        self.decoder = self.add("decoder", SEANet(seanet_decoder(c, MIMI_SEANET)))

    @classmethod
    def inspect_checkpoint(cls, source):
        """For ``mimi inspect``: does this WeightFile hold a Mimi checkpoint, and would it load? (Recognised.)"""
        from mimi_cli.models.mimi.checkpoint import inspect_checkpoint

        return inspect_checkpoint(source, cls)

    @classmethod
    def read_checkpoint(cls, path, config: MimiConfig):
        """Safetensors or Core ML, in the original, moshi or Hugging Face naming."""
        from mimi_cli.models.mimi.checkpoint import load_checkpoint

        return load_checkpoint(path, config, [name for name, _ in cls(config).named_shapes()])

    # -- the four stages

    def pad_input(self, pcm: np.ndarray) -> np.ndarray:
        """moshi ≥ 0.2.5 zero-pads the waveform to whole frames; the convs then need no right padding."""
        frame = self.config.frame_size
        x = np.zeros((pcm.shape[0], 1, -(-pcm.shape[-1] // frame) * frame), np.float32)
        x[:, 0, : pcm.shape[-1]] = pcm
        return x

    def encode_waveform(self, x: np.ndarray) -> np.ndarray:  # [B, 1, N] → [B, 512, N/960]
        convs = split_layers(self.encoder.streaming(), slice(0, WIDE_LAYERS), ENCODER_CHUNK_FRAMES // WIDE_PART_FRAMES)
        return run_chunks(convs, x, ENCODER_CHUNK_FRAMES * self.config.frame_size,
                          tail=ENCODER_TAIL_LAYERS, regroup=ENCODER_TAIL_CHUNKS)

    def encode_sequence(self, x: np.ndarray) -> np.ndarray:  # [B, 512, 2F] → [B, 512, F]
        return self.downsample(self.encoder_transformer(x))

    def decode_sequence(self, z: np.ndarray) -> np.ndarray:  # [B, 512, F] → [B, 512, 2F]
        return self.decoder_transformer(self.upsample(z))

    def decode_waveform(self, x: np.ndarray) -> np.ndarray:  # [B, 512, 2F] → [B, 1, 1920·F]
        convs = split_layers(self.decoder.streaming(), slice(-WIDE_LAYERS, None),
                             DECODER_CHUNK_FRAMES // WIDE_PART_FRAMES)
        return run_chunks(convs, x, DECODER_CHUNK_FRAMES * self.config.downsample_stride,
                          head=DECODER_HEAD_LAYERS, regroup=DECODER_HEAD_CHUNKS)

    # -- streaming: moshi's ``with model.streaming(B)``, one frame (2 transformer steps) per call

    def encoder_stream(self) -> Chain:  # pcm [B, 1, n·1920] → latent [B, 512, n]
        steps = self.config.downsample_stride
        return Chain([self.encoder.streaming(), self.encoder_transformer.streaming(steps),
                      self.downsample.streaming()])

    def decoder_stream(self) -> Chain:  # latent [B, 512, n] → pcm [B, 1, n·1920]
        steps = self.config.downsample_stride
        return Chain([self.upsample.streaming(), self.decoder_transformer.streaming(steps),
                      self.decoder.streaming()])
