"""Run torch.nn.LSTM and torch.nn.GRU on seeded random weights; write tests/golden/recurrent.npz.

The tests compare mimi_cli.core.recurrent against these outputs (and, when torch is
importable, against torch directly). Run in the reference environment (scripts/make_golden.py):

    PYTHONPATH=. /path/to/ref/bin/python scripts/make_recurrent_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden" / "recurrent.npz"


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = {"torch_version": np.array(torch.__version__)}
    x = torch.randn(3, 50, 24)  # [B, T, I]
    for kind, cls in (("lstm", torch.nn.LSTM), ("gru", torch.nn.GRU)):
        layer = cls(input_size=24, hidden_size=32, num_layers=2, batch_first=True)
        with torch.no_grad():
            y, state = layer(x[:, :30])
            y2, state2 = layer(x[:, 30:], state)  # the stream continues from the returned state
        out.update({f"{kind}.{name}": p.detach().numpy() for name, p in layer.named_parameters()})
        out[f"{kind}.y"] = torch.cat([y, y2], dim=1).numpy()
        final = state2 if kind == "gru" else state2[0]
        out[f"{kind}.h"] = final.numpy()
        if kind == "lstm":
            out["lstm.c"] = state2[1].numpy()
    out["x"] = x.numpy()
    np.savez_compressed(GOLDEN, **out)
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
