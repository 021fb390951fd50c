"""Round-trip quality metrics in NumPy.

Mimi is trained with adversarial losses and does not preserve phase, so SI-SDR
of a good round trip is low even when it sounds right; the log-mel distance
follows perception better. Both are here to compare settings, not codecs.
"""

from __future__ import annotations

import errno
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mimi_cli.errors import TASK_LIMIT, os_reason

# What scoring a round trip takes, per second of audio (24 kHz), on top of encoding and decoding it: STOI's
# frames at 16 kHz (pystoi, about 1.9 MB), SI-SDR's float64 copies (0.55 MB), the arrays held for them.
# Measured: a 10 min round trip took 2.6 GB, 30 min 6.1 GB, where encoding took 0.8 and 1.3 (docs/performance.md).
BYTES_PER_SECOND = 2.5e6


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
    frames = _frames(pcm, n_fft, hop)
    spectrum = np.empty((n_fft // 2 + 1, len(frames)))
    for start, block in _magnitudes(frames):
        spectrum[:, start:start + block.shape[1]] = block
    return spectrum


def _frames(pcm: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """The frames of :func:`magnitude_spectrogram`, ``[frames, n_fft]``: a view of the audio, zero-padded."""
    pcm = np.asarray(pcm, np.float64)  # [N], N >= n_fft
    padded = np.concatenate([pcm, np.zeros(-(len(pcm) - n_fft) % hop)])
    return np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]


def _magnitudes(frames: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``|STFT|`` of ``frames`` a block at a time: ``(first frame, [n_fft // 2 + 1, block])``. Of all at once, an
    hour's 340,000 frames would take 2.7 GB windowed, and 1.4 GB as a spectrogram."""
    n_fft = frames.shape[1]
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as scipy's get_window("hann", n_fft)
    for start in range(0, len(frames), _FRAMES_AT_ONCE):
        block = frames[start:start + _FRAMES_AT_ONCE]
        yield start, np.abs(np.fft.rfft(block * window, axis=-1)).T / window.sum()


def log_mel(pcm: np.ndarray, sample_rate: int, n_fft: int = 1024, hop: int = 256, n_mels: int = 80) -> np.ndarray:
    """log10 mel magnitude spectrogram ``[n_mels, frames]`` (clamped at 1e-5) of at least ``n_fft`` samples,
    made a block of frames at a time: never the whole ``[n_fft // 2 + 1, frames]`` spectrogram."""
    bank = mel_filterbank(sample_rate, n_fft, n_mels)  # [n_mels, n_fft // 2 + 1]
    frames = _frames(pcm, n_fft, hop)
    mel = np.empty((n_mels, len(frames)))
    for start, block in _magnitudes(frames):
        mel[:, start:start + block.shape[1]] = bank @ block
    return np.log10(np.maximum(mel, 1e-5, out=mel), out=mel)


def log_mel_distance(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> float:
    """Mean absolute difference of log10 mel spectrograms (80 bands, 1024-sample window): lower is better."""
    n = min(len(reference), len(estimate))
    if n < 1024:
        return float("nan")
    return float(np.mean(np.abs(log_mel(reference[:n], sample_rate) - log_mel(estimate[:n], sample_rate))))


# PESQ's reference code, which the pesq package wraps, keeps its list of utterances in arrays of 50 and writes
# past them when the audio has more: a segmentation fault (seen at 175 s of read speech), or memory silently
# overwritten. An utterance is at least 50 VAD frames of speech and a silent one, 51 × 4 ms at 16 kHz, so
# audio of at most 10 s (50 × 204 ms = 10.2 s) cannot overflow them; longer audio is scored in a child process.
PESQ_IN_PROCESS_SAMPLES = 10 * 16000


def pesq_wb(reference16: np.ndarray, estimate16: np.ndarray, problems: list[str] | None = None) -> float | None:
    """Wide-band PESQ of two 16 kHz signals, None where undefined (silence, too short). Beyond 10 s it runs in a
    child process: if the pesq library crashes there, the score is None and ``problems`` gets a line saying so."""
    import subprocess
    import sys

    if len(reference16) <= PESQ_IN_PROCESS_SAMPLES or not sys.executable:
        return _pesq_score(reference16, estimate16)
    pair = np.stack([reference16, estimate16]).astype(np.float64)  # float64, as the in-process call gives pesq
    here = str(Path(__file__).resolve().parents[1])  # this mimi_cli's folder: last on the path, for a checkout
    code = f"import sys; sys.path.append({here!r}); from mimi_cli.metrics import _pesq_child; _pesq_child()"
    seconds = f"{len(reference16) / 16000:.0f} s of audio"
    try:
        child = subprocess.run([sys.executable, "-c", code], input=memoryview(pair.reshape(-1)).cast("B"),
                               capture_output=True)  # the bytes sent, not copied
    except OSError as exc:  # no process to be had (ulimit -u, memory): no score, and the round trip's others stand
        if problems is not None:
            reason = TASK_LIMIT if exc.errno == errno.EAGAIN else os_reason(exc)
            problems.append(f"PESQ is undefined: its child process for {seconds} could not start ({reason})")
        return None
    said = child.stdout.decode(errors="replace").strip()
    if child.returncode == 0 and said:
        return None if said == "undefined" else float(said)
    if problems is not None:
        last = (child.stderr.decode(errors="replace").strip().splitlines() or ["no reason given"])[-1]
        problems.append("PESQ is undefined: " + (
            f"the pesq library crashed ({_signal_name(-child.returncode)}) on {seconds} (its reference code holds "
            "50 utterances, and long speech has more): measure PESQ on shorter clips" if child.returncode < 0
            else f"its child process failed on {seconds} ({last})"))
    return None


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _pesq_score(reference16: np.ndarray, estimate16: np.ndarray) -> float | None:
    from pesq import PesqError, pesq

    try:
        return float(pesq(16000, reference16.astype(np.float64), estimate16.astype(np.float64), "wb"))
    except (PesqError, ValueError, ArithmeticError, IndexError):  # too short, silent: undefined
        return None


def _pesq_child() -> None:
    """``pesq_wb`` in a child process: the two signals on standard input (float64 ``[2, N]``); prints the score,
    or "undefined"."""
    import sys

    score = _pesq_score(*np.frombuffer(sys.stdin.buffer.read(), np.float64).reshape(2, -1))
    print("undefined" if score is None else repr(score))


def perceptual(reference: np.ndarray, estimate: np.ndarray, sample_rate: int,
               problems: list[str] | None = None) -> dict[str, float | None]:
    """Wide-band PESQ (ITU-T P.862.2, via ``pesq``, at 16 kHz) and STOI (via ``pystoi``), the scores papers
    cite, when the metrics extra is installed (``pip install "mimi-cli[metrics]"``); each is left out when
    its library is not installed, and None when undefined (silence, too short, or PESQ's library crashing on
    long audio: then ``problems`` gets a line, see :func:`pesq_wb`)."""
    import importlib.util

    from mimi_cli.audio import resample, scipy_signal

    try:
        import pesq
    except ModuleNotFoundError:  # (not installed; an ImportError of another kind is the run's: no room, say)
        pesq = None
    stoi = None
    if importlib.util.find_spec("pystoi") is not None:
        scipy_signal()  # which pystoi loads: with room for it
        from pystoi import stoi
    if pesq is None and stoi is None:
        return {}  # and nothing resampled: its `import scipy.signal` alone takes 0.6–0.8 s
    scores: dict[str, float | None] = {}
    reference16, estimate16 = resample(reference, sample_rate, 16000), resample(estimate, sample_rate, 16000)
    if pesq is not None:
        scores["pesq_wb"] = pesq_wb(reference16, estimate16, problems)
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
