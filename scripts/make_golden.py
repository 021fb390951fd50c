"""Run Kyutai's PyTorch reference on realistic random weights and write tests/golden/*.npz.

Batch cases (``encode``/``decode`` on whole inputs) and streaming cases
(``stream_*``: ``with model.streaming(1):``, one 1920-sample frame per encode
call, one code frame per decode call).

Needs a separate virtual environment with the reference (never a dependency of mimi-cli):

    python -m venv /tmp/ref && . /tmp/ref/bin/activate
    pip install torch==2.13.0
    pip install --no-deps moshi==0.2.13
    pip install "numpy<2.3" safetensors einops huggingface_hub sentencepiece scipy soundfile threadpoolctl
    NO_TORCH_COMPILE=1 PYTHONPATH=. python scripts/make_golden.py

The weights come from ``mimi_cli.models.mimi.synthetic.random_state(seed=0)``;
the tests rebuild them and check their fingerprint, so a golden file can never
be compared against different weights. One torch thread, as thread count
changes the low bits.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from mimi_cli.models.mimi.config import MimiConfig
from mimi_cli.models.mimi.synthetic import random_state
from mimi_cli.models.synthetic import state_fingerprint

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
FRAME = MimiConfig().frame_size


def speech(num_samples: int, start: int = 0) -> np.ndarray:
    """The sample speech clip at 24 kHz as int16 (exactly representable; stored as is)."""
    pcm, rate = sf.read("sample_audio/speech_16k_mono.wav", dtype="float32")
    pcm = resample_poly(pcm, 24000 // 8000, rate // 8000)[start : start + num_samples]
    assert len(pcm) == num_samples
    return np.round(np.clip(pcm, -1, 1) * 32767).astype(np.int16)


def cases() -> dict[str, dict]:
    rng = np.random.default_rng(1234)
    return {
        # name: input (int16 = /32768, float32 as is), whether to store the 8-level decode
        "one_frame": {"pcm": (0.1 * rng.standard_normal(FRAME)).astype(np.float32), "decode8": True},
        "odd_length_speech": {"pcm": speech(19_700, start=4_000), "decode8": True},
        "speech_4s_tail": {"pcm": speech(4 * 24_000 + 777, start=30_000), "decode8": True},
        "silence": {"pcm": np.zeros(50_000, np.int16), "decode8": False},
        "full_scale_noise": {"pcm": rng.uniform(-1, 1, 3 * 24_000 + 100).astype(np.float32), "decode8": False},
        # 20.5 s: past the 250-step (10 s) attention window.
        "long_speech_20s": {"pcm": speech(492_000, start=12_000), "decode8": False},
    }


def streaming_cases() -> dict[str, np.ndarray]:
    """Inputs for moshi's streaming mode, whole frames only (it refuses partial ones)."""
    music, rate = sf.read("sample_audio/music_24k.flac", dtype="float32")
    assert rate == 24_000
    long = np.concatenate([as_float(speech(690_000)), music])[: 400 * FRAME]
    return {
        "stream_1": speech(FRAME, start=20_000),
        "stream_7": speech(7 * FRAME, start=50_000),
        "stream_200": speech(200 * FRAME, start=0),  # 16 s: past the 10 s window
        "stream_400": np.round(long * 32767).astype(np.int16),  # 32 s
    }


def run_streaming(model, pcm: np.ndarray, store_latent: bool) -> dict[str, np.ndarray]:
    """Encode frame by frame, then decode the resulting codes frame by frame, as a voice app would."""
    x = torch.from_numpy(as_float(pcm))[None, None]
    frames = x.shape[-1] // FRAME
    out = {}
    with torch.no_grad():
        model.set_num_codebooks(32)
        with model.streaming(1):
            codes = torch.cat([model.encode(x[..., i * FRAME : (i + 1) * FRAME]) for i in range(frames)], dim=-1)
        out["codes32"] = codes[0].numpy().astype(np.uint16)
        with model.streaming(1):
            audio = [model.decode(codes[..., i : i + 1]) for i in range(frames)]
        out["audio32"] = torch.cat(audio, dim=-1)[0, 0].numpy()
        if store_latent:
            with model.streaming(1):
                latent = [model._encode_to_unquantized_latent(x[..., i * FRAME : (i + 1) * FRAME])
                          for i in range(frames)]
            out["latent"] = torch.cat(latent, dim=-1)[0].numpy()
    return out


def as_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768 if pcm.dtype == np.int16 else pcm


def main() -> None:
    from moshi.models import loaders
    from safetensors.numpy import save_file

    torch.set_num_threads(1)
    state = random_state(MimiConfig(), seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "weights.safetensors")
        save_file(state, path)
        model = loaders.get_mimi(path, device="cpu")  # strict load: proves the naming
    model.eval()
    GOLDEN.mkdir(parents=True, exist_ok=True)
    # The reference's RoPE frequencies, to check ours against.
    ds = torch.arange(32, dtype=torch.float32)
    rope_freqs = torch.exp(ds * (-np.log(10000.0) * 2 / 64)).numpy()
    meta = {
        "weights_fingerprint": state_fingerprint(state),
        "torch_version": torch.__version__,
        "moshi_version": __import__("moshi").__version__,
        "torch_threads": torch.get_num_threads(),
    }
    for name, case in cases().items():
        pcm = case["pcm"]
        x = torch.from_numpy(as_float(pcm))[None, None]
        out = {"pcm": pcm, "rope_freqs": rope_freqs, **{k: np.array(v) for k, v in meta.items()}}
        with torch.no_grad():
            model.set_num_codebooks(32)
            out["latent"] = model._encode_to_unquantized_latent(x)[0].numpy()
            codes32 = model.encode(x)
            out["codes32"] = codes32[0].numpy().astype(np.uint16)
            out["audio32"] = model.decode(codes32)[0, 0].numpy()
            model.set_num_codebooks(8)
            codes8 = model.encode(x)
            out["codes8"] = codes8[0].numpy().astype(np.uint16)
            if case["decode8"]:
                out["audio8"] = model.decode(codes8)[0, 0].numpy()
        np.savez_compressed(GOLDEN / f"{name}.npz", **out)
        print(f"{name}: {len(pcm)} samples → {out['codes32'].shape[1]} frames")
    for name, pcm in streaming_cases().items():
        out = {"pcm": pcm, "rope_freqs": rope_freqs, **{k: np.array(v) for k, v in meta.items()},
               **run_streaming(model, pcm, store_latent=name != "stream_400")}
        np.savez_compressed(GOLDEN / f"{name}.npz", **out)
        print(f"{name}: {len(pcm)} samples → {out['codes32'].shape[1]} frames (streaming)")


if __name__ == "__main__":
    main()
