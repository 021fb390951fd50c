"""Time mimi-cli against Kyutai's PyTorch reference (and rustymimi) on the same weights, input and threads.

Runs where torch and moshi are importable (the environment of
scripts/make_golden.py); rustymimi (`pip install rustymimi`) is timed too when
importable. Each measurement runs in a fresh worker process: torch's OpenMP
pool, OpenBLAS and rustymimi's thread pool keep spinning after their work, so
sharing one process would slow whichever runs next. Workers alternate
(reference, ours, rustymimi, reference, ...) so that machine noise hits all
alike; each warms up on 2 s of audio, then times loading, encode and decode.

    NO_TORCH_COMPILE=1 PYTHONPATH=. python benchmarks/compare_reference.py --seconds 60 --threads 2 \
        [--ours-python /path/to/mimi-cli-venv/bin/python]

(The reference's environment pins numpy < 2.3; mimi-cli's own install gets the
newest NumPy. Pass --ours-python to time mimi-cli as users run it.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

IMPLEMENTATIONS = ("reference", "mimi-cli", "rustymimi")


def worker(name: str, weights: str, seconds: float, codebooks: int, threads: int, runs: int) -> dict:
    """Load, warm up, then time ``runs`` encodes and decodes; returns times and the codes.

    The first run pays for first touches of its large buffers (page faults, allocator
    growth) in every implementation; later runs show the steady state.
    """
    from mimi_cli.bench import speech_like
    from mimi_cli.core.threads import keep_freed_memory

    keep_freed_memory()  # in every implementation's process alike, as the mimi command does
    pcm = speech_like(seconds)
    pcm = pcm[: len(pcm) // 1920 * 1920]
    warm = pcm[: 2 * 24000]
    start = time.perf_counter()
    if name == "reference":
        import torch
        from moshi.models import loaders

        torch.set_num_threads(threads)
        model = loaders.get_mimi(weights, device="cpu")
        model.set_num_codebooks(codebooks)

        def encode(x):
            with torch.no_grad():
                return model.encode(torch.from_numpy(x)[None, None])

        def decode(codes):
            with torch.no_grad():
                return model.decode(codes)

        def as_numpy(codes):
            return codes[0].numpy()
    elif name == "mimi-cli":
        from mimi_cli.core.threads import set_threads
        from mimi_cli.models.mimi import Mimi

        set_threads(threads)  # for the whole life of this worker process (a bare __enter__ would be undone by GC)
        model = Mimi.from_file(weights)

        def encode(x):
            return model.encode(x, codebooks)

        decode = model.decode

        def as_numpy(codes):
            return codes
    else:
        import rustymimi

        os.environ["RAYON_NUM_THREADS"] = str(threads)
        model = rustymimi.Tokenizer(weights, num_codebooks=codebooks)

        def encode(x):
            return model.encode(x[None, None])

        decode = model.decode

        def as_numpy(codes):
            return np.asarray(codes)[0]
    load = time.perf_counter() - start
    decode(encode(warm))
    encode_seconds, decode_seconds = [], []
    for _ in range(runs):
        start = time.perf_counter()
        codes = encode(pcm)
        encode_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        decode(codes)
        decode_seconds.append(time.perf_counter() - start)
    result = {"load": load, "encode": encode_seconds[0], "decode": decode_seconds[0],
              "codes": as_numpy(codes).astype(np.int64).ravel().tolist()}
    if runs > 1:
        result.update(encode_steady=min(encode_seconds[1:]), decode_steady=min(decode_seconds[1:]))
    if name != "rustymimi":
        result.update(stream_steps(name, model, pcm[: 150 * 1920]))
    return result


def stream_steps(name: str, model, pcm: np.ndarray) -> dict:
    """Median per-frame encode and decode step over 150 frames fed one at a time (after 10 warm-up frames)."""
    frames = [pcm[i : i + 1920] for i in range(0, len(pcm), 1920)]
    if name == "reference":
        import torch

        context = model.streaming(1)
        context.__enter__()

        def encode_step(frame):
            with torch.no_grad():
                return model.encode(torch.from_numpy(frame)[None, None])

        def decode_step(codes):
            with torch.no_grad():
                return model.decode(codes)
    else:
        encoder, decoder = model.stream_encoder(), model.stream_decoder()
        encode_step, decode_step = encoder.push, decoder.push
    encode_ms, decode_ms = [], []
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        codes = encode_step(frame)
        t1 = time.perf_counter()
        decode_step(codes)
        t2 = time.perf_counter()
        if i >= 10:
            encode_ms.append((t1 - t0) * 1e3)
            decode_ms.append((t2 - t1) * 1e3)
    return {"stream_encode_ms": float(np.median(encode_ms)), "stream_decode_ms": float(np.median(decode_ms))}


def available(name: str) -> bool:
    module = {"reference": "moshi", "mimi-cli": "mimi_cli", "rustymimi": "rustymimi"}[name]
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--codebooks", type=int, default=8)
    parser.add_argument("--runs", type=int, default=2, help="encodes and decodes timed in each worker process")
    parser.add_argument("--ours-python", default=sys.executable,
                        help="interpreter of mimi-cli's own environment (default: this one)")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.weights, args.seconds, args.codebooks, args.threads, args.runs)))
        return

    from safetensors.numpy import save_file

    from mimi_cli.models.mimi.synthetic import random_state

    names = [name for name in IMPLEMENTATIONS if available(name)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "RAYON_NUM_THREADS": str(args.threads)}
    results: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "mimi.safetensors")
        save_file(random_state(), weights)
        for _ in range(args.repeats):
            for name in names:
                python = args.ours_python if name == "mimi-cli" else sys.executable
                command = [python, __file__, "--worker", name, "--weights", weights,
                           "--seconds", str(args.seconds), "--threads", str(args.threads),
                           "--codebooks", str(args.codebooks), "--runs", str(args.runs)]
                done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
                results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name])

    ours = np.array(results["mimi-cli"][0]["codes"])
    print(f"{args.seconds:g} s of audio, {args.codebooks} codebooks, {args.threads} threads, median of "
          f"{args.repeats} runs, each in its own process, implementations alternating; mimi-cli run by "
          f"{args.ours_python}")
    for name in names:
        if name != "mimi-cli":
            differing = int((np.array(results[name][0]["codes"]) != ours).sum())
            print(f"codes differing between mimi-cli and {name}: {differing} of {ours.size}")
    print("| | " + " | ".join(names) + " | mimi-cli / reference |")
    print("|---|" + "---:|" * (len(names) + 1))
    labels = {"load": "load", "encode": "encode (first run)", "decode": "decode (first run)",
              "encode_steady": "encode (best later run)", "decode_steady": "decode (best later run)"}
    for key in [k for k in labels if k in results["mimi-cli"][0]]:
        cells = [f"{median(name, key):.2f} s" + (f" (RTF {median(name, key) / args.seconds:.3f})" if key != "load"
                                                 else "") for name in names]
        ratio = median("mimi-cli", key) / median("reference", key) if "reference" in names else float("nan")
        print(f"| {labels[key]} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    for key in ("stream_encode_ms", "stream_decode_ms"):
        cells = [f"{median(name, key):.1f} ms" if key in results[name][0] else "–" for name in names]
        ratio = median("mimi-cli", key) / median("reference", key) if "reference" in names else float("nan")
        print(f"| {key.replace('_ms', '').replace('_', ' ')} step, per frame (p50) | " + " | ".join(cells)
              + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()
