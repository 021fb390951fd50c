"""Is batching many short clips into one forward pass faster than one clip at a time? (issue: --batch-size)

    python benchmarks/batching.py [--clips 16] [--threads 1] [--rounds 3]

Clips of 2-10 s (seeded lengths) of noise-like speech stand-ins, realistic random weights; each
round encodes all clips one at a time, then in batches of 4 and 8 clips of similar length (sorted,
padded to the longest with zeros; the codes of each clip's own frames are then compared with the
clip encoded alone). Alternating, medians, clips per second; also whether the batched codes are
bit-identical to the single ones.
"""

import argparse
import statistics
import time

import numpy as np

from mimi_cli.bench import random_model
from mimi_cli.core.threads import limit_threads
from mimi_cli.models import codec_spec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--codec", default="mimi")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model, _ = random_model(codec_spec(args.codec))
    rate, frame = model.config.sample_rate, model.config.frame_size
    rng = np.random.default_rng(0)
    lengths = rng.uniform(2, 10, args.clips)
    clips = [(rng.standard_normal(int(s * rate)) * 0.1).astype(np.float32) for s in lengths]
    alone = [model.encode(c, 8) for c in clips]

    def one_at_a_time():
        return [model.encode(c, 8) for c in clips]

    def batched(size):
        order = np.argsort([len(c) for c in clips])
        out = [None] * len(clips)
        for first in range(0, len(order), size):
            group = order[first:first + size]
            longest = max(len(clips[i]) for i in group)
            batch = np.zeros((len(group), longest), np.float32)
            for row, i in enumerate(group):
                batch[row, :len(clips[i])] = clips[i]
            codes = model.encode(batch, 8)
            for row, i in enumerate(group):
                out[i] = codes[row, :, :-(-len(clips[i]) // frame)]
        return out

    runs = {"one at a time": one_at_a_time, "batches of 4": lambda: batched(4), "batches of 8": lambda: batched(8)}
    times = {name: [] for name in runs}
    exact = {}
    with limit_threads(args.threads):
        for _ in range(args.rounds):
            for name, function in runs.items():
                start = time.perf_counter()
                codes = function()
                times[name].append(time.perf_counter() - start)
                exact[name] = sum(np.array_equal(a, b) for a, b in zip(codes, alone, strict=True))
    base = statistics.median(times["one at a time"])
    total = sum(lengths)
    print(f"{args.codec}, {args.clips} clips of 2-10 s ({total:.0f} s of audio), {args.threads} thread(s), "
          f"median of {args.rounds}:")
    for name in runs:
        median = statistics.median(times[name])
        print(f"  {name:14s} {median:6.2f} s  {args.clips / median:5.2f} clips/s  ×{base / median:.2f}  "
              f"codes identical to alone: {exact[name]}/{args.clips}")


if __name__ == "__main__":
    main()
