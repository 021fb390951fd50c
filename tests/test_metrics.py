"""Round-trip metrics against SciPy and float64 formulas."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.signal import stft

from mimi_cli.metrics import log_mel, log_mel_distance, magnitude_spectrogram, mel_filterbank, si_sdr


@pytest.mark.parametrize(("length", "n_fft", "hop"), [(1024, 1024, 256), (1025, 1024, 256), (5000, 1024, 256),
                                                     (24000, 1024, 256), (999, 512, 128), (777, 64, 50),
                                                     (2048 * 256 + 1500, 1024, 256)])  # two blocks)
def test_spectrogram_is_scipys_stft(length, n_fft, hop):
    x = np.random.default_rng(length).standard_normal(length).astype(np.float32)
    _, _, expected = stft(x.astype(np.float64), nperseg=n_fft, noverlap=n_fft - hop, boundary=None)
    got = magnitude_spectrogram(x, n_fft, hop)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, np.abs(expected), rtol=1e-12, atol=1e-15)


def test_log_mel_and_its_distance():
    rate = 24000
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    mel = log_mel(tone, rate)
    assert mel.shape == (80, 1 + (rate - 1024 + 255) // 256)
    # 440 Hz lands in the band whose triangle peaks nearest it
    centres = np.argmax(mel_filterbank(rate, 1024, 80), axis=1) * rate / 1024
    assert abs(centres[np.argmax(mel[:, 10])] - 440) < 60
    assert log_mel_distance(tone, tone, rate) == 0
    noise = np.random.default_rng(1).uniform(-0.5, 0.5, rate)  # every band far above the 1e-5 floor
    assert log_mel_distance(noise, 0.5 * noise, rate) == pytest.approx(np.log10(2), rel=1e-9)
    assert np.isnan(log_mel_distance(tone[:1000], tone[:1000], rate))


def test_log_mel_goes_a_block_of_frames_at_a_time():
    """A 20-minute round trip's log-mel took 1.5 GB: the whole [513, frames] spectrogram, and a scaled copy of
    it. Now each block of 2,048 frames goes through the mel bank as it is made: the same values (of the
    whole spectrogram's), and nothing spectrogram-sized at once."""
    import tracemalloc

    rate, n = 24000, 2048 * 256 * 20 + 999  # 20 blocks of frames and a part
    x = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    whole = np.log10(np.maximum(mel_filterbank(rate, 1024, 80) @ magnitude_spectrogram(x, 1024, 256), 1e-5))
    tracemalloc.start()
    try:
        mel = log_mel(x, rate)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(mel, whole, rtol=1e-12, atol=1e-12)
    spectrogram = 513 * mel.shape[1] * 8  # 168 MB
    assert peak < 2 * n * 8 + mel.nbytes + 64 * 2**20 < 2 * spectrogram + 2 * n * 8, (peak, spectrogram)


def test_si_sdr_against_its_float64_definition():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(8000)
    reference -= reference.mean()
    noise = rng.standard_normal(8000)
    noise -= noise.mean()
    noise -= noise @ reference / (reference @ reference) * reference  # orthogonal to the reference
    noise *= np.linalg.norm(reference) / np.linalg.norm(noise) / 10  # 20 dB below it
    estimate = 3 * reference + 3 * noise  # scale does not count
    assert si_sdr(reference, estimate) == pytest.approx(20, abs=1e-9)
    assert np.isnan(si_sdr(np.zeros(10), np.ones(10)))


def test_metrics_do_not_import_scipy_signal():
    """`import scipy.signal` costs 0.6–0.8 s, more than a short round trip's work (docs/performance.md). Without
    the metrics extra (its two libraries made unimportable here), nothing is resampled to 16 kHz for them."""
    code = ("import sys, numpy as np; sys.modules['pesq'] = sys.modules['pystoi'] = None; "
            "from mimi_cli.metrics import log_mel_distance, perceptual, si_sdr; "
            "x = np.random.default_rng(0).standard_normal(4800); log_mel_distance(x, x, 24000); si_sdr(x, x); "
            "assert perceptual(x, x, 24000) == {}; print('scipy.signal' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout == "False\n"


def test_pesq_beyond_ten_seconds_is_pesqs_own_score_or_undefined_never_a_crash():
    """The pesq library writes past its arrays of 50 utterances: 70 half-second stretches of speech with
    silence between them (70 s) crashed the process with SIGSEGV, and with it `mimi roundtrip`. Beyond 10 s
    (where 50 utterances cannot fit) pesq runs in a child process: the same score where it gives one."""
    pesq = pytest.importorskip("pesq")
    from conftest import speech_at

    from mimi_cli.metrics import PESQ_IN_PROCESS_SAMPLES, pesq_wb

    speech = speech_at(16000)
    rng = np.random.default_rng(1)

    def noisy(x):
        return (x + rng.standard_normal(len(x)) * 0.01).astype(np.float32)

    problems: list[str] = []
    long = np.tile(speech, 2)  # 58 s: pesq copes, here in the child
    assert len(long) > PESQ_IN_PROCESS_SAMPLES
    degraded = noisy(long)
    expected = pesq.pesq(16000, long.astype(np.float64), degraded.astype(np.float64), "wb")
    assert pesq_wb(long, degraded, problems) == expected and problems == []
    half, many = 8000, []
    for i in range(70):  # 70 utterances
        many += [speech[i * half % (len(speech) - half):][:half], np.zeros(half, np.float32)]
    many = np.concatenate(many)
    score = pesq_wb(many, noisy(many), problems)  # this process lives on, whatever the library does
    if score is None:  # this build of pesq crashes there (SIGSEGV here), and says so in one line
        assert len(problems) == 1 and problems[0].startswith("PESQ is undefined: the pesq library crashed (SIG")
        assert problems[0].endswith("on 70 s of audio (its reference code holds 50 utterances, and long speech "
                                    "has more): measure PESQ on shorter clips")
    else:
        assert problems == []


def test_pesq_without_a_process_for_its_child_is_undefined_not_the_files_failure(monkeypatch):
    """Beyond 10 s PESQ runs in a child process: where the system refuses one (ulimit -u), the score is
    undefined, said in one line, and the round trip's other figures stand. Before, the file failed with
    "Resource temporarily unavailable"."""
    import errno

    from mimi_cli import metrics

    def refused(*args, **kwargs):
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "run", refused)
    long = np.zeros(metrics.PESQ_IN_PROCESS_SAMPLES + 16000, np.float32)
    problems: list[str] = []
    assert metrics.pesq_wb(long, long, problems) is None
    assert problems == ["PESQ is undefined: its child process for 11 s of audio could not start (a limit on this "
                        "user's processes and threads (ulimit -u, or a container's pids limit) or on memory "
                        "(ulimit -v) is reached)"]
