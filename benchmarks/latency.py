"""Per-frame streaming latency: encode and decode step times (p50, p95, max) per 80 ms frame.

    python benchmarks/latency.py [--threads 2] [--frames 200] [--steps 1 2 4]

With frames_per_step = n, a step handles n frames at once (latency n × 80 ms)
and the figures are per frame. Realistic random weights of the released size.
"""

import argparse

from mimi_cli.bench import stream_latency
from mimi_cli.core.threads import limit_threads
from mimi_cli.models.mimi.synthetic import random_mimi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--steps", type=int, nargs="*", default=[1, 2, 4])
    args = parser.parse_args()
    model = random_mimi()
    print(f"| frames per step | latency | encode p50 / p95 / max (ms per frame) | decode p50 / p95 / max "
          f"| encode + decode p50 |   ({args.threads} BLAS threads, {args.frames} frames)")
    print("|---:|---:|---|---|---:|")
    with limit_threads(args.threads):
        for fps in args.steps:
            enc, dec = stream_latency(model, args.frames, fps)
            print(f"| {fps} | {80 * fps} ms | {enc.p50_ms:.1f} / {enc.p95_ms:.1f} / {enc.max_ms:.1f} "
                  f"| {dec.p50_ms:.1f} / {dec.p95_ms:.1f} / {dec.max_ms:.1f} | {enc.p50_ms + dec.p50_ms:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
