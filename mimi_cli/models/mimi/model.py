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

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from mimi_cli.core import (
    KVCache,
    apply_rope,
    conv1d,
    conv_transpose1d,
    elu,
    gelu,
    layer_norm,
    linear,
    nearest_code,
    pad_left,
    rope_frequencies,
    windowed_causal_attention,
)
from mimi_cli.core.module import Module
from mimi_cli.errors import InvalidAudioError, InvalidCodesError, WeightsError
from mimi_cli.models.mimi.config import DEFAULT_NUM_CODEBOOKS, MimiConfig

# ----------------------------------------------------------------------------- convolutions


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


# ----------------------------------------------------------------------------- SEANet


class ResidualBlock(Module):
    """``x + conv_k1(elu(conv_k3(elu(x))))``: pre-activated bottleneck with an identity shortcut."""

    def __init__(self, dim: int, hidden: int, kernel: int, dilation: int):
        super().__init__()
        self.reduce = self.add("block.1", Conv(dim, hidden, kernel, dilation=dilation))
        self.expand = self.add("block.3", Conv(hidden, dim, 1))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x + self.expand(elu(self.reduce(elu(x))))

    def streaming(self) -> Callable[[np.ndarray], np.ndarray]:
        reduce, expand = self.reduce.streaming(), self.expand.streaming()
        return lambda x: x + expand(elu(reduce(elu(x))))


class Sequential(Module):
    """Layers run in order; a layer's position is its checkpoint index (ELUs take a slot too)."""

    def __init__(self, layers: list[Callable[[np.ndarray], np.ndarray]]):
        super().__init__()
        self.layers = layers
        for index, layer in enumerate(layers):
            if isinstance(layer, Module):
                self.add(str(index), layer)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _run(self.layers, x)

    def streaming(self) -> Callable[[np.ndarray], np.ndarray]:
        """A stateful copy of the chain: layers with state get a stream, the others (ELU) are shared."""
        steps = [layer.streaming() if isinstance(layer, Module) else layer for layer in self.layers]
        return lambda x: _run(steps, x)


def _run(layers, x: np.ndarray) -> np.ndarray:
    for layer in layers:
        x = layer(x)
    return x


