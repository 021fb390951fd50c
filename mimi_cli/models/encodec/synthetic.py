"""Realistic random EnCodec 24 kHz weights, rebuilt bit-identically from a seed on any machine.

The same recipe as Mimi's (``mimi_cli.models.mimi.synthetic``), so that the signal
survives the network and codes are diverse:

* convolutions variance-preserving (std = gain / sqrt(fan-in)), residual branches
  and the decoder's output conv scaled down; LSTMs with PyTorch's own init
  (uniform ±1/sqrt(H)), which keeps their output in range;
* each level's codebook drawn around what that level receives: per-dimension mean
  and std measured once on speech by ``scripts/calibrate_encodec_codebooks.py``
  and committed as ``codebook_stats.npz``.

:func:`weight_norm_state` re-expresses conv weights as weight-norm pairs (g, v),
the form of the released Hugging Face file, for tests of the fold at load time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mimi_cli.models.encodec.config import EncodecConfig
from mimi_cli.models.encodec.model import Encodec, EncodecConvTranspose
from mimi_cli.models.synthetic import codebook_entries, normal, uniform

STATS_PATH = Path(__file__).with_name("codebook_stats.npz")

_CONV_GAIN = 1.4  # a conv after an ELU sees about half the variance of its input
_INPUT_GAIN = 4.0  # the first conv sees speech at about -20 dBFS; lift it to unit scale
_RESIDUAL_GAIN = 0.5  # the branch of a residual block, so that blocks don't compound
_OUTPUT_GAIN = 0.1  # the decoder's last conv, so that decoded audio has a speech-like level


def load_codebook_stats(config: EncodecConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-level mean and std ``[num_codebooks, dimension]`` (unit Gaussians for non-released shapes)."""
    shape = (config.num_codebooks, config.dimension)
    if STATS_PATH.exists() and config == EncodecConfig():
        with np.load(STATS_PATH, allow_pickle=False) as stats:
            return stats["mean"], stats["std"]
    return np.zeros(shape, np.float32), np.ones(shape, np.float32)


def _dense_tensor(seed: int, name: str, shape: tuple[int, ...], hidden: int, transposed: bool) -> np.ndarray:
    """Any non-codebook tensor, by what its name says it is."""
    if ".lstm." in name:
        bound = 1 / np.sqrt(hidden)
        return uniform(seed, name, shape, -bound, bound)
    if name.endswith(".bias"):
        return normal(seed, name, shape, 0.02)
    if transposed:  # [C_in, C_out, K]: each output sums C_in·K/stride products
        stride = shape[2] // 2
        return normal(seed, name, shape, _CONV_GAIN / np.sqrt(shape[0] * shape[2] / stride))
    if ".block.3." in name:
        gain = _RESIDUAL_GAIN
    elif name.startswith("decoder.") and shape[0] == 1:  # the output conv, [1, C, K]
        gain = _OUTPUT_GAIN
    elif name.startswith("encoder.layers.0."):
        gain = _INPUT_GAIN
    elif ".shortcut." in name:
        gain = 1.0
    else:
        gain = _CONV_GAIN
    return normal(seed, name, shape, gain / np.sqrt(np.prod(shape[1:])))


def random_state(config: EncodecConfig | None = None, seed: int = 0,
                 stats: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """All tensors of an EnCodec checkpoint in the Hugging Face naming, weight norm folded (float32)."""
    config = config or EncodecConfig()
    mean, std = stats if stats is not None else load_codebook_stats(config)
    model = Encodec(config)
    transposed = {f"decoder.layers.{i}.conv.weight" for i, layer in enumerate(model.decoder.layers)
                  if isinstance(layer, EncodecConvTranspose)}
    state = {}
    for name, shape in model.named_shapes():
        if name.startswith("quantizer."):
            level = int(name.split(".")[2])
            state[name] = codebook_entries(seed, name, config.codebook_size, mean[level], std[level])
        else:
            state[name] = _dense_tensor(seed, name, shape, config.lstm_width, name in transposed)
    return state


def weight_norm_state(state: dict[str, np.ndarray], seed: int = 0, old_names: bool = False) -> dict[str, np.ndarray]:
    """Conv weights as weight-norm pairs: ``v`` = weight × a random positive scale per row, ``g`` = ‖weight‖.

    Names as current PyTorch saves them (``parametrizations.weight.original0/1``), or
    as older saves (``weight_g``/``weight_v``) with ``old_names``.
    """
    g_suffix, v_suffix = ("weight_g", "weight_v") if old_names else ("parametrizations.weight.original0",
                                                                      "parametrizations.weight.original1")
    out = {}
    for name, w in state.items():
        if not (name.endswith(".conv.weight") and w.ndim == 3):
            out[name] = w
            continue
        prefix = name[: -len("weight")]
        scale = uniform(seed, prefix + "weight_norm_scale", (w.shape[0], 1, 1), 0.5, 2.0)
        w64 = w.astype(np.float64)
        out[prefix + g_suffix] = np.sqrt(np.sum(w64 * w64, axis=(1, 2), keepdims=True)).astype(np.float32)
        out[prefix + v_suffix] = (w64 * scale).astype(np.float32)
    return out


def random_encodec(config: EncodecConfig | None = None, seed: int = 0) -> Encodec:
    """A ready model with realistic random weights."""
    return Encodec.from_state_dict(random_state(config, seed), config)


def released_file_state(state: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """``state`` as facebook/encodec_24khz's model.safetensors holds it: weight-norm pairs and the
    quantizer's training buffers (``inited``, ``cluster_size``, ``embed_avg``), which loading ignores."""
    out = weight_norm_state(state, seed)
    for name in [n for n in state if n.endswith(".codebook.embed")]:
        prefix = name[: -len("embed")]
        out[prefix + "inited"] = np.ones(1, np.float32)
        out[prefix + "cluster_size"] = uniform(seed, prefix + "cluster_size", (state[name].shape[0],), 0.5, 2.5)
        out[prefix + "embed_avg"] = state[name] * out[prefix + "cluster_size"][:, None]
    return out
