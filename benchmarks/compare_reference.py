"""Time mimi-cli against Kyutai's PyTorch reference on the same weights, input and thread count.

Runs only where torch and moshi are importable (see scripts/make_golden.py for
that environment); rustymimi (`pip install rustymimi`) is timed too when it is
importable. Runs are
interleaved (reference, ours, reference, ours, ...) so that machine noise hits
both alike, and medians are reported with their ratio.

    NO_TORCH_COMPILE=1 PYTHONPATH=. python benchmarks/compare_reference.py --seconds 60 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from functools import partial

import numpy as np


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--codebooks", type=int, default=8)
    args = parser.parse_args()

    import torch
    from moshi.models import loaders
    from safetensors.numpy import save_file
    from threadpoolctl import threadpool_limits

    from mimi_cli.bench import speech_like
    from mimi_cli.models.mimi import Mimi
    from mimi_cli.models.mimi.synthetic import random_state

    torch.set_num_threads(args.threads)
    pcm = speech_like(args.seconds)
    pcm = pcm[: len(pcm) // 1920 * 1920]
    tmp = tempfile.TemporaryDirectory()
    path = path_copy = os.path.join(tmp.name, "mimi.safetensors")
    save_file(random_state(), path)
    load_ref, reference = timed(lambda: loaders.get_mimi(path, device="cpu"))
    with threadpool_limits(args.threads, "blas"):
        load_ours, ours = timed(lambda: Mimi.from_file(path))
    reference.set_num_codebooks(args.codebooks)
    x = torch.from_numpy(pcm)[None, None]

    def ref_encode():
        with torch.no_grad():
            return reference.encode(x)

    def ref_decode(codes):
        with torch.no_grad():
            return reference.decode(codes)

    try:
        import rustymimi

        rusty = rustymimi.Tokenizer(path_copy, num_codebooks=args.codebooks)
    except ImportError:
        rusty = None
    names = ["reference", "mimi-cli"] + (["rustymimi"] if rusty else [])
    times = {name: {"encode": [], "decode": []} for name in names}
    codes_ref = codes_ours = None
    with threadpool_limits(args.threads, "blas"):
        for _ in range(args.repeats):
            if rusty:
                t, codes_rusty = timed(lambda: rusty.encode(pcm[None, None]))
                times["rustymimi"]["encode"].append(t)
                t, _ = timed(partial(rusty.decode, codes_rusty))
                times["rustymimi"]["decode"].append(t)
            t, codes_ref = timed(ref_encode)
            times["reference"]["encode"].append(t)
            t, codes_ours = timed(lambda: ours.encode(pcm, args.codebooks))
            times["mimi-cli"]["encode"].append(t)
            t, _ = timed(partial(ref_decode, codes_ref))
            times["reference"]["decode"].append(t)
            t, _ = timed(partial(ours.decode, codes_ours))
            times["mimi-cli"]["decode"].append(t)
    mismatches = int((codes_ref[0].numpy() != codes_ours).sum())
    print(f"{args.seconds:g} s of audio, {args.codebooks} codebooks, {args.threads} threads, "
          f"median of {args.repeats} interleaved runs; torch {torch.__version__}, numpy {np.__version__}")
    print(f"codes differing between the two: {mismatches} of {codes_ours.size}")
    rusty_header = " rustymimi |" if rusty else ""
    print(f"| | reference (moshi, PyTorch) | mimi-cli | ratio (ours / reference) |{rusty_header}")
    print("|---|---:|---:|---:|" + ("---:|" if rusty else ""))
    print(f"| load weights | {load_ref:.2f} s | {load_ours:.2f} s | {load_ours / load_ref:.2f} |"
          + (" – |" if rusty else ""))
    for step in ("encode", "decode"):
        r, o = (statistics.median(times[name][step]) for name in ("reference", "mimi-cli"))
        row = (f"| {step} | {r:.2f} s (RTF {r / args.seconds:.3f}) | {o:.2f} s (RTF {o / args.seconds:.3f}) "
               f"| {o / r:.2f} |")
        if rusty:
            rt = statistics.median(times["rustymimi"][step])
            row += f" {rt:.2f} s (RTF {rt / args.seconds:.3f}) |"
        print(row)
    tmp.cleanup()


if __name__ == "__main__":
    main()
