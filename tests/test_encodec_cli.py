"""EnCodec from the command line: --codec, -b/-n, the codes file's codec field, inspect, bench, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from safetensors.numpy import save_file
from conftest import malicious_checkpoints, run

from mimi_cli.models.encodec import Encodec
from mimi_cli.models.encodec.synthetic import random_state, released_file_state

ENCODEC = "encodec-24khz"


@pytest.fixture(scope="module")
def encodec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("encodec") / "model.safetensors"
    save_file(released_file_state(random_state()), str(path))
    return path


@pytest.fixture(scope="module")
def encodec_model(encodec_file):
    return Encodec.from_file(encodec_file)


def test_encode_decode_roundtrip_with_encodec(tmp_path, clip, encodec_file, encodec_model):
    codes_path = tmp_path / "speech.npz"
    result = run("encode", clip, "--codec", ENCODEC, "-b", "6", "-o", codes_path, "--weights", encodec_file)
    assert result.returncode == 0, result.stderr
    assert "2.50 s → 188 frames × 8 codebooks (6.00 kbps)" in result.stderr
    from mimi_cli.audio import read_audio, to_mono

    pcm = to_mono(read_audio(clip), 24000)
    with np.load(codes_path, allow_pickle=False) as npz:
        assert str(npz["codec"]) == ENCODEC and int(npz["codebook_size"]) == 1024
        assert float(npz["frame_rate"]) == 75.0 and int(npz["num_samples"]) == 60000
        np.testing.assert_array_equal(npz["codes"][0], encodec_model.encode(pcm, 8))

    # decode needs no --codec: the file says; ENCODEC_WEIGHTS is where the weights come from
    result = run("decode", codes_path, env_extra={"ENCODEC_WEIGHTS": str(encodec_file)})
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(tmp_path / "speech.decoded.wav", dtype="float32")
    expected = encodec_model.decode(encodec_model.encode(pcm, 8))[:60000]
    assert rate == 24000 and len(audio) == 60000
    assert np.max(np.abs(audio - np.clip(expected, -1, 1))) < 2 / 32768

    result = run("roundtrip", clip, "--codec", ENCODEC, "-n", "32", "--json", "--weights", encodec_file)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["codec"] == ENCODEC and metrics["bitrate_kbps"] == 24.0 and metrics["frames"] == 188


@pytest.mark.parametrize("args,message", [
    (["-b", "6", "-n", "8"], "either --codebooks or --bandwidth, not both"),
    (["-b", "0.5"], "EnCodec 24 kHz offers 0.75 to 24 kbps"),
    (["-b", "1e308"], "EnCodec 24 kHz offers 0.75 to 24 kbps"),  # too large for an integer count of levels
    (["-n", "33"], "EnCodec 24 kHz has at most 32, not 33"),
    (["--codec", "soundstream"], "'soundstream' is not a codec here"),
])
def test_bad_codebook_choices_are_usage_errors(tmp_path, clip, args, message):
    codec = [] if "--codec" in args else ["--codec", ENCODEC]
    result = run("encode", clip, *codec, *args, "-o", tmp_path / "x.npz")
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "x.npz").exists()


def test_wrong_weights_for_the_codec_leave_no_output(tmp_path, clip, weights_file, encodec_file):
    """Each codec's weights given to the other: one line that says whose weights they are."""
    result = run("encode", clip, "--codec", ENCODEC, "--weights", weights_file, "-o", tmp_path / "x.npz")
    assert result.returncode == 1 and "is not an EnCodec checkpoint" in result.stderr
    assert result.stderr.endswith("naming; it holds Mimi weights\n"), result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.npz").exists()
    result = run("encode", clip, "--weights", encodec_file, "-o", tmp_path / "x.npz")
    assert result.returncode == 1 and "is not a Mimi checkpoint" in result.stderr
    assert result.stderr.endswith("tensors); it holds EnCodec 24 kHz weights\n"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "x.npz").exists()
    result = run("convert", encodec_file, tmp_path / "x.safetensors")  # convert rewrites Mimi weights alone
    assert result.returncode == 1 and result.stderr.endswith(
        "tensors); it holds EnCodec 24 kHz weights, and convert rewrites Mimi's only\n"), result.stderr
    assert not (tmp_path / "x.safetensors").exists()


