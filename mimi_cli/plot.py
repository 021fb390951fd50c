"""``mimi roundtrip --plot``: input and output log-mel spectrograms, and their difference, in one PNG (with
``--channels split``, a column of the three for each channel).

matplotlib is optional (``pip install "mimi-cli[plot]"``) and imported only here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mimi_cli.errors import MimiError, needs_extra
from mimi_cli.fileio import atomic_output
from mimi_cli.metrics import log_mel, mel_filterbank

N_FFT, HOP, N_MELS = 1024, 256, 80
PLOT_SUFFIXES = (".png", ".svg", ".pdf")  # the formats an image is written in, named by its suffix
MAX_COLUMNS = 8  # channels drawn side by side, 7 inches each


def _mel_band_edges(sample_rate: int) -> np.ndarray:
    """The ``N_MELS + 1`` band edges in Hz, halfway between neighbouring filter centres."""
    bank = mel_filterbank(sample_rate, N_FFT, N_MELS)
    centres = np.linspace(0, sample_rate / 2, N_FFT // 2 + 1)[bank.argmax(axis=1)]
    middle = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[0.0], middle, [sample_rate / 2]])


def plot_checks(samples: int, sample_rate: int, channels: int = 1):
    """What a plot needs, checked before any work: matplotlib (its pyplot is returned), a window's worth of
    audio (``samples`` at ``sample_rate``), and few enough ``channels`` to draw side by side."""
    # Where HOME cannot be written (a container run as another user: HOME=/), matplotlib logs two warnings
    # about its config folder and makes a temporary one; the plot is the same: not the user's concern.
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    with needs_extra('--plot needs matplotlib: pip install "mimi-cli[plot]"', "matplotlib"):
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    if samples < N_FFT:
        raise MimiError(f"--plot needs at least {N_FFT} samples ({N_FFT / sample_rate * 1000:.0f} ms) of audio")
    if channels > MAX_COLUMNS:
        raise MimiError(f"--plot draws at most {MAX_COLUMNS} channels side by side, and the file has {channels}: "
                        "leave --plot out (the metrics of each are in --json), or mix them (--channels mix)")
    return plt


def plot_roundtrip(path: Path, original: np.ndarray, decoded: np.ndarray, sample_rate: int, title: str,
                   replace: bool = False) -> None:
    """Write the three spectrograms (dB, time in s, frequency in Hz on a mel axis) of each channel of
    ``original`` and ``decoded`` (``[N]``, or ``[C, N]``: a column each) to ``path`` atomically."""
    original, decoded = np.atleast_2d(original), np.atleast_2d(decoded)
    channels, n = len(original), min(original.shape[1], decoded.shape[1])
    plt = plot_checks(n, sample_rate, channels)
    db_in = [20 * log_mel(x[:n], sample_rate, N_FFT, HOP, N_MELS) for x in original]  # log10 magnitude → dB
    db_out = [20 * log_mel(y[:n], sample_rate, N_FFT, HOP, N_MELS) for y in decoded]
    times = np.arange(db_in[0].shape[1] + 1) * HOP / sample_rate
    edges = _mel_band_edges(sample_rate)
    top = max(max(d.max() for d in db_in), max(d.max() for d in db_out))  # one colour scale for every channel
    fig, axes = plt.subplots(3, channels, figsize=(4 + 7 * channels, 9), sharex=True, squeeze=False,
                             constrained_layout=True)
    for c in range(channels):
        named = f"channel {c + 1}: " if channels > 1 else ""
        panels = ((db_in[c], "input", "magma", (top - 80, top)), (db_out[c], "decoded", "magma", (top - 80, top)),
                  (db_out[c] - db_in[c], "decoded − input", "RdBu_r", (-20, 20)))
        for ax, (values, label, cmap, (low, high)) in zip(axes[:, c], panels, strict=True):
            # rasterized: in an SVG or PDF the mesh is one image at the figure's dpi; as vectors it was a path
            # per cell, 80 bands × 94 frames a second × 3 panels: 1.3 GB of SVG for 5 minutes of audio
            mesh = ax.pcolormesh(times, edges, values, cmap=cmap, vmin=low, vmax=high, shading="flat",
                                 rasterized=True)
            ax.set_yscale("symlog", linthresh=1000, linscale=0.6)  # about a mel axis: linear to 1 kHz, log above
            ax.set_ylim(50, sample_rate / 2)
            ax.set_ylabel("frequency (Hz)")
            ax.set_title(named + label, loc="left", fontsize=10)
            fig.colorbar(mesh, ax=ax, label="dB", pad=0.01)
        axes[-1, c].set_xlabel("time (s)")
    fig.suptitle(title, fontsize=11, parse_math=False)  # a file's name as written: "$5 and $6" is no TeX
    with atomic_output(path, replace) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
