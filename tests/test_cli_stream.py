"""`--stream`: the same results as the batch path where they must agree, flat memory, clean interruption."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import SAMPLE_AUDIO, run


def test_stream_encode_equals_batch_encode_within_10s(tmp_path, weights_file):
    source = SAMPLE_AUDIO / "speech_44k_stereo.wav"  # 7 s, stereo, 44.1 kHz: downmix + resampling
    assert run("encode", source, "-o", tmp_path / "batch.npz", weights=weights_file).returncode == 0
    streamed = run("encode", "--stream", source, "-o", tmp_path / "stream.npz", weights=weights_file)
    assert streamed.returncode == 0, streamed.stderr
    assert "━" not in streamed.stderr  # no progress bar when stderr is not a terminal
    with np.load(tmp_path / "batch.npz") as batch, np.load(tmp_path / "stream.npz") as stream:
        np.testing.assert_array_equal(stream["codes"], batch["codes"])
        for key in ("num_samples", "source_sample_rate", "source_channels", "weights_id"):
            assert stream[key] == batch[key], key
        assert bool(stream["streamed"]) and not bool(batch["streamed"])  # how each was made (--skip-existing)


def test_stream_encode_uses_moshi_streaming_codes_past_10s(tmp_path, weights_file, full_model):
    pcm, rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32")
    source = tmp_path / "long.wav"
    sf.write(source, pcm[: 13 * rate], rate, subtype="PCM_16")
    assert run("encode", "--stream", source, "-o", tmp_path / "s.npz", weights=weights_file).returncode == 0
    from mimi_cli.audio import read_audio, to_mono

    x = to_mono(read_audio(source), 24000)
    encoder = full_model.stream_encoder()  # frame by frame, like moshi
    expected = np.concatenate([encoder.push(x), encoder.flush()], axis=1)
    with np.load(tmp_path / "s.npz") as npz:
        np.testing.assert_array_equal(npz["codes"][0], expected)


def test_roundtrip_stream_measures_what_encode_and_decode_stream_make(tmp_path, weights_file):
    """``roundtrip --stream`` (13 s: moshi's streaming codes differ from batch ones past 10 s) writes exactly
    what ``encode --stream`` then ``decode --stream`` write, and measures that, not the batch round trip."""
    import json

    pcm, rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32")
    source = tmp_path / "long.wav"
    sf.write(source, pcm[: 13 * rate], rate, subtype="PCM_16")
    for flags, name in (([], "batch"), (["--stream"], "stream")):
        result = run("roundtrip", *flags, source, "--json", "-o", tmp_path / f"rt-{name}.wav", weights=weights_file)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["streamed"] == bool(flags)
        assert run("encode", *flags, source, "-o", tmp_path / f"{name}.npz", weights=weights_file).returncode == 0
        assert run("decode", *flags, tmp_path / f"{name}.npz", "-o", tmp_path / f"{name}.wav",
                   weights=weights_file).returncode == 0
        np.testing.assert_array_equal(sf.read(tmp_path / f"rt-{name}.wav")[0], sf.read(tmp_path / f"{name}.wav")[0])
        with sf.SoundFile(tmp_path / f"rt-{name}.wav") as made, sf.SoundFile(tmp_path / f"{name}.wav") as decoded:
            assert made.comment == decoded.comment == "mimi-cli: mimi codes, 8 codebooks" + ", --stream" * bool(flags)
    assert not np.array_equal(sf.read(tmp_path / "rt-stream.wav")[0], sf.read(tmp_path / "rt-batch.wav")[0])
    sf.write(tmp_path / "short.wav", pcm[:rate], rate, subtype="PCM_16")  # (the table's title alone)
    table = run("roundtrip", "--stream", tmp_path / "short.wav", weights=weights_file)
    assert "round trip (streaming): " in table.stdout, table.stderr


def test_a_low_bit_rate_mp3_streams_and_spans_as_its_one_pass_decoding(tmp_path, weights_file):
    """An 8 kbps MP3's frames take bits from the frames before them; read in blocks (--stream) or from a span's
    start, libsndfile restarted its decoder there without them (python-soundfile seeks after every read): 9
    of 365 frames of codes differed from those of the same audio decoded in one pass, with an mpg123
    "part2_3_length … too large" warning for a good file. Now the codes are those, and nothing is said."""
    import json

    from scipy.signal import resample_poly

    speech, rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32")
    sf.write(tmp_path / "low.mp3", resample_poly(speech, 22050, rate).astype(np.float32), 22050,
             compression_level=0.99, bitrate_mode="CONSTANT")
    pcm, _ = sf.read(tmp_path / "low.mp3", dtype="float32")  # one read: one pass of the decoder
    sf.write(tmp_path / "low.wav", pcm, 22050, subtype="FLOAT")
    for name in ("low.mp3", "low.wav"):
        spans = [{"audio_filepath": name, "offset": 1.1 + 2.3 * i, "duration": 2.0} for i in range(10)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(span) + "\n" for span in spans))
        for args in (["--stream", name, "-o", f"{name}.npz"], ["--inputs-from", f"{name}.jsonl", "-o", name[4:]]):
            result = run("encode", "-q", *args, weights=weights_file, cwd=tmp_path)
            assert result.returncode == 0 and not result.stderr, result.stderr
    with np.load(tmp_path / "low.mp3.npz") as mp3, np.load(tmp_path / "low.wav.npz") as wav:
        np.testing.assert_array_equal(mp3["codes"], wav["codes"])
    for i in range(10):
        span = f"{round((1.1 + 2.3 * i) * 1000)}ms.npz"
        with np.load(tmp_path / "mp3" / f"low_{span}") as mp3, np.load(tmp_path / "wav" / f"low_{span}") as wav:
            np.testing.assert_array_equal(mp3["codes"], wav["codes"])


def test_stream_decode_equals_batch_decode(tmp_path, weights_file):
    codes = np.random.default_rng(0).integers(0, 2048, (1, 8, 37)).astype(np.uint16)  # 37: not a multiple of a step
    np.savez(tmp_path / "c.npz", codes=codes, format_version=np.array(1), sample_rate=np.array(24000),
             frame_rate=np.array(12.5), codebook_size=np.array(2048), num_samples=np.array(36 * 1920 + 5),
             source_sample_rate=np.array(24000), source_channels=np.array(1), weights_id=np.array("x"))
    for extra in ([], ["--sample-rate", "16000"]):
        batch = run("decode", tmp_path / "c.npz", "-o", tmp_path / "b.wav", "-f", "-q", *extra, weights=weights_file)
        stream = run("decode", "--stream", tmp_path / "c.npz", "-o", tmp_path / "s.wav", "-f", "-q", *extra,
                     weights=weights_file)
        assert batch.returncode == stream.returncode == 0, stream.stderr
        assert "warning" in stream.stderr  # weights_id "x" is not these weights; -q keeps warnings
        b, rate_b = sf.read(tmp_path / "b.wav", dtype="float32")
        s, rate_s = sf.read(tmp_path / "s.wav", dtype="float32")
        assert rate_b == rate_s and len(b) == len(s) == int(np.ceil((36 * 1920 + 5) * rate_b / 24000))
        np.testing.assert_allclose(s, b, atol=2 / 32768)  # 16-bit files; the models agree to 1e-6


def test_stream_decode_to_standard_output_is_written_as_it_is_made(tmp_path, weights_file):
    """`mimi decode --stream codes -o - | player`: the audio went out only once all of it was decoded (through a
    temporary file). Its length is known from the codes: the WAV header goes first, then each step's samples as
    they come, the same samples as the WAV file decode --stream writes (libsndfile's), at any rate and channels."""
    import struct

    frames, samples = 40, 40 * 1920 - 100
    codes = np.random.default_rng(1).integers(0, 2048, (2, 8, frames)).astype(np.uint16)  # two code streams
    np.savez(tmp_path / "c.npz", codes=codes, format_version=np.array(1), sample_rate=np.array(24000),
             frame_rate=np.array(12.5), codebook_size=np.array(2048), num_samples=np.array(samples),
             source_sample_rate=np.array(24000), source_channels=np.array(2), weights_id=np.array(""))
    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path / "t")}
    (tmp_path / "t").mkdir()
    for rate in (16000,):  # resampled: its length from the resampler's (24 kHz is the simpler case)
        args = ["decode", "--stream", str(tmp_path / "c.npz"), "--sample-rate", str(rate), "-q"]
        assert run(*args, "-o", tmp_path / "s.wav", "-f", weights=weights_file).returncode == 0
        process = subprocess.Popen([sys.executable, "-m", "mimi_cli", *args, "-o", "-"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        header = process.stdout.read(44)
        # 200 kB of audio, more than a pipe holds: a run that wrote a temporary file first still has it open here
        held = []
        for fd in Path(f"/proc/{process.pid}/fd").glob("*"):
            with contextlib.suppress(OSError):
                held.append(os.readlink(fd))
        assert held and not [link for link in held if link.startswith(str(tmp_path / "t"))], held
        data, stderr = process.communicate(timeout=120)
        assert process.returncode == 0 and stderr == b"", stderr
        riff, whole, wave, fmt, _, pcm, channels, said_rate, byte_rate, align, bits, chunk, size = struct.unpack(
            "<4sI4s4sIHHIIHH4sI", header)
        expected = sf.read(tmp_path / "s.wav", dtype="int16")[0]  # [n, 2]
        assert (riff, wave, fmt, chunk, pcm, channels, said_rate, bits) == (b"RIFF", b"WAVE", b"fmt ", b"data", 1, 2,
                                                                              rate, 16)
        assert size == len(data) == expected.size * 2 and whole == 36 + size and byte_rate == rate * 4 and align == 4
        assert len(expected) == -(-samples * rate // 24000)
        np.testing.assert_array_equal(np.frombuffer(data, "<i2").reshape(-1, 2), expected)
    # a run stopped part way has sent some of the audio, and says so
    process = subprocess.Popen([sys.executable, "-m", "mimi_cli", *args, "-o", "-"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(process.stdout.read(44)) == 44  # the pipe fills up: the run waits in a write
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143 and stderr.decode().strip().splitlines()[-1] == \
        "error: interrupted; standard output has the audio decoded until then, cut short", stderr


def test_quiet_prints_nothing_on_success(tmp_path, weights_file):
    result = run("encode", "-q", SAMPLE_AUDIO / "speech_44k_stereo.wav", "-o", tmp_path / "c.npz",
                 weights=weights_file)
    assert result.returncode == 0 and result.stderr == "" and result.stdout == ""


def test_ctrl_c_leaves_no_partial_file(tmp_path, weights_file):
    pcm, rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32")
    source = tmp_path / "long.wav"
    sf.write(source, np.tile(pcm, 6), rate, subtype="PCM_16")  # 3 minutes
    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}
    for args in (["encode", "--stream", source, "-o", tmp_path / "out.npz"],
                 ["encode", source, "-o", tmp_path / "out.npz"]):
        before = {p.name for p in tmp_path.iterdir()}
        process = subprocess.Popen([sys.executable, "-m", "mimi_cli", *map(str, args)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4)  # weights loaded, encoding under way
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert stderr.strip().splitlines()[-1] == "error: interrupted; no output was written"
        assert {p.name for p in tmp_path.iterdir()} == before


def test_stream_reports_nan_with_its_position(tmp_path, weights_file):
    samples = np.zeros(24000 * 3, np.float32)
    samples[24000 * 2] = np.nan
    sf.write(tmp_path / "nan.wav", samples, 24000, subtype="FLOAT")
    result = run("encode", "--stream", tmp_path / "nan.wav", "-o", tmp_path / "o.npz", weights=weights_file)
    assert result.returncode == 1 and "NaN or Inf samples (first at 2.000 s)" in result.stderr
    assert not (tmp_path / "o.npz").exists()
