"""Print how closely mimi-cli follows the reference on every golden case (a Markdown table).

Batch cases go through ``Mimi.encode``/``decode``; ``stream_*`` cases through the
stream encoder and decoder, frame by frame, like the reference's streaming mode.

    python scripts/parity_report.py
"""

from pathlib import Path

import numpy as np

from mimi_cli.models.mimi import Mimi
from mimi_cli.models.mimi.synthetic import random_state

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def relative(a: np.ndarray, b: np.ndarray) -> str:
    return f"{np.linalg.norm(a - b) / np.linalg.norm(b):.1e}"


def run_case(model: Mimi, golden: dict) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Our 32-level codes, and our decode of the reference's codes (32 and, if stored, 8 levels)."""
    pcm = golden["pcm"].astype(np.float32) / 32768 if golden["pcm"].dtype == np.int16 else golden["pcm"]
    decoded = {}
    if golden["streaming"]:
        encoder = model.stream_encoder(num_codebooks=32)
        codes = np.concatenate([encoder.push(pcm), encoder.flush()], axis=1)
        decoder = model.stream_decoder()
        reference = golden["codes32"].astype(np.int64)
        decoded[32] = np.concatenate([decoder.push(reference[:, i : i + 1]) for i in range(reference.shape[1])])
    else:
        codes = model.encode(pcm, 32)
        for levels in (32, 8):
            if f"audio{levels}" in golden:
                decoded[levels] = model.decode(golden[f"codes{levels}"].astype(np.int64))
    return codes, decoded


def main() -> None:
    model = Mimi.from_state_dict(random_state())
    print("| case | mode | frames | codes differing (32 levels) | decoded rel L2 (32) | decoded rel L2 (8) |")
    print("|---|---|---:|---:|---:|---:|")
    for path in sorted(GOLDEN.glob("*.npz")):
        golden = dict(np.load(path, allow_pickle=False))
        golden["streaming"] = path.stem.startswith("stream_")
        codes, decoded = run_case(model, golden)
        audio = {levels: relative(pcm, golden[f"audio{levels}"]) for levels, pcm in decoded.items()}
        print(f"| {path.stem} | {'streaming' if golden['streaming'] else 'batch'} | {codes.shape[1]} "
              f"| {int((codes != golden['codes32']).sum())} / {codes.size:,} | {audio.get(32, '–')} "
              f"| {audio.get(8, '–')} |", flush=True)


if __name__ == "__main__":
    main()
