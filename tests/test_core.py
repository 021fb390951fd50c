"""Tensor core against independent references: explicit loops in float64, SciPy, math."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import correlate

from mimi_cli.core import (
    apply_rope,
    codebook_distances,
    conv1d,
    conv_transpose1d,
    elu,
    gelu,
    layer_norm,
    linear,
    nearest_code,
    pad_left,
    residual_codes,
    rope_frequencies,
    rope_rotation,
    softmax,
    threads,
    windowed_causal_attention,
)
from mimi_cli.core import conv as conv_module
from mimi_cli.core.vq import ROW_ALIGN, row_pieces
from mimi_cli.core.layers import Conv, ConvTranspose

rng = np.random.default_rng(42)


def randn(*shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- naive references


def naive_conv1d(x, w, b, stride, dilation, groups):
    x, w = x.astype(np.float64), w.astype(np.float64)
    batch, channels, length = x.shape
    out_ch, group_in, kernel = w.shape
    out_len = max(0, (length - (kernel - 1) * dilation - 1) // stride + 1)
    y = np.zeros((batch, out_ch, out_len))
    per_group = out_ch // groups
    for bi in range(batch):
        for o in range(out_ch):
            g = o // per_group
            for t in range(out_len):
                acc = 0.0 if b is None else float(b[o])
                for c in range(group_in):
                    for k in range(kernel):
                        acc += w[o, c, k] * x[bi, g * group_in + c, t * stride + k * dilation]
                y[bi, o, t] = acc
    return y


def naive_conv_transpose1d(x, w, b, stride, groups):
    x, w = x.astype(np.float64), w.astype(np.float64)
    batch, in_ch, length = x.shape
    _, group_out, kernel = w.shape
    out_ch, group_in = group_out * groups, in_ch // groups
    y = np.zeros((batch, out_ch, (length - 1) * stride + kernel if length else 0))
    for bi in range(batch):
        for c in range(in_ch):
            g = c // group_in
            for t in range(length):
                for o in range(group_out):
                    for k in range(kernel):
                        y[bi, g * group_out + o, t * stride + k] += x[bi, c, t] * w[c, o, k]
    if b is not None and y.shape[-1]:
        y += np.asarray(b, np.float64)[:, None]
    return y


def close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max(initial=0))))


# ----------------------------------------------------------------------------- conv1d

CONV_CASES = [
    # batch, channels, out, length, kernel, stride, dilation, groups, bias
    (1, 1, 1, 10, 3, 1, 1, 1, True),
    (2, 3, 5, 17, 3, 1, 1, 1, True),
    (1, 4, 6, 23, 3, 1, 2, 1, False),  # dilation
    (2, 4, 8, 40, 8, 4, 1, 1, True),  # SEANet-style k = 2·stride
    (1, 6, 4, 31, 10, 5, 1, 1, True),
    (1, 6, 6, 20, 4, 2, 1, 3, True),  # groups
    (2, 4, 4, 15, 4, 2, 1, 4, False),  # depthwise
    (1, 3, 2, 5, 7, 1, 1, 1, True),  # input shorter than the kernel → empty output
    (1, 3, 2, 7, 7, 1, 1, 1, True),  # exactly one output
    (1, 3, 2, 1, 1, 1, 1, 1, True),  # length 1
    (1, 3, 2, 0, 1, 1, 1, 1, True),  # length 0
    (2, 5, 7, 64, 12, 6, 1, 1, True),  # SEANet-style k = 2·stride
    (1, 3, 4, 40, 4, 4, 1, 1, True),  # k = stride: a single phase
    (1, 3, 4, 3004, 4, 2, 1, 1, True),  # strided, long enough for the auto rule's phases
    (1, 4, 3, 50, 3, 1, 1, 1, True),  # a residual-block conv
    (1, 4, 3, 1100, 3, 1, 1, 1, True),  # long enough for the auto rule's phases
]


@pytest.mark.parametrize("strategy", ["unfold", "phases", "auto"])
@pytest.mark.parametrize("batch,cin,cout,length,kernel,stride,dilation,groups,bias", CONV_CASES)
def test_conv1d_matches_naive_loops(batch, cin, cout, length, kernel, stride, dilation, groups, bias, strategy):
    x, w = randn(batch, cin, length), randn(cout, cin // groups, kernel)
    b = randn(cout) if bias else None
    y = conv1d(x, w, b, stride, dilation, groups, strategy=strategy)
    expected = naive_conv1d(x, w, b, stride, dilation, groups)
    assert y.shape == expected.shape and y.dtype == np.float32
    close(y, expected)


@pytest.mark.parametrize("strategy", ["unfold", "phases", "auto"])
@pytest.mark.parametrize("batch,cin,cout,length,kernel,stride,dilation,groups,bias", CONV_CASES)
@pytest.mark.parametrize("skip", [1, 5, 8])  # 8: whole frames of strides 2 and 4
def test_conv1d_with_context_is_the_joined_input_bit_for_bit(batch, cin, cout, length, kernel, stride, dilation,
                                                             groups, bias, strategy, skip, monkeypatch):
    """A stream's carried steps passed as ``context`` (never joined whole): the same bits as the join,
    also when the join falls inside a time block and when many blocks follow it."""
    x, w = randn(batch, cin, length + skip), randn(cout, cin // groups, kernel)
    b = randn(cout) if bias else None
    joined = conv1d(x, w, b, stride, dilation, groups, strategy=strategy)
    np.testing.assert_array_equal(
        conv1d(x[:, :, skip:], w, b, stride, dilation, groups, strategy=strategy, context=x[:, :, :skip]), joined)
    monkeypatch.setattr(conv_module, "_BLOCK_ELEMENTS", 64)  # many blocks of a few steps
    monkeypatch.setattr(conv_module, "_PHASE_BLOCK_ELEMENTS", 16)
    monkeypatch.setattr(conv_module, "_MAX_BLOCK_STEPS", 4)
    np.testing.assert_array_equal(
        conv1d(x[:, :, skip:], w, b, stride, dilation, groups, strategy=strategy, context=x[:, :, :skip]),
        conv1d(x, w, b, stride, dilation, groups, strategy=strategy))


def test_conv1d_single_channel_matches_scipy():
    x, w = randn(1, 1, 500), randn(1, 1, 7)
    np.testing.assert_allclose(conv1d(x, w)[0, 0], correlate(x[0, 0], w[0, 0], mode="valid"), rtol=1e-5, atol=1e-5)


def test_conv1d_blocks_over_time_give_the_same_result(monkeypatch):
    x, w, b = randn(2, 5, 300), randn(7, 5, 6), randn(7)
    whole = conv1d(x, w, b, stride=3)
    monkeypatch.setattr(conv_module, "_BLOCK_ELEMENTS", 64)  # forces many small time blocks
    close(conv1d(x, w, b, stride=3), whole.astype(np.float64), tol=1e-6)  # BLAS rounds per shape


def test_pad_left_modes():
    x = randn(2, 3, 4)
    np.testing.assert_array_equal(pad_left(x, 2)[:, :, :2], 0)
    np.testing.assert_array_equal(pad_left(x, 2, "replicate")[:, :, :2], np.repeat(x[:, :, :1], 2, axis=2))
    np.testing.assert_array_equal(pad_left(x, 2)[:, :, 2:], x)
    with pytest.raises(ValueError):
        pad_left(x, 1, "reflect")


# ----------------------------------------------------------------------------- transposed conv

CONVTR_CASES = [
    # batch, in, out, length, kernel, stride, groups, bias
    (1, 1, 1, 5, 3, 1, 1, True),
    (2, 4, 3, 9, 8, 4, 1, True),  # SEANet-style k = 2·stride
    (1, 6, 4, 7, 10, 5, 1, False),
    (1, 5, 5, 6, 4, 2, 5, False),  # depthwise (Mimi's upsample)
    (2, 6, 4, 5, 4, 2, 2, True),  # groups
    (1, 3, 2, 1, 4, 2, 1, True),  # length 1
    (1, 3, 2, 0, 4, 2, 1, True),  # length 0
    (1, 2, 3, 6, 2, 3, 1, True),  # stride > kernel: gaps filled by the bias only
    (2, 4, 3, 80, 8, 4, 1, True),  # k = 2·stride and long: frames in pairs (up to 64 steps take the skinny path)
    (1, 5, 4, 65, 6, 3, 1, False),  # pairs with an even number of frames (T + 1)
    (1, 3, 1, 70, 4, 2, 1, True),  # pairs, an odd number of frames, one output channel
    (1, 4, 3, 70, 6, 2, 1, True),  # long but k ≠ 2·stride: the blocked path
]


@pytest.mark.parametrize("batch,cin,cout,length,kernel,stride,groups,bias", CONVTR_CASES)
def test_conv_transpose1d_matches_naive_loops(batch, cin, cout, length, kernel, stride, groups, bias):
    x, w = randn(batch, cin, length), randn(cin, cout // groups, kernel)
    b = randn(cout) if bias else None
    y = conv_transpose1d(x, w, b, stride, groups)
    expected = naive_conv_transpose1d(x, w, b, stride, groups)
    assert y.shape == expected.shape
    close(y, expected)


@pytest.mark.parametrize("kernel", [8, 6])  # pairs of frames, and the blocked path
def test_conv_transpose1d_blocks_over_time_give_the_same_result(monkeypatch, kernel):
    x, w, b = randn(2, 4, 200), randn(4, 3, kernel), randn(3)
    whole = conv_transpose1d(x, w, b, stride=4)
    monkeypatch.setattr(conv_module, "_BLOCK_ELEMENTS", 50)
    close(conv_transpose1d(x, w, b, stride=4), whole.astype(np.float64), tol=1e-6)


def test_conv_transpose1d_pairs_are_as_accurate_as_the_plain_sum():
    """Winograd's pairs round differently from the plain products; on a SEANet shape with realistic
    scales their error against float64 stays within twice the plain path's (the blocked path,
    taken when k ≠ 2·stride, here by padding the kernel with a zero tap that changes nothing)."""
    x = randn(1, 128, 300)
    w = randn(128, 64, 8) / np.float32(np.sqrt(128 * 2))
    products = np.einsum("ct,cok->okt", x[0].astype(np.float64), w.astype(np.float64))  # float64, every tap
    exact = np.zeros((1, 64, 299 * 4 + 8))
    for k in range(8):
        exact[0, :, k : k + 299 * 4 + 1 : 4] += products[:, k]
    pairs = conv_transpose1d(x, w, None, 4)
    plain = conv_transpose1d(x, np.concatenate([w, np.zeros_like(w[:, :, :1])], axis=2), None, 4)[:, :, :-1]
    error_pairs, error_plain = np.abs(pairs - exact).max(), np.abs(plain - exact).max()
    assert error_pairs <= 2 * error_plain
    assert error_pairs <= 1e-6 * np.abs(exact).max()


def test_conv_transpose_layer_keeps_its_pair_taps_until_the_next_load():
    layer = ConvTranspose(4, 3, 8, 4)
    x = randn(1, 4, 100)
    for _ in range(2):
        state = {"convtr.convtr.weight": randn(4, 3, 8), "convtr.convtr.bias": randn(3)}
        layer.load(state)
        expected = naive_conv_transpose1d(x, state["convtr.convtr.weight"], state["convtr.convtr.bias"], 4, 1)
        close(layer.full(x), expected)
        close(layer.full(x), expected)  # with the taps the first call kept
        assert set(layer.derived) == {"pair_taps"}


def test_conv_layer_keeps_its_stacked_taps_until_the_next_load():
    layer = Conv(6, 5, 8, stride=4)  # a strided conv long enough for the "phases" strategy
    x = randn(1, 6, 4 * 1600)
    for _ in range(2):
        state = {"conv.conv.weight": randn(5, 6, 8), "conv.conv.bias": randn(5)}
        layer.load(state)
        expected = naive_conv1d(x, state["conv.conv.weight"], state["conv.conv.bias"], 4, 1, 1)
        close(layer.valid(x), expected)
        close(layer.valid(x), expected)  # with the stacked taps the first call kept
        assert set(layer.derived) == {"phase_rows"}


# ----------------------------------------------------------------------------- element-wise and norms


def test_linear_matches_float64():
    x, w, b = randn(3, 5, 16), randn(7, 16), randn(7)
    close(linear(x, w, b), x.astype(np.float64) @ w.T.astype(np.float64) + b)


def test_layer_norm_matches_float64():
    x, g, b = 3 + 2 * randn(4, 6, 32), randn(32), randn(32)
    x64 = x.astype(np.float64)
    expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * g + b
    close(layer_norm(x, g, b, 1e-5), expected)


@pytest.mark.parametrize("by_expm1", [True, False])
def test_elu_matches_expm1_definition(monkeypatch, by_expm1):
    from mimi_cli.core import ops

    monkeypatch.setattr(ops, "_vector_expm1", lambda: by_expm1)  # both ways, whichever this NumPy takes
    x = np.concatenate([randn(10000) * 5, -(10.0 ** -rng.uniform(1, 12, 1000)).astype(np.float32),
                        np.array([0.0, -0.0, 1e-30, -1e-30, -80, 80], np.float32)])
    expected = np.where(x > 0, x.astype(np.float64), np.expm1(x.astype(np.float64)))
    y = elu(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[x > 0], x[x > 0])  # the positive side is exact
    assert np.abs(y - expected).max() <= 1.3e-7
    if by_expm1:  # and within a few ulp everywhere, tiny |x| included
        ulp = np.spacing(np.abs(expected).astype(np.float32))
        assert (np.abs(y - expected)[expected != 0] / ulp[expected != 0]).max() <= 4
    # In place: the same bits written over x, over more than one of map_elements' blocks.
    big = np.tile(x, 20)
    same = big.copy()
    expected_big = elu(big)
    np.testing.assert_array_equal(big, same)  # out of place left its input alone
    assert elu(same, in_place=True) is same
    np.testing.assert_array_equal(same, expected_big)
    strided = np.tile(x, (3, 1)).T  # not C-contiguous: a new array, the input untouched
    before = strided.copy()
    np.testing.assert_array_equal(elu(strided, in_place=True), elu(before))
    np.testing.assert_array_equal(strided, before)


def test_gelu_matches_erf_form():
    x = randn(1000) * 4
    expected = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    close(gelu(x), expected, tol=2e-6)
    assert abs(float(gelu(np.float32([1.0]))[0]) - 0.8413447) < 1e-6  # not the tanh approximation (0.8411920)


def test_gelu_follows_the_references_erf_formula():
    """PyTorch's CPU GELU takes erf from Abramowitz & Stegun 7.1.26 (docstring of ``gelu``); ours too,
    within float32 rounding of the formula evaluated in float64, and off the exact GELU where the
    formula is (x = −3.0835: exact −0.00315458, formula and torch −0.00315479…81)."""
    x = np.concatenate([randn(20000) * 3, np.float32([-3.0834527, 0.0, -0.0, 1e-30, -1e-30, 9.0, -9.0])])
    z = x.astype(np.float64) / math.sqrt(2)
    t = 1 / (1 + 0.3275911 * np.abs(z))
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    formula = 0.5 * x * (1 + np.sign(z) * (1 - poly * np.exp(-z * z)))
    y = gelu(x)
    assert np.all(np.abs(y - formula) <= 1e-7 + 1.2e-7 * np.abs(x))  # a few float32 roundings
    assert abs(float(y[20000]) - -0.0031547934) < 5e-8 and abs(float(y[20000]) - -0.0031545823) > 1.5e-7
    big = np.tile(x, 5)  # over more than one of map_elements' blocks
    expected, same = gelu(big), big.copy()
    assert gelu(same, in_place=True) is same  # written over x: the same bits
    np.testing.assert_array_equal(same, expected)


def test_softmax_matches_float64_and_masks():
    x = randn(3, 9) * 10
    x[0, :4] = -np.inf
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    close(softmax(x), e / e.sum(-1, keepdims=True))
    assert np.all(softmax(x)[0, :4] == 0)


# ----------------------------------------------------------------------------- RoPE and attention


def test_rope_frequencies_are_the_geometric_series():
    freqs = rope_frequencies(64, 10000.0)
    expected = 10000.0 ** (-np.arange(32) / 32)
    np.testing.assert_allclose(freqs, expected, rtol=1e-6)  # the exponent is rounded to float32 first
    assert freqs[0] == 1.0


def test_rope_rotates_interleaved_pairs_like_complex_multiplication():
    x = randn(2, 3, 7, 8)
    positions = np.arange(5, 12, dtype=np.float32)
    freqs = rope_frequencies(8, 10000.0)
    pairs = x[..., 0::2].astype(np.float64) + 1j * x[..., 1::2]
    rotated = pairs * np.exp(1j * positions[:, None].astype(np.float64) * freqs)
    y = apply_rope(x, rope_rotation(positions, freqs))
    close(y[..., 0::2], rotated.real)
    close(y[..., 1::2], rotated.imag)
    # rotations keep norms
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def naive_attention_row(q_row, keys, values):
    """One query against the given keys, in float64."""
    scores = keys.astype(np.float64) @ q_row.astype(np.float64) / math.sqrt(q_row.shape[-1])
    p = np.exp(scores - scores.max())
    return (p / p.sum()) @ values.astype(np.float64)


@pytest.mark.parametrize("length,context", [(1, 4), (5, 10), (12, 4), (300, 250), (600, 250)])
def test_windowed_attention_matches_naive_loops(length, context):
    q, k, v = randn(1, 2, length, 8), randn(1, 2, length, 8), randn(1, 2, length, 8)
    out = windowed_causal_attention(q, k, v, context)
    # every query for short inputs; for long ones a sample across block edges and the window edge
    queries = range(length) if length < 100 else (0, 1, 63, 64, 127, 128, 249, 250, 255, 256, 257, 299, length - 1)
    for i in queries:
        window = slice(max(0, i - context + 1), i + 1)
        for h in range(2):
            close(out[0, h, i], naive_attention_row(q[0, h, i], k[0, h, window], v[0, h, window]))


def test_attention_never_looks_ahead_or_past_the_window():
    q, k, v = randn(1, 1, 20, 4), randn(1, 1, 20, 4), randn(1, 1, 20, 4)
    base = windowed_causal_attention(q, k, v, context=5)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 12:], v2[:, :, 12:] = 100, 100  # the future of step 11
    k2[:, :, :7], v2[:, :, :7] = -100, -100  # outside the window of step 11
    np.testing.assert_array_equal(windowed_causal_attention(q, k2, v2, context=5)[:, :, 11], base[:, :, 11])


# ----------------------------------------------------------------------------- nearest code


def test_codebook_distances_match_float64():
    x, book = randn(20, 16), randn(300, 16)
    expected = np.linalg.norm(x[:, None].astype(np.float64) - book[None].astype(np.float64), axis=-1)
    np.testing.assert_allclose(codebook_distances(x, book), expected, rtol=1e-4, atol=1e-4)


def test_nearest_code_matches_brute_force():
    x, book = randn(200, 16), randn(2048, 16)
    d = np.linalg.norm(x[:, None].astype(np.float64) - book[None].astype(np.float64), axis=-1)
    expected = d.argmin(axis=1)
    ordered = np.sort(d, axis=1)
    clear = (ordered[:, 1] - ordered[:, 0]) > 1e-4  # leave genuine float32 near-ties aside
    assert clear.sum() > 150
    np.testing.assert_array_equal(nearest_code(x, book)[clear], expected[clear])


@pytest.mark.parametrize("rows", [0, 37, 191, 192, 375, 900])
def test_residual_codes_match_a_float64_search_at_every_thread_count(rows):
    """Four levels, each on what the levels before left: against a float64 brute force (genuine
    near-ties aside), the rows in pieces cut at a multiple of ROW_ALIGN, the same codes on 1-3 threads."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 16)).astype(np.float32)
    books = [rng.standard_normal((512, 16)).astype(np.float32) * scale for scale in (1.0, 0.5, 0.25, 0.125)]
    expected, residual, clear = [], x.astype(np.float64), np.ones(rows, bool)
    for book in books:
        d = np.linalg.norm(residual[:, None] - book[None].astype(np.float64), axis=-1)
        ordered = np.sort(d, axis=1)
        clear &= (ordered[:, 1] - ordered[:, 0]) > 1e-4  # a near-tie's row may go either way from there on
        expected.append(d.argmin(axis=1))
        residual = residual - book[expected[-1]]
    runs = {}
    for count in (1, 2, 3):
        with threads.limit_threads(count):
            runs[count] = residual_codes(x, [(book, np.einsum("kd,kd->k", book, book)) for book in books])
    assert runs[1].shape == (4, rows) and runs[1].dtype == np.int64
    np.testing.assert_array_equal(runs[1][:, clear], np.array(expected).reshape(4, rows)[:, clear])
    assert clear.sum() >= 0.9 * rows
    np.testing.assert_array_equal(runs[2], runs[1])
    np.testing.assert_array_equal(runs[3], runs[1])


