"""1-D convolution and transposed convolution as matrix products.

Both work on ``[B, C, T]`` float32 arrays with PyTorch's weight layouts and
semantics (cross-correlation, no kernel flip). Padding is the caller's job:
:func:`pad_left` builds the causal context, and convolutions here are "valid".

Time is processed in blocks so that the unfolded (im2col) matrix stays a few
megabytes whatever the input length: the loop is over blocks of thousands of
steps, never over single time steps.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from mimi_cli.core.threads import matmul_depth, matmul_rows, run_blocks

# Upper bound on the elements of one unfolded block (16 MB of float32).
_BLOCK_ELEMENTS = 1 << 22
# Convs with at least this many output steps use the "phases" strategy (strided ones from the second).
_PHASES_MIN_STEPS = 1000
_PHASES_MIN_STRIDED_STEPS = 1500
# Output elements per block in the "phases" strategy (1 MB of float32: fits in L2).
_PHASE_BLOCK_ELEMENTS = 1 << 18
# At most this many output steps per block: streaming's pieces (a frame: 1920 steps at 24 kHz)
# then split into blocks the threads share.
_MAX_BLOCK_STEPS = 1024
# Input channels per block when pair_taps transposes a weight.
_TRANSPOSE_BLOCK = 64
# Up to this many input steps a transposed conv is computed weight-as-right-operand: streaming's
# frames, and the 32 steps per chunk that batch mode gives the decoder's first upsampling (1024 → 512
# channels, k16 s8: 11.8 ms against 14.5 ms blocked; at 256 steps the blocked path wins, 73 against 92).
_SKINNY_STEPS = 64


def pad_left(x: np.ndarray, pad: int, mode: str = "constant") -> np.ndarray:
    """Prepend ``pad`` steps of context to ``x`` ``[B, C, T]``.

    ``mode`` is ``"constant"`` (zeros) or ``"replicate"`` (copies of the first
    column). A causal convolution of effective kernel ``K_eff`` and stride ``S``
    is left-padded by ``K_eff - S``, so that output ``t`` sees inputs up to
    ``t·S + S - 1`` and never the future::

        padded:   p p p p | x0 x1 x2 x3 x4 x5 x6 x7      (K=6, S=2, pad=4)
        out[0]:   [p p p p x0 x1]
        out[1]:       [p p x0 x1 x2 x3]
        out[2]:           [x0 x1 x2 x3 x4 x5]
    """
    if pad == 0:
        return x
    if mode == "constant":
        return np.pad(x, ((0, 0), (0, 0), (pad, 0)))
    if mode == "replicate":
        if x.shape[-1] == 0:
            raise ValueError("cannot replicate-pad an empty sequence")
        return np.concatenate([np.repeat(x[:, :, :1], pad, axis=2), x], axis=2)
    raise ValueError(f"unknown pad mode {mode!r}")


def conv_output_length(length: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """Output length of a valid (unpadded) convolution; 0 when the input is too short."""
    effective = (kernel_size - 1) * dilation + 1
    return max(0, (length - effective) // stride + 1)


def conv1d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    strategy: str = "auto",
    context: np.ndarray | None = None,
    derived: dict | None = None,
) -> np.ndarray:
    """Valid 1-D convolution.

    Args:
        x: ``[B, C, T]``.
        weight: ``[O, C/groups, K]``.
        bias: ``[O]`` or None.
        context: ``[B, C, c]`` steps that come before ``x`` (what a stream carries from its last
            piece), or None. The convolution runs over both without joining them: only the block
            of time that straddles the two is copied (a join copied every piece of every layer
            again, 0.1 s of a one-thread 30 s decode).
        strategy: ``"unfold"`` (im2col: one GEMM against the K shifted copies of
            the input), ``"phases"`` (one GEMM per group of ``stride`` taps over
            shifted views, see :func:`_conv1d_phases`) or ``"auto"`` (the one
            measured faster for the shape, see docs/performance.md).
        derived: where the caller keeps what this call derives from ``weight`` (the stacked taps of
            :func:`_conv1d_phases`) for its next calls with the same weight; None to derive per call.
    Returns:
        ``[B, O, T_out]`` with ``T_out = (T - (K-1)·dilation - 1) // stride + 1`` (0 if negative),
        ``T`` counting the context's steps too.
    """
    batch, channels, length = x.shape
    out_channels, group_in, kernel = weight.shape
    if channels != group_in * groups or out_channels % groups:
        raise ValueError(f"conv1d: input has {channels} channels, weight {weight.shape} with groups={groups}")
    reads = _Reads(context, np.ascontiguousarray(x, dtype=np.float32))
    length = reads.length
    out_len = conv_output_length(length, kernel, stride, dilation)
    y = np.empty((batch, out_channels, out_len), dtype=np.float32)
    if out_len == 0:
        return y
    # [G, O/G, C/G·K]: row o of group g, columns ordered (channel, tap) like the unfold below.
    w = weight.reshape(groups, out_channels // groups, group_in * kernel)
    if kernel == 1 and stride == 1:  # a pointwise conv is a plain product: no unfolding
        x = reads.whole()  # x itself unless a context was given (a stream's pointwise conv carries none)
        y = np.matmul(w, x.reshape(batch, groups, group_in, length)).reshape(batch, out_channels, length)
        if bias is not None:
            y += bias[:, None]
        return y
    if strategy == "auto":
        strategy = _pick_conv_strategy(channels, kernel, stride, out_len)
    if strategy == "phases" and groups == 1 and dilation == 1 and kernel % stride == 0:
        return _conv1d_phases(reads, weight, bias, stride, out_len, {} if derived is None else derived)
    block = min(_MAX_BLOCK_STEPS, max(1, _BLOCK_ELEMENTS // (channels * kernel * batch)))
    starts = range(0, out_len, block)

    def one(i: int) -> None:
        t0 = starts[i]
        n = min(block, out_len - t0)
        # Unfold: cols[b, c, k, t] = x[b, c, (t0 + t)·stride + k·dilation], a view, no copy.
        span = reads.span(t0 * stride, (t0 + n - 1) * stride + (kernel - 1) * dilation + 1)
        s_b, s_c, s_t = span.strides
        cols = as_strided(span, shape=(batch, channels, kernel, n),
                          strides=(s_b, s_c, dilation * s_t, stride * s_t), writeable=False)
        if groups == 1:  # one product for the whole batch: B streams share each read of the weight
            # Copies into BLAS layout (with one channel and one stream the reshape is a view whose rows
            # overlap, which BLAS cannot take).
            cols = np.ascontiguousarray(cols.transpose(1, 2, 0, 3).reshape(channels * kernel, batch * n))
            if batch == 1:  # straight into the output, not through a new array and a copy
                matmul_rows(w[0], cols, out=y[0, :, t0 : t0 + n])
            else:
                y[:, :, t0 : t0 + n] = matmul_rows(w[0], cols).reshape(out_channels, batch, n).transpose(1, 0, 2)
        else:
            cols = cols.reshape(batch, groups, group_in * kernel, n)  # copies into BLAS layout
            y[:, :, t0 : t0 + n] = np.matmul(w, cols).reshape(batch, out_channels, n)

    run_blocks(one, len(starts))  # blocks of time at once: their number depends on the shapes alone
    if bias is not None:
        y += bias[:, None]
    return y


def _pick_conv_strategy(channels: int, kernel: int, stride: int, out_len: int) -> str:
    """Which conv1d strategy is faster for a shape (rule from `mimi bench --only kernels`, docs/performance.md).

    Long inputs gain from one stacked product over the input's frames (1.6× for Mimi's
    64 → 32 k3 at 24 kHz, 7× for the decoder's 64 → 1 output conv; a strided conv
    from about 1,500 output steps, 1.15× for Mimi's 64 → 128 k8 s4 over a chunk).
    Short inputs (the 25 Hz layers, streaming) or a single input channel favour one
    large GEMM over the unfolded input.
    """
    if channels == 1 or kernel % stride:
        return "unfold"
    return "phases" if out_len >= (_PHASES_MIN_STEPS if stride == 1 else _PHASES_MIN_STRIDED_STEPS) else "unfold"


class _Reads:
    """``context`` followed by ``x`` along time (``[B, C, c]`` and ``[B, C, T]``), read in spans::

        [ context | x ................................ ]
          span(0, n):  a short copy across the joint
                    span(s, e), s ≥ c:  a view of x
    """

    def __init__(self, context: np.ndarray | None, x: np.ndarray):
        self.x = x
        self.context = np.asarray(context, np.float32) if context is not None and context.shape[2] else None
        self.joint = 0 if self.context is None else self.context.shape[2]  # where x starts
        self.length = self.joint + x.shape[2]

    def span(self, start: int, stop: int) -> np.ndarray:
        """Steps ``start:stop`` of the whole: a view unless the span straddles the joint."""
        if start >= self.joint:
            return self.x[:, :, start - self.joint : stop - self.joint]
        if stop <= self.joint:
            return self.context[:, :, start:stop]
        return np.concatenate([self.context[:, :, start:], self.x[:, :, : stop - self.joint]], axis=2)

    def whole(self) -> np.ndarray:
        return self.span(0, self.length)

    def frames(self, count: int, stride: int) -> np.ndarray:
        """``G[b, (c, s), j] = whole[b, c, j·stride + s]`` for the first ``count`` frames, ``[B, C·stride, count]``.

        Copied from the context and ``x`` apart (only the frames across the joint through a joined
        copy), not from the whole joined first: that was a second copy of every strided conv's input.
        """
        batch, channels, _ = self.x.shape
        grouped = np.empty((batch, channels, stride, count), np.float32)
        joined = min(count, -(-self.joint // stride))  # the frames that start in the context

        def put(frames: slice, steps: np.ndarray) -> None:  # steps [B, C, n·stride] → frames' columns
            grouped[:, :, :, frames] = steps.reshape(batch, channels, -1, stride).transpose(0, 1, 3, 2)

        if joined:
            put(slice(0, joined), self.span(0, joined * stride))
        if count > joined:
            start = joined * stride - self.joint
            put(slice(joined, count), self.x[:, :, start : start + (count - joined) * stride])
        return grouped.reshape(batch, channels * stride, count)


def _conv1d_phases(reads: _Reads, weight: np.ndarray, bias: np.ndarray | None, stride: int,
                   out_len: int, derived: dict) -> np.ndarray:
    """Conv as one GEMM over the input's frames and ``K/stride`` shifted sums, for ``K`` a multiple
    of ``stride`` (no dilation).

    Cut the input into frames of ``stride`` samples and stack each frame's
    samples under its channels: ``G[(c, s), j] = x[c, j·stride + s]``. Output
    ``t`` reads frames ``t .. t + K/stride − 1``, so with ``W_p`` the taps
    ``p·stride .. p·stride + stride − 1``::

        y[:, t] = W_0 @ G[:, t] + W_1 @ G[:, t + 1] + ...

    The ``W_p`` go in one product, stacked as rows, over every frame a block of
    outputs reads; each phase's rows are then added in, shifted by their phase::

        P = [W_0; W_1; W_2] @ G[:, t0 : t0 + n + 2]        rows:  W_0 G   W_1 G   W_2 G
        y[:, t0 + t] = P_0[:, t] + P_1[:, t + 1] + P_2[:, t + 2]

    One product with ``K/stride`` times the rows runs faster than ``K/stride``
    products (Mimi's 64 → 32 k3 at 24 kHz: 2.0–2.3 ms against 3.0 ms per 30,720 steps), reads
    ``G`` once, and sums the same products in the same order. For stride 1, ``G``
    is the input itself (no copy at all); otherwise building ``G`` copies the input
    once, where im2col copies it ``K/stride`` times.
    """
    batch, channels, _ = reads.x.shape
    out_channels, _, kernel = weight.shape
    phases = kernel // stride
    frames = out_len + phases - 1
    if stride == 1:
        frames_of = reads.span  # G[:, a:b] is the input's steps a:b
    else:
        grouped = reads.frames(frames, stride)

        def frames_of(start: int, stop: int) -> np.ndarray:
            return grouped[:, :, start:stop]
    # [K/stride · O, C · stride], rows (phase, out channel), made once per weight (``derived``): made
    # per call, it was 0.2 ms of the 5 ms that Mimi's 128 → 256 k10 s5 takes per 1.28 s chunk.
    # Contiguous: NumPy < 2.3 runs a non-BLAS loop (40× slower) on matrices whose rows are strided.
    if "phase_rows" not in derived:
        taps = weight.reshape(out_channels, channels, phases, stride).transpose(2, 0, 1, 3)
        derived["phase_rows"] = np.ascontiguousarray(taps.reshape(phases * out_channels, channels * stride))
    w = derived["phase_rows"]
    y = np.empty((batch, out_channels, out_len), np.float32)
    # Blocks of output steps keep the products in cache (and bound them).
    block = min(_MAX_BLOCK_STEPS, max(256, _PHASE_BLOCK_ELEMENTS // out_channels))
    starts = range(0, out_len, block)

    def one(i: int) -> None:
        t0 = starts[i]
        n = min(block, out_len - t0)
        products = np.matmul(w, frames_of(t0, t0 + n + phases - 1))  # [B, K/stride · O, m], m = n + K/stride − 1
        # Phase p's term for output (o, t) is products[:, p·O + o, p + t]: in a stream's flat products,
        # index p·O·m + p + (o·m + t). So from offsets p·O·m + p, the phases line up as 1-D runs and are
        # summed in place into phase 0's rows, in phase order as before (the same bits); only the first
        # n of each row of m are outputs, the last K/stride − 1 mix in the next row. NumPy buffers a
        # ufunc's strided 2-D operands, which made the shifted [O, n] views' adds cost twice these.
        m = n + phases - 1
        flat = products.reshape(batch, phases * out_channels * m)
        run = out_channels * m - (phases - 1)
        for p in range(1, phases):
            flat[:, :run] += flat[:, p * (out_channels * m + 1) : p * (out_channels * m + 1) + run]
        y[:, :, t0 : t0 + n] = products[:, :out_channels, :n]

    run_blocks(one, len(starts))
    if bias is not None:
        y += bias[:, None]
    return y


def conv_transpose1d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    stride: int = 1,
    groups: int = 1,
    derived: dict | None = None,
) -> np.ndarray:
    """Transposed 1-D convolution with no padding (the "full" output).

    Each input step ``t`` spreads ``K`` output samples starting at ``t·stride``;
    neighbouring spreads overlap when ``K > stride`` and are summed::

        x0 → y[0 .. K-1]
        x1 →     y[S .. S+K-1]
        x2 →         y[2S .. 2S+K-1]

    Which products compute it depends on the shape alone: :func:`conv_transpose1d_strategy`.

    Args:
        x: ``[B, C_in, T]``.
        weight: ``[C_in, C_out/groups, K]`` (PyTorch layout).
        bias: ``[C_out]`` or None; added to every output position.
        derived: where the caller keeps what this call derives from ``weight`` (the pair taps of
            :func:`pair_taps`) for its next calls with the same weight; None to derive per call.
    Returns:
        ``[B, C_out, (T-1)·stride + K]`` (``[B, C_out, 0]`` for an empty input).
    """
    batch, in_channels, length = x.shape
    w_in, group_out, kernel = weight.shape
    if w_in != in_channels or in_channels % groups:
        raise ValueError(f"conv_transpose1d: input has {in_channels} channels, weight {weight.shape}")
    out_channels = group_out * groups
    group_in = in_channels // groups
    if length == 0:
        return np.zeros((batch, out_channels, 0), dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out_len = (length - 1) * stride + kernel
    strategy = conv_transpose1d_strategy(length, kernel, stride, groups)
    if strategy == "weight_right":
        # Few steps (streaming): the product is bound by reading the weight, which
        # OpenBLAS does fastest untransposed, as the right operand (measured 25% faster).
        y = np.zeros((batch, out_channels, out_len), dtype=np.float32)
        steps = x.transpose(0, 2, 1).reshape(batch * length, in_channels)  # all B streams in one product
        products = matmul_depth(steps, weight.reshape(in_channels, out_channels * kernel))  # [B·T, O·K]
        _overlap_add(y, products.reshape(batch, length, out_channels, kernel).transpose(0, 2, 3, 1), 0, stride)
    elif strategy == "pairs":
        derived = {} if derived is None else derived
        if "pair_taps" not in derived:
            derived["pair_taps"] = pair_taps(weight)
        y = np.empty((batch, out_channels, out_len), dtype=np.float32)  # every sample is written once
        _conv_transpose1d_pairs(x, derived["pair_taps"], y, stride)
    else:
        y = np.zeros((batch, out_channels, out_len), dtype=np.float32)
        # [G, O/G·K, C/G]: one matrix per group mapping input channels to (out channel, tap).
        w = weight.reshape(groups, group_in, group_out * kernel).transpose(0, 2, 1)
        x = x.reshape(batch, groups, group_in, length)
        block = max(1, _BLOCK_ELEMENTS // (out_channels * kernel * batch))
        halves = _halves(out_channels) if groups == 1 else [slice(0, out_channels)]

        def one(i: int) -> None:
            o = halves[i]
            rows = w if len(halves) == 1 else w[:, o.start * kernel : o.stop * kernel]
            for t0 in range(0, length, block):
                n = min(block, length - t0)
                products = np.matmul(rows, x[..., t0 : t0 + n]).reshape(batch, o.stop - o.start, kernel, n)
                _overlap_add(y[:, o], products, t0 * stride, stride)

        run_blocks(one, len(halves))
    if bias is not None:
        y += bias[:, None]
    return y


def conv_transpose1d_strategy(length: int, kernel: int, stride: int, groups: int = 1) -> str:
    """How :func:`conv_transpose1d` computes a shape: ``"weight_right"`` (few steps, as streaming
    has: the weight as the right operand of one product), ``"pairs"`` (SEANet's ``K = 2·stride``
    layers: :func:`_conv_transpose1d_pairs`) or ``"overlap_add"`` (products per tap, summed in place)."""
    if groups == 1 and length <= _SKINNY_STEPS:
        return "weight_right"
    if groups == 1 and kernel == 2 * stride:
        return "pairs"
    return "overlap_add"


def _halves(out_channels: int) -> list[slice]:
    """Two halves of the output channels, to compute at once: each writes its own channels of the
    output (halves of time would both write the samples where their frames meet)."""
    if out_channels == 1:
        return [slice(0, 1)]
    return [slice(0, out_channels // 2), slice(out_channels // 2, out_channels)]


def _overlap_add(y: np.ndarray, products: np.ndarray, start: int, stride: int) -> None:
    """Add ``products`` ``[B, O, K, T]`` into ``y``: tap ``k`` of step ``t`` lands at ``start + t·stride + k``."""
    kernel, length = products.shape[2], products.shape[3]
    for k in range(kernel):  # one strided slice per tap, never a loop over steps
        y[:, :, start + k : start + k + (length - 1) * stride + 1 : stride] += products[:, :, k, :]


def pair_taps(weight: np.ndarray) -> np.ndarray:
    """A ``K = 2·stride`` transposed conv's weight ``[C, O, K]`` as the three matrices of
    :func:`_conv_transpose1d_pairs`: ``[3, O·S, C]``, ``G0``, ``G0 + G1`` and ``G1``, rows ordered
    (output channel, phase). ``G1`` holds taps ``0 .. S−1`` (applied to the step itself), ``G0``
    taps ``S .. 2S−1`` (applied to the step before)."""
    channels, out_channels, kernel = weight.shape
    stride = kernel // 2
    taps = np.empty((3, out_channels * stride, channels), np.float32)
    # Transposed a block of input channels at a time: a block's rows stay in cache while they are
    # scattered into columns (the first upsampling's 32 MB weight took 51 ms in one transpose, 21 ms so).
    for c0 in range(0, channels, _TRANSPOSE_BLOCK):
        block = weight[c0 : c0 + _TRANSPOSE_BLOCK]  # [b, O, K]
        taps[0, :, c0 : c0 + len(block)] = block[:, :, stride:].reshape(len(block), -1).T  # G0
        taps[2, :, c0 : c0 + len(block)] = block[:, :, :stride].reshape(len(block), -1).T  # G1
    np.add(taps[0], taps[2], out=taps[1])
    return taps


def _conv_transpose1d_pairs(x: np.ndarray, taps: np.ndarray, y: np.ndarray, stride: int) -> None:
    """Fill ``y`` ``[B, O, (T+1)·S]`` with the transposed conv of ``x`` ``[B, C, T]`` for ``K = 2·S``,
    in 3 products for every 2 output frames where the plain way takes 4 (Winograd's F(2, 2)).

    With ``K = 2S``, output frame ``j`` (samples ``j·S .. j·S + S − 1``) sums two steps' taps::

        y[j] = G1 x[j] + G0 x[j−1]                      (x out of range is 0)

    a 2-tap convolution whose taps are matrices. Two neighbouring frames share a product::

        m1 = G0 (x[j−1] − x[j])   m2 = (G0 + G1) x[j]   m3 = G1 (x[j+1] − x[j])
        y[j] = m1 + m2            y[j+1] = m2 + m3       (j even)

    3/4 of the multiplications, and no overlap-add: each output frame is written once. The
    rounding differs from the plain sum's (largest error relative to the largest output, against
    float64: 6–8e-7 against 4–6e-7 on SEANet's shapes), far below the decoder's tolerance.
    """
    batch, channels, length = x.shape
    out_channels = y.shape[1]
    frames = length + 1
    pairs = (frames + 1) // 2
    padded = np.empty((batch, channels, 2 * pairs + 1), np.float32)  # padded[..., i] = x[..., i − 1]
    padded[:, :, 0], padded[:, :, length + 1 :] = 0, 0
    padded[:, :, 1 : length + 1] = x
    here = np.ascontiguousarray(padded[:, :, 1::2])  # x[j] for the even frames j = 2p     [B, C, P]
    back = padded[:, :, 0:-1:2] - here  # x[j−1] − x[j]
    ahead = padded[:, :, 2::2] - here  # x[j+1] − x[j]
    del padded
    odd = frames // 2  # frames 2p + 1 that exist (P or P − 1)
    framed = y.reshape(batch, out_channels, frames, stride)
    even_frames, odd_frames = framed[:, :, 0::2, :], framed[:, :, 1::2, :]  # [B, O, P, S] views
    block = max(1, _BLOCK_ELEMENTS // (2 * out_channels * stride * batch))  # pairs per block: bounds the m
    halves = _halves(out_channels)

    def one(i: int) -> None:
        o = halves[i]
        rows, n = slice(o.start * stride, o.stop * stride), o.stop - o.start
        for p0 in range(0, pairs, block):
            p1 = min(pairs, p0 + block)
            m2 = np.matmul(taps[1, rows], here[:, :, p0:p1])  # [B, n·S, count]
            m = np.matmul(taps[0, rows], back[:, :, p0:p1])  # m1, then m3 in the same array
            shape = (batch, n, stride, p1 - p0)
            np.add(m.reshape(shape), m2.reshape(shape), out=even_frames[:, o, p0:p1].transpose(0, 1, 3, 2))
            q1 = min(p1, odd)
            if q1 > p0:
                np.matmul(taps[2, rows], ahead[:, :, p0:p1], out=m)
                np.add(m.reshape(shape)[..., : q1 - p0], m2.reshape(shape)[..., : q1 - p0],
                       out=odd_frames[:, o, p0:q1].transpose(0, 1, 3, 2))

    run_blocks(one, len(halves))
