"""Run Meta's ``encodec`` package (0.1.1) on our random EnCodec weights; write tests/golden/encodec_ecdc.npz.

Its ``compress`` / ``decompress`` are the reference for the ``.ecdc`` file (docs/codes-format.md): the
file's bytes at three bandwidths for one speech clip of tests/golden/encodec.npz (97 frames and 123
samples), the codes its model made, and the audio its ``decompress`` gives back at 6 kbps.

The package imports torchaudio at start-up, which has no CPU build on these machines and is used only to
read and write audio files: a stand-in module is put in its place. Its pretrained checkpoint cannot be
downloaded here, so the model is built untrained, weight norm removed, and given ``random_state(seed=0)``
renamed to the package's names; ``decompress`` is handed the same model.

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 "numpy<2.3" einops safetensors
    /tmp/ref/bin/pip install --no-deps encodec==0.1.1
    PYTHONPATH=. /tmp/ref/bin/python scripts/make_ecdc_golden.py
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.modules["torchaudio"] = types.ModuleType("torchaudio")  # imported by encodec.utils, used only for files

import encodec  # noqa: E402
from encodec.compress import MODELS  # noqa: E402

from mimi_cli.models.encodec.config import EncodecConfig  # noqa: E402
from mimi_cli.models.encodec.synthetic import random_state  # noqa: E402
from mimi_cli.models.synthetic import state_fingerprint  # noqa: E402

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
CASE = "speech_odd"
BANDWIDTHS = (1.5, 6.0, 24.0)

# Hugging Face names (ours) → the encodec package's.
_TO_ORIGINAL = (
    (re.compile(r"^(encoder|decoder)\.layers\."), r"\1.model."),
    (re.compile(r"^quantizer\.layers\.(\d+)\.codebook\."), r"quantizer.vq.layers.\1._codebook."),
)


def original_model(state: dict[str, np.ndarray]) -> encodec.EncodecModel:
    model = encodec.EncodecModel.encodec_model_24khz(pretrained=False)
    for module in model.modules():
        if hasattr(module, "weight_g"):
            torch.nn.utils.remove_weight_norm(module)  # the weights below are folded already
    targets = model.state_dict()
    loaded = {}
    for name, value in state.items():
        for pattern, replacement in _TO_ORIGINAL:
            name = pattern.sub(replacement, name)
        if name not in targets:  # a conv's weight sits one module deeper: .conv.conv. / .convtr.convtr.
            name = re.sub(r"\.conv\.(weight|bias)$", r".conv.conv.\1", name)
            if name not in targets:
                name = name.replace(".conv.conv.", ".convtr.convtr.")
        assert name in targets and targets[name].shape == value.shape, name
        loaded[name] = torch.from_numpy(value)
    untouched = [n for n in targets if n not in loaded and not re.search(r"\.(inited|cluster_size|embed_avg)$", n)]
    assert not untouched, f"not loaded: {untouched}"
    model.load_state_dict(loaded, strict=False)
    model.name = "encodec_24khz"  # what the released model is called, in the .ecdc header (untrained: "unset")
    return model.eval()


def main() -> None:
    torch.set_num_threads(1)
    state = random_state(EncodecConfig(), seed=0)
    model = original_model(state)
    MODELS["encodec_24khz"] = lambda: model  # decompress builds the model its header names
    with np.load(GOLDEN / "encodec.npz") as npz:
        pcm = npz[f"{CASE}.pcm"]
    wav = torch.from_numpy(pcm.astype(np.float32) / 32768)[None]  # [1, T]
    out = {"weights_fingerprint": np.array(state_fingerprint(state)), "case": np.array(CASE),
           "encodec_version": np.array(encodec.__version__), "torch_version": np.array(torch.__version__),
           "bandwidths": np.array(BANDWIDTHS)}
    for bandwidth in BANDWIDTHS:
        model.set_target_bandwidth(bandwidth)
        with torch.no_grad():
            (codes, _), = model.encode(wav[None])
        data = encodec.compress(model, wav, use_lm=False)
        audio, rate = encodec.decompress(data)
        assert rate == 24000
        out[f"ecdc_{bandwidth:g}"] = np.frombuffer(data, np.uint8)
        out[f"codes_{bandwidth:g}"] = codes[0].numpy().astype(np.uint16)
        if bandwidth == 6.0:
            out["audio_6"] = audio[0].numpy()
        print(f"{bandwidth:g} kbps: {len(data)} bytes, codes {tuple(codes.shape[1:])}")
    np.savez_compressed(GOLDEN / "encodec_ecdc.npz", **out)
    print(f"wrote {GOLDEN / 'encodec_ecdc.npz'}")


if __name__ == "__main__":
    main()
