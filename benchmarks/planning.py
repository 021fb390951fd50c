"""How long a run over a long list plans before any work: listing the list, checking every output, and, to
resume (--skip-existing), reading every existing output back (each must be what the run would write).

    python benchmarks/planning.py [--lines 20000] [--rounds 3] [--tree OLD_CHECKOUT ...]

Builds, in a temporary folder, ``--lines`` tiny WAV files, a plain list of them and, for the resume, a codes
file per line under ``out/`` (one file of 8 codebooks × 1 frame, copied; a fresh run writes to ``new/``).
Each round plans both runs in a fresh process per source tree (this checkout, then each ``--tree``,
alternating), as ``mimi encode --inputs-from list.txt -o out/ [--skip-existing]`` calls ``batch.plan``;
medians of the rounds, and µs per line.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent.parent

ONE_PLAN = """
import sys, time
from mimi_cli.batch import Job, plan
from mimi_cli.pipeline import Settings
resume = sys.argv[1] == "resume"
start = time.perf_counter()
planned = plan(Job(Settings("encode"), (), "out/" if resume else "new/", manifests=("list.txt",),
                   skip_existing=resume))
assert sum(t.skip for t in planned.tasks) == (len(planned.tasks) if resume else 0)
print(time.perf_counter() - start)
"""


def build(folder: Path, lines: int) -> None:
    from mimi_cli.codes import CodesFile
    from mimi_cli.models import codec_spec

    config = codec_spec("mimi").config()
    sf.write(folder / "clip.wav", np.zeros(240, np.float32), 24000)
    CodesFile.from_codes(np.zeros((1, 8, 1), np.int64), config, config.frame_size, 24000, 1, "",
                         False).save(folder / "codes.npz")
    (folder / "clips").mkdir()
    (folder / "out" / "clips").mkdir(parents=True)
    for i in range(lines):
        shutil.copyfile(folder / "clip.wav", folder / "clips" / f"{i:07d}.wav")
        shutil.copyfile(folder / "codes.npz", folder / "out" / "clips" / f"{i:07d}.npz")
    (folder / "list.txt").write_text("".join(f"clips/{i:07d}.wav\n" for i in range(lines)))


def plan_once(tree: Path, folder: Path, kind: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", ONE_PLAN, kind], cwd=folder, env=env, capture_output=True,
                          text=True)
    if done.returncode:
        sys.exit(f"planning with {tree} failed: {done.stderr.strip()}")
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], help="another checkout to compare with")
    args = parser.parse_args()
    trees = [HERE, *map(Path, args.tree)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build(folder, args.lines)
        times = {(tree, kind): [] for tree in trees for kind in ("fresh", "resume")}
        for _ in range(args.rounds):
            for kind in ("fresh", "resume"):
                for tree in trees:
                    times[tree, kind].append(plan_once(tree, folder, kind))
    for (tree, kind), seconds in times.items():
        median = statistics.median(seconds)
        print(f"{str(tree):40} {kind:6} median {median:6.2f} s  {median / args.lines * 1e6:6.0f} µs/line  "
              f"(rounds: {', '.join(f'{s:.2f}' for s in seconds)})")


if __name__ == "__main__":
    main()
