"""Each interpreter op, run through a real model.mil, against a naive float64 reference on random shapes."""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import special

from mimi_cli.coreml import ProgramError, ops
from mimi_cli.coreml.run import run_stream
from mil_builder import Text, build, op, run_op

rng = np.random.default_rng(7)


def rand(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# -- convolution ----------------------------------------------------------------------------------

def naive_conv(x, w, b, stride, dilation, pads, groups):
    """Direct definition: out[n, o, p] = Σ_c Σ_k w[o, c, k] · xpad[n, g·Cg + c, p·s + k·d] (any rank)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    rank = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0), *pads])
    c_out, c_group, kernel = w.shape[0], w.shape[1], w.shape[2:]
    out_size = [(xp.shape[2 + i] - (kernel[i] - 1) * dilation[i] - 1) // stride[i] + 1 for i in range(rank)]
    out = np.zeros((x.shape[0], c_out, *out_size))
    per_group = c_out // groups
    for o in range(c_out):
        g = o // per_group
        for p in itertools.product(*map(range, out_size)):
            for k in itertools.product(*map(range, kernel)):
                pos = tuple(p[i] * stride[i] + k[i] * dilation[i] for i in range(rank))
                out[(slice(None), o, *p)] += (xp[(slice(None), slice(g * c_group, (g + 1) * c_group), *pos)]
                                              * w[(o, slice(None), *k)]).sum(axis=1)
    if b is not None:
        out += b.reshape((1, -1) + (1,) * rank)
    return out


@pytest.mark.parametrize("case", range(8))
def test_conv_matches_direct_definition(tmp_path, case):
    local = np.random.default_rng(case)
    rank = 1 if case < 5 else 2
    groups = [1, 2, 1, 4, 1, 1, 2, 1][case]
    c_in, c_out = 4 * groups // groups * (2 if groups > 1 else 1) or 4, 4 * groups
    c_in = 2 * groups
    spatial = tuple(int(v) for v in local.integers(5, 12, rank))
    kernel = tuple(int(v) for v in local.integers(1, 4, rank))
    stride = [int(v) for v in local.integers(1, 3, rank)]
    dilation = [int(v) for v in local.integers(1, 3, rank)]
    pad_type = ["valid", "custom", "same", "same_lower", "custom", "valid", "same", "custom"][case]
    x = local.standard_normal((2, c_in, *spatial)).astype(np.float32)
    w = local.standard_normal((c_out, c_in // groups, *kernel)).astype(np.float32)
    b = local.standard_normal(c_out).astype(np.float32)
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True)]
    if pad_type == "custom":
        pads = [tuple(int(v) for v in local.integers(0, 3, 2)) for _ in range(rank)]
    elif pad_type == "valid":
        pads = [(0, 0)] * rank
    else:  # total padding that makes the output ceil(size / stride) long
        pads = []
        for size, s, e in zip(spatial, stride, effective, strict=True):
            total = max((math.ceil(size / s) - 1) * s + e - size, 0)
            small, large = total // 2, total - total // 2
            pads.append((large, small) if pad_type == "same_lower" else (small, large))
    expected = naive_conv(x, w, b, stride, dilation, pads, groups)
    (got,) = run_op(tmp_path, "conv", {"x": x}, [expected.shape], weight=w, bias=b, strides=stride,
                    dilations=dilation, groups=np.int32(groups), pad_type=Text(pad_type),
                    pad=[p for pair in pads for p in pair])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def naive_conv_transpose(x, w, b, stride, dilation, pads, groups):
    """Direct definition: every input sample scatters w into out[p·s + k·d], then crop the padding."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    rank = x.ndim - 2
    c_in, c_out_group, kernel = w.shape[0], w.shape[1], w.shape[2:]
    in_group = c_in // groups
    full = [(x.shape[2 + i] - 1) * stride[i] + (kernel[i] - 1) * dilation[i] + 1 for i in range(rank)]
    out = np.zeros((x.shape[0], c_out_group * groups, *full))
    for c in range(c_in):
        g = c // in_group
        for p in itertools.product(*(range(d) for d in x.shape[2:])):
            for k in itertools.product(*map(range, kernel)):
                pos = tuple(p[i] * stride[i] + k[i] * dilation[i] for i in range(rank))
                out[(slice(None), slice(g * c_out_group, (g + 1) * c_out_group), *pos)] += (
                    x[(slice(None), c, *p)][:, None] * w[(c, slice(None), *k)][None])
    out += b.reshape((1, -1) + (1,) * rank)
    crop = tuple(slice(a, f - e) for (a, e), f in zip(pads, full, strict=True))
    return out[(slice(None), slice(None), *crop)]


@pytest.mark.parametrize("case", range(5))
def test_conv_transpose_matches_direct_definition(tmp_path, case):
    local = np.random.default_rng(100 + case)
    rank = 1 if case < 3 else 2
    groups = [1, 2, 1, 1, 2][case]
    c_in, c_out_group = 2 * groups, 3
    spatial = tuple(int(v) for v in local.integers(3, 7, rank))
    kernel = tuple(int(v) for v in local.integers(1, 5, rank))
    stride = [int(v) for v in local.integers(1, 4, rank)]
    dilation = [int(v) for v in local.integers(1, 3, rank)]
    pads = [tuple(int(v) for v in local.integers(0, 2, 2)) for _ in range(rank)]
    x = local.standard_normal((2, c_in, *spatial)).astype(np.float32)
    w = local.standard_normal((c_in, c_out_group, *kernel)).astype(np.float32)
    b = local.standard_normal(c_out_group * groups).astype(np.float32)
    expected = naive_conv_transpose(x, w, b, stride, dilation, pads, groups)
    (got,) = run_op(tmp_path, "conv_transpose", {"x": x}, [expected.shape], weight=w, bias=b, strides=stride,
                    dilations=dilation, groups=np.int32(groups), pad_type=Text("custom"),
                    pad=[p for pair in pads for p in pair])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


# -- recurrent layers -----------------------------------------------------------------------------

def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def naive_lstm(x, h, c, w_ih, w_hh, b, backwards):
    """One direction, gates stacked i, f, o, z (MIL's order); outputs in the order computed."""
    H = h.shape[-1]
    outs = []
    for t in (range(len(x) - 1, -1, -1) if backwards else range(len(x))):
        g = x[t] @ w_ih.T + h @ w_hh.T + b
        i, f, o, z = sigmoid(g[:, :H]), sigmoid(g[:, H:2 * H]), sigmoid(g[:, 2 * H:3 * H]), np.tanh(g[:, 3 * H:])
        c = f * c + i * z
        h = o * np.tanh(c)
        outs.append(h)
    return np.stack(outs), h, c


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("sequence", [True, False])
def test_lstm_matches_step_by_step_reference(tmp_path, direction, sequence):
    S, B, In, H = 5, 2, 3, 4
    d = 2 if direction == "bidirectional" else 1
    x, h0, c0 = rand(S, B, In), rand(B, d * H), rand(B, d * H)
    w = [(rand(4 * H, In) * 0.5, rand(4 * H, H) * 0.5, rand(4 * H) * 0.5) for _ in range(d)]
    f64 = [tuple(a.astype(np.float64) for a in ws) for ws in w]
    args = dict(weight_ih=w[0][0], weight_hh=w[0][1], bias=w[0][2], direction=Text(direction),
                output_sequence=sequence)
    if d == 2:
        args.update(weight_ih_back=w[1][0], weight_hh_back=w[1][1], bias_back=w[1][2])
    outs, hs, cs = [], [], []
    for k in range(d):
        backwards = direction == "reverse" or k == 1
        o, h, c = naive_lstm(x.astype(np.float64), h0[:, k * H:(k + 1) * H], c0[:, k * H:(k + 1) * H], *f64[k],
                             backwards)
        if direction == "bidirectional" and backwards:
            o = o[::-1]  # stored in time order
        if not sequence:
            o = o[-1:] if not (direction == "bidirectional" and backwards) else o[:1]
        outs.append(o), hs.append(h), cs.append(c)
    expected = [np.concatenate(outs, -1), np.concatenate(hs, -1), np.concatenate(cs, -1)]
    got = run_op(tmp_path, "lstm", {"x": x, "initial_h": h0, "initial_c": c0},
                 [e.shape for e in expected], **args)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gru_matches_coremltools_formulas(tmp_path, direction):
    S, B, In, H = 6, 2, 3, 4
    x, h0 = rand(S, B, In), rand(B, H)
    w_ih, w_hh, b = rand(3 * H, In) * 0.5, rand(3 * H, H) * 0.5, rand(3 * H) * 0.5
    Wr, Wo, Wz = np.split(w_ih.astype(np.float64), 3)
    Rr, Ro, Rz = np.split(w_hh.astype(np.float64), 3)
    br, bo, bz = np.split(b.astype(np.float64), 3)
    h, outs = h0.astype(np.float64), []
    for t in (range(S - 1, -1, -1) if direction == "reverse" else range(S)):
        z = sigmoid(x[t] @ Wz.T + h @ Rz.T + bz)
        r = sigmoid(x[t] @ Wr.T + h @ Rr.T + br)
        o = np.tanh(x[t] @ Wo.T + (h * r) @ Ro.T + bo)
        h = (1 - z) * o + z * h
        outs.append(h)
    got = run_op(tmp_path, "gru", {"x": x, "initial_h": h0}, [(S, B, H), (B, H)], weight_ih=w_ih, weight_hh=w_hh,
                 bias=b, direction=Text(direction), output_sequence=True)
    np.testing.assert_allclose(got[0], np.stack(outs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], h, rtol=1e-5, atol=1e-5)


# -- linear algebra, element-wise, reductions, normalisation ------------------------------------

def test_linear_and_matmul(tmp_path):
    x, w, b = rand(2, 3, 5), rand(4, 5), rand(4)
    (got,) = run_op(tmp_path / "linear", "linear", {"x": x}, [(2, 3, 4)], weight=w, bias=b)
    np.testing.assert_allclose(got, x.astype(np.float64) @ w.T + b, rtol=1e-5, atol=1e-5)
    a, c = rand(2, 5, 3), rand(2, 4, 5)
    (got,) = run_op(tmp_path / "matmul", "matmul", {"x": a, "y": c}, [(2, 3, 4)], transpose_x=True, transpose_y=True)
    np.testing.assert_allclose(got, np.swapaxes(a, 1, 2).astype(np.float64) @ np.swapaxes(c, 1, 2), rtol=1e-5,
                               atol=1e-5)


UNARY = {
    "relu": lambda v: np.maximum(v, 0), "sigmoid": sigmoid, "tanh": np.tanh, "exp": np.exp,
    "silu": lambda v: v * sigmoid(v), "softplus": lambda v: np.log1p(np.exp(v)),
    "gelu": lambda v: 0.5 * v * (1 + special.erf(v / np.sqrt(2))), "abs": np.abs, "square": np.square,
    "elu": lambda v: np.where(v > 0, v, np.exp(v) - 1), "erf": special.erf, "floor": np.floor,
    "softsign": lambda v: v / (1 + np.abs(v)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_ops(tmp_path, name):
    x = rand(3, 7) * 2
    (got,) = run_op(tmp_path, name, {"x": x}, [x.shape])
    np.testing.assert_allclose(got, UNARY[name](x.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_gelu_tanh_and_clip_and_positive_domain_ops(tmp_path):
    x = rand(4, 5) * 2
    (got,) = run_op(tmp_path / "g", "gelu", {"x": x}, [x.shape], mode=Text("TANH_APPROXIMATION"))
    v = x.astype(np.float64)
    np.testing.assert_allclose(got, 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3))), atol=1e-5)
    (got,) = run_op(tmp_path / "c", "clip", {"x": x}, [x.shape], alpha=np.float32(-0.5), beta=np.float32(0.7))
    np.testing.assert_array_equal(got, np.clip(x, -0.5, 0.7))
    p = np.abs(x) + 0.1
    for name, reference, extra in [("sqrt", np.sqrt, {}), ("log", np.log, {"epsilon": np.float32(0)}),
                                   ("rsqrt", lambda t: 1 / np.sqrt(t), {"epsilon": np.float32(0)})]:
        (got,) = run_op(tmp_path / name, name, {"x": p}, [p.shape], **extra)
        np.testing.assert_allclose(got, reference(p.astype(np.float64)), rtol=1e-5)


BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "maximum": np.maximum,
          "minimum": np.minimum}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_ops_broadcast(tmp_path, name):
    x, y = rand(2, 3, 4), rand(3, 1) + 3
    (got,) = run_op(tmp_path, name, {"x": x, "y": y}, [(2, 3, 4)])
    np.testing.assert_allclose(got, BINARY[name](x.astype(np.float64), y), rtol=1e-6)


def test_comparisons_give_bool_and_select_picks(tmp_path):
    x, y = rand(3, 4), rand(3, 4)
    (mask,) = run_op(tmp_path / "less", "less", {"x": x, "y": y}, [(3, 4)], out_dtype="bool")
    np.testing.assert_array_equal(mask, x < y)
    (got,) = run_op(tmp_path / "select", "select", {"cond": mask, "a": x, "b": y}, [(3, 4)])
    np.testing.assert_array_equal(got, np.minimum(x, y))


def test_fp16_program_rounds_each_op_once(tmp_path):
    """An fp16 value stays fp16: each element-wise result is the float64 result rounded to fp16; the
    accumulating ops round once from fp32."""
    x, y = rand(64).astype(np.float16), rand(64).astype(np.float16)
    (got,) = run_op(tmp_path / "mul", "mul", {"x": x, "y": y}, [(64,)], out_dtype="fp16")
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, (x.astype(np.float64) * y).astype(np.float16))
    a, w = rand(3, 40).astype(np.float16), rand(5, 40).astype(np.float16)
    (got,) = run_op(tmp_path / "linear", "linear", {"x": a}, [(3, 5)], out_dtype="fp16", weight=w)
    exact = (a.astype(np.float64) @ w.astype(np.float64).T)
    assert np.all(np.abs(got.astype(np.float64) - exact) <= np.spacing(np.abs(exact).astype(np.float16)) * 1.01)


