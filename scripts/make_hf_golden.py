"""Run Hugging Face transformers' MimiModel on our weights converted to its layout; write tests/golden/hf_*.npz.

This checks the Hugging Face naming end to end against an implementation that is
not ours: the random weights (``random_state(seed=0)``, as for the moshi golden
files) are converted to the ``kyutai/mimi`` layout with ``mimi convert``'s code
(renames, q/k/v split, per-head RoPE row reordering), loaded by
``MimiModel.from_pretrained`` (which must find every tensor), and used to encode
and decode. If the row reordering were wrong, transformers' codes would differ
from moshi's.

Needs transformers ≥ 5.3 (earlier versions ignore the 250-step attention window)
in its own virtual environment:

    python -m venv /tmp/hf && /tmp/hf/bin/pip install torch==2.13.0 "transformers>=5.3" "numpy<2.3" safetensors scipy
    PYTHONPATH=. /tmp/hf/bin/python scripts/make_hf_golden.py

Inputs are whole 1920-sample frames: transformers pads a partial last frame
differently from moshi ≥ 0.2.5 (the reference doc, §7.1).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file

from mimi_cli.models.mimi import checkpoint
from mimi_cli.models.mimi.config import MimiConfig
from mimi_cli.models.mimi.synthetic import random_state
from mimi_cli.models.synthetic import state_fingerprint

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
FRAME = MimiConfig().frame_size


def cases() -> dict[str, np.ndarray]:
    """16 s of the speech in the moshi golden file of 20.5 s: past the 10 s window, in whole frames."""
    speech = np.load(GOLDEN / "long_speech_20s.npz")["pcm"]
    return {"hf_speech_16s": speech[: 200 * FRAME]}


def main() -> None:
    torch.set_num_threads(1)
    config = MimiConfig()
    state = random_state(config, seed=0)
    hf_state = checkpoint.from_original(state, checkpoint.HF, config.num_heads)
    with tempfile.TemporaryDirectory() as tmp:
        transformers.MimiConfig().save_pretrained(tmp)
        save_file(hf_state, f"{tmp}/model.safetensors", metadata={"format": "pt"})
        model, info = transformers.MimiModel.from_pretrained(tmp, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"transformers did not load every tensor: {problems}"
    model.eval()
    meta = {"weights_fingerprint": state_fingerprint(state), "transformers_version": transformers.__version__,
            "torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}
    for name, pcm in cases().items():
        x = torch.from_numpy(pcm.astype(np.float32) / 32768)[None, None]
        with torch.no_grad():
            codes = model.encode(x, num_quantizers=32).audio_codes  # [1, 32, F]
            audio = model.decode(codes).audio_values  # [1, 1, T]
        out = {"pcm": pcm, "codes32": codes[0].numpy().astype(np.uint16), "audio32": audio[0, 0].numpy(),
               **{k: np.array(v) for k, v in meta.items()}}
        np.savez_compressed(GOLDEN / f"{name}.npz", **out)
        print(f"{name}: {len(pcm)} samples → {out['codes32'].shape[1]} frames")


if __name__ == "__main__":
    main()
