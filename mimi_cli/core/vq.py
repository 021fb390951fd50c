"""Nearest-codebook search, computed the way ``torch.cdist`` does for large codebooks."""

from __future__ import annotations

import numpy as np


def codebook_distances(x: np.ndarray, codebook: np.ndarray, codebook_sqnorm: np.ndarray | None = None,
                       squared: bool = False) -> np.ndarray:
    """Euclidean distances ``[N, K]`` between vectors ``x`` ``[N, D]`` and ``codebook`` ``[K, D]``.

    Uses the expanded form ``sqrt(max(|x|² − 2·x·e + |e|², 0))`` like torch's
    ``cdist`` (which switches to it above 25 codes), including the clamp: two
    entries whose rounded distances are equal then tie exactly as in the
    reference, and ``argmin`` takes the first. ``squared`` gives
    ``|x|² − 2·x·e + |e|²`` as computed, with neither clamp nor root (EnCodec's
    reference compares those: the root can merge two distinct values into a tie).
    """
    if codebook_sqnorm is None:
        codebook_sqnorm = np.einsum("kd,kd->k", codebook, codebook)
    x_sqnorm = np.einsum("nd,nd->n", x, x)
    d2 = x @ codebook.T  # [N, K]
    d2 *= np.float32(-2.0)
    d2 += x_sqnorm[:, None]
    d2 += codebook_sqnorm[None, :]
    if squared:
        return d2
    np.maximum(d2, 0, out=d2)
    return np.sqrt(d2, out=d2)


def nearest_code(x: np.ndarray, codebook: np.ndarray, codebook_sqnorm: np.ndarray | None = None,
                 squared: bool = False) -> np.ndarray:
    """Index ``[N]`` (int64) of the nearest codebook entry to each row of ``x``; first index on ties.

    ``squared``: compare squared distances (see :func:`codebook_distances`).
    """
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.argmin(codebook_distances(x, codebook, codebook_sqnorm, squared), axis=1)
