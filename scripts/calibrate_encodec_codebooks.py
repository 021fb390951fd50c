"""Measure what each EnCodec quantizer level receives, for realistic random codebooks.

Writes ``mimi_cli/models/encodec/codebook_stats.npz`` (per-level mean and std,
``[32, 128]`` each). Run once after changing the random-weight recipe in
``mimi_cli/models/encodec/synthetic.py``, then regenerate the EnCodec golden file
(``scripts/make_encodec_golden.py``).

Level by level, as in ``calibrate_codebooks.py`` for Mimi: level k's statistics are
measured on the residual of speech, its codebook is drawn from them exactly as
``synthetic.random_state`` will draw it, and the speech is quantized with it.

    python scripts/calibrate_encodec_codebooks.py [--seed 0]
"""

import argparse

import numpy as np
from calibrate_codebooks import speech_24k

from mimi_cli.core import nearest_code
from mimi_cli.models.encodec.config import EncodecConfig
from mimi_cli.models.encodec.model import Encodec
from mimi_cli.models.encodec.synthetic import STATS_PATH, random_state
from mimi_cli.models.synthetic import codebook_entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = EncodecConfig()
    levels, dim = config.num_codebooks, config.dimension
    unit = (np.zeros((levels, dim), np.float32), np.ones((levels, dim), np.float32))
    model = Encodec.from_state_dict(random_state(config, args.seed, stats=unit), config)
    residual = model.encode_latent(speech_24k())[0].T  # [F, 128]
    mean, std = np.zeros((levels, dim), np.float32), np.zeros((levels, dim), np.float32)
    for level in range(levels):
        mean[level], std[level] = residual.mean(axis=0), residual.std(axis=0)
        name = f"quantizer.layers.{level}.codebook.embed"
        embedding = codebook_entries(args.seed, name, config.codebook_size, mean[level], std[level])
        residual = residual - embedding[nearest_code(residual, embedding, squared=True)]
        print(f"level {level:2d}: mean |μ| {np.abs(mean[level]).mean():.3f}, mean σ {std[level].mean():.3f}")
    np.savez(STATS_PATH, mean=mean, std=std)
    print(f"wrote {STATS_PATH}")


if __name__ == "__main__":
    main()
