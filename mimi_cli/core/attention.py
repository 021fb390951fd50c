"""Rotary position embedding and causal multi-head attention over a sliding window."""

from __future__ import annotations

import functools
import math

import numpy as np

from mimi_cli.core.ops import softmax

# Queries per score matrix in batch attention: [B, H, 64, 64 + context - 1] is 640 KB for Mimi's
# 8 heads and 250-step window, inside a core's L2 cache. Blocks of 256 queries (4 MB of scores, half
# of them masked) took 3.4× as long per query (docs/performance.md).
SCORE_BLOCK = 64


def rope_frequencies(head_dim: int, max_period: float) -> np.ndarray:
    """Angular frequency of each rotated pair: ``max_period ** (-2i / head_dim)``, ``[head_dim/2]``.

    The exponent is formed in float32 as the reference does; the exponential is
    taken in float64 and rounded once. (torch's vectorised float32 ``exp``
    differs from the correctly rounded value by 1 ulp for one of Mimi's 32
    frequencies, pair 3; see docs/parity.md.)
    """
    exponent = np.arange(head_dim // 2, dtype=np.float32) * np.float32(-math.log(max_period) * 2 / head_dim)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def rope_rotation(positions: np.ndarray, freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cosines and sines :func:`apply_rope` rotates by, ``[T, D/2]`` each.

    Args:
        positions: ``[T]`` absolute step indices (float32 exact up to 2**24).
        freqs: ``[D/2]`` from :func:`rope_frequencies`.

    The angle is a float32 product, as the reference forms it; cosine and sine are taken in
    float64 and rounded once. A transformer makes this once for all its layers and both of
    queries and keys: made per call, it was half of RoPE's time (30 s, one thread: 14.7 ms of
    each 246 ms transformer; docs/performance.md, "ONNX Runtime layer by layer").
    """
    angle = positions.astype(np.float32)[:, None] * freqs[None, :]  # [T, D/2], a float32 product
    angle64 = angle.astype(np.float64)
    return np.cos(angle64).astype(np.float32), np.sin(angle64).astype(np.float32)


def apply_rope(x: np.ndarray, rotation: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Rotate interleaved pairs ``(x[2i], x[2i+1])`` by ``position · freqs[i]``.

    Args:
        x: ``[B, H, T, D]``.
        rotation: cosines and sines ``[T, D/2]`` from :func:`rope_rotation`.
    Returns:
        A new ``[B, H, T, D]`` array.
    """
    cos, sin = rotation
    real, imag = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = real * cos - imag * sin
    out[..., 1::2] = real * sin + imag * cos
    return out


def masked_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scaled dot-product attention restricted to the query/key pairs where ``mask`` is 0.

    Args:
        q: ``[B, H, Tq, D]``; k, v: ``[B, H, Tk, D]``.
        mask: float32 ``[Tq, Tk]`` (or broadcastable to the scores), 0 where a query sees a key and
            −inf where it does not (:func:`additive_mask`).
    Returns:
        ``[B, H, Tq, D]``.
    """
    scores = (q * np.float32(1.0 / math.sqrt(q.shape[-1]))) @ k.swapaxes(-1, -2)  # [B, H, Tq, Tk]
    # In place: no score-sized temporaries (an attention layer over 30 s took 20.8 ms with np.where
    # and a softmax making new arrays, 17.3 ms so).
    scores += mask
    return softmax(scores, out=scores) @ v


def additive_mask(allowed: np.ndarray) -> np.ndarray:
    """A boolean ``allowed`` as :func:`masked_attention`'s mask: 0 where True, −inf where False."""
    return np.where(allowed, np.float32(0), np.float32(-np.inf))


@functools.lru_cache(maxsize=64)
def _window_mask(queries: int, first_query: int, keys: int, context: int) -> np.ndarray:
    """The mask of queries ``first_query ..`` against keys ``0 .. keys − 1`` (steps counted from the
    first key) for a window of ``context`` steps. Every block of :func:`attend_block` past the first
    few has the same one (made per block, it was a tenth of the attention's time)."""
    delta = np.arange(first_query, first_query + queries)[:, None] - np.arange(keys)[None, :]
    mask = additive_mask((delta >= 0) & (delta < context))
    mask.flags.writeable = False
    return mask


