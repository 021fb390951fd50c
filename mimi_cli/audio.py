"""Reading, converting and writing audio files (soundfile + scipy.signal)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_cli.errors import InvalidAudioError
from mimi_cli.fileio import atomic_output


@dataclass
class Audio:
    """Audio as read from a file: float32 samples ``[T, channels]`` and their rate."""

    samples: np.ndarray
    sample_rate: int

    @property
    def channels(self) -> int:
        return self.samples.shape[1]

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate


def read_audio(path: Path) -> Audio:
    """Read anything libsndfile reads (WAV, FLAC, OGG, MP3, ...), with a clear error otherwise."""
    import soundfile as sf

    if not path.exists():
        raise InvalidAudioError(f"{path} does not exist")
    if path.is_dir():
        raise InvalidAudioError(f"{path} is a directory; give an audio file")
    if path.stat().st_size == 0:
        raise InvalidAudioError(f"{path} is empty (0 bytes)")
    try:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise InvalidAudioError(
            f"cannot read {path} as audio ({exc}); give a WAV, FLAC, OGG or MP3 file"
        ) from None
    _check_wav_complete(path)
    if samples.shape[0] == 0:
        raise InvalidAudioError(f"{path} contains no audio samples")
    if not np.all(np.isfinite(samples)):
        raise InvalidAudioError(f"{path} contains NaN or Inf samples")
    return Audio(samples, rate)


def _check_wav_complete(path: Path) -> None:
    """Refuse a WAV file whose data chunk is cut short.

    libsndfile silently reads whatever part of a truncated WAV is there; we
    compare the size the ``data`` chunk announces with the bytes present.
    Sizes 0 and 0xFFFFFFFF mean "unknown" (written by streaming tools) and pass.
    """
    with open(path, "rb") as f:
        if f.read(12)[:4] != b"RIFF":
            return
        file_size = path.stat().st_size
        while True:
            header = f.read(8)
            if len(header) < 8:
                return
            chunk_id, size = header[:4], int.from_bytes(header[4:], "little")
            if chunk_id == b"data":
                present = file_size - f.tell()
                if size not in (0, 0xFFFFFFFF) and size > present:
                    raise InvalidAudioError(f"{path} is truncated: its header announces {size} bytes of audio, "
                                            f"the file holds {present}; re-copy or re-export it")
                return
            f.seek(size + (size & 1), 1)  # chunks are padded to an even size


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis (scipy ``resample_poly``), float32 out."""
    if from_rate == to_rate:
        return pcm.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(from_rate, to_rate)
    return resample_poly(pcm, to_rate // g, from_rate // g, axis=-1).astype(np.float32)


def to_mono(audio: Audio, sample_rate: int) -> np.ndarray:
    """Downmix (channel mean) and resample to ``sample_rate``: float32 ``[N]``."""
    mono = audio.samples.mean(axis=1) if audio.channels > 1 else audio.samples[:, 0]
    return resample(mono, audio.sample_rate, sample_rate)


def write_audio(path: Path, pcm: np.ndarray, sample_rate: int) -> int:
    """Write mono float audio atomically; the format follows the extension (WAV, FLAC, OGG...).

    Samples beyond [-1, 1] are clipped (integer formats would wrap them);
    returns how many were.
    """
    import soundfile as sf

    file_format = audio_format(path)
    clipped = int(np.count_nonzero(np.abs(pcm) > 1))
    with atomic_output(path) as tmp:
        sf.write(tmp, np.clip(pcm, -1, 1), sample_rate, format=file_format)
    return clipped


def audio_format(path: Path) -> str:
    """The soundfile format name for ``path``'s extension, or an error naming the usable ones."""
    import soundfile as sf

    name = path.suffix.lstrip(".").upper()
    if not name or name not in sf.available_formats():
        raise InvalidAudioError(f"cannot write audio as {path.suffix or 'a file without extension'}; "
                                "use .wav, .flac or .ogg")
    return name