@pytest.mark.parametrize("name, reference", [("reduce_sum", np.sum), ("reduce_mean", np.mean), ("reduce_max", np.max),
                                             ("reduce_min", np.min),
                                             ("reduce_l2_norm", lambda v, axis, keepdims: np.sqrt(
                                                 np.sum(v * v, axis=axis, keepdims=keepdims))),
                                             ("reduce_log_sum_exp", special.logsumexp)])
@pytest.mark.parametrize("keep", [True, False])
def test_reductions(tmp_path, name, reference, keep):
    x = rand(3, 4, 5)
    expected = reference(x.astype(np.float64), axis=(0, 2), keepdims=keep)
    (got,) = run_op(tmp_path, name, {"x": x}, [expected.shape], axes=[0, -1], keep_dims=keep)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_plans_of_one_program_run_in_threads_at_once(tmp_path, monkeypatch):
    """Each plan keeps its ops' working memory; a run once lent it to the program's ops, which two plans
    share, so two threads' runs used one plan's memory. Here two plans' runs take turns at every request
    for working memory (the worst interleaving, forced): each result is still its own. One plan run from
    two threads at once is refused: it returns its own buffers, which the other run would overwrite."""
    import threading

    x = rand(4, 64)
    program = build(tmp_path / "ln", {"x": ("fp32", x.shape)},
                    [op("layer_norm", ("y", "fp32", x.shape), x="x", axes=[-1], epsilon=np.float32(1e-5))], ["y"])
    feeds = {"A": {"x": x}, "B": {"x": x[::-1] * 3 + 1}}
    expected = {name: program.predict(feed)["y"] for name, feed in feeds.items()}
    plans = {name: program.prepare() for name in feeds}
    turn = threading.Condition()
    state = {"next": "A", "done": set()}
    lend = ops.Call.scratch

    def scratch(call, *args, **kwargs):  # A, B, A, B, …: each request waits for the other thread's
        me = threading.current_thread().name
        other = "B" if me == "A" else "A"
        with turn:
            assert turn.wait_for(lambda: state["next"] == me or other in state["done"], timeout=10)
            state["next"] = other
            turn.notify_all()
        return lend(call, *args, **kwargs)

    monkeypatch.setattr(ops.Call, "scratch", scratch)
    got = {}

    def run(name: str) -> None:
        got[name] = plans[name].run(feeds[name])["y"].copy()
        with turn:
            state["done"].add(name)
            turn.notify_all()

    workers = [threading.Thread(target=run, args=(name,), name=name) for name in feeds]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(20)
    for name in feeds:
        np.testing.assert_array_equal(got[name], expected[name])

    monkeypatch.setattr(ops.Call, "scratch", lend)
    inside, leave = threading.Event(), threading.Event()

    def held(call, *args, **kwargs):
        inside.set()
        leave.wait(10)
        return lend(call, *args, **kwargs)

    monkeypatch.setattr(ops.Call, "scratch", held)
    first = threading.Thread(target=plans["A"].run, args=(feeds["A"],))
    first.start()
    inside.wait(10)
    with pytest.raises(ProgramError, match="this plan is running in another thread, into the buffers it "
                                           "returns: prepare a plan for each thread"):
        plans["A"].run(feeds["A"])
    leave.set()
    first.join(10)


