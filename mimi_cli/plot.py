"""``mimi roundtrip --plot``: input and output log-mel spectrograms, and their difference, in one PNG.

matplotlib is optional (``pip install "mimi-cli[plot]"``) and imported only here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mimi_cli.errors import MimiError
from mimi_cli.fileio import atomic_output
from mimi_cli.metrics import log_mel, mel_filterbank

N_FFT, HOP, N_MELS = 1024, 256, 80


def _mel_band_edges(sample_rate: int) -> np.ndarray:
    """The ``N_MELS + 1`` band edges in Hz, halfway between neighbouring filter centres."""
    bank = mel_filterbank(sample_rate, N_FFT, N_MELS)
    centres = np.linspace(0, sample_rate / 2, N_FFT // 2 + 1)[bank.argmax(axis=1)]
    middle = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[0.0], middle, [sample_rate / 2]])


def plot_checks(samples: int, sample_rate: int):
    """What a plot needs, checked before any work: matplotlib (its pyplot is returned), and a window's worth of
    audio (``samples`` at ``sample_rate``)."""
    # Where HOME cannot be written (a container run as another user: HOME=/), matplotlib logs two warnings
    # about its config folder and makes a temporary one; the plot is the same: not the user's concern.
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise MimiError('--plot needs matplotlib: pip install "mimi-cli[plot]"') from None
    if samples < N_FFT:
        raise MimiError(f"--plot needs at least {N_FFT} samples ({N_FFT / sample_rate * 1000:.0f} ms) of audio")
    return plt


def plot_roundtrip(path: Path, original: np.ndarray, decoded: np.ndarray, sample_rate: int, title: str,
                   replace: bool = False) -> None:
    """Write the three spectrograms (dB, time in s, frequency in Hz on a mel axis) to ``path`` atomically."""
    n = min(len(original), len(decoded))
    plt = plot_checks(n, sample_rate)
    db_in = 20 * log_mel(original[:n], sample_rate, N_FFT, HOP, N_MELS)  # log10 magnitude → dB
    db_out = 20 * log_mel(decoded[:n], sample_rate, N_FFT, HOP, N_MELS)
    times = np.arange(db_in.shape[1] + 1) * HOP / sample_rate
    edges = _mel_band_edges(sample_rate)
    top = max(db_in.max(), db_out.max())
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True, constrained_layout=True)
    panels = ((db_in, "input", "magma", (top - 80, top)), (db_out, "decoded", "magma", (top - 80, top)),
              (db_out - db_in, "decoded − input", "RdBu_r", (-20, 20)))
    for ax, (values, label, cmap, (low, high)) in zip(axes, panels, strict=True):
        mesh = ax.pcolormesh(times, edges, values, cmap=cmap, vmin=low, vmax=high, shading="flat")
        ax.set_yscale("symlog", linthresh=1000, linscale=0.6)  # about a mel axis: linear to 1 kHz, log above
        ax.set_ylim(50, sample_rate / 2)
        ax.set_ylabel("frequency (Hz)")
        ax.set_title(label, loc="left", fontsize=10)
        fig.colorbar(mesh, ax=ax, label="dB", pad=0.01)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(title, fontsize=11)
    with atomic_output(path, replace) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
