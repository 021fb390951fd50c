"""Element-wise and row-wise operations: linear, LayerNorm, ELU, GELU, softmax.

All of them keep float32 in and out, as the reference does.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
from mimi_cli.core.threads import CACHE_BLOCK, map_elements, matmul_rows

_INV_SQRT2 = np.float32(1.0 / np.sqrt(2.0))


# Up to this many rows (streaming: 2 steps per stream), a linear layer is bound by reading its
# weight: the weight is then the left operand (OpenBLAS reads it 20-30 % faster that way, measured
# for 2-16 rows) and its rows are shared out to the threads (matmul_rows).
_SKINNY_ROWS = 64


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``x @ weight.T + bias``.

    Args:
        x: ``[..., in]``.
        weight: ``[out, in]`` (PyTorch layout).
        bias: ``[out]`` or None.
    Returns:
        ``[..., out]``.
    """
    rows = x.size // x.shape[-1]
    x2 = x.reshape(rows, x.shape[-1])  # one product for every row: B streams share each weight read
    y = (matmul_rows(weight, x2.T).T if rows <= _SKINNY_ROWS else x2 @ weight.T).reshape(*x.shape[:-1], -1)
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


def elu(x: np.ndarray, in_place: bool = False) -> np.ndarray:
    """ELU with alpha 1: ``x`` where positive, ``exp(x) − 1`` elsewhere; written over ``x`` when
    ``in_place`` and ``x`` is a C-contiguous float32 array (else into a new one).

    Computed as ``max(x, eᵐ − 1)`` with ``m = min(x, 0)``, which is exact algebra since ``eˣ − 1 ≥ x``
    everywhere. Where NumPy runs float32 ``expm1`` on SIMD (its AVX-512 builds), ``eᵐ − 1`` is
    ``expm1(m)``: 0.23 ns an element, where ``exp`` took 0.30 and the ``− 1`` a pass of its own, and
    within 2.2 ulp of float64's ELU. Elsewhere ``expm1`` is a scalar loop, 10× slower than
    ``exp``, so it is ``exp(x) − 1``, which loses digits at tiny |x| (up to 1.2e-7 in absolute
    terms, under the rounding noise of the convolutions around it). docs/performance.md, "ONNX Runtime
    layer by layer, and the work around the products".
    """
    return map_elements(_elu_into, np.asarray(x, np.float32), in_place)


_ZEROS = np.zeros(CACHE_BLOCK, np.float32)  # minimum() against an array of zeros: 3× faster than against 0


@functools.cache
def _vector_expm1() -> bool:
    """Whether NumPy dispatches float32 ``expm1`` to a SIMD loop here (not its scalar baseline)."""
    try:
        from numpy.lib.introspect import opt_func_info  # NumPy ≥ 2.0

        return not opt_func_info(func_name="^expm1$", signature="float32")["expm1"]["ff"]["current"].startswith(
            "baseline")
    except (ImportError, KeyError, TypeError, AttributeError):
        return False


def _elu_into(x: np.ndarray, out: np.ndarray) -> None:  # x: 1-D, at most CACHE_BLOCK elements (map_elements)
    m = _scratch(x.size)[0]  # not out, which may be x itself
    np.minimum(x, _ZEROS[: x.size], out=m)
    if _vector_expm1():
        np.expm1(m, out=m)
    else:
        np.exp(m, out=m)
        m -= 1
    np.maximum(x, m, out=out)


def gelu(x: np.ndarray, in_place: bool = False) -> np.ndarray:
    """The erf GELU, PyTorch's default: ``0.5·x·(1 + erf(x/√2))``, with erf computed as PyTorch does;
    written over ``x`` when ``in_place`` and ``x`` is a C-contiguous float32 array.

    PyTorch's CPU kernel evaluates erf by Abramowitz & Stegun's formula 7.1.26 (absolute error
    ≤ 1.5e-7), so the reference's activations carry that formula's error: on 100,000 values torch
    2.13 was 3.7e-7 from the exact GELU and within float32 rounding of the formula (where the
    formula is furthest from the exact GELU, x = −3.0835, torch is on the formula's side; 68 % of a
    million GELU values equal torch's bit for bit, against 30 % with SciPy's exact erf). It is also
    cheaper than SciPy's erf (12 M values, one thread: 0.07–0.10 s against 0.25 s)::

        t = 1 / (1 + p·|z|),   erf(z) = sign(z)·(1 − t·P(t)·exp(−z²)),   P a polynomial of degree 4
    """
    return map_elements(_gelu_into, np.asarray(x, np.float32), in_place)


_local = threading.local()


def _scratch(size: int) -> list[np.ndarray]:
    """Three float32 work arrays of ``size`` ≤ CACHE_BLOCK elements, this thread's own, reused
    (fresh 256 KB arrays on every block come from the kernel, page by page)."""
    if not hasattr(_local, "scratch"):
        _local.scratch = [np.empty(CACHE_BLOCK, np.float32) for _ in range(3)]
    return [a[:size] for a in _local.scratch]


_ERF_P = np.float32(0.3275911)
# Formula 7.1.26's coefficients a5..a1, halved (exactly: a power of two) so that Horner's result is
# erfc(|z|)/2 and the tail below needs no separate halving pass.
_ERF_POLY_HALF = [np.float32(a) / 2 for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)]
_SIGN_BIT = np.int32(-(1 << 31))


def _gelu_into(x: np.ndarray, out: np.ndarray) -> None:
    z, t, q = _scratch(x.size)
    np.multiply(x, _INV_SQRT2, out=z)  # erf's argument
    np.abs(z, out=t)
    t *= _ERF_P
    t += 1
    # The same bits as np.reciprocal, which NumPy does not vectorise for float32: 0.08 ns an element against 0.15.
    np.divide(np.float32(1), t, out=t)
    np.multiply(t, _ERF_POLY_HALF[0], out=q)
    for a in _ERF_POLY_HALF[1:]:  # Horner: q = t·P(t)/2
        q += a
        q *= t
    np.square(z, out=t)
    np.negative(t, out=t)
    np.exp(t, out=t)
    q *= t  # erfc(|z|)/2 = t·P(t)·exp(−z²)/2
    np.subtract(np.float32(0.5), q, out=q)  # (1 − erfc(|z|))/2 = erf(|z|)/2
    # erf(z)/2: flip the sign where z is negative, by the sign bit: exact, two passes of ≈ 0.2 ns per
    # element, where np.sign(z, out=z) alone took 7 ns per element (NumPy's in-place sign is slow).
    zi = z.view(np.int32)
    np.bitwise_and(zi, _SIGN_BIT, out=zi)
    np.bitwise_xor(q.view(np.int32), zi, out=q.view(np.int32))
    q += np.float32(0.5)  # (1 + erf(z))/2
    np.multiply(q, x, out=out)  # the last pass to read x: out may be x itself


def softmax(x: np.ndarray, axis: int = -1, out: np.ndarray | None = None) -> np.ndarray:
    """Numerically stable softmax; ``-inf`` entries get probability 0. ``out`` may be ``x`` (in place)."""
    out = np.subtract(x, np.max(x, axis=axis, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= np.sum(out, axis=axis, keepdims=True)
    return out