def test_stream_gives_the_batch_codes_and_audio(tmp_path, clip, encodec_file):
    """--stream with EnCodec: the same codes file as batch mode but for how it says it was made; decoding in a
    stream, the same audio."""
    for mode in ((), ("--stream",)):
        name = "stream" if mode else "batch"
        result = run("encode", clip, "--codec", ENCODEC, *mode, "--weights", encodec_file, "-o",
                     tmp_path / f"{name}.npz")
        assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "batch.npz") as batch, np.load(tmp_path / "stream.npz") as stream:
        assert set(batch.files) == set(stream.files)
        assert all(np.array_equal(batch[k], stream[k]) for k in batch.files if k != "streamed")
        assert bool(stream["streamed"]) and not bool(batch["streamed"])
    for mode in ((), ("--stream",)):
        name = "stream" if mode else "batch"
        result = run("decode", tmp_path / "batch.npz", *mode, "--weights", encodec_file, "-o",
                     tmp_path / f"{name}.wav")
        assert result.returncode == 0, result.stderr
    batch_audio, _ = sf.read(tmp_path / "batch.wav", dtype="int32")
    stream_audio, _ = sf.read(tmp_path / "stream.wav", dtype="int32")
    assert batch_audio.shape == stream_audio.shape
    assert np.abs(batch_audio - stream_audio).max() <= 1 << 16  # at most one 16-bit step


def test_malicious_pickle_given_as_weights_runs_nothing(tmp_path, clip):
    marker, paths = malicious_checkpoints(tmp_path)
    for path in paths:
        result = run("encode", clip, "--codec", ENCODEC, "--weights", path, "-o", tmp_path / "x.npz")
        assert result.returncode == 1 and "PyTorch pickle" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "x.npz").exists()


def test_inspect_recognises_encodec_checkpoints(tmp_path, encodec_file):
    result = run("inspect", encodec_file, "--json", "--no-stats")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["format"] == "EnCodec 24 kHz Hugging Face" and report["errors"] == []
    state = random_state()
    del state["decoder.layers.1.lstm.bias_hh_l0"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    result = run("inspect", tmp_path / "partial.safetensors", "--json", "--no-stats")
    report = json.loads(result.stdout)
    assert result.returncode == 2 and report["format"] == "EnCodec 24 kHz Hugging Face"
    assert report["errors"] == ["does not load as the released EnCodec 24 kHz model: "
                                "1 missing: decoder.layers.1.lstm.bias_hh_l0"]


def test_bench_runs_the_encodec_model(encodec_model):
    """The model part through the command; the stream part, which takes 20 s in full, on a few frames (the
    command's wiring of it is every codec's: test_codec_contract runs it whole)."""
    from mimi_cli.bench import many_streams, stream_latency

    assert {r.direction for r in stream_latency(encodec_model, frames=4, warmup=1)} == {"encode", "decode"}
    steps = many_streams(encodec_model, counts=(2,), frames=2, warmup=1, find_limit=False, duplex=True)
    assert [(s.streams, s.duplex) for s in steps] == [(2, True)] and steps[0].step_ms > 0
    result = run("bench", "--codec", ENCODEC, "--seconds", "1", "--only", "model", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["codec"] == ENCODEC and [r["name"] for r in report["model"]] == [
        "encode, 8 codebooks", "decode, 8 codebooks", "encode, 32 codebooks", "decode, 32 codebooks"]
    assert all(row["rtf"] > 0 and 0 < row["gflops"] for row in report["model"]) and "stream" not in report
    result = run("bench", "--codec", ENCODEC, "--only", "kernels")
    assert result.returncode == 2 and "--only takes one of model, stream for encodec-24khz" in result.stderr
