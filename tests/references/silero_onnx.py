"""Golden Silero VAD probabilities from the ONNX model of silero-vad 6.0.0, run by ONNX Runtime.

Run in a reference environment (not this package's)::

    python -m venv ref && ref/bin/pip install onnxruntime "numpy<2.3" soundfile scipy
    ref/bin/pip install --no-deps silero-vad==6.0.0
    ref/bin/python tests/references/silero_onnx.py ../shared/audio tests/golden/coreml/silero_vad_v6.npz

For each clip: resampled to 16 kHz (scipy resample_poly), cut into 512-sample windows (the last
padded with zeros), each fed with the previous 64 samples of context and the carried state, as
silero-vad's own OnnxWrapper does. Writes ``<clip stem>`` → probabilities ``[windows]`` (float32).
"""

import importlib.util
import sys
from math import gcd
from pathlib import Path

import numpy as np
import onnxruntime
import soundfile as sf
from scipy.signal import resample_poly

RATE, HOP, CONTEXT = 16000, 512, 64


def probabilities(session, audio: np.ndarray) -> np.ndarray:
    windows = -(-len(audio) // HOP)
    padded = np.zeros(CONTEXT + windows * HOP, np.float32)
    padded[CONTEXT:CONTEXT + len(audio)] = audio
    state = np.zeros((2, 1, 128), np.float32)
    out = []
    for i in range(windows):
        x = padded[i * HOP:i * HOP + CONTEXT + HOP][None]
        prob, state = session.run(None, {"input": x, "state": state, "sr": np.array(RATE, np.int64)})
        out.append(float(prob.ravel()[0]))
    return np.array(out, np.float32)


def main(audio_dir: str, target: str) -> None:
    # the package's model file, found without importing the package (which needs torch)
    package = importlib.util.find_spec("silero_vad").submodule_search_locations[0]
    model = Path(package) / "data" / "silero_vad.onnx"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    golden = {}
    for clip in sorted(Path(audio_dir).glob("*.wav")):
        samples, rate = sf.read(clip, dtype="float32", always_2d=True)
        mono = samples.mean(axis=1)
        g = gcd(rate, RATE)
        mono = resample_poly(mono, RATE // g, rate // g).astype(np.float32) if rate != RATE else mono
        golden[clip.stem] = probabilities(session, mono)
        print(clip.name, len(golden[clip.stem]), "windows")
    np.savez(target, **golden)


if __name__ == "__main__":
    main(*sys.argv[1:])
