#!/usr/bin/env bash
# Rebuild sample_audio/ from scratch: speech from espeak-ng (Debian package espeak-ng),
# converted with sox (Debian package sox), and a synthetic music clip from NumPy.
#   apt-get install espeak-ng sox && bash scripts/make_sample_audio.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=sample_audio
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

espeak-ng -v en-us -s 155 -w "$tmp/a.wav" \
  "The quick brown fox jumps over the lazy dog. A neural audio codec turns speech into a short \
sequence of numbers, eighty milliseconds at a time, and a decoder turns those numbers back into \
sound. Mimi keeps one semantic level and many acoustic levels, so a language model can read and \
write speech the same way it reads and writes text. This sentence is here to make the clip longer \
than ten seconds, past the attention window of the transformer."
# 16 kHz mono, 16-bit: the common rate of speech corpora.
sox "$tmp/a.wav" -r 16000 -c 1 -b 16 "$out/speech_16k_mono.wav"

espeak-ng -v en-gb+f3 -s 140 -p 60 -w "$tmp/b.wav" \
  "Stereo at forty four point one kilohertz is mixed down to mono and resampled before encoding."
# 44.1 kHz stereo: left is the voice, right the same voice 6 ms later and quieter.
sox "$tmp/b.wav" -r 44100 -b 16 "$tmp/b44.wav"
sox "$tmp/b44.wav" "$tmp/r.wav" delay 0.006 vol 0.7
sox -M "$tmp/b44.wav" "$tmp/r.wav" -b 16 "$out/speech_44k_stereo.wav" trim 0 "$(soxi -D "$tmp/b44.wav")"

python3 scripts/make_music.py "$out/music_24k.flac"
