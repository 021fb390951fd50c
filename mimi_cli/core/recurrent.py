"""Multi-layer LSTM and GRU with PyTorch's equations, weight names and gate order.

The input projection of every time step is one BLAS matmul per layer
(``[B·T, I] @ [I, G·H]``); only the recurrent product ``h @ W_hh.T`` is stepped.
State goes in and out, so a stream can continue across calls::

    y, state = lstm(x)            # x [B, T, I] → y [B, T, H]
    y2, state = lstm(x2, state)   # same as running on concat(x, x2)

Checkpoint names per layer k: ``weight_ih_l{k}`` [G·H, I], ``weight_hh_l{k}`` [G·H, H],
``bias_ih_l{k}`` [G·H], ``bias_hh_l{k}`` [G·H], with G = 4 gates (i, f, g, o) for the
LSTM and 3 (r, z, n) for the GRU.
"""

from __future__ import annotations

import numpy as np

from mimi_cli.core.module import Module


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + e^−x)`` without overflow warnings (``e^−x`` of large negative x is inf, giving 0)."""
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x))


class _Recurrent(Module):
    gates = 0

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        self.hidden_size, self.num_layers = hidden_size, num_layers
        for k in range(num_layers):
            width = input_size if k == 0 else hidden_size
            self.declare(f"weight_ih_l{k}", self.gates * hidden_size, width)
            self.declare(f"weight_hh_l{k}", self.gates * hidden_size, hidden_size)
            self.declare(f"bias_ih_l{k}", self.gates * hidden_size)
            self.declare(f"bias_hh_l{k}", self.gates * hidden_size)

    def prepare(self) -> None:
        # The recurrent product's right operand, contiguous: transposing a [G·H, H] weight (4 MB for
        # EnCodec's LSTM) on every call cost a stream 6 ms a layer for each 13 ms frame.
        self.w_hh_t = [np.ascontiguousarray(self.params[f"weight_hh_l{k}"].T) for k in range(self.num_layers)]

    def _input_projection(self, x: np.ndarray, k: int, fold_hidden_bias: bool) -> np.ndarray:
        """``x @ W_ih.T + b_ih`` (+ ``b_hh`` where the equations allow) for all steps at once: ``[B, T, G·H]``."""
        p = self.params
        batch, steps, width = x.shape
        projected = (x.reshape(batch * steps, width) @ p[f"weight_ih_l{k}"].T).reshape(batch, steps, -1)
        projected += p[f"bias_ih_l{k}"]
        if fold_hidden_bias:
            projected += p[f"bias_hh_l{k}"]
        return projected


class LSTM(_Recurrent):
    """``torch.nn.LSTM(batch_first=True)``; state is ``(h, c)``, each ``[num_layers, B, H]``."""

    gates = 4

    def __call__(self, x: np.ndarray, state: tuple[np.ndarray, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        batch, hidden = x.shape[0], self.hidden_size
        if state is None:
            state = (np.zeros((self.num_layers, batch, hidden), np.float32),) * 2
        h_out, c_out = np.empty_like(state[0]), np.empty_like(state[1])
        for k in range(self.num_layers):
            gates_x = self._input_projection(x, k, fold_hidden_bias=True)
            w_hh_t = self.w_hh_t[k]
            h, c = state[0][k], state[1][k]
            y = np.empty((batch, x.shape[1], hidden), np.float32)
            for t in range(x.shape[1]):
                g = gates_x[:, t] + h @ w_hh_t  # [B, 4H]: i, f, g, o
                i, f, o = sigmoid(g[:, :hidden]), sigmoid(g[:, hidden: 2 * hidden]), sigmoid(g[:, 3 * hidden:])
                c = f * c + i * np.tanh(g[:, 2 * hidden: 3 * hidden])
                h = o * np.tanh(c)
                y[:, t] = h
            h_out[k], c_out[k], x = h, c, y
        return x, (h_out, c_out)


class GRU(_Recurrent):
    """``torch.nn.GRU(batch_first=True)``; state is ``h`` ``[num_layers, B, H]``.

    The new-gate term keeps ``b_hn`` inside the reset product, as PyTorch does:
    ``n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))``.
    """

    gates = 3

    def __call__(self, x: np.ndarray, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        batch, hidden = x.shape[0], self.hidden_size
        if state is None:
            state = np.zeros((self.num_layers, batch, hidden), np.float32)
        h_out = np.empty_like(state)
        for k in range(self.num_layers):
            gates_x = self._input_projection(x, k, fold_hidden_bias=False)
            gates_x[..., : 2 * hidden] += self.params[f"bias_hh_l{k}"][: 2 * hidden]  # r and z take b_hh outside
            w_hh_t = self.w_hh_t[k]
            b_hn = self.params[f"bias_hh_l{k}"][2 * hidden:]
            h = state[k]
            y = np.empty((batch, x.shape[1], hidden), np.float32)
            for t in range(x.shape[1]):
                gh = h @ w_hh_t  # [B, 3H]: r, z, n
                gx = gates_x[:, t]
                r = sigmoid(gx[:, :hidden] + gh[:, :hidden])
                z = sigmoid(gx[:, hidden: 2 * hidden] + gh[:, hidden: 2 * hidden])
                n = np.tanh(gx[:, 2 * hidden:] + r * (gh[:, 2 * hidden:] + b_hn))
                h = (1 - z) * n + z * h
                y[:, t] = h
            h_out[k], x = h, y
        return x, h_out
