"""Run Hugging Face transformers' EncodecModel on our random EnCodec weights; write tests/golden/encodec.npz.

transformers is the reference for EnCodec here (Meta's ``encodec`` package needs
torchaudio, which has no CPU build on these machines). The random weights
(``synthetic.random_state(seed=0)``) are saved as the Hugging Face release stores
them — conv weights as weight-norm pairs, the training-only codebook buffers
included — loaded by ``EncodecModel.from_pretrained`` (which must find every tensor,
and nothing unexpected), and run on CPU with one thread, at every bandwidth.

    python -m venv /tmp/hf && /tmp/hf/bin/pip install torch==2.13.0 "transformers>=5" "numpy<2.3" safetensors scipy
    PYTHONPATH=. /tmp/hf/bin/python scripts/make_encodec_golden.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers

from mimi_cli.models.encodec.config import EncodecConfig
from mimi_cli.models.encodec.synthetic import random_state, released_file_state
from mimi_cli.models.synthetic import state_fingerprint

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
HOP = EncodecConfig().hop_length


def cases() -> dict[str, np.ndarray]:
    """int16 inputs: speech in whole frames and not, a clip shorter than one conv's padding, and noise."""
    speech = np.load(GOLDEN / "long_speech_20s.npz")["pcm"]  # 24 kHz int16, from sample_audio/
    noise = np.random.default_rng(7).standard_normal(HOP * 40 + 1) * 3000
    return {
        "speech_4s": speech[24000 : 24000 + 300 * HOP],  # whole frames
        "speech_odd": speech[100_000 : 100_000 + 97 * HOP + 123],  # 123 samples into a frame
        "tiny": speech[50_000:50_005],  # shorter than the reflection padding of most convs
        "noise_loud": np.clip(noise, -32768, 32767).astype(np.int16),
    }


def main() -> None:
    torch.set_num_threads(1)
    config = EncodecConfig()
    state = random_state(config, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.numpy import save_file

        transformers.EncodecConfig().save_pretrained(tmp)
        save_file(released_file_state(state), f"{tmp}/model.safetensors", metadata={"format": "pt"})
        model, info = transformers.EncodecModel.from_pretrained(tmp, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"transformers did not load every tensor: {problems}"
    model.eval()
    out = {"weights_fingerprint": np.array(state_fingerprint(state)),
           "transformers_version": np.array(transformers.__version__), "torch_version": np.array(torch.__version__),
           "bandwidths": np.array(config.bandwidths)}
    for name, pcm in cases().items():
        x = torch.from_numpy(pcm.astype(np.float32) / 32768)[None, None]
        out[f"{name}.pcm"] = pcm
        for bandwidth in config.bandwidths:
            with torch.no_grad():
                encoded = model.encode(x, bandwidth=bandwidth)
                audio = model.decode(encoded.audio_codes, encoded.audio_scales).audio_values  # [1, 1, 320·F]
            codes = encoded.audio_codes[0, 0].numpy()  # [K, F]
            out[f"{name}.codes_{bandwidth:g}"] = codes.astype(np.uint16)
            out[f"{name}.audio_{bandwidth:g}"] = audio[0, 0].numpy()
        print(f"{name}: {len(pcm)} samples → {codes.shape[1]} frames; "
              f"level-0 codes used: {len(np.unique(codes[0]))}")
    np.savez_compressed(GOLDEN / "encodec.npz", **out)
    print(f"wrote {GOLDEN / 'encodec.npz'}")


if __name__ == "__main__":
    main()
