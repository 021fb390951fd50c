"""LSTM and GRU against a float64 loop written from the equations, and against torch.nn (golden file)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import GOLDEN

from mimi_cli.core.recurrent import GRU, LSTM


def random_layer(cls, input_size=6, hidden=5, layers=2, seed=0):
    layer = cls(input_size, hidden, layers)
    rng = np.random.default_rng(seed)
    layer.load({name: rng.uniform(-0.6, 0.6, shape).astype(np.float32) for name, shape in layer.named_shapes()})
    return layer


def sigma(v: float) -> float:
    return 1.0 / (1.0 + np.exp(-v))


def lstm_loop(params, x, layers):
    """float64, one scalar equation at a time, batch by batch."""
    batch, steps, _ = x.shape
    hidden = params["weight_hh_l0"].shape[1]
    seq = x.astype(np.float64)
    for k in range(layers):
        w_ih, w_hh = params[f"weight_ih_l{k}"].astype(np.float64), params[f"weight_hh_l{k}"].astype(np.float64)
        b = params[f"bias_ih_l{k}"].astype(np.float64) + params[f"bias_hh_l{k}"]
        out = np.zeros((batch, steps, hidden))
        for n in range(batch):
            h, c = np.zeros(hidden), np.zeros(hidden)
            for t in range(steps):
                new_h, new_c = np.zeros(hidden), np.zeros(hidden)
                for j in range(hidden):
                    pre = [w_ih[g * hidden + j] @ seq[n, t] + w_hh[g * hidden + j] @ h + b[g * hidden + j]
                           for g in range(4)]
                    i, f, g, o = sigma(pre[0]), sigma(pre[1]), np.tanh(pre[2]), sigma(pre[3])
                    new_c[j] = f * c[j] + i * g
                    new_h[j] = o * np.tanh(new_c[j])
                h, c = new_h, new_c
                out[n, t] = h
        seq = out
    return seq


def gru_loop(params, x, layers):
    batch, steps, _ = x.shape
    hidden = params["weight_hh_l0"].shape[1]
    seq = x.astype(np.float64)
    for k in range(layers):
        w_ih, w_hh = params[f"weight_ih_l{k}"].astype(np.float64), params[f"weight_hh_l{k}"].astype(np.float64)
        b_ih, b_hh = params[f"bias_ih_l{k}"].astype(np.float64), params[f"bias_hh_l{k}"].astype(np.float64)
        out = np.zeros((batch, steps, hidden))
        for n in range(batch):
            h = np.zeros(hidden)
            for t in range(steps):
                new_h = np.zeros(hidden)
                for j in range(hidden):
                    xr, xz, xn = (w_ih[g * hidden + j] @ seq[n, t] + b_ih[g * hidden + j] for g in range(3))
                    hr, hz, hn = (w_hh[g * hidden + j] @ h + b_hh[g * hidden + j] for g in range(3))
                    r, z = sigma(xr + hr), sigma(xz + hz)
                    cand = np.tanh(xn + r * hn)
                    new_h[j] = (1 - z) * cand + z * h[j]
                h = new_h
                out[n, t] = h
        seq = out
    return seq


@pytest.mark.parametrize("cls, loop", [(LSTM, lstm_loop), (GRU, gru_loop)])
def test_matches_float64_loop(cls, loop):
    layer = random_layer(cls)
    x = np.random.default_rng(1).standard_normal((2, 9, 6)).astype(np.float32)
    y, _ = layer(x)
    np.testing.assert_allclose(y, loop(layer.params, x, 2), atol=2e-6)


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_state_carries_a_stream_across_calls(cls):
    layer = random_layer(cls, seed=3)
    x = np.random.default_rng(2).standard_normal((3, 20, 6)).astype(np.float32)
    whole, whole_state = layer(x)
    first, state = layer(x[:, :7])
    second, state = layer(x[:, 7:], state)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=1e-6)
    as_list = (lambda s: [s]) if cls is GRU else list  # GRU state: h; LSTM state: (h, c)
    for a, b in zip(as_list(state), as_list(whole_state), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("cls", [LSTM, GRU])
def test_a_stream_step_does_not_copy_the_weights(cls):
    """A stream steps the layer once per frame. Each call made a transposed copy of every recurrent weight
    (4 MB a layer for EnCodec's LSTM, 6 ms for each 13.3 ms frame); the copy is made once, at loading, and
    a one-step call now allocates little beside its outputs. Reloading other weights is still honoured."""
    import tracemalloc

    layer = random_layer(cls, input_size=256, hidden=256, layers=2)  # a recurrent weight of 0.75–1 MB
    x = np.random.default_rng(4).standard_normal((1, 1, 256)).astype(np.float32)
    y, state = layer(x)
    tracemalloc.start()
    try:
        layer(x, state)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200_000, f"a one-step call allocated {peak:,} bytes at its peak"
    other = random_layer(cls, input_size=256, hidden=256, layers=2, seed=9)
    layer.load(dict(other.named_parameters()))
    np.testing.assert_array_equal(layer(x, state)[0], other(x, state)[0])


def test_declares_pytorch_names():
    names = dict(LSTM(6, 5, 2).named_shapes())
    assert names == {"weight_ih_l0": (20, 6), "weight_hh_l0": (20, 5), "bias_ih_l0": (20,), "bias_hh_l0": (20,),
                     "weight_ih_l1": (20, 5), "weight_hh_l1": (20, 5), "bias_ih_l1": (20,), "bias_hh_l1": (20,)}
    assert dict(GRU(6, 5, 1).named_shapes())["weight_hh_l0"] == (15, 5)


@pytest.mark.parametrize("kind, cls", [("lstm", LSTM), ("gru", GRU)])
def test_matches_torch(kind, cls):
    """torch.nn.LSTM / GRU outputs from scripts/make_recurrent_golden.py (torch 2.13, 1 thread)."""
    with np.load(GOLDEN / "recurrent.npz", allow_pickle=False) as npz:
        golden = dict(npz)
    layer = cls(24, 32, 2)
    layer.load({name: golden[f"{kind}.{name}"] for name, _ in layer.named_shapes()})
    first, state = layer(golden["x"][:, :30])
    second, state = layer(golden["x"][:, 30:], state)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), golden[f"{kind}.y"], atol=2e-6)
    final_h = state if kind == "gru" else state[0]
    np.testing.assert_allclose(final_h, golden[f"{kind}.h"], atol=2e-6)
    if kind == "lstm":
        np.testing.assert_allclose(state[1], golden["lstm.c"], atol=2e-6)