def _residual_blocks(width: int, c: MimiConfig) -> list[ResidualBlock]:
    return [ResidualBlock(width, width // c.compress, c.residual_kernel_size, c.dilation_base**j)
            for j in range(c.n_residual_layers)]


def seanet_encoder(c: MimiConfig) -> Sequential:
    """pcm ``[B, 1, N]`` → latent ``[B, dimension, N/hop]``; channels double at each stride."""
    width = c.n_filters
    layers: list = [Conv(c.channels, width, c.kernel_size)]
    for ratio in reversed(c.ratios):
        layers += _residual_blocks(width, c)
        layers += [elu, Conv(width, 2 * width, 2 * ratio, stride=ratio)]
        width *= 2
    layers += [elu, Conv(width, c.dimension, c.last_kernel_size)]
    return Sequential(layers)


def seanet_decoder(c: MimiConfig) -> Sequential:
    """latent ``[B, dimension, T]`` → pcm ``[B, 1, T·hop]``; channels halve at each stride."""
    width = c.n_filters * 2 ** len(c.ratios)
    layers: list = [Conv(c.dimension, width, c.kernel_size)]
    for ratio in c.ratios:
        layers += [elu, ConvTranspose(width, width // 2, 2 * ratio, ratio)]
        width //= 2
        layers += _residual_blocks(width, c)
    layers += [elu, Conv(width, c.channels, c.last_kernel_size)]
    return Sequential(layers)


class SEANet(Module):
    """Holds the ``model`` Sequential under its checkpoint name."""

    def __init__(self, model: Sequential):
        super().__init__()
        self.model = self.add("model", model)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.model(x)

    def streaming(self) -> Callable[[np.ndarray], np.ndarray]:
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

    def __call__(self, x: np.ndarray, positions: np.ndarray, freqs: np.ndarray,
                 cache: KVCache | None = None) -> np.ndarray:
        """``x`` ``[B, T, D]`` at absolute ``positions`` ``[T]``; with a ``cache``, earlier steps are attended too."""
        p, c = self.params, self.c
        batch, steps, d = x.shape
        h = layer_norm(x, p["norm1.weight"], p["norm1.bias"], c.norm_eps)
        qkv = linear(h, p["self_attn.in_proj_weight"])  # [B, T, 3D]
        q, k, v = qkv.reshape(batch, steps, 3, c.num_heads, c.head_dim).transpose(2, 0, 3, 1, 4)  # [B, H, T, Dh]
        q, k = apply_rope(q, positions, freqs), apply_rope(k, positions, freqs)
        v = np.ascontiguousarray(v)
        if cache is None:
            attended = windowed_causal_attention(q, k, v, c.context)  # [B, H, T, Dh]
        else:
            attended = cache.attend(q, k, v, positions)
        attended = attended.transpose(0, 2, 1, 3).reshape(batch, steps, d)
        x = x + p["layer_scale_1.scale"] * linear(attended, p["self_attn.out_proj.weight"])
        h = layer_norm(x, p["norm2.weight"], p["norm2.bias"], c.norm_eps)
        return x + p["layer_scale_2.scale"] * linear(gelu(linear(h, p["linear1.weight"])), p["linear2.weight"])


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
        for layer, cache in zip(self.layers, caches or [None] * len(self.layers), strict=True):
            x = layer(x, positions, self.freqs, cache)
        return np.ascontiguousarray(x.transpose(0, 2, 1))

    def streaming(self, steps_per_call: int) -> TransformerStream:
        return TransformerStream(self, steps_per_call)


class TransformerStream:
    """A transformer fed a few steps at a time: one KV cache per layer and the running position."""

    def __init__(self, transformer: Transformer, steps_per_call: int):
        self.transformer = transformer
        c = transformer.layers[0].c
        self.caches = [KVCache(c.context, steps_per_call) for _ in transformer.layers]
        self.position = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
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
        residual = x.reshape(batch * frames, dim)
        codes = np.empty((num_levels, batch * frames), dtype=np.int64)
        for level, book in enumerate(self.codebooks[:num_levels]):
            codes[level] = nearest_code(residual, book.embedding, book.sqnorm)
            residual = residual - book.embedding[codes[level]]
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

# Batch mode runs the SEANets over chunks of this many frames (1.28 s) with the
# streaming state carried between them: the same result as one pass (causal
# convs, exact carried context; float rounding aside), but activations stay in
# cache instead of streaming hundreds of MB through memory at every layer, and
# memory no longer grows with the input (measured in docs/performance.md).
SEANET_CHUNK_FRAMES = 16


def _in_chunks(stream: Callable[[np.ndarray], np.ndarray], x: np.ndarray, chunk: int) -> np.ndarray:
    """Run ``stream`` over ``x`` ``[B, C, T]`` in pieces of ``chunk`` steps; concatenate the outputs."""
    return np.concatenate([stream(x[:, :, start : start + chunk]) for start in range(0, x.shape[2], chunk)], axis=2)


class Mimi(Module):
    """Mimi: 24 kHz mono audio ↔ up to 32 levels of 11-bit codes at 12.5 Hz.

    >>> model = Mimi.from_file("tokenizer-e351c8d8-checkpoint125.safetensors")
    >>> codes = model.encode(pcm)      # pcm float32 [T] or [B, T] at 24 kHz → [K, F] or [B, K, F]
    >>> audio = model.decode(codes)    # → [1920·F] or [B, 1920·F]
    """

    def __init__(self, config: MimiConfig | None = None):
        super().__init__()
        c = self.config = config or MimiConfig()
        self.source: Path | None = None  # the weights file, when loaded from one
        self.warnings: list[str] = []  # unusual values found while loading
        self.encoder = self.add("encoder", SEANet(seanet_encoder(c)))
        self.encoder_transformer = self.add("encoder_transformer", Transformer(c))
        self.downsample = self.add("downsample", Conv(c.dimension, c.dimension, 2 * c.downsample_stride,
                                                      stride=c.downsample_stride, bias=False,
                                                      pad_mode="replicate", name="conv.conv.conv"))
        self.quantizer = self.add("quantizer", SplitResidualVQ(c))
        self.upsample = self.add("upsample", ConvTranspose(c.dimension, c.dimension, 2 * c.downsample_stride,
                                                           c.downsample_stride, groups=c.dimension, bias=False,
                                                           name="convtr.convtr.convtr"))
        self.decoder_transformer = self.add("decoder_transformer", Transformer(c))
        self.decoder = self.add("decoder", SEANet(seanet_decoder(c)))

    # -- construction

    @classmethod
    def from_state_dict(cls, state: Mapping[str, np.ndarray], config: MimiConfig | None = None) -> Mimi:
        """Build from tensors in the released naming; any missing, unexpected or mis-shaped tensor is an error."""
        model = cls(config)
        problems = model.check_state(state)
        if problems:
            raise WeightsError("weights do not match the Mimi model: " + "; ".join(problems))
        model.load(state)
        return model

    @classmethod
    def from_file(cls, path: str | Path, config: MimiConfig | None = None) -> Mimi:
        """Load a checkpoint: safetensors or Core ML, in the original, moshi or Hugging Face naming.

        Warnings about unusual values (see ``mimi_cli.weights.validate``) are kept in ``model.warnings``.
        """
        from mimi_cli.models.mimi.checkpoint import load_checkpoint

        config = config or MimiConfig()
        checkpoint = load_checkpoint(path, config)
        model = cls.from_state_dict(checkpoint.state, config)
        model.source, model.warnings = Path(path), checkpoint.warnings
        return model

    def check_state(self, state: Mapping[str, np.ndarray]) -> list[str]:
        """Describe every difference between ``state`` and this model's tensors (empty when they match)."""
        expected = dict(self.named_shapes())
        problems = []
        missing = [name for name in expected if name not in state]
        unexpected = [name for name in state if name not in expected]
        misshaped = [f"{name} {tuple(state[name].shape)} (expected {shape})"
                     for name, shape in expected.items() if name in state and tuple(state[name].shape) != shape]
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
            if names:
                problems.append(f"{len(names)} {label}: {', '.join(names)}")
        return problems

    # -- encode

    def _as_batch(self, pcm: np.ndarray) -> tuple[np.ndarray, bool]:
        """Validate audio and return it as float32 ``[B, N]`` plus whether the input was 1-D."""
        pcm = np.asarray(pcm)
        if not np.issubdtype(pcm.dtype, np.floating):
            raise InvalidAudioError(f"audio must be floating point in [-1, 1], got {pcm.dtype}; "
                                    "convert integer PCM first (e.g. int16 / 32768)")
        if pcm.ndim not in (1, 2):
            raise InvalidAudioError(f"audio must have shape [T] or [B, T], got {list(pcm.shape)}")
        if not np.all(np.isfinite(pcm)):
            raise InvalidAudioError("audio contains NaN or Inf samples")
        return np.atleast_2d(pcm).astype(np.float32, copy=False), pcm.ndim == 1

    def encode_latent(self, pcm: np.ndarray) -> np.ndarray:
        """The 12.5 Hz latent before quantization: ``[B, N]`` → ``[B, dimension, F]``."""
        pcm, _ = self._as_batch(pcm)
        frame = self.config.frame_size
        frames = -(-pcm.shape[-1] // frame)
        if frames == 0:
            return np.zeros((pcm.shape[0], self.config.dimension, 0), np.float32)
        # moshi ≥ 0.2.5 zero-pads the waveform to whole frames; the convs then need no right padding.
        x = np.zeros((pcm.shape[0], 1, frames * frame), np.float32)
        x[:, 0, : pcm.shape[-1]] = pcm
        latent = self.encoder_transformer(_in_chunks(self.encoder.streaming(), x, SEANET_CHUNK_FRAMES * frame))
        return self.downsample(latent)

    def encode(self, pcm: np.ndarray, num_codebooks: int = DEFAULT_NUM_CODEBOOKS) -> np.ndarray:
        """Codes (int64) ``[K, F]`` for ``pcm`` ``[N]``, or ``[B, K, F]`` for ``[B, N]``; F = ceil(N / 1920)."""
        if not 1 <= num_codebooks <= self.config.num_codebooks:
            raise ValueError(f"num_codebooks must be in 1..{self.config.num_codebooks}, got {num_codebooks}")
        _, squeeze = self._as_batch(pcm)
        codes = self.quantizer.encode(self.encode_latent(pcm), num_codebooks)
        return codes[0] if squeeze else codes

    # -- decode

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        """Validate codes and return them as int64 ``[B, K, F]``."""
        codes = np.asarray(codes)
        if codes.ndim not in (2, 3):
            raise InvalidCodesError(f"codes must have shape [K, F] or [B, K, F], got {list(codes.shape)}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise InvalidCodesError(f"codes must be integers, got {codes.dtype}")
        levels = codes.shape[-2]
        if not 1 <= levels <= self.config.num_codebooks:
            raise InvalidCodesError(f"codes have {levels} levels; this model has 1..{self.config.num_codebooks}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
            raise InvalidCodesError(f"codes must be in 0..{self.config.codebook_size - 1}, "
                                    f"found {codes.min()}..{codes.max()}")
        codes = codes.astype(np.int64, copy=False)
        return codes if codes.ndim == 3 else codes[None]

    def decode_latent(self, latent: np.ndarray) -> np.ndarray:
        """12.5 Hz latent ``[B, dimension, F]`` → pcm ``[B, 1920·F]``."""
        if latent.shape[-1] == 0:
            return np.zeros((latent.shape[0], 0), np.float32)
        x = self.decoder_transformer(self.upsample(latent))
        steps = SEANET_CHUNK_FRAMES * self.config.downsample_stride
        return _in_chunks(self.decoder.streaming(), x, steps)[:, 0, :]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """pcm float32 ``[1920·F]`` for codes ``[K, F]``, or ``[B, 1920·F]`` for ``[B, K, F]``."""
        squeeze = np.ndim(codes) == 2
        pcm = self.decode_latent(self.quantizer.decode(self.check_codes(codes)))
        return pcm[0] if squeeze else pcm

    # -- streaming

    def stream_encoder(self, batch_size: int = 1, num_codebooks: int = DEFAULT_NUM_CODEBOOKS,
                       frames_per_step: int = 1):
        """A :class:`~mimi_cli.models.mimi.streaming.StreamEncoder` over this model."""
        from mimi_cli.models.mimi.streaming import StreamEncoder

        return StreamEncoder(self, batch_size, num_codebooks, frames_per_step)

    def stream_decoder(self, batch_size: int = 1, frames_per_step: int = 1):
        """A :class:`~mimi_cli.models.mimi.streaming.StreamDecoder` over this model."""
        from mimi_cli.models.mimi.streaming import StreamDecoder

        return StreamDecoder(self, batch_size, frames_per_step)
