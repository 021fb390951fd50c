"""Prepared plan vs unprepared predict on the Core ML fixtures: alternating runs, medians, ratios.

    python benchmarks/coreml_plan.py [../shared/coreml-fixtures] [--rounds 30]

Silero VAD: one 576-sample window with carried state (what a stream pays per 32 ms);
Whisper log-mel: one 8 s call (fp32 precision). Also prints the plan's buffer report and the
peak traced allocation of one steady-state call of each.
"""

import argparse
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

from mimi_cli.coreml import load_program


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def peak(function) -> int:
    tracemalloc.start()
    function()
    top = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return top


def compare(label: str, program, feeds: dict, rounds: int, repeat: int) -> None:
    plan = program.prepare()
    plan.run(feeds)
    program.predict(feeds)
    times = {"predict": [], "plan": []}
    for _ in range(rounds):  # alternate, so drift in the machine's speed hits both alike
        times["predict"].append(timed(lambda: [program.predict(feeds) for _ in range(repeat)]) / repeat)
        times["plan"].append(timed(lambda: [plan.run(feeds) for _ in range(repeat)]) / repeat)
    medians = {k: statistics.median(v) for k, v in times.items()}
    report = plan.report()
    print(f"{label}: predict {medians['predict'] * 1e3:.3f} ms, prepared {medians['plan'] * 1e3:.3f} ms "
          f"(× {medians['predict'] / medians['plan']:.2f} faster); peak allocation per call "
          f"{peak(lambda: program.predict(feeds)) / 1024:.0f} KiB vs {peak(lambda: plan.run(feeds)) / 1024:.1f} KiB; "
          f"{report['values']} values ({report['value_bytes'] / 1024:.0f} KiB) in {report['buffers']} buffers "
          f"({report['buffer_bytes'] / 1024:.0f} KiB), scratch {report['scratch_bytes'] / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("fixtures", nargs="?", default=str(Path(__file__).parents[2] / "shared" / "coreml-fixtures"))
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    root = Path(args.fixtures)
    rng = np.random.default_rng(0)
    silero = load_program(root / "silero-vad-v6-mlmodelc")
    feeds = {"audio_input": rng.standard_normal((1, 576)).astype(np.float32) * 0.1,
             "hidden_state": np.zeros((1, 128), np.float32), "cell_state": np.zeros((1, 128), np.float32)}
    compare("silero-vad window", silero, feeds, args.rounds, repeat=50)
    logmel = load_program(root / "whisper-logmel-8s-mlpackage", precision="fp32")
    compare("whisper log-mel 8 s", logmel, {"audio": rng.standard_normal(128000).astype(np.float32) * 0.1},
            args.rounds, repeat=2)


if __name__ == "__main__":
    main()
