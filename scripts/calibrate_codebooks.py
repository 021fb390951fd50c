"""Measure what each quantizer level receives, for realistic random codebooks.

Writes ``mimi_cli/models/mimi/codebook_stats.npz`` (per-level mean and std,
``[32, 256]`` each). Run once after changing the random-weight recipe in
``mimi_cli/models/mimi/synthetic.py``, then regenerate the golden files.

Level by level: the statistics of the semantic projection (level 0) and of the
acoustic projection (level 1) are measured on speech; level k's codebook is
drawn from them exactly as ``synthetic.random_state`` will draw it; the speech
is quantized with it and level k+1 is measured on the remaining residual.

    python scripts/calibrate_codebooks.py [--seed 0]
"""

import argparse

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from mimi_cli.core import nearest_code
from mimi_cli.models.mimi.config import MimiConfig
from mimi_cli.models.mimi.model import Mimi
from mimi_cli.models.mimi.synthetic import STATS_PATH, codebook_prefix, codebook_tensors, random_state


def speech_24k() -> np.ndarray:
    pcm, rate = sf.read("sample_audio/speech_16k_mono.wav", dtype="float32")
    return resample_poly(pcm, 3, 2).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = MimiConfig()
    levels, dim = config.num_codebooks, config.codebook_dim
    unit = (np.zeros((levels, dim), np.float32), np.ones((levels, dim), np.float32))
    model = Mimi.from_state_dict(random_state(config, args.seed, stats=unit), config)
    latent = model.encode_latent(speech_24k())  # [1, 512, F]
    semantic = model.quantizer.semantic.project_in(latent).reshape(-1, dim)
    residual = model.quantizer.acoustic.project_in(latent).reshape(-1, dim)
    mean, std = np.zeros((levels, dim), np.float32), np.zeros((levels, dim), np.float32)
    for level in range(levels):
        x = semantic if level == 0 else residual
        mean[level], std[level] = x.mean(axis=0), x.std(axis=0)
        if level > 0:
            prefix = codebook_prefix(level)
            tensors = codebook_tensors(args.seed, prefix, config.codebook_size, mean[level], std[level])
            embedding = tensors[prefix + "embedding_sum"] / tensors[prefix + "cluster_usage"][:, None]
            residual = residual - embedding[nearest_code(residual, embedding)]
        print(f"level {level:2d}: mean |μ| {np.abs(mean[level]).mean():.3f}, mean σ {std[level].mean():.3f}")
    np.savez(STATS_PATH, mean=mean, std=std)
    print(f"wrote {STATS_PATH}")


if __name__ == "__main__":
    main()
