"""Building blocks for realistic random weights, rebuilt bit-identically from a seed on any machine.

Every tensor has its own random stream, seeded by (seed, tensor name), so a
tensor never depends on the order or the presence of the others. Each codec's
``synthetic.py`` decides the scale of each of its tensors with these.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Codebook entries spread 0.25× as wide as the residual they quantize. Among N
# random directions in D dimensions the best match correlates ≈ sqrt(2·ln N / D)
# with the residual (≈ 0.24 for Mimi's 2048 × 256, ≈ 0.33 for EnCodec's 1024 × 128),
# so entries of this length shrink the residual, as trained codebooks do; entries
# as wide as the residual would grow it.
CODEBOOK_SPREAD = 0.25


def rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(name.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def normal(seed: int, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
    return (mean + std * rng(seed, name).standard_normal(shape)).astype(np.float32)


def uniform(seed: int, name: str, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    return rng(seed, name).uniform(low, high, shape).astype(np.float32)


def codebook_entries(seed: int, name: str, size: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``[size, D]`` entries ~ N(mean, (CODEBOOK_SPREAD·std)²) per dimension."""
    noise = rng(seed, name).standard_normal((size, mean.shape[0]))
    return (mean + CODEBOOK_SPREAD * std * noise).astype(np.float32)


def state_fingerprint(state: dict[str, np.ndarray]) -> str:
    """sha256 over names and bytes: proves two machines built the same weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(state[name]).tobytes())
    return h.hexdigest()
