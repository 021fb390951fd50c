"""Peak resident memory of `mimi encode` / `mimi decode`, batch and --stream, and of `mimi roundtrip`
(batch, with its scores where the metrics extra is installed), on long inputs.

Generates its own input (a speech-like signal: the sample clip tiled, or noise if
it is absent), runs each command as a child process and reads that child's peak
RSS from the kernel (os.wait4). Weights: realistic random weights of the
released size, written once to a temporary file (their values do not change
memory or speed).

    python benchmarks/memory.py                      # 60 min --stream; batch at 1 and 5 min
    python benchmarks/memory.py --stream-minutes 10 --batch-minutes 1
    python benchmarks/memory.py --stream-minutes 0 --batch-minutes 3 --channels 8 --rate 48000 --split
                                                     # many channels, each its own code stream, decoded at 48 kHz
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent


def make_input(path: Path, minutes: float, channels: int = 1, rate: int = 24000) -> None:
    """A 16-bit WAV (24 kHz mono by default; channel c is the signal c·0.1 s later), written in blocks so this
    script stays small too."""
    from mimi_cli.audio import resample

    clip = REPO / "sample_audio" / "speech_16k_mono.wav"
    if clip.exists():
        pcm, clip_rate = sf.read(clip, dtype="float32")
        block = resample(pcm, clip_rate, rate)
    else:
        block = (0.1 * np.random.default_rng(0).standard_normal(rate * 30)).astype(np.float32)
    block = np.stack([np.roll(block, c * rate // 10) for c in range(channels)], axis=1)
    total = int(minutes * 60 * rate)
    with sf.SoundFile(path, "w", rate, channels, subtype="PCM_16") as f:
        for start in range(0, total, len(block)):
            f.write(block[: total - start])


def peak_rss(args: list[str], env: dict) -> tuple[float, float, int]:
    """(peak RSS in MB, wall seconds, exit code) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "mimi_cli", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, time.perf_counter() - start, process.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream-minutes", type=float, default=60)
    parser.add_argument("--batch-minutes", type=float, nargs="*", default=[1, 5])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels", type=int, default=1, help="of the input (default 1)")
    parser.add_argument("--rate", type=int, default=24000, help="of the input, and of decode's output")
    parser.add_argument("--split", action="store_true", help="encode each channel on its own (--channels split)")
    args = parser.parse_args()

    from safetensors.numpy import save_file

    from mimi_cli.models.mimi.synthetic import random_state

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        save_file(random_state(), str(tmp / "weights.safetensors"))
        env = {**os.environ, "MIMI_WEIGHTS": str(tmp / "weights.safetensors"), "HF_HUB_OFFLINE": "1"}
        runs = [(m, []) for m in args.batch_minutes] + [(args.stream_minutes, ["--stream"])] * (args.stream_minutes > 0)
        split, rate = ["--channels", "split"] * args.split, ["--sample-rate", str(args.rate)] * (args.rate != 24000)
        print("| mode | audio | command | peak RSS | wall time | exit |")
        print("|---|---:|---|---:|---:|---:|")
        for minutes, flags in runs:
            wav, codes, out = tmp / f"in{minutes}.wav", tmp / f"c{minutes}.npz", tmp / f"o{minutes}.wav"
            if not wav.exists():
                make_input(wav, minutes, args.channels, args.rate)
            mode = "stream" if flags else "batch"
            commands = [["encode", str(wav), "-o", str(codes), "-f", *split],
                        ["decode", str(codes), "-o", str(out), "-f", *rate]]
            if not flags:
                commands.append(["roundtrip", str(wav), "--json", *split])
            for command in commands:
                rss, wall, code = peak_rss([*command, *flags, "-q", "--threads", str(args.threads)], env)
                print(f"| {mode} | {minutes:g} min | {command[0]} | {rss:,.0f} MB | {wall:,.0f} s | {code} |",
                      flush=True)


if __name__ == "__main__":
    main()
