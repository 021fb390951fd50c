"""Print how closely mimi-cli follows the reference on every golden case (a Markdown table).

    python scripts/parity_report.py
"""

from pathlib import Path

import numpy as np

from mimi_cli.models.mimi import Mimi
from mimi_cli.models.mimi.synthetic import random_state

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def main() -> None:
    model = Mimi.from_state_dict(random_state())
    print("| case | samples | frames | latent max abs Δ | latent rel L2 | codes differing (32 levels) "
          "| decoded rel L2 (32) | decoded rel L2 (8) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for path in sorted(GOLDEN.glob("*.npz")):
        g = dict(np.load(path, allow_pickle=False))
        pcm = g["pcm"].astype(np.float32) / 32768 if g["pcm"].dtype == np.int16 else g["pcm"]
        latent = model.encode_latent(pcm)
        codes = model.quantizer.encode(latent, 32)[0]
        ref_latent = g["latent"]
        rel = np.linalg.norm(latent[0] - ref_latent) / np.linalg.norm(ref_latent)

        def audio_rel(levels):
            key = f"audio{levels}"
            if key not in g:
                return "–"
            audio = model.decode(g[f"codes{levels}"].astype(np.int64))
            return f"{np.linalg.norm(audio - g[key]) / np.linalg.norm(g[key]):.1e}"

        print(f"| {path.stem} | {len(pcm):,} | {codes.shape[1]} | {np.abs(latent[0] - ref_latent).max():.1e} "
              f"| {rel:.1e} | {int((codes != g['codes32']).sum())} / {codes.size:,} | {audio_rel(32)} "
              f"| {audio_rel(8)} |")


if __name__ == "__main__":
    main()
