"""Many concurrent streams per step: mimi-cli against moshi's ``streaming(B)`` on the same machine.

Runs in the reference's environment (see benchmarks/compare_reference.py):

    PYTHONPATH=. python benchmarks/compare_streams.py --threads 2 --streams 1 4 8 16 \\
        --ours-python /path/to/mimi-cli-venv/bin/python

B streams advance together, one 80 ms frame each per step: encode the B frames to codes, then
decode those codes to B frames, as a server holding B conversations would. Each implementation
runs in its own fresh process per B (alternating), warms up 5 steps, then times 40; the figure is
the median step. A step within 80 ms keeps all B streams real-time.

With ``--duplex`` the two directions run at once, one thread each (half the threads each, for
torch), and a step decodes the codes of the step before: a server for a Moshi-style model encodes
what its users say while it decodes the model's answers. mimi-cli uses ``stream_duplex``; moshi
runs ``decode`` in a second Python thread while ``encode`` runs (torch releases the GIL in its ops).
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
from concurrent.futures import ThreadPoolExecutor

import numpy as np

FRAME = 1920
WARMUP, STEPS = 5, 40


def audio(streams: int) -> np.ndarray:
    from mimi_cli.bench import speech_like

    seconds = (WARMUP + STEPS) * FRAME / 24000
    return np.stack([speech_like(seconds, seed=i)[: (WARMUP + STEPS) * FRAME] for i in range(streams)])


def worker(name: str, weights: str, streams: int, threads: int, codebooks: int, duplex: bool) -> dict:
    from mimi_cli.core.threads import keep_freed_memory

    keep_freed_memory()  # in every implementation's process alike, as the mimi command does
    pcm = audio(streams)
    if name == "torch":
        import torch
        from moshi.models import loaders

        torch.set_num_threads(max(1, threads // 2) if duplex else threads)  # duplex: per direction
        model = loaders.get_mimi(weights, device="cpu")
        model.set_num_codebooks(codebooks)
        context = model.streaming(streams)
        context.__enter__()

        def encode(frame):
            with torch.no_grad():
                return model.encode(torch.from_numpy(frame)[:, None])

        def decode(codes):
            with torch.no_grad():
                return model.decode(codes)

        helper = ThreadPoolExecutor(1) if duplex else None

        def both(frame, codes):  # the decode in a second thread while this one encodes
            pending = helper.submit(decode, codes) if codes is not None else None
            new = encode(frame)
            if pending is not None:
                pending.result()
            return new
    else:
        from mimi_cli.core.threads import set_threads
        from mimi_cli.models.mimi import Mimi

        set_threads(threads)  # for the whole life of this worker process (a bare __enter__ would be undone by GC)
        model = Mimi.from_file(weights)
        if duplex:
            duplex_stream = model.stream_duplex(batch_size=streams, num_codebooks=codebooks)

            def both(frame, codes):
                return duplex_stream.push(frame, codes)[0]
        else:
            encode = model.stream_encoder(batch_size=streams, num_codebooks=codebooks).push
            decode = model.stream_decoder(batch_size=streams).push
    encode_ms, decode_ms, codes = [], [], None
    for index in range(WARMUP + STEPS):
        frame = np.ascontiguousarray(pcm[:, index * FRAME : (index + 1) * FRAME])
        t0 = time.perf_counter()
        if duplex:
            codes = both(frame, codes)
            t1 = time.perf_counter()
        else:
            codes = encode(frame)
            t1 = time.perf_counter()
            decode(codes)
        t2 = time.perf_counter()
        if index >= WARMUP:
            encode_ms.append((t1 - t0) * 1e3)
            decode_ms.append((t2 - t1) * 1e3)
    return {"encode": statistics.median(encode_ms), "decode": statistics.median(decode_ms),
            "step": statistics.median(np.add(encode_ms, decode_ms))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--codebooks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--duplex", action="store_true", help="encode and decode at once, one thread each")
    parser.add_argument("--ours-python", default=sys.executable)
    parser.add_argument("--worker", choices=("torch", "mimi-cli"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.weights, args.streams[0], args.threads, args.codebooks,
                                args.duplex)))
        return

    from safetensors.numpy import save_file

    from mimi_cli.models.mimi.synthetic import random_state

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OPENBLAS_NUM_THREADS": str(args.threads)}
    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "mimi.safetensors")
        save_file(random_state(), weights)
        for _ in range(args.repeats):
            for streams in args.streams:
                for name in ("torch", "mimi-cli"):
                    python = sys.executable if name == "torch" else args.ours_python
                    command = [python, __file__, "--worker", name, "--weights", weights, "--streams", str(streams),
                               "--threads", str(args.threads), "--codebooks", str(args.codebooks)]
                    command += ["--duplex"] if args.duplex else []
                    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
                    results.setdefault((name, streams), []).append(json.loads(done.stdout.strip().splitlines()[-1]))

    def step(name: str, streams: int) -> float:
        return statistics.median(r["step"] for r in results[(name, streams)])

    mode = "encode and decode at once (--duplex)" if args.duplex else "encode, then decode"
    print(f"{args.threads} threads, {args.codebooks} codebooks, one 80 ms frame per stream per step, {mode}, "
          f"median of {STEPS} steps (median of {args.repeats} processes)")
    print("| streams B | mimi-cli step | moshi / torch step | mimi-cli per stream | moshi per stream | "
          "mimi-cli / moshi | real time |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for streams in args.streams:
        ours, theirs = step("mimi-cli", streams), step("torch", streams)
        held = f"mimi-cli {'yes' if ours <= 80 else 'no'}, moshi {'yes' if theirs <= 80 else 'no'}"
        print(f"| {streams} | {ours:.1f} ms | {theirs:.1f} ms | {ours / streams:.1f} ms | {theirs / streams:.1f} ms | "
              f"{ours / theirs:.2f} | {held} |")


if __name__ == "__main__":
    main()