def test_row_pieces_cut_at_an_aligned_row_near_the_middle():
    for rows in range(0, 2000, 7):
        pieces = row_pieces(rows)
        assert pieces[0].start == 0 and pieces[-1].stop == rows and len(pieces) <= 2
        if len(pieces) == 2:
            cut = pieces[0].stop
            assert cut % ROW_ALIGN == 0 and abs(cut - rows / 2) <= ROW_ALIGN / 2 and pieces[1].start == cut
        else:
            assert rows < 2 * ROW_ALIGN


def test_nearest_code_takes_the_first_index_on_ties_and_handles_empty_input():
    book = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    assert nearest_code(np.array([[2, 0]], np.float32), book)[0] == 0
    assert nearest_code(np.zeros((0, 2), np.float32), book).shape == (0,)


def test_kv_cache_fed_in_uneven_pieces_equals_batch_attention():
    """steps_per_call=1 is batch semantics; growing the ring mid-stream keeps every key."""
    from mimi_cli.core import KVCache

    q, k, v = randn(1, 2, 40, 8), randn(1, 2, 40, 8), randn(1, 2, 40, 8)
    expected = windowed_causal_attention(q, k, v, context=7)
    cache, out, start = KVCache(context=7), [], 0
    for size in (2, 1, 6, 3, 9, 1, 18):  # the ring grows at 6 and 9 and 18
        positions = np.arange(start, start + size)
        out.append(cache.attend(q[:, :, positions], k[:, :, positions], v[:, :, positions], positions))
        start += size
    close(np.concatenate(out, axis=2), expected)


