"""Time mimi-cli against ONNX Runtime (moshi's graph exported with torch.onnx) and moshi/torch itself.

Runs in the reference's environment (see benchmarks/compare_reference.py) with ONNX added:

    pip install torch==2.13.0 && pip install --no-deps moshi==0.2.13
    pip install "numpy<2.3" safetensors einops huggingface_hub sentencepiece onnx onnxruntime onnxscript
    PYTHONPATH=. python benchmarks/compare_onnxruntime.py --seconds 30 --threads 1 2 --repeats 3 \\
        --ours-python /path/to/mimi-cli-venv/bin/python

One realistic random weights file for all. moshi's ``encode`` and ``decode`` are exported once at
the input's fixed length (``torch.onnx.export(..., dynamo=False, opset_version=17)``). Every
measurement is a fresh process (torch's, OpenBLAS's and ONNX Runtime's thread pools keep spinning
after their work and would slow the next); implementations and thread counts alternate, so machine
noise hits all alike. Each worker loads, then for encode and then decode: one warm-up call, three
timed calls, their median. Prints medians, ratios to ONNX Runtime, and whether the codes agree; mimi-cli's
encode also as GFLOP/s and as a fraction of the BLAS peak (a 2048² float32 matmul, NumPy, same
threads) measured in the same run.

``--busy`` adds a second condition to every round: a busy-loop process pinned to the last core
for the whole measurement, as another user's job would be. The table then gives each
implementation's slowdown under it (busy time / quiet time).
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

IMPLEMENTATIONS = ("onnxruntime", "torch", "mimi-cli")
TIMED_CALLS = 3  # per direction and worker, after one warm-up call; the worker reports their median
BUSY_LOOP = "while True: pass"


def speech(seconds: float) -> np.ndarray:
    from mimi_cli.bench import speech_like

    pcm = speech_like(seconds)
    return pcm[: len(pcm) // 1920 * 1920]


def export(weights: str, seconds: float, codebooks: int, folder: str) -> None:
    """moshi's encode and decode as two ONNX graphs at a fixed length."""
    import torch
    from moshi.models import loaders

    model = loaders.get_mimi(weights, device="cpu")
    model.set_num_codebooks(codebooks)
    model.eval().requires_grad_(False)

    class Wrapped(torch.nn.Module):  # the model as a submodule: its tensors export as weights
        def __init__(self, method: str):
            super().__init__()
            self.model, self.method = model, method

        def forward(self, x):
            return getattr(self.model, self.method)(x)

    x = torch.from_numpy(speech(seconds))[None, None]
    with torch.no_grad():
        codes = model.encode(x)
        torch.onnx.export(Wrapped("encode"), (x,), f"{folder}/encode.onnx", dynamo=False, opset_version=17,
                          input_names=["audio"], output_names=["codes"])
        torch.onnx.export(Wrapped("decode"), (codes,), f"{folder}/decode.onnx", dynamo=False, opset_version=17,
                          input_names=["codes"], output_names=["audio"])


def worker(name: str, weights: str, folder: str, seconds: float, codebooks: int, threads: int) -> dict:
    from mimi_cli.core.threads import keep_freed_memory

    keep_freed_memory()  # in every implementation's process alike, as the mimi command does
    if name == "blas-peak":
        from mimi_cli.bench import blas_library, blas_peak
        from mimi_cli.core.threads import set_threads

        set_threads(threads)
        return {"gflops": blas_peak(), "blas": blas_library()}
    pcm = speech(seconds)
    start = time.perf_counter()
    if name == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        encoder = ort.InferenceSession(f"{folder}/encode.onnx", options, providers=["CPUExecutionProvider"])
        decoder = ort.InferenceSession(f"{folder}/decode.onnx", options, providers=["CPUExecutionProvider"])

        def encode(x):
            return encoder.run(None, {"audio": x[None, None]})[0]

        def decode(codes):
            return decoder.run(None, {"codes": codes})[0]
    elif name == "torch":
        import torch
        from moshi.models import loaders

        torch.set_num_threads(threads)
        model = loaders.get_mimi(weights, device="cpu")
        model.set_num_codebooks(codebooks)

        def encode(x):
            with torch.no_grad():
                return model.encode(torch.from_numpy(x)[None, None]).numpy()

        def decode(codes):
            with torch.no_grad():
                return model.decode(torch.from_numpy(codes)).numpy()
    else:
        from mimi_cli.core.threads import set_threads
        from mimi_cli.models.mimi import Mimi

        set_threads(threads)  # for the whole life of this worker process (a bare __enter__ would be undone by GC)
        model = Mimi.from_file(weights)

        def encode(x):
            return model.encode(x, codebooks)[None]

        def decode(codes):
            return model.decode(codes[0])
    load = time.perf_counter() - start
    # Each direction warms up, then is timed TIMED_CALLS times in a row (the median is the worker's
    # figure): ONNX Runtime's encode right after a decode in the same process took 1.3-2× its time
    # after an encode (its memory arena's state), which the first harness, one warm-up of both then
    # one encode, measured instead (docs/performance.md, "A fairer harness").
    encode_seconds, codes = _timed(encode, pcm)
    decode_seconds, _ = _timed(decode, codes)
    return {"load": load, "encode": encode_seconds, "decode": decode_seconds,
            "codes": np.asarray(codes).astype(np.int64).ravel().tolist()}