def windowed_causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, context: int) -> np.ndarray:
    """Causal attention where query ``i`` sees keys ``j`` with ``0 <= i - j < context``.

    Args:
        q, k, v: ``[B, H, T, D]`` for positions ``0 .. T-1``.
    Returns:
        ``[B, H, T, D]``.

    Cost and memory are linear in ``T`` (see :func:`attend_block`).
    """
    return attend_block(q, k, v, 0, q.shape[2], context)


def attend_block(q: np.ndarray, k: np.ndarray, v: np.ndarray, q0: int, q1: int, context: int) -> np.ndarray:
    """Queries ``q0 .. q1-1`` of :func:`windowed_causal_attention`, ``[B, H, q1 − q0, D]``.

    The queries go in blocks of :data:`SCORE_BLOCK`, each against only the keys its windows reach::

        keys:     k0 = s0 − context + 1 ........ s1 − 1
        query s0:  [k0 .. s0]
        query s1−1:         [s1 − context .. s1 − 1]
    """
    out = np.empty(q.shape[:2] + (q1 - q0, q.shape[3]), np.float32)
    for s0 in range(q0, q1, SCORE_BLOCK):
        s1 = min(q1, s0 + SCORE_BLOCK)
        k0 = max(0, s0 - context + 1)
        mask = _window_mask(s1 - s0, s0 - k0, s1 - k0, context)
        out[:, :, s0 - q0 : s1 - q0] = masked_attention(q[:, :, s0:s1], k[:, :, k0:s1], v[:, :, k0:s1], mask)
    return out


class KVCache:
    """Keys and values of the last ``context - 1`` steps of one attention layer, for streaming.

    Each call attends new queries to the cached keys plus the new ones. The
    window can shrink for some queries to reproduce a ring buffer that is
    written before it is read: moshi's streaming attention writes all
    ``steps_per_call`` new keys into a ring of ``context`` slots and then
    attends, so the ``j``-th query of a call (0-based) sees only
    ``context - (steps_per_call - 1 - j)`` keys once the ring is full::

        ring of 250 slots, a call writes steps p, p+1 (p even):
            query p    sees p-248 .. p      (249 keys: p-249 was just overwritten)
            query p+1  sees p-248 .. p+1    (250 keys)

    With ``steps_per_call=1`` every query sees exactly ``context`` keys, as in
    batch mode. Because the rule is a mask on absolute positions, a cache fed
    several frames at once gives the same result as one fed frame by frame.
    """

    def __init__(self, context: int, steps_per_call: int = 1):
        self.context, self.steps_per_call = context, steps_per_call
        # A ring of slots, allocated on first use: step p lives in slot p % capacity,
        # and slots never written hold position -1 (masked out).
        self.keys: np.ndarray | None = None  # [B, H, capacity, D]
        self.values: np.ndarray | None = None
        self.positions = np.zeros(0, np.int64)  # [capacity]

    def _ensure_capacity(self, k: np.ndarray) -> None:
        """The ring must hold the new steps plus the ``context - 1`` before them."""
        capacity = self.context - 1 + k.shape[2]
        if self.keys is not None and self.keys.shape[2] >= capacity:
            return
        keys = np.zeros(k.shape[:2] + (capacity, k.shape[3]), np.float32)
        values = np.zeros_like(keys)
        positions = np.full(capacity, -1, np.int64)
        if self.keys is not None:  # re-seat the old entries at their new slots
            live = self.positions >= 0
            slots = self.positions[live] % capacity
            keys[:, :, slots], values[:, :, slots] = self.keys[:, :, live], self.values[:, :, live]
            positions[slots] = self.positions[live]
        self.keys, self.values, self.positions = keys, values, positions

    def attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Attend ``q`` ``[B, H, T, D]`` (at ``positions`` ``[T]``) to the cache and the new ``k``, ``v``."""
        self._ensure_capacity(k)
        slots = positions % self.keys.shape[2]
        self.keys[:, :, slots], self.values[:, :, slots] = k, v
        self.positions[slots] = positions
        shrink = (self.steps_per_call - 1 - positions % self.steps_per_call) if self.steps_per_call > 1 else 0
        window = np.reshape(self.context - shrink, (-1, 1))  # [T, 1]
        delta = positions[:, None] - self.positions[None, :]
        allowed = (self.positions[None, :] >= 0) & (delta >= 0) & (delta < window)
        return masked_attention(q, self.keys, self.values, additive_mask(allowed))