def test_softmax_and_norms(tmp_path):
    x = rand(2, 3, 6) * 3
    v = x.astype(np.float64)
    (got,) = run_op(tmp_path / "softmax", "softmax", {"x": x}, [x.shape], axis=np.int32(1))
    np.testing.assert_allclose(got, np.exp(v) / np.exp(v).sum(1, keepdims=True), rtol=1e-5)
    gamma, beta = rand(6), rand(6)
    (got,) = run_op(tmp_path / "ln", "layer_norm", {"x": x}, [x.shape], axes=[-1], gamma=gamma, beta=beta,
                    epsilon=np.float32(1e-5))
    norm = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, norm * gamma + beta, rtol=1e-4, atol=1e-5)
    mean, var, g3, b3 = rand(3), np.abs(rand(3)) + 0.5, rand(3), rand(3)
    (got,) = run_op(tmp_path / "bn", "batch_norm", {"x": x}, [x.shape], mean=mean, variance=var, gamma=g3, beta=b3,
                    epsilon=np.float32(1e-3))
    expected = (v - mean[:, None]) / np.sqrt(var[:, None] + 1e-3) * g3[:, None] + b3[:, None]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    (got,) = run_op(tmp_path / "in", "instance_norm", {"x": x}, [x.shape], gamma=g3, beta=b3, epsilon=np.float32(1e-5))
    norm = (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, norm * g3[:, None] + b3[:, None], rtol=1e-4, atol=1e-5)


