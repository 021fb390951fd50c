"""Time EnCodec 24 kHz here and in transformers' EncodecModel (PyTorch) on the same weights and input.

Each implementation runs in its own process (transformers in the Python given by --reference-python,
e.g. a venv with torch==2.13.0 and transformers 5.x), alternating, with the same thread count:

    python benchmarks/compare_encodec.py --reference-python /path/to/hf/bin/python --seconds 60 --threads 2

Prints one JSON line per run and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WORKER = r'''
import json, sys, time
import numpy as np
kind, weights = sys.argv[1], sys.argv[2]
seconds, threads, levels = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
pcm = (np.random.default_rng(0).standard_normal(int(seconds * 24000)) * 0.1).astype(np.float32)
if kind == "reference":
    import torch, transformers
    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = transformers.EncodecModel.from_pretrained(weights).eval()
    load = time.perf_counter() - start
    x = torch.from_numpy(pcm)[None, None]
    bandwidth = levels * 0.75
    with torch.no_grad():
        model.encode(x[..., :48000], bandwidth=bandwidth)  # warm-up
        start = time.perf_counter()
        enc = model.encode(x, bandwidth=bandwidth)
        t_enc = time.perf_counter() - start
        start = time.perf_counter()
        model.decode(enc.audio_codes, enc.audio_scales)
        t_dec = time.perf_counter() - start
else:
    from mimi_cli.core.threads import set_threads
    from mimi_cli.models.encodec import Encodec
    set_threads(threads)
    start = time.perf_counter()
    model = Encodec.from_file(weights + "/model.safetensors")
    load = time.perf_counter() - start
    model.encode(pcm[:48000], levels)
    start = time.perf_counter(); codes = model.encode(pcm, levels); t_enc = time.perf_counter() - start
    start = time.perf_counter(); model.decode(codes); t_dec = time.perf_counter() - start
print(json.dumps({"impl": kind, "load": load, "encode": t_enc, "decode": t_dec}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-python", required=True)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from safetensors.numpy import save_file

    from mimi_cli.models.encodec.synthetic import random_state, released_file_state

    results: dict[str, list[dict]] = {"reference": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        save_file(released_file_state(random_state()), f"{tmp}/model.safetensors", metadata={"format": "pt"})
        (Path(tmp) / "config.json").write_text(json.dumps({"model_type": "encodec"}))
        for _ in range(args.repeats):
            for kind, python in (("reference", args.reference_python), ("ours", sys.executable)):
                out = subprocess.run([python, "-c", WORKER, kind, tmp, str(args.seconds), str(args.threads),
                                      str(args.levels)], capture_output=True, text=True, check=True, cwd=REPO)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                results[kind].append(row)
                print(json.dumps(row))
    for key in ("load", "encode", "decode"):
        ref = statistics.median(r[key] for r in results["reference"])
        ours = statistics.median(r[key] for r in results["ours"])
        print(f"{key}: reference {ref:.2f} s, mimi-cli {ours:.2f} s, ratio {ours / ref:.2f}")


if __name__ == "__main__":
    main()
