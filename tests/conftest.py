"""Shared fixtures: golden cases, models with realistic random weights, a weights file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mimi_cli.models.mimi import Mimi, MimiConfig
from mimi_cli.models.mimi.synthetic import random_state

TESTS = Path(__file__).parent
REPO = TESTS.parent
GOLDEN = TESTS / "golden"
SAMPLE_AUDIO = REPO / "sample_audio"
SHARED = REPO.parent / "shared"

# A small config with every structural feature of the real one (2 strides, residual
# blocks, attention window, split RVQ), for fast tests of behaviour rather than parity.
SMALL = MimiConfig(
    frame_rate=24000 / 48, dimension=32, n_filters=4, ratios=(4, 3, 2), num_layers=2, num_heads=4,
    dim_feedforward=64, context=6, codebook_size=64, codebook_dim=8, num_codebooks=6,
)


@pytest.fixture(scope="session")
def full_state() -> dict[str, np.ndarray]:
    return random_state(MimiConfig(), seed=0)


@pytest.fixture(scope="session")
def full_model(full_state) -> Mimi:
    return Mimi.from_state_dict(full_state)


@pytest.fixture(scope="session")
def small_model() -> Mimi:
    return Mimi.from_state_dict(random_state(SMALL, seed=0), SMALL)


@pytest.fixture(scope="session")
def weights_file(full_state, tmp_path_factory) -> Path:
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("weights") / "mimi.safetensors"
    save_file(full_state, str(path))
    return path


def golden_input(case) -> np.ndarray:
    pcm = case["pcm"]
    return pcm.astype(np.float32) / 32768 if pcm.dtype == np.int16 else pcm


def run(*args, weights: Path | None = None, env_extra: dict | None = None, cwd: Path | None = None):
    env = {k: v for k, v in os.environ.items() if k != "MIMI_WEIGHTS"}
    env.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env_extra or {})})
    if weights is not None:
        env["MIMI_WEIGHTS"] = str(weights)
    return subprocess.run([sys.executable, "-m", "mimi_cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