def _timed(fn, x):
    """``fn(x)`` once to warm up, then the median time of :data:`TIMED_CALLS` calls, and the result."""
    result, times = fn(x), []
    for _ in range(TIMED_CALLS):
        start = time.perf_counter()
        result = fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--codebooks", type=int, default=8)
    parser.add_argument("--ours-python", default=sys.executable)
    parser.add_argument("--busy", action="store_true", help="also time each run beside a busy-loop process")
    parser.add_argument("--worker", choices=(*IMPLEMENTATIONS, "blas-peak"), help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.weights, args.folder, args.seconds, args.codebooks, args.threads[0])
        print(json.dumps(result))
        return

    from safetensors.numpy import save_file

    from mimi_cli.models.mimi.synthetic import random_state

    conditions = ("quiet", "busy") if args.busy else ("quiet",)
    results: dict[tuple[str, int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        weights = os.path.join(folder, "mimi.safetensors")
        save_file(random_state(), weights)
        export(weights, args.seconds, args.codebooks, folder)
        for _ in range(args.repeats):
            for threads in args.threads:
                env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
                       "MKL_NUM_THREADS": str(threads)}
                for condition in conditions:
                    for name in (*IMPLEMENTATIONS, "blas-peak"):
                        python = sys.executable if name in ("torch", "onnxruntime") else args.ours_python
                        command = [python, __file__, "--worker", name, "--weights", weights, "--folder", folder,
                                   "--seconds", str(args.seconds), "--threads", str(threads),
                                   "--codebooks", str(args.codebooks)]
                        busy = None
                        if condition == "busy":
                            busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
                            os.sched_setaffinity(busy.pid, {max(os.sched_getaffinity(0))})
                        try:
                            done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
                        finally:
                            if busy is not None:
                                busy.kill()
                                busy.wait()
                        results.setdefault((name, threads, condition), []).append(
                            json.loads(done.stdout.strip().splitlines()[-1]))

    def median(name: str, threads: int, key: str, condition: str = "quiet") -> float:
        return statistics.median(run[key] for run in results[(name, threads, condition)])

    print(f"{args.seconds:g} s of audio, {args.codebooks} codebooks, median of {args.repeats} runs, each in its "
          "own process, alternating")
    reference = np.array(results[("torch", args.threads[0], "quiet")][0]["codes"])
    for name in ("onnxruntime", "mimi-cli"):
        differing = int((np.array(results[(name, args.threads[0], "quiet")][0]["codes"]) != reference).sum())
        print(f"codes differing from moshi/torch: {name} {differing} of {reference.size}")
    from mimi_cli.bench import describe_blas

    print(f"mimi-cli's BLAS: {describe_blas(results[('blas-peak', args.threads[0], 'quiet')][0]['blas'])}")
    print("| run | mimi-cli | moshi / torch | ONNX Runtime | mimi-cli / ONNX Runtime |")
    print("|---|---:|---:|---:|---:|")
    for key in ("encode", "decode"):
        for threads in args.threads:
            ours, torch_s, onnx_s = (median(n, threads, key) for n in ("mimi-cli", "torch", "onnxruntime"))
            print(f"| {key}, {threads} thread{'s' if threads > 1 else ''} | {ours:.2f} s | {torch_s:.2f} s | "
                  f"{onnx_s:.2f} s | {ours / onnx_s:.2f} |")
    print("every run, fastest first (s):")
    for key in ("encode", "decode"):
        for threads in args.threads:
            print(f"  {key}, {threads} thread(s): " + "; ".join(
                f"{name} " + ", ".join(f"{run[key]:.2f}" for run in sorted(results[(name, threads, "quiet")],
                                                                           key=lambda run: run[key]))
                for name in ("mimi-cli", "torch", "onnxruntime")))
    from mimi_cli.models.mimi import MimiConfig

    encode_flops = MimiConfig().flops(args.seconds, args.codebooks)[0]
    for threads in args.threads:
        peak, ours = median("blas-peak", threads, "gflops"), encode_flops / median("mimi-cli", threads, "encode") / 1e9
        print(f"mimi-cli encode, {threads} thread(s): {ours:.0f} GFLOP/s, {ours / peak:.0%} of the BLAS peak "
              f"({peak:.0f} GFLOP/s, median of {args.repeats})")
    if args.busy:
        print("\nslowdown beside a busy-loop process pinned to one core (busy time / quiet time, medians):")
        print("| run | mimi-cli | moshi / torch | ONNX Runtime |")
        print("|---|---:|---:|---:|")
        for key in ("encode", "decode"):
            for threads in args.threads:
                ratios = [median(n, threads, key, "busy") / median(n, threads, key)
                          for n in ("mimi-cli", "torch", "onnxruntime")]
                print(f"| {key}, {threads} thread{'s' if threads > 1 else ''} | " +
                      " | ".join(f"{r:.2f}×" for r in ratios) + " |")


if __name__ == "__main__":
    main()