def test_kv_cache_reproduces_a_ring_written_before_it_is_read():
    """With 2 steps per call, the first query of each call sees context - 1 keys (moshi's streaming)."""
    from mimi_cli.core import KVCache

    q, k, v = randn(1, 1, 12, 4), randn(1, 1, 12, 4), randn(1, 1, 12, 4)
    cache = KVCache(context=4, steps_per_call=2)
    out = np.concatenate([cache.attend(q[:, :, i : i + 2], k[:, :, i : i + 2], v[:, :, i : i + 2],
                                       np.arange(i, i + 2)) for i in range(0, 12, 2)], axis=2)
    for i in range(12):
        seen = 3 if i % 2 == 0 else 4
        window = slice(max(0, i - seen + 1), i + 1)
        close(out[0, 0, i], naive_attention_row(q[0, 0, i], k[0, 0, window], v[0, 0, window]))


def test_sequential_streams_write_over_only_their_own_layers_outputs():
    """An ELU after a layer writes its result over that layer's new output; one that takes the
    caller's input (the first of a slice) leaves it alone. Either way, the batch result's bits."""
    from mimi_cli.core.layers import Sequential, run_layers
    from mimi_cli.core.stream import Pointwise

    seq = Sequential([elu, Conv(4, 6, 3), elu, Conv(6, 4, 1), elu])
    seq.load({name: randn(*shape) for name, shape in seq.named_shapes()})
    x = randn(2, 4, 50)
    before = x.copy()
    for start, flags in ((0, [False, True, True]), (2, [False, True])):
        chain = seq.streaming(start)
        assert [s.in_place for s in chain.streams if isinstance(s, Pointwise)] == flags
        inputs = x if start == 0 else seq.layers[1](elu(x))
        kept = inputs.copy()
        y = chain.step(inputs)
        np.testing.assert_array_equal(inputs, kept)
        np.testing.assert_array_equal(y, run_layers(seq.layers[start:], kept))
    np.testing.assert_array_equal(x, before)


class _OneBehind:
    """A stream whose output is its input one piece late, as a new array (a branch that waits)."""

    def __init__(self):
        self.held = None

    def step(self, x):
        out, self.held = self.held, x * np.float32(2)
        return out if out is not None else x[..., :0]

    def flush(self):
        out, self.held = self.held, None
        return out

    def reset(self):
        self.held = None


@pytest.mark.parametrize("lagging", [False, True])
def test_a_sum_in_place_writes_over_the_branch_alone(lagging):
    from mimi_cli.core.stream import Identity, Pointwise, Sum

    branch = _OneBehind() if lagging else Pointwise(lambda x: x * np.float32(2))
    total = Sum(Identity(), branch, in_place=True)
    pieces = [randn(2, 3, n) for n in (5, 1, 7, 4)]
    kept = [p.copy() for p in pieces]
    outputs = [total.step(p) for p in pieces] + [total.flush()]
    joined = np.concatenate([o for o in outputs if o is not None], axis=-1)
    x = np.concatenate(kept, axis=-1)
    np.testing.assert_array_equal(joined, x + x * np.float32(2))
    for p, k in zip(pieces, kept, strict=True):
        np.testing.assert_array_equal(p, k)  # the shortcut's input, read only