# -- shape ops ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, numpy_mode", [("constant", "constant"), ("reflect", "reflect"),
                                              ("replicate", "edge")])
def test_pad_matches_numpy(tmp_path, mode, numpy_mode):
    x = rand(2, 5, 6)
    widths = [0, 0, 2, 1, 3, 4]
    expected = np.pad(x, [(0, 0), (2, 1), (3, 4)], mode=numpy_mode,
                      **({"constant_values": 1.5} if mode == "constant" else {}))
    (got,) = run_op(tmp_path, "pad", {"x": x}, [expected.shape], pad=widths, mode=Text(mode),
                    constant_val=np.float32(1.5))
    np.testing.assert_array_equal(got, expected)


def test_data_movement_ops(tmp_path):
    x = rand(2, 3, 4)
    cases = [
        ("reshape", dict(shape=[4, -1]), x.reshape(4, -1)),
        ("transpose", dict(perm=[2, 0, 1]), x.transpose(2, 0, 1)),
        ("expand_dims", dict(axes=[1, -1]), x[:, None, :, :, None]),
        ("slice_by_index", dict(begin=[0, 1, 0], end=[2, 3, 4], stride=[1, 1, 2], end_mask=[True, False, False]),
         x[:, 1:3, 0:4:2]),
        ("slice_by_size", dict(begin=[1, 0, 1], size=[1, -1, 2]), x[1:2, :, 1:3]),
        ("gather", dict(indices=[2, 0, 2], axis=np.int32(1)), x[:, [2, 0, 2]]),
        ("tile", dict(reps=[1, 2, 1]), np.tile(x, (1, 2, 1))),
        ("reduce_argmax", dict(axis=np.int32(-1), keep_dims=False), x.argmax(-1)),
    ]
    for name, args, expected in cases:
        dtype = "int32" if name == "reduce_argmax" else "fp32"
        (got,) = run_op(tmp_path / name, name, {"x": x}, [expected.shape], out_dtype=dtype, **args)
        np.testing.assert_array_equal(got, expected, err_msg=name)
    (got,) = run_op(tmp_path / "squeeze", "squeeze", {"x": x[:, :1]}, [(2, 4)], axes=[1])
    np.testing.assert_array_equal(got, x[:, 0])
    parts = run_op(tmp_path / "split", "split", {"x": x}, [(2, 1, 4), (2, 2, 4)], axis=np.int32(1),
                   split_sizes=[1, 2])
    np.testing.assert_array_equal(parts[1], x[:, 1:])
    y = rand(2, 2, 4)
    (got,) = run_op(tmp_path / "concat", "concat", {"x": x, "y": y}, [(2, 5, 4)], values=("x", "y"),
                    axis=np.int32(1), interleave=False)
    np.testing.assert_array_equal(got, np.concatenate([x, y], 1))
    (got,) = run_op(tmp_path / "cast", "cast", {"x": x * 1000}, [x.shape], out_dtype="int32", dtype=Text("int32"))
    np.testing.assert_array_equal(got, (x * 1000).astype(np.int32))


# -- what the interpreter refuses ---------------------------------------------------------------

def test_unsupported_op_is_named(tmp_path):
    with pytest.raises(ProgramError, match=r"op einsum 'y' .* not supported .* docs/coreml.md"):
        build(tmp_path, {"x": ("fp32", (2,))}, [op("einsum", ("y", "fp32", (2,)), x="x")], ["y"])


def test_undefined_variable_and_bad_feeds(tmp_path):
    with pytest.raises(ProgramError, match="reads nowhere, which no earlier operation defines"):
        build(tmp_path / "a", {"x": ("fp32", (2,))}, [op("relu", ("y", "fp32", (2,)), x="nowhere")], ["y"])
    program = build(tmp_path / "b", {"x": ("int32", (2,))}, [op("abs", ("y", "int32", (2,)), x="x")], ["y"])
    with pytest.raises(ProgramError, match="input x: int32 \\[2\\] is missing"):
        program.predict({})
    with pytest.raises(ProgramError, match="holds float64 values; the program takes int32"):
        program.predict({"x": np.array([1.5, 2.0])})
    with pytest.raises(ProgramError, match="has shape \\[3\\]"):
        program.predict({"x": np.array([1, 2, 3])})
    with pytest.raises(ProgramError, match="no input 'z'"):
        program.predict({"x": np.array([1, 2]), "z": np.array(1)})
    # every missing input in one message (a stateful program's were named one run at a time)
    two = build(tmp_path / "c", {"x": ("fp32", (2,)), "state": ("fp32", (1, 4)), "cell": ("fp16", (1, 4))},
                [op("relu", ("y", "fp32", (2,)), x="x")], ["y"])
    with pytest.raises(ProgramError, match=r"^inputs state: fp32 \[1, 4\], cell: fp16 \[1, 4\] are missing; give "
                                           r"them \(mimi run: --input state=FILE.npy --input cell=FILE.npy\)$"):
        two.predict({"x": np.zeros(2, np.float32)})
    # feeds as a list, in the inputs' order, raised "unhashable type: 'numpy.ndarray'"
    feeds = [np.zeros(2, np.float32), np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float16)]
    said = r"^feeds must map input names to arrays, \{'x': array, 'state': array, 'cell': array\}; got list$"
    for run in (two.predict, two.prepare().run):
        with pytest.raises(TypeError, match=said):
            run(feeds)
    assert two.prepare().run(dict(zip(["x", "state", "cell"], feeds, strict=True)))["y"].shape == (2,)


def test_declared_shape_is_checked(tmp_path):
    program = build(tmp_path, {"x": ("fp32", (2, 3))}, [op("relu", ("y", "fp32", (3, 2)), x="x")], ["y"])
    with pytest.raises(ProgramError, match=r"y came out with shape \[2, 3\], but the program declares \[3, 2\]"):
        program.predict({"x": np.zeros((2, 3), np.float32)})


