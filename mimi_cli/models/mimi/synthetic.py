"""Realistic random Mimi weights, rebuilt bit-identically from a seed on any machine.

Random weights only test a port if the signal survives the network. PyTorch's
default init lets it fade through SEANet (every output is then the bias) and
its zero codebooks make every code 0; such weights let a wrong model pass. Here:

* convolutions and linears are variance-preserving (std = gain / sqrt(fan-in)),
  so activations keep an audio-like scale through every layer;
* LayerNorm, layer-scale and bias values are spread around their usual values;
* each codebook is drawn from a Gaussian centred on what that level actually
  receives, a quarter as wide (see ``_CODEBOOK_SPREAD``); the per-dimension mean
  and std of what each level receives (the projected latent or the running
  residual), measured once on speech by ``scripts/calibrate_codebooks.py`` and
  committed as ``codebook_stats.npz``. Nothing is calibrated at load time.

Every tensor has its own random stream (see ``mimi_cli.models.synthetic``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mimi_cli.models.mimi.config import MimiConfig
from mimi_cli.models.mimi.model import Mimi
from mimi_cli.models.synthetic import codebook_entries, normal, uniform

STATS_PATH = Path(__file__).with_name("codebook_stats.npz")

# Gains chosen so that speech at -20 dBFS gives latents of unit scale and decoded
# audio of roughly speech scale (checked by scripts/calibrate_codebooks.py).
_CONV_GAIN = 1.4  # a conv after an ELU sees about half the variance of its input
_RESIDUAL_GAIN = 0.5  # the branch of a residual block, so that blocks don't compound
_OUTPUT_GAIN = 0.1  # the decoder's last conv, so that decoded audio has a speech-like level

def codebook_tensors(seed: int, prefix: str, size: int, mean: np.ndarray, std: np.ndarray) -> dict[str, np.ndarray]:
    """One codebook's three buffers, entries ~ N(mean, (0.25·std)²) per dimension."""
    embedding = codebook_entries(seed, prefix + "embedding", size, mean, std)
    usage = uniform(seed, prefix + "cluster_usage", (size,), 0.5, 2.5)
    return {
        prefix + "_initialized": np.ones(1, np.float32),
        prefix + "cluster_usage": usage,
        prefix + "embedding_sum": embedding * usage[:, None],
    }


def load_codebook_stats(config: MimiConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-level mean and std ``[num_codebooks, codebook_dim]`` of what each level quantizes.

    Level 0 is the semantic level, levels 1.. the acoustic ones. The committed
    statistics exist for the released shape; other configs get unit Gaussians.
    """
    shape = (config.num_codebooks, config.codebook_dim)
    if STATS_PATH.exists() and config == MimiConfig():
        with np.load(STATS_PATH, allow_pickle=False) as stats:
            if stats["mean"].shape == shape:
                return stats["mean"], stats["std"]
    return np.zeros(shape, np.float32), np.ones(shape, np.float32)


def _dense_tensor(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Any non-codebook tensor, by what its name says it is."""
    if name.endswith(("norm1.weight", "norm2.weight")):
        return normal(seed, name, shape, 0.1, mean=1.0)
    if name.endswith(("norm1.bias", "norm2.bias")):
        return normal(seed, name, shape, 0.1)
    if name.endswith(".scale"):  # layer scale, initialised at 0.01 and grown by training
        return uniform(seed, name, shape, 0.05, 0.25)
    if name.endswith(".bias"):
        return normal(seed, name, shape, 0.02)
    if "convtr" in name:  # [C_in, C_out/g, K]: each output sums C_in·K/stride products
        stride = max(1, shape[2] // 2)
        return normal(seed, name, shape, _CONV_GAIN / np.sqrt(shape[0] * shape[2] / stride))
    fan_in = int(np.prod(shape[1:]))
    if ".block.3." in name:
        gain = _RESIDUAL_GAIN
    elif name.startswith("decoder.") and shape[0] == 1:  # the decoder's output conv, [1, C, K]
        gain = _OUTPUT_GAIN
    else:
        gain = _CONV_GAIN if "conv" in name else 1.0
    return normal(seed, name, shape, gain / np.sqrt(fan_in))


def random_state(config: MimiConfig | None = None, seed: int = 0,
                 stats: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """All tensors of a Mimi checkpoint in the released naming (float32)."""
    config = config or MimiConfig()
    mean, std = stats if stats is not None else load_codebook_stats(config)
    state: dict[str, np.ndarray] = {}
    for name, shape in Mimi(config).named_shapes():
        if "._codebook." in name:
            continue
        state[name] = _dense_tensor(seed, name, shape)
    for level in range(config.num_codebooks):
        prefix = codebook_prefix(level)
        state.update(codebook_tensors(seed, prefix, config.codebook_size, mean[level], std[level]))
    return state


def codebook_prefix(level: int) -> str:
    """Checkpoint prefix of codebook ``level`` (0 = semantic, 1.. = acoustic)."""
    if level == 0:
        return "quantizer.rvq_first.vq.layers.0._codebook."
    return f"quantizer.rvq_rest.vq.layers.{level - 1}._codebook."


def random_mimi(config: MimiConfig | None = None, seed: int = 0) -> Mimi:
    """A ready model with realistic random weights."""
    return Mimi.from_state_dict(random_state(config, seed), config)
