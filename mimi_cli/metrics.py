"""Round-trip quality metrics in NumPy.

Mimi is trained with adversarial losses and does not preserve phase, so SI-SDR
of a good round trip is low even when it sounds right; the log-mel distance
follows perception better. Both are here to compare settings, not codecs.
"""

from __future__ import annotations

import warnings

import numpy as np


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (higher is better)."""
    reference = reference.astype(np.float64) - reference.mean()
    estimate = estimate.astype(np.float64) - estimate.mean()
    energy = np.dot(reference, reference)
    if energy == 0:
        return float("nan")
    target = np.dot(estimate, reference) / energy * reference
    noise = estimate - target
    return float(10 * np.log10(np.dot(target, target) / max(np.dot(noise, noise), 1e-20)))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular filters on the HTK mel scale, ``[n_mels, n_fft // 2 + 1]``."""
    def to_mel(hz):
        return 2595 * np.log10(1 + hz / 700)

    def to_hz(mel):
        return 700 * (10 ** (mel / 2595) - 1)

    edges = to_hz(np.linspace(0, to_mel(sample_rate / 2), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return np.maximum(0, np.minimum(rising, falling))


_FRAMES_AT_ONCE = 2048


def magnitude_spectrogram(pcm: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``|STFT|`` ``[n_fft // 2 + 1, frames]`` as ``scipy.signal.stft(..., boundary=None)`` gives it: frames
    from sample 0, the last one completed with zeros, a periodic Hann window, scaled by 1 / its sum.

    Written in NumPy because ``import scipy.signal`` takes 0.6–0.8 s, more than a short round trip's work::

        pcm     [0 ........................... N) 0 0 0   (zeros up to a whole hop)
        frames  [0, n_fft) [hop, hop + n_fft) ... [k·hop, k·hop + n_fft)
    """
    pcm = np.asarray(pcm, np.float64)  # [N], N >= n_fft
    padded = np.concatenate([pcm, np.zeros(-(len(pcm) - n_fft) % hop)])
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]  # [frames, n_fft], a view
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as scipy's get_window("hann", n_fft)
    spectrum = np.empty((n_fft // 2 + 1, len(frames)))
    # windowed copies of a block of frames at a time: of all at once, an hour's 340,000 frames would take 2.7 GB
    for start in range(0, len(frames), _FRAMES_AT_ONCE):
        block = frames[start:start + _FRAMES_AT_ONCE]
        spectrum[:, start:start + len(block)] = np.abs(np.fft.rfft(block * window, axis=-1)).T
    return spectrum / window.sum()


def log_mel(pcm: np.ndarray, sample_rate: int, n_fft: int = 1024, hop: int = 256, n_mels: int = 80) -> np.ndarray:
    """log10 mel magnitude spectrogram ``[n_mels, frames]`` (clamped at 1e-5) of at least ``n_fft`` samples."""
    spectrum = magnitude_spectrogram(pcm, n_fft, hop)  # [n_fft // 2 + 1, frames]
    return np.log10(np.maximum(mel_filterbank(sample_rate, n_fft, n_mels) @ spectrum, 1e-5))


def log_mel_distance(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    """Mean absolute difference of log10 mel spectrograms (80 bands, 1024-sample window): lower is better."""
    n = min(len(reference), len(estimate))
    if n < 1024:
        return float("nan")
    return float(np.mean(np.abs(log_mel(reference[:n], sample_rate) - log_mel(estimate[:n], sample_rate))))


def perceptual(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> dict[str, float | None]:
    """Wide-band PESQ (ITU-T P.862.2, via ``pesq``, at 16 kHz) and STOI (via ``pystoi``), the scores papers
    cite, when the metrics extra is installed (``pip install "mimi-cli[metrics]"``); each is left out when
    its library is not installed, and None when undefined (silence, too short)."""
    from mimi_cli.audio import resample

    try:
        from pesq import PesqError, pesq
    except ImportError:
        pesq = None
    try:
        from pystoi import stoi
    except ImportError:
        stoi = None
    if pesq is None and stoi is None:
        return {}  # and nothing resampled: its `import scipy.signal` alone takes 0.6–0.8 s
    scores: dict[str, float | None] = {}
    reference16, estimate16 = resample(reference, sample_rate, 16000), resample(estimate, sample_rate, 16000)
    if pesq is not None:
        try:
            scores["pesq_wb"] = float(pesq(16000, reference16.astype(np.float64), estimate16.astype(np.float64), "wb"))
        except (PesqError, ValueError, ArithmeticError, IndexError):  # too short, silent: undefined
            scores["pesq_wb"] = None
    if stoi is not None:
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pystoi warns, then returns 1e-5, for clips under 30 frames
                value = float(stoi(reference16, estimate16, 16000, extended=False))
        except (ValueError, ArithmeticError, IndexError):  # too short or silent for its frames: undefined
            value = float("nan")
        # STOI is a mean correlation: unrelated signals score about 0, sometimes below, which is a score.
        # Undefined: a silent reference (pystoi gives 0.0: nothing there to understand), pystoi's stand-in
        # for "too few frames" (exactly 1e-5), NaN
        defined = np.isfinite(value) and value != 1e-5 and np.any(reference16)
        scores["stoi"] = value if defined else None
    return scores