def test_hostile_programs_fail_in_one_line_before_allocating(tmp_path):
    huge = build(tmp_path / "fill", {"x": ("fp32", (1,))},
                 [op("fill", ("y", "fp32", (100000, 100000, 100)), shape=[100000, 100000, 100], value=np.float32(1))],
                 ["y"])
    with pytest.raises(ProgramError, match="beyond the 4 GiB a value may take"):
        huge.predict({"x": np.zeros(1, np.float32)})
    mismatched = build(tmp_path / "add", {"x": ("fp32", (3,)), "y": ("fp32", (4,))},
                       [op("add", ("z", "fp32", (3,)), x="x", y="y")], ["z"])
    with pytest.raises(ProgramError, match=r"op add 'z': cannot run \(ValueError"):
        mismatched.predict({"x": np.zeros(3, np.float32), "y": np.zeros(4, np.float32)})
    (got,) = run_op(tmp_path / "range", "range_1d", {"x": np.zeros(1, np.float32)}, [(4,)], start=np.float32(1),
                    end=np.float32(3), step=np.float32(0.5))
    np.testing.assert_array_equal(got, np.arange(1, 3, 0.5))


def test_a_long_range_takes_little_more_than_its_output(tmp_path):
    """range_1d's values were made whole in int64 (np.arange, then × step, then + start): three temporaries of twice
    an int32 output's size, 24 GiB on the way to the 4 GiB a value may take. Now a block at a time, to the same
    values (int32 across block boundaries; fp32 as the float64 arithmetic rounded once)."""
    import tracemalloc

    tracemalloc.start()
    (got,) = run_op(tmp_path / "int", "range_1d", {"x": np.zeros(1, np.float32)}, [(8_000_000,)], out_dtype="int32",
                    start=np.int32(-5), end=np.int32(15_999_995), step=np.int32(2))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(got, np.arange(-5, 15_999_995, 2, dtype=np.int32))
    assert peak < 2 * got.nbytes + (40 << 20), f"{peak >> 20} MiB for a {got.nbytes >> 20} MiB output"  # predict + plan
    (got,) = run_op(tmp_path / "float", "range_1d", {"x": np.zeros(1, np.float32)}, [(2_100_000,)],
                    start=np.float32(0.25), end=np.float32(0.25 + 2_100_000 * 0.1), step=np.float32(0.1))
    np.testing.assert_array_equal(got, (np.arange(2_100_000) * float(np.float32(0.1)) + 0.25).astype(np.float32))


def test_a_run_whose_values_would_outgrow_the_machine_is_refused_before_allocating(tmp_path, monkeypatch):
    """Values each under the 4 GiB cap but together more than the machine has: refused at the one that
    crosses the line (here a machine of 1 MiB, three 400 kB values), in predict and in prepare alike."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines()) \
        if Path("/proc/meminfo").exists() else {}
    if "MemTotal" in meminfo:  # the limit is the machine's memory, as the kernel counts it
        assert ops.usable_memory() == int(meminfo["MemTotal"].split()[0]) * 1024
    lines = [op("fill", (name, "fp32", (100, 1000)), shape=[100, 1000], value=np.float32(i))
             for i, name in enumerate(("a", "b", "c"))]
    program = build(tmp_path, {"x": ("fp32", (1,))}, lines, ["a", "b", "c"])
    feeds = {"x": np.zeros(1, np.float32)}
    assert program.predict(feeds)["c"].sum() == 2 * 100_000  # the machine's own memory: runs
    monkeypatch.setattr(ops, "usable_memory", lambda: 1 << 20)
    crossing = r"op fill 'c': would take the program's values past [\d.]+ GB in all, more than this machine's"
    for attempt in (lambda: program.predict(feeds), program.prepare):
        with pytest.raises(ProgramError, match=crossing):
            attempt()


def test_a_stream_whose_outputs_would_not_fit_is_refused_before_allocating(tmp_path):
    """Each window returns 640 kB: 7,000 windows would stack 4.5 GB, which an empty array would be granted
    (the system promises memory lazily) and then fill; a few windows stack as predicted one by one."""
    program = build(tmp_path, {"audio": ("fp32", (1, 2))},
                    [op("tile", ("big", "fp32", (400, 400)), x="audio", reps=[400, 200])], ["big"])
    refused = r"outputs of 7,000 windows would take 4\.2 GiB, beyond the 4 GiB kept here; give a shorter input, or a "
    with pytest.raises(ProgramError, match=refused + r"--hop longer than 1 \(up to the window, 2\)"):
        run_stream(program, "audio", np.zeros(7000, np.float32), hop=1)
    audio = np.arange(1, 6, dtype=np.float32)
    with pytest.raises(ProgramError, match="input audio is the stream, and is given with --input too"):
        run_stream(program, "audio", audio, hop=1, feeds={"audio": np.zeros((1, 2), np.float32)})
    streamed = run_stream(program, "audio", audio, hop=1)
    padded = np.concatenate([[0], audio])  # one sample of context (window 2 - hop 1), zero before the start
    assert streamed.windows == 5 and streamed.outputs["big"].shape == (5, 400, 400)
    for index in range(5):
        expected = program.predict({"audio": padded[index:index + 2].reshape(1, 2)})["big"]
        np.testing.assert_array_equal(streamed.outputs["big"][index], expected)
        np.testing.assert_array_equal(expected, np.tile(padded[index:index + 2], (400, 200)))


def test_gathers_size_their_output_before_making_it(tmp_path):
    """20,000 indices into a [4, 60000] x (a 4.5 GiB result), and [1, 20000] indices broadcast along a
    [60000, 4] x: NumPy allocated each result before the 4 GiB cap was checked. Now refused first; gathers
    that fit give NumPy's values, negative indices and a rounding fp16 output too."""
    import tracemalloc

    for kind, x, indices, axis, shape in (("gather", rand(4, 60000), np.zeros(20000, np.int32), 0, (20000, 60000)),
                                          ("gather_along_axis", rand(60000, 4), np.zeros((1, 20000), np.int32), 1,
                                           (60000, 20000))):
        tracemalloc.start()
        with pytest.raises(ProgramError, match=rf"would make a \[{shape[0]}, {shape[1]}\] array, beyond the 4 GiB"):
            run_op(tmp_path / kind, kind, {"x": x}, [shape], indices=indices, axis=np.int32(axis))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 256 << 20, f"{kind}: {peak >> 20} MiB"
    x = rand(3, 5)
    (got,) = run_op(tmp_path / "g", "gather", {"x": x}, [(3, 2, 2)], indices=[[-1, 0], [4, -5]], axis=np.int32(1))
    np.testing.assert_array_equal(got, np.take(x, [[-1, 0], [4, -5]], axis=1))
    (got,) = run_op(tmp_path / "g16", "gather", {"x": x}, [(2, 5)], out_dtype="fp16", indices=[2, -3], axis=np.int32(0))
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, x[[2, 0]].astype(np.float16))
    indices = np.array([[0, 4, -1]], np.int32)
    (got,) = run_op(tmp_path / "ga", "gather_along_axis", {"x": x}, [(3, 3)], indices=indices, axis=np.int32(1))
    np.testing.assert_array_equal(got, np.take_along_axis(x, np.broadcast_to(indices % 5, (3, 3)), axis=1))


