"""Write a short synthetic music clip: a chord progression of plucked tones over a kick drum.

Deterministic (no randomness); usage: python scripts/make_music.py OUT.flac
"""

import sys

import numpy as np
import soundfile as sf

RATE = 24000
BEAT = 0.5  # seconds


def pluck(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    harmonics = sum(np.sin(2 * np.pi * freq * h * t) / h**1.5 for h in range(1, 7))
    return harmonics * np.exp(-3.0 * t)


def kick(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    sweep = 2 * np.pi * (50 * t + 60 * (1 - np.exp(-25 * t)) / 25)
    return np.sin(sweep) * np.exp(-12 * t)


def main(path: str) -> None:
    chords = [(220.0, 277.18, 329.63), (196.0, 246.94, 293.66), (174.61, 220.0, 261.63), (196.0, 246.94, 329.63)]
    music = np.zeros(int(len(chords) * 4 * BEAT * RATE) + RATE)
    for bar, chord in enumerate(chords):
        for beat in range(4):
            start = int((bar * 4 + beat) * BEAT * RATE)
            note = sum(pluck(f * (2 if beat % 2 else 1), 1.0) for f in chord) / len(chord)
            music[start : start + len(note)] += 0.35 * note
            music[start : start + int(0.4 * RATE)] += 0.5 * kick(0.4)
    music /= np.max(np.abs(music)) / 0.8
    sf.write(path, music.astype(np.float32), RATE, subtype="PCM_16")


if __name__ == "__main__":
    main(sys.argv[1])
