"""Element-wise and row-wise operations: linear, LayerNorm, ELU, GELU, softmax.

All of them keep float32 in and out, as the reference does.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

_INV_SQRT2 = np.float32(1.0 / np.sqrt(2.0))


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``x @ weight.T + bias``.

    Args:
        x: ``[..., in]``.
        weight: ``[out, in]`` (PyTorch layout).
        bias: ``[out]`` or None.
    Returns:
        ``[..., out]``.
    """
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis with the biased variance, as ``torch.nn.LayerNorm``."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    centred *= 1.0 / np.sqrt(var + np.float32(eps))
    centred *= weight
    centred += bias
    return centred


def elu(x: np.ndarray) -> np.ndarray:
    """ELU with alpha 1: ``x`` where positive, ``expm1(x)`` elsewhere.

    ``expm1(min(x, 0)) + max(x, 0)`` gives exactly one of the two terms at every
    point (the other is an exact zero), without a boolean mask.
    """
    y = np.minimum(x, 0)
    np.expm1(y, out=y)
    y += np.maximum(x, 0)
    return y


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU, which is PyTorch's default: ``0.5·x·(1 + erf(x/√2))``."""
    y = erf(x * _INV_SQRT2)
    y += 1
    y *= x
    y *= np.float32(0.5)
    return y


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax; ``-inf`` entries get probability 0."""
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e