def test_a_gathers_index_copy_counts_as_a_value(tmp_path, monkeypatch):
    """NumPy indexes with an intp copy of int32 indices: 8 GiB for the 4 GiB a value may be, never counted.
    It counts now, against the same cap (here 1 MB: 200,000 int32 indices fit, their 1.6 MB copy does not)."""
    x, indices = rand(3, 4), np.arange(200_000, dtype=np.int32) % 4
    monkeypatch.setattr(ops, "MAX_VALUE_BYTES", 1 << 20)
    for kind, shape, feed in (("gather", (3, 200_000), indices), ("gather_along_axis", (3, 200_000), indices[None])):
        with pytest.raises(ProgramError, match=rf"op {kind} 'o0': would make a \[{', '.join(map(str, feed.shape))}\] "
                                               "array, beyond"):
            run_op(tmp_path / kind, kind, {"x": x, "indices": feed}, [shape], indices="indices", axis=np.int32(1))
    (got,) = run_op(tmp_path / "small", "gather", {"x": x, "indices": indices[:1000]}, [(3, 1000)],
                    indices="indices", axis=np.int32(1))
    np.testing.assert_array_equal(got, x[:, indices[:1000]])


def test_a_tile_to_nothing_allocates_nothing(tmp_path):
    """reps [2**31 - 1, 7, 0] make an empty array, but NumPy tiles axis by axis: 64 GiB on the way to it."""
    import tracemalloc

    x = rand(1, 8, 1)
    tracemalloc.start()
    (got,) = run_op(tmp_path / "tile", "tile", {"x": x}, [(2**31 - 1, 56, 0)], reps=[2**31 - 1, 7, 0])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got.shape == (2**31 - 1, 56, 0) and peak < 64 << 20
    (got,) = run_op(tmp_path / "tile2", "tile", {"x": x}, [(2, 56, 3)], reps=[2, 7, 3])
    np.testing.assert_array_equal(got, np.tile(x, (2, 7, 3)))


def test_a_stream_state_declared_beyond_the_value_cap_is_refused_before_allocating(tmp_path):
    """A state of [50000, 50000] fp32 (9.3 GiB) carried through a view op (no buffer of its own, so no op's
    check saw it): `mimi run --stream` allocated it three times over (the plan's zero feed, its input buffer,
    the stream's state) and failed only when the system refused, or filled the memory."""
    program = build(tmp_path, {"audio": ("fp32", (1, 4)), "h": ("fp32", (50000, 50000))},
                    [op("identity", ("y", "fp32", (1, 4)), x="audio"),
                     op("reshape", ("new_h", "fp32", (50000, 50000)), x="h", shape=[50000, 50000])], ["y", "new_h"])
    with pytest.raises(ProgramError, match=r"input h: fp32 \[50000, 50000\] would take 9\.3 GiB, beyond the 4 GiB"):
        run_stream(program, "audio", np.zeros(8, np.float32))
    small = build(tmp_path / "small", {"audio": ("fp32", (1, 4)), "h": ("fp32", (2, 3))},
                  [op("identity", ("y", "fp32", (1, 4)), x="audio"),
                   op("reshape", ("new_h", "fp32", (2, 3)), x="h", shape=[2, 3])], ["y", "new_h"])
    streamed = run_stream(small, "audio", np.arange(8, dtype=np.float32))
    assert streamed.windows == 2 and streamed.outputs["y"].tolist() == [[[0, 1, 2, 3]], [[4, 5, 6, 7]]]


def test_program_1_3_syntax_runs(tmp_path):
    """The iOS 18 printer: bare scalar types, string(...) literals, arguments and attributes alike."""
    folder = tmp_path / "p13.mlmodelc"
    folder.mkdir()
    (folder / "model.mil").write_text('''program(1.3)
[buildInfo = dict<string, string>({{"coremltools-version", "9.0"}})]
{
    func main<ios18>(tensor<fp16, [2, 3]> x) {
            fp16 two = const()[name = string("two"), val = fp16(0x1p+1)];
            tensor<int32, [1]> axes = const()[name = string("axes"), val = tensor<int32, [1]>([-1])];
            bool keep = const()[name = string("keep"), val = bool(false)];
            tensor<fp16, [2, 3]> y = mul(x = x, y = two)[name = string("y")];
            tensor<fp16, [2]> s = reduce_sum(x = y, axes = axes, keep_dims = keep)[name = string("s")];
            string to32 = const()[name = string("to32"), val = string("fp32")];
            tensor<fp32, [2]> out = cast(x = s, dtype = to32)[name = string("out")];
        } -> (out);
}
''')
    from mimi_cli.coreml import load_program

    program = load_program(folder)
    assert program.opset == "ios18" and str(program.inputs[0]) == "x: fp16 [2, 3]"
    x = np.array([[1, 2, 3], [0.5, -1, 4]], np.float16)
    np.testing.assert_array_equal(program.predict({"x": x})["out"], [12.0, 7.0])


