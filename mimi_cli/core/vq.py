"""Nearest-codebook search, computed the way ``torch.cdist`` does for large codebooks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mimi_cli.core.threads import run_blocks

# A residual quantizer's rows (frames) are independent, so they go in two pieces at once, cut at a
# multiple of this many rows: OpenBLAS computes each block of 24 rows (its Haswell kernels) or 16
# (SkylakeX) alike whatever the rest of the product is, so a piece cut there has the whole product's
# bits. Measured on 375 × 2048 distances: a cut at 188 rows changed 132 rows' distances in the last
# place under the Haswell kernels, cuts at 24, 48, 96 and 192 rows none (docs/performance.md).
ROW_ALIGN = 96


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


def residual_codes(x: np.ndarray, books: Sequence[tuple[np.ndarray, np.ndarray]], squared: bool = False
                   ) -> np.ndarray:
    """Residual vector quantization of the rows of ``x`` ``[N, D]``: codes ``[len(books), N]`` (int64).

    Level ``l`` takes the nearest entry of ``books[l]`` (``(codebook [K, D], its squared norms [K])``)
    to what the levels before it left of each row. The rows go in fixed pieces (:func:`row_pieces`)
    that run at once on the threads: the same codes at any thread count.
    """
    codes = np.empty((len(books), x.shape[0]), dtype=np.int64)
    pieces = row_pieces(x.shape[0])

    def one(i: int) -> None:
        rows = pieces[i]
        residual = x[rows]
        for level, (codebook, sqnorm) in enumerate(books):
            codes[level, rows] = nearest_code(residual, codebook, sqnorm, squared)
            residual = residual - codebook[codes[level, rows]]

    run_blocks(one, len(pieces))
    return codes


def row_pieces(rows: int) -> list[slice]:
    """``range(rows)`` in two pieces cut at the multiple of :data:`ROW_ALIGN` nearest the middle, or one
    piece under two multiples."""
    cut = round(rows / (2 * ROW_ALIGN)) * ROW_ALIGN if rows >= 2 * ROW_ALIGN else 0
    return [slice(0, cut), slice(cut, rows)] if cut else [slice(0, rows)]