def test_non_finite_outputs_are_traced_to_the_input_that_caused_them(tmp_path):
    """Outputs of inf or nan were blamed on fp16 arithmetic even when an input held nan, or held values an
    fp16 (or fp32) input cannot: the warning names that input."""
    from mimi_cli.coreml.run import overflow_note

    lines = [op("add", ("s", "fp16", (2,)), x="h", y="h"),  # fp16 arithmetic
             op("mul", ("p", "fp32", (2,)), x="f", y="f")]
    for precision in ("program", "fp32"):
        program = build(tmp_path / precision, {"h": ("fp16", (2,)), "f": ("fp32", (2,))}, lines, ["s", "p"],
                        precision)

        def note(h, f, program=program):
            feeds = {"h": np.array(h), "f": np.array(f)}  # float64, as a .npy may hold them
            return overflow_note(program, program.predict(feeds), feeds)

        assert note([1.0, 2.0], [3.0, 4.0]) is None
        assert note([1.0, 2.0], [np.nan, 4.0]) == "p holds inf or nan: input f does"
        assert note([1.0, 2.0], [1e39, 4.0]) == ("p holds inf or nan: input f holds values beyond fp32's range "
                                                 "(±3.4028e+38), which become inf; scale it")
        if precision == "program":  # 1e5 is beyond fp16's range, as an input and as a sum
            assert note([1e5, 2.0], [3.0, 4.0]) == ("s holds inf or nan: input h holds values beyond fp16's range "
                                                    "(±65504), which become inf; scale it; --precision fp32 holds "
                                                    "it in fp32")
            assert note([4e4, 2.0], [3.0, 4.0]) == ("s holds inf or nan: this program computes in fp16, whose "
                                                    "range ends at ±65504; --precision fp32 computes it in fp32")
        else:  # held and computed in fp32
            assert note([1e5, 2.0], [3.0, 4.0]) is None and note([4e4, 2.0], [3.0, 4.0]) is None



def test_an_overflow_made_finite_again_is_named(tmp_path):
    """s = h·h overflows fp16 for h = 300 (9·10⁴ > 65504) and r = h / s turns the inf back into 0, where
    1/300 is right: the outputs were finite and no warning was given. The runs now name the op that
    overflowed (one call, a prepared plan, a stream, and the CLI); a division by zero is no overflow."""
    from conftest import run
    from mimi_cli.coreml.program import Overflows
    from mimi_cli.coreml.run import overflow_note

    lines = [op("mul", ("s", "fp16", (1, 2)), x="h", y="h"), op("real_div", ("r", "fp16", (1, 2)), x="h", y="s"),
             op("real_div", ("q", "fp16", (1, 2)), x="h", y="z")]
    inputs = {"h": ("fp16", (1, 2)), "z": ("fp16", (1, 2))}
    program = build(tmp_path / "m", inputs, lines, ["r", "q"])
    ones = np.ones((1, 2), np.float16)
    feeds = {"h": np.array([[300, 2]], np.float16), "z": ones}

    overflows = Overflows()
    results = program.predict(feeds, overflows)
    assert np.isfinite(results["r"]).all() and results["r"][0, 0] == 0  # 1/300 in exact arithmetic
    assert overflows == ["mul 's'"]
    assert overflow_note(program, results, feeds, overflows) == (
        "the outputs are finite, but may be wrong: this program computes in fp16, whose range ends at ±65504 "
        "(mul 's' overflowed first); --precision fp32 computes it in fp32")
    planned = Overflows()
    program.prepare().run(feeds, planned)
    assert planned == ["mul 's'"]

    quiet = Overflows()  # 2·2 fits; h / 0 is inf by a division, not an overflow
    results = program.predict({"h": np.array([[3, 2]], np.float16), "z": np.zeros((1, 2), np.float16)}, quiet)
    assert quiet == [] and np.isinf(results["q"]).all()
    wide = build(tmp_path / "fp32", inputs, lines, ["r", "q"], precision="fp32")
    held = Overflows()
    np.testing.assert_allclose(wide.predict(feeds, held)["r"], [[1 / 300, 0.5]], rtol=1e-6)
    assert held == [] and overflow_note(wide, wide.predict(feeds), feeds, held) is None

    stream = build(tmp_path / "stream", {"audio": ("fp16", (1, 2))}, [
        op("mul", ("s", "fp16", (1, 2)), x="audio", y="audio"),
        op("real_div", ("r", "fp16", (1, 2)), x="audio", y="s")], ["r"])
    streamed = run_stream(stream, "audio", np.array([1, 2, 3, 300, 5, 6], np.float32))
    assert streamed.overflows == ["mul 's'"] and np.isfinite(streamed.outputs["r"]).all()

    np.save(tmp_path / "h.npy", feeds["h"])
    np.save(tmp_path / "z.npy", ones)
    done = run("run", tmp_path / "m", "-i", f"h={tmp_path / 'h.npy'}", "-i", f"z={tmp_path / 'z.npy'}")
    assert done.returncode == 0 and "(mul 's' overflowed first); --precision fp32" in done.stderr, done.stderr


def test_mimi_run_checks_every_name_before_reading_a_file(tmp_path):
    """The --input files were read one by one before their names were checked: a name the program does not
    take, given with a FIFO nobody writes, waited forever; '-' given twice read standard input whole for the
    first and said "standard input is empty" for the second. Names and '-' are checked first now."""
    import os
    import subprocess
    import sys

    build(tmp_path / "m", {"a": ("fp32", (1, 2)), "b": ("fp32", (1, 2))},
          [op("add", ("s", "fp32", (1, 2)), x="a", y="b")], ["s"])
    np.save(tmp_path / "a.npy", np.ones((1, 2), np.float32))
    os.mkfifo(tmp_path / "fifo")

    def mimi_run(*args, stdin=subprocess.DEVNULL):
        done = subprocess.run([sys.executable, "-m", "mimi_cli", "run", str(tmp_path / "m"), *args], stdin=stdin,
                              capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        return done.stderr

    assert "has no input 'nope'" in mimi_run("-i", f"a={tmp_path / 'a.npy'}", "-i", f"nope={tmp_path / 'fifo'}")
    with open(tmp_path / "a.npy", "rb") as stdin:
        said = mimi_run("-i", "a=-", "-i", "b=-", stdin=stdin)
    assert "standard input can be read once: give '-' to one --input or --stream" in said


@pytest.mark.parametrize("name", ["file", "allow_pickle"])
def test_outputs_named_as_savez_arguments_are_written(tmp_path, name):
    """The outputs went to np.savez(f, **outputs): one named `file` ended in a TypeError traceback, one named
    `allow_pickle` became that argument and was left out of the .npz, while the command said it wrote it."""
    from conftest import run

    build(tmp_path / "m", {"a": ("fp32", (1, 2))}, [op("add", (name, "fp32", (1, 2)), x="a", y="a")], [name])
    np.save(tmp_path / "a.npy", np.array([[1, 2]], np.float32))
    done = run("run", tmp_path / "m", "-i", f"a={tmp_path / 'a.npy'}", "-o", tmp_path / "out.npz")
    assert done.returncode == 0 and f"wrote {name}" in done.stderr, done.stderr
    with np.load(tmp_path / "out.npz") as written:
        assert list(written) == [name] and written[name].tolist() == [[2, 4]]


def test_a_shape_that_follows_the_inputs_values_is_named_in_a_stream(tmp_path):
    """range_1d(end = Σ audio) has as many values as the window's sum says: a prepared plan (a stream) holds
    the shape of the zeros it was prepared on, and said "prepare the plan for these input shapes", which no
    one running `mimi run --stream` can do, and which was not the cause."""
    from conftest import run

    lines = [op("reduce_sum", ("s", "fp32", ()), x="audio", axes=np.array([0, 1], np.int32), keep_dims=False),
             op("cast", ("n", "int32", ()), x="s", dtype=Text("int32")),
             op("range_1d", ("r", "int32", (None,)), end="n", start=np.int32(0), step=np.int32(1))]
    program = build(tmp_path / "m", {"audio": ("fp32", (1, 4))}, lines, ["r"])
    assert program.predict({"audio": np.ones((1, 4), np.float32)})["r"].tolist() == [0, 1, 2, 3]
    np.save(tmp_path / "ones.npy", np.ones((1, 4), np.float32))
    called = run("run", tmp_path / "m", "-i", f"audio={tmp_path / 'ones.npy'}")
    assert called.returncode == 0, called.stderr
    import soundfile as sf

    sf.write(tmp_path / "ramp.wav", np.linspace(0, 0.9, 64).astype(np.float32), 16000)
    streamed = run("run", tmp_path / "m", "--stream", f"audio={tmp_path / 'ramp.wav'}", "-o", tmp_path / "o.npz")
    assert streamed.returncode == 1 and len(streamed.stderr.strip().splitlines()) == 1, streamed.stderr
    assert "its shape depends on the inputs' values" in streamed.stderr and "mimi run --input" in streamed.stderr
    assert not (tmp_path / "o.npz").exists()


def test_mimi_run_never_writes_over_one_of_its_inputs(tmp_path):
    """Only the program's own files were kept from being the output: an input .npy or a --stream sound file
    under an .npz name (or a link to it) was replaced by the outputs with -f."""
    import soundfile as sf
    from conftest import run

    build(tmp_path / "m", {"a": ("fp32", (1, 2))}, [op("add", ("s", "fp32", (1, 2)), x="a", y="a")], ["s"])
    np.save(tmp_path / "a.npy", np.ones((1, 2), np.float32))
    (tmp_path / "a.npy").rename(tmp_path / "in.npz")  # the name does not make it an .npz
    (tmp_path / "link.npz").symlink_to(tmp_path / "in.npz")
    sf.write(tmp_path / "sound.wav", np.zeros(8, np.float32), 16000)
    (tmp_path / "sound.wav").rename(tmp_path / "sound.npz")
    kept = {name: (tmp_path / name).read_bytes() for name in ("in.npz", "sound.npz")}
    for args in (["-i", f"a={tmp_path / 'in.npz'}", "-o", tmp_path / "in.npz"],
                 ["-i", f"a={tmp_path / 'link.npz'}", "-o", tmp_path / "in.npz"],
                 ["--stream", f"a={tmp_path / 'sound.npz'}", "-o", tmp_path / "sound.npz"]):
        done = run("run", tmp_path / "m", *args, "-f")
        assert done.returncode == 1 and "is also an input of this run" in done.stderr, done.stderr
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept


def test_mimi_run_stream_says_what_it_did_to_the_audio(tmp_path):
    """A stereo file streamed into a mono input is the channels' mean, and a --sample-rate resamples: both
    said as encode says them ("note: …"), which `mimi run` left unsaid; -q leaves them out."""
    import soundfile as sf
    from conftest import run

    build(tmp_path / "m", {"audio": ("fp32", (1, 4))}, [op("identity", ("y", "fp32", (1, 4)), x="audio")], ["y"])
    stereo = np.stack([np.linspace(0, 0.5, 16), np.linspace(0, -0.25, 16)], axis=1).astype(np.float32)
    sf.write(tmp_path / "two.wav", stereo, 8000, subtype="FLOAT")
    streamed = run("run", tmp_path / "m", "--stream", f"audio={tmp_path / 'two.wav'}", "-o", tmp_path / "o.npz")
    assert streamed.returncode == 0 and streamed.stderr.startswith("note: 2 channels downmixed to mono\n"), \
        streamed.stderr
    assert "resampled" not in streamed.stderr
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["y"].reshape(-1), stereo.mean(axis=1), atol=1e-7)
    resampled = run("run", tmp_path / "m", "--stream", f"audio={tmp_path / 'two.wav'}", "--sample-rate", "16000",
                    "-o", tmp_path / "o.npz", "-f")
    assert resampled.returncode == 0, resampled.stderr
    assert resampled.stderr.splitlines()[:2] == ["note: 2 channels downmixed to mono",
                                                 "note: resampled from 8000 Hz to 16000 Hz"]
    assert np.load(tmp_path / "o.npz")["y"].size == 32
    quiet = run("run", tmp_path / "m", "--stream", f"audio={tmp_path / 'two.wav'}", "-o", tmp_path / "o.npz", "-f",
                "-q")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_the_table_of_outputs_reads_them_in_place(capsys):
    """`mimi run` without -o shows each output's min, mean and max: it made a float64 copy of each (a stream's
    stacked outputs: GiBs) to do so. An empty output has none of the three."""
    import tracemalloc

    from mimi_cli import cli

    outputs = {"big": np.full((4, 1 << 22), 0.5, np.float32), "empty": np.zeros((1, 0), np.float32),
               "mask": np.array([True, False, True, True])}
    tracemalloc.start()
    cli._print_outputs("m.mlmodelc", "one call", outputs, None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20, f"{peak >> 20} MiB for a 64 MiB output"
    rows = {cells[1]: cells[2:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("│")
            for cells in [[cell.strip() for cell in line.split("│")]]}
    assert rows == {"big": ["float32", "[4, 4194304]", "0.5", "0.5", "0.5"],
                    "empty": ["float32", "[1, 0]", "-", "-", "-"], "mask": ["bool", "[4]", "0", "0.75", "1"]}
