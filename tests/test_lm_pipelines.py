"""Speech-LM pipelines: stereo split, a language model's integer arrays, standard input and output."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
import io
import os
import re
import select
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import SAMPLE_AUDIO, run, run_on_an_endless_pipe, speech_at

from mimi_cli.codes import CodesFile
from mimi_cli.errors import MimiError
from mimi_cli.inspect import inspect_codes


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory):
    """A 2.5 s two-speaker 'dialogue' (a different signal per channel) and each channel alone."""
    pcm, rate = speech_at(), 24000
    left, right = pcm[:int(2.5 * rate)], 0.5 * pcm[int(3 * rate):int(5.5 * rate)][::-1]
    folder = tmp_path_factory.mktemp("dialogue")
    sf.write(folder / "stereo.wav", np.stack([left, right], axis=1), rate, subtype="FLOAT")
    sf.write(folder / "left.wav", left, rate, subtype="FLOAT")
    sf.write(folder / "right.wav", right, rate, subtype="FLOAT")
    return folder


@pytest.mark.parametrize("stream", [False, True])
def test_split_channels_equal_each_channel_encoded_alone(tmp_path, weights_file, dialogue, stream):
    flags = ["--stream"] if stream else []
    result = run("encode", *flags, "--channels", "split", dialogue / "stereo.wav", "-o", tmp_path / "split.npz",
                 weights=weights_file)
    assert result.returncode == 0, result.stderr
    split = CodesFile.load(tmp_path / "split.npz")
    assert split.codes.shape[0] == 2 and split.source_channels == 2
    for index, name in enumerate(("left", "right")):
        assert run("encode", *flags, dialogue / f"{name}.wav", "-o", tmp_path / f"{name}.npz",
                   weights=weights_file).returncode == 0
        alone = CodesFile.load(tmp_path / f"{name}.npz")
        np.testing.assert_array_equal(split.codes[index], alone.codes[0])
    assert not np.array_equal(split.codes[0], split.codes[1])

    # decode writes two channels, each the decode of that channel's codes alone
    assert run("decode", *flags, tmp_path / "split.npz", "-o", tmp_path / "split.wav",
               weights=weights_file).returncode == 0
    stereo, rate = sf.read(tmp_path / "split.wav", dtype="float32", always_2d=True)
    assert stereo.shape[1] == 2 and rate == 24000
    for index, name in enumerate(("left", "right")):
        assert run("decode", *flags, tmp_path / f"{name}.npz", "-o", tmp_path / f"{name}.wav",
                   weights=weights_file).returncode == 0
        mono, _ = sf.read(tmp_path / f"{name}.wav", dtype="float32")
        np.testing.assert_array_equal(stereo[:, index], mono)


def test_split_writes_only_what_decode_reads(tmp_path, weights_file):
    """64 channels (the most a codes file holds) go both ways; 65 are refused before any work, not written
    to a file that decode then refused."""
    rng = np.random.default_rng(1)
    for channels in (64, 65):
        sf.write(tmp_path / f"{channels}.wav", 0.1 * rng.standard_normal((1920, channels)), 24000, subtype="FLOAT")
    assert run("encode", "--channels", "split", tmp_path / "64.wav", "-o", tmp_path / "64.npz",
               weights=weights_file).returncode == 0
    decoded = run("decode", tmp_path / "64.npz", "-o", tmp_path / "64.decoded.wav", weights=weights_file)
    assert decoded.returncode == 0, decoded.stderr
    assert sf.info(tmp_path / "64.decoded.wav").channels == 64
    refused = run("encode", "--channels", "split", tmp_path / "65.wav", "-o", tmp_path / "65.npz",
                  weights=weights_file)
    assert refused.returncode == 1 and "65 channels; --channels split writes at most 64" in refused.stderr
    assert not (tmp_path / "65.npz").exists()


def test_roundtrip_measures_each_channel_as_if_alone(tmp_path, weights_file, dialogue):
    """``roundtrip --channels split``: each channel's audio and metrics are those of a round trip of that channel
    alone; the metrics shown are their mean; -o has both channels, --plot a column each; refusals come first."""
    result = run("roundtrip", dialogue / "stereo.wav", "--channels", "split", "--json", "-o", tmp_path / "rt.wav",
                 weights=weights_file)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    stereo, rate = sf.read(tmp_path / "rt.wav", dtype="float32", always_2d=True)
    assert metrics["channels"] == 2 and len(metrics["per_channel"]) == 2 and stereo.shape[1] == 2
    for index, name in enumerate(("left", "right")):
        alone = run("roundtrip", dialogue / f"{name}.wav", "--json", "-o", tmp_path / f"{name}.wav",
                    weights=weights_file)
        mono, _ = sf.read(tmp_path / f"{name}.wav", dtype="float32")
        np.testing.assert_array_equal(stereo[:, index], mono)
        expected = json.loads(alone.stdout)
        assert expected["channels"] == 1 and "per_channel" not in expected
        assert metrics["per_channel"][index] == {key: expected[key] for key in metrics["per_channel"][index]}
    for key, value in metrics["per_channel"][0].items():
        if value is not None and metrics["per_channel"][1][key] is not None:
            assert metrics[key] == pytest.approx((value + metrics["per_channel"][1][key]) / 2, abs=0.01)
    assert metrics["per_channel"][0]["si_sdr_db"] != metrics["per_channel"][1]["si_sdr_db"]
    table = run("roundtrip", dialogue / "stereo.wav", "--channels", "split", weights=weights_file,
                env_extra={"COLUMNS": "150"})
    assert "mean of 2 channels" in table.stdout and "channel 2" in table.stdout
    assert "note: 2 channels encoded separately" in table.stderr
    assert f"{metrics['per_channel'][1]['log_mel_distance']:.4f}" in table.stdout

    rng = np.random.default_rng(2)
    sf.write(tmp_path / "nine.wav", 0.1 * rng.standard_normal((4800, 9)), 24000, subtype="FLOAT")
    for flags, said in ((["-o", tmp_path / "nine.mp3"], "audio of 9 channels"),
                        (["--plot", tmp_path / "nine.png"], "--plot draws at most 8 channels side by side")):
        refused = run("roundtrip", tmp_path / "nine.wav", "--channels", "split", *flags, weights=tmp_path / "none")
        assert refused.returncode == 1 and said in refused.stderr and "Traceback" not in refused.stderr
        assert not any(p.suffix in (".mp3", ".png") for p in tmp_path.iterdir())
    if importlib.util.find_spec("matplotlib"):
        from matplotlib.image import imread

        drawn = run("roundtrip", dialogue / "stereo.wav", "--channels", "split", "--plot", tmp_path / "two.png",
                    weights=weights_file)
        assert drawn.returncode == 0, drawn.stderr
        assert imread(tmp_path / "two.png").shape[1] > 1900  # two columns of 7 in at 110 dpi, one was 11 in


def test_inspect_shows_what_codes_hold(tmp_path, weights_file, dialogue):
    """``mimi inspect`` on codes: the codec, shape, length and how they were made, as the file records them, and
    each level's use of its codebook (distinct codes, entropy of their frequencies, the most frequent), counted
    here again by a plain loop; codes decode would refuse are an error (exit 2), as unsound weights are."""
    import math
    from collections import Counter

    assert run("encode", "--channels", "split", "--stream", dialogue / "stereo.wav", "-n", "4", "-o",
               tmp_path / "split.npz", weights=weights_file).returncode == 0
    result = run("inspect", tmp_path / "split.npz", "--json")
    assert result.returncode == 0, result.stderr
    report, codes = json.loads(result.stdout), CodesFile.load(tmp_path / "split.npz")
    assert (report["codec"], report["display_name"], report["kind"], report["streams"], report["codebooks"],
            report["frames"]) == ("mimi", "Mimi", "a codes file of mimi encode", 2, 4, codes.num_frames)
    assert (report["num_samples"], report["source_sample_rate"], report["source_channels"], report["streamed"],
            report["weights_id"], report["bitrate_kbps"]) == (codes.num_samples, 24000, 2, True, codes.weights_id,
                                                               0.55)
    for level, usage in enumerate(report["levels"]):
        counts = Counter(int(v) for stream in codes.codes for v in stream[level])
        total = sum(counts.values())
        entropy = -sum(n / total * math.log2(n / total) for n in counts.values())
        top, most = max(counts.items(), key=lambda item: (item[1], -item[0]))
        assert (usage["level"], usage["distinct"], usage["most_frequent"]) == (level, len(counts), top)
        assert usage["entropy_bits"] == pytest.approx(entropy, abs=1e-3) and usage["share"] == round(most / total, 4)
        assert 1 < usage["distinct"] <= 2048
    table = run("inspect", tmp_path / "split.npz", env_extra={"COLUMNS": "120"})
    assert table.returncode == 0 and "Mimi codes, a codes file of mimi encode, made by encode --stream" in table.stdout
    assert "2 (one per channel)" in table.stdout and "24000 Hz, 2 channels" in table.stdout

    np.save(tmp_path / "lm.npy", codes.codes[0].astype(np.int64) % 1024)  # a language model's: nothing recorded
    bare = json.loads(run("inspect", tmp_path / "lm.npy", "--json", "--codec", "encodec-24khz").stdout)
    assert (bare["codec"], bare["kind"], bare["source_sample_rate"], bare["weights_id"], bare["streamed"]) == (
        "encodec-24khz", "a bare integer array", None, None, None)
    np.save(tmp_path / "bad.npy", np.full((8, 5), 4096))
    for args, said, code in (([tmp_path / "bad.npy"], "holds values 4096..4096; Mimi codes are 0..2047", 2),
                             ([tmp_path / "split.npz", "--filter", "x"], "--filter and --no-stats are for weights", 2),
                             ([weights_file, "--codec", "mimi"], "--codec is for codes files", 2),
                             ([tmp_path / "gone.npz"], f"error: {tmp_path / 'gone.npz'} does not exist\n", 1)):
        refused = run("inspect", *args)
        assert refused.returncode == code and said in refused.stderr and "Traceback" not in refused.stderr, \
            refused.stderr


def test_inspect_reads_codes_from_standard_input_and_pipes(tmp_path, weights_file):
    """``mimi encode x.wav -o - | mimi inspect -`` was refused as weights given on standard input: '-' and a pipe
    are codes, read as decode reads them (told apart by content: an .ecdc stream too), the report the file's."""
    from mimi_cli.ecdc import write_ecdc

    def piped(data: bytes, *args):
        return subprocess.run([sys.executable, "-m", "mimi_cli", "inspect", *map(str, args)], input=data,
                              capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)

    sf.write(tmp_path / "a.wav", speech_at(24000)[:48000], 24000)
    assert run("encode", tmp_path / "a.wav", "-n", "4", "-o", tmp_path / "a.npz", weights=weights_file).returncode == 0
    from_file = json.loads(run("inspect", tmp_path / "a.npz", "--json").stdout)
    result = piped((tmp_path / "a.npz").read_bytes(), "-", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {**from_file, "path": "standard input"}
    via = subprocess.run(["bash", "-c", f'"{sys.executable}" -m mimi_cli inspect --json <(cat "{tmp_path}/a.npz")'],
                         capture_output=True, text=True, timeout=120)
    assert via.returncode == 0 and json.loads(via.stdout)["frames"] == from_file["frames"], via.stderr

    codes = np.random.default_rng(3).integers(0, 1024, (8, 75))
    with open(tmp_path / "e.ecdc", "wb") as f:
        write_ecdc(f, "encodec-24khz", codes, 24000)
    ecdc = json.loads(piped((tmp_path / "e.ecdc").read_bytes(), "-", "--json").stdout)
    assert (ecdc["kind"], ecdc["codec"], ecdc["frames"], ecdc["num_samples"]) == (
        "an EnCodec .ecdc file", "encodec-24khz", 75, 24000)
    audio = piped((tmp_path / "a.wav").read_bytes(), "-")
    assert audio.returncode == 2 and audio.stderr.decode() == (
        "error: standard input is not a codes file (expected the .npz archive written by mimi encode, or an integer "
        "array: .npy, JSON, or one array in .npz or .safetensors); it holds audio (WAV), which `mimi encode` turns "
        "into codes\n")


def test_inspect_shows_what_a_table_of_codes_holds(tmp_path, weights_file, dialogue):
    """``mimi inspect`` on the Parquet shards --parquet writes (the folder, or one shard) and on a table of bare
    rows of different levels: the rows, their frames and audio summed, each level's use counted over every row
    that has it (here again by a plain loop); a row decode would refuse is an error (exit 2)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in ("stereo", "left"):
        assert run("encode", dialogue / f"{name}.wav", "-n", "4", "-o", tmp_path / f"{name}.npz",
                   weights=weights_file).returncode == 0
    made = run("encode", dialogue / "stereo.wav", dialogue / "left.wav", "-n", "4", "-o", tmp_path / "codes",
               "--parquet", tmp_path / "shards", weights=weights_file)
    assert made.returncode == 0, made.stderr
    files = [CodesFile.load(tmp_path / f"{name}.npz") for name in ("stereo", "left")]
    [shard] = (tmp_path / "shards").rglob("*.parquet")
    for given in (tmp_path / "shards", shard):
        result = run("inspect", given, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert (report["kind"], report["rows"], report["codec"], report["codebooks"], report["streamed"],
                report["weights_id"]) == ("a table of 2 rows of codes", 2, "mimi", 4, False, files[0].weights_id)
        assert report["frames"] == sum(f.num_frames for f in files)
        assert report["num_samples"] == sum(f.num_samples for f in files)
        for level, usage in enumerate(report["levels"]):
            counts = Counter(int(v) for f in files for v in f.codes[0, level])
            top, most = max(counts.items(), key=lambda item: (item[1], -item[0]))
            assert (usage["distinct"], usage["most_frequent"], usage["share"]) == (
                len(counts), top, round(most / sum(counts.values()), 4))
    shown = run("inspect", tmp_path / "shards", env_extra={"COLUMNS": "120"})
    assert "Mimi codes, a table of 2 rows of codes, made in batch mode" in shown.stdout, shown.stdout
    # the folder of codes files encode -o wrote, every level below it (as decode -r finds them): the same figures
    (tmp_path / "codes" / "left").mkdir()
    (tmp_path / "codes" / "left.npz").rename(tmp_path / "codes" / "left" / "left.npz")
    (tmp_path / "codes" / "gone.npz").symlink_to("nowhere.npz")
    result = run("inspect", tmp_path / "codes", "--json")
    folder = json.loads(result.stdout)
    assert (folder["kind"], folder["rows"]) == ("a folder of 2 codes files", 2), result.stderr
    assert {k: v for k, v in folder.items() if k not in ("path", "kind", "left_out")} == \
        {k: v for k, v in report.items() if k not in ("path", "kind", "left_out")}
    assert "note: left out 1 entry that is not a file" in run("inspect", tmp_path / "codes").stderr
    # several names, as a shell's glob gives them (`mimi inspect codes/*.npz`): reported together, as above
    given = run("inspect", tmp_path / "stereo.npz", tmp_path / "left.npz", "--json")
    assert given.returncode == 0, given.stderr
    named = json.loads(given.stdout)
    assert (named["kind"], named["path"]) == ("2 codes files from the 2 names given",
                                              f"{tmp_path / 'stereo.npz'}, {tmp_path / 'left.npz'}")
    assert {k: v for k, v in named.items() if k not in ("path", "kind", "left_out")} == \
        {k: v for k, v in report.items() if k not in ("path", "kind", "left_out")}
    for extra, said in ((weights_file, f"{weights_file} is not codes: mimi inspect reports several names together"),
                        ("-", "'-' (standard input) must be the only name")):
        refused = run("inspect", tmp_path / "left.npz", extra)
        assert refused.returncode == 2 and refused.stderr.startswith(f"error: {said}"), refused.stderr
        assert refused.stderr.count("\n") == 1, refused.stderr
    calls = []  # the bar over a large folder's files
    assert inspect_codes(tmp_path / "codes", progress=lambda *done: calls.append(done)).frames == folder["frames"]
    assert calls == [(1, 2), (2, 2)]

    rng = np.random.default_rng(0)
    long, short = rng.integers(0, 2048, (4, 30)), rng.integers(0, 16, (2, 10))
    pq.write_table(pa.table({"tokens": [long.tolist(), short.tolist()]}), tmp_path / "lm.parquet")
    report = json.loads(run("inspect", tmp_path / "lm.parquet", "--codes-column", "tokens", "--json").stdout)
    assert (report["rows"], report["codebooks"], report["frames"], report["weights_id"], report["streamed"],
            report["source_sample_rate"]) == (2, 4, 40, None, None, None)
    assert [u["distinct"] for u in report["levels"]] == [
        len(set(long[0]) | set(short[0])), len(set(long[1]) | set(short[1])), len(set(long[2])), len(set(long[3]))]
    pq.write_table(pa.table({"codes": [long.tolist(), (long + 2048).tolist()]}), tmp_path / "bad.parquet")
    refused = run("inspect", tmp_path / "bad.parquet")
    assert refused.returncode == 2 and "bad.parquet#1" in refused.stderr and "Mimi codes are 0..2047" in \
        refused.stderr, refused.stderr


def test_python_api_takes_channels(small_model):
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal((2, 24000)) * 0.1).astype(np.float32)
    codes = small_model.encode_channels(pcm, 4)
    assert codes.shape[:2] == (2, 4)
    for c in range(2):
        np.testing.assert_array_equal(codes[c], small_model.encode(pcm[c], 4))
        np.testing.assert_array_equal(small_model.decode_channels(codes)[c], small_model.decode(codes[c]))


# -- what a language model produced ---------------------------------------------------------------

@pytest.fixture(scope="module")
def encoded(tmp_path_factory, weights_file, dialogue):
    folder = tmp_path_factory.mktemp("encoded")
    assert run("encode", dialogue / "left.wav", "-o", folder / "left.npz", weights=weights_file).returncode == 0
    return folder / "left.npz"


@pytest.mark.parametrize("dtype, channel_axis", [(np.int64, False), (np.int32, True), (np.uint16, False)])
def test_npy_array_decodes_like_the_codes_file(tmp_path, weights_file, encoded, dtype, channel_axis):
    codes = CodesFile.load(encoded)
    array = codes.codes if channel_axis else codes.codes[0]
    np.save(tmp_path / "gen.npy", array.astype(dtype))
    assert run("decode", encoded, "-o", tmp_path / "ref.wav", weights=weights_file).returncode == 0
    result = run("decode", tmp_path / "gen.npy", "-o", tmp_path / "gen.wav", weights=weights_file)
    assert result.returncode == 0, result.stderr
    reference, _ = sf.read(tmp_path / "ref.wav", dtype="float32")
    generated, _ = sf.read(tmp_path / "gen.wav", dtype="float32")
    assert len(generated) == codes.num_frames * 1920  # no metadata: whole frames
    np.testing.assert_array_equal(generated[:len(reference)], reference)


@pytest.mark.parametrize("flags, source", [([], "left"), (["--stream", "--channels", "split"], "stereo")])
def test_encode_to_npy_writes_the_codes_alone(tmp_path, weights_file, dialogue, flags, source):
    """`-o x.npy`: the codes file's codes as a bare uint16 array, which decodes like the codes file."""
    for name in ("codes.npz", "codes.npy"):
        result = run("encode", *flags, dialogue / f"{source}.wav", "-o", tmp_path / name, weights=weights_file)
        assert result.returncode == 0, result.stderr
    assert "codes.npy holds the codes alone" in result.stderr
    codes = CodesFile.load(tmp_path / "codes.npz")
    array = np.load(tmp_path / "codes.npy", allow_pickle=False)
    assert array.dtype == np.uint16
    np.testing.assert_array_equal(array, codes.codes if codes.channels > 1 else codes.codes[0])
    for name in ("codes.npz", "codes.npy"):
        assert run("decode", tmp_path / name, "-o", tmp_path / f"{name}.wav", weights=weights_file).returncode == 0
    reference, _ = sf.read(tmp_path / "codes.npz.wav", dtype="float32", always_2d=True)
    bare, _ = sf.read(tmp_path / "codes.npy.wav", dtype="float32", always_2d=True)
    assert bare.shape == (codes.num_frames * 1920, codes.channels)
    np.testing.assert_array_equal(bare[:len(reference)], reference)


@pytest.mark.parametrize("array, message", [
    (np.full((8, 5), 0.25, np.float32), "holds float32 values; codes are integers (logits or probabilities?"),
    (np.full((8, 5), np.nan), "holds float64 values; codes are integers (logits or probabilities?"),
    (np.zeros((8, 5), np.float32), "holds float32 values; codes are integers (these are whole numbers: store them "
                                   "as integers, e.g. array.astype(np.int64))"),
    (np.full((8, 5), -1, np.int64), "holds values -1..-1"),
    (np.full((8, 5), 2048, np.int64), "codes are 0..2047"),
    (np.zeros((40, 5), np.int64), "has 40 codebooks"),
    (np.zeros((5,), np.int64), "has shape [5]"),
    (np.zeros((8, 5), np.complex64), "holds complex64 values; give an array of booleans, integers or floats\n"),
    (np.array(["a", "b"]), "holds <U1 values; give an array of booleans, integers or floats\n"),
])
def test_bad_arrays_are_one_line_and_write_nothing(tmp_path, weights_file, array, message):
    np.save(tmp_path / "bad.npy", array)
    result = run("decode", tmp_path / "bad.npy", "-o", tmp_path / "out.wav", weights=weights_file)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.wav").exists()


def test_an_array_that_looks_transposed_is_warned_about(tmp_path, weights_file, encoded):
    """A language model's [frames, K] output of up to 32 frames fits [K, frames] and decodes (to noise): warned.
    The same codes as [K, frames], or a codes file (which names its own axes), decode without a word."""
    codes = CodesFile.load(encoded).codes[0][:, :12]  # [8, 12]
    np.save(tmp_path / "frames_first.npy", codes.T)
    np.save(tmp_path / "levels_first.npy", codes)
    result = run("decode", tmp_path / "frames_first.npy", "-o", tmp_path / "a.wav", weights=weights_file)
    assert result.returncode == 0 and (tmp_path / "a.wav").is_file(), result.stderr
    assert "holds 12 codebooks over 8 frames; if its axes are [frames, codebooks], transpose it" in \
        " ".join(result.stderr.split())
    for quiet in (tmp_path / "levels_first.npy", encoded):
        result = run("decode", quiet, "-o", tmp_path / f"{quiet.stem}.wav", weights=weights_file)
        assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
        assert inspect_codes(quiet).warnings == []
    assert [" ".join(w.split()) for w in inspect_codes(tmp_path / "frames_first.npy").warnings] == [
        f"{tmp_path / 'frames_first.npy'} holds 12 codebooks over 8 frames; if its axes are [frames, codebooks], "
        "transpose it: codes are [K, frames]"]  # inspect says it as decode does


def test_an_ecdc_file_of_one_frame_is_not_taken_for_a_transposed_array(tmp_path, encodec_weights):
    """Meta's .ecdc names its own layout: 8 levels over 1 frame (a clip under 14 ms) decode without the warning
    a bare [frames, K] array gets (it said so, with "over 1 frames")."""
    from mimi_cli.models.encodec import EncodecConfig

    codes = np.random.default_rng(3).integers(0, 1024, (8, 1))
    CodesFile.from_codes(codes, EncodecConfig(), 200, 24000, 1, "").save(tmp_path / "short.ecdc")
    result = run("decode", tmp_path / "short.ecdc", "-o", tmp_path / "short.wav", "--weights", encodec_weights)
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    assert sf.info(tmp_path / "short.wav").frames == 200
    np.save(tmp_path / "short.npy", codes)
    result = run("decode", tmp_path / "short.npy", "-c", "encodec-24khz", "-o", tmp_path / "bare.wav", "--weights",
                 encodec_weights)
    assert result.returncode == 0 and "holds 8 codebooks over 1 frame; if its axes" in result.stderr, result.stderr


def test_encodec_arrays_with_codec_option(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "gen.npy", rng.integers(0, 1024, (4, 30)))
    result = run("decode", "--codec", "encodec-24khz", tmp_path / "gen.npy", "-o", tmp_path / "gen.wav",
                 env_extra={"ENCODEC_WEIGHTS": str(tmp_path / "absent.safetensors")})
    assert result.returncode == 1 and "absent.safetensors" in result.stderr  # the array was accepted


def test_a_bare_array_that_fits_encodecs_codebook_is_said_when_decoded_as_mimis(tmp_path, weights_file):
    """An array that names no codec is Mimi's; when every one of its codes is below 1024 (EnCodec's codebook; 64 of
    Mimi's codes do that once in 2⁶⁴), the run says how to decode it as EnCodec's. Not when a codec was named
    (--codec, a codec_info.json), nor for codes that reach past 1023, nor for a few codes."""
    codes = np.random.default_rng(4).integers(0, 1024, (4, 30))
    np.save(tmp_path / "gen.npy", codes)
    said = ("gen.npy: every code is below 1024, as EnCodec 24 kHz's are, and it was read as Mimi's (the default "
            "for a bare array): if it holds EnCodec 24 kHz codes, give --codec encodec-24khz")
    result = run("decode", tmp_path / "gen.npy", "-o", tmp_path / "a.wav", weights=weights_file)
    assert result.returncode == 0 and said in " ".join(result.stderr.split()), result.stderr
    told = tmp_path / "told"
    told.mkdir()
    (told / "codec_info.json").write_text(json.dumps({"codec_type": "mimi", "sampling_rate": 24000,
                                                      "codebook_size": 2048}))
    np.save(told / "gen.npy", codes)
    codes[3, 29] = 1024
    np.save(tmp_path / "wide.npy", codes)
    np.save(tmp_path / "few.npy", codes[:2, :30] % 1024)  # 60 codes
    from mimi_cli.pipeline import codes_warnings, read_codes

    assert codes_warnings("gen.npy", read_codes(tmp_path / "gen.npy", None, None)) == [said]  # as the run said
    assert inspect_codes(tmp_path / "gen.npy").warnings == [str(tmp_path / said)]  # and as inspect says
    shown = run("inspect", tmp_path / "gen.npy")
    assert shown.returncode == 0 and shown.stderr.startswith(f"warning: {tmp_path / 'gen.npy'}: every code"), shown
    for name, codec in ((tmp_path / "gen.npy", "mimi"), (told / "gen.npy", None), (tmp_path / "wide.npy", None),
                        (tmp_path / "few.npy", None)):
        assert codes_warnings(name, read_codes(name, None, codec)) == [] == inspect_codes(name, codec).warnings, name
    # a folder of such arrays: the first three said, the rest counted, each in the manifest
    folder = tmp_path / "corpus"
    folder.mkdir()
    for index in range(5):
        np.save(folder / f"g{index}.npy", np.random.default_rng(index).integers(0, 1024, (4, 16)))
    result = run("decode", folder, "-o", tmp_path / "out", "--manifest", tmp_path / "m.jsonl", weights=weights_file)
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert result.returncode == 0 and [line.split(":")[1].strip() for line in warned[:3]] == [
        str(folder / f"g{index}.npy") for index in range(3)], result.stderr
    assert warned[3:] == ["warning: the same for 2 more files (--manifest lists each file's warnings)"], result.stderr
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [len(row["warnings"]) for row in rows] == [1] * 5
    # inspect of the folder: its codes together
    assert inspect_codes(folder).warnings == [f"{folder}: {said.split(': ', 1)[1]}"]
    assert inspect_codes(folder, "mimi").warnings == []


@pytest.fixture(scope="module")
def encodec_weights(tmp_path_factory):
    from safetensors.numpy import save_file

    from mimi_cli.models.encodec.synthetic import random_state

    path = tmp_path_factory.mktemp("encodec") / "model.safetensors"
    save_file(random_state(), str(path))
    return path


def test_codec_bpe_trees_and_batches_of_one_decode_without_codec(tmp_path, weights_file, encodec_weights):
    """codec-bpe writes a tree of .npy codes with a codec_info.json at its top naming the codec; transformers'
    EnCodec gives [1, 1, K, frames], its Mimi [1, K, frames]. Such arrays decode as the codec named above them
    (they were read as Mimi's, and the 4-D ones refused), to the same audio as with --codec; a codec_info.json
    naming a codec mimi-cli does not run (DAC codes would pass for Mimi's, as noise) fails each file in one
    line, unless --codec says what the codes are; one that cannot be read fails as such."""
    import json

    rng = np.random.default_rng(0)
    env = {"ENCODEC_WEIGHTS": str(encodec_weights)}
    info = {"codec_type": "encodec", "codec_model": "facebook/encodec_24khz", "sampling_rate": 24000,
            "num_codebooks": 8, "codebook_size": 1024, "framerate": 75.0}
    tree = tmp_path / "codes" / "encodec_24khz" / "mono"
    (tree / "speaker1").mkdir(parents=True)
    np.save(tree / "speaker1" / "a_c0_t000000.npy", rng.integers(0, 1024, (1, 1, 8, 40)))
    (tree / "codec_info.json").write_text(json.dumps(info, indent=4))
    mimi_tree = tmp_path / "codes" / "mimi" / "mono"
    mimi_tree.mkdir(parents=True)
    np.save(mimi_tree / "b_c0_t000000.npy", rng.integers(0, 2048, (1, 8, 12)))
    (mimi_tree / "codec_info.json").write_text(json.dumps({**info, "codec_type": "mimi", "codec_model": "kyutai/mimi",
                                                           "codebook_size": 2048, "framerate": 12.5}))
    result = run("decode", tmp_path / "codes", "-r", "-o", tmp_path / "auto", weights=weights_file, env_extra=env)
    assert result.returncode == 0 and "2 decoded" in result.stderr, result.stderr
    for codec, folder, name, frames in (("encodec-24khz", tree / "speaker1", "a_c0_t000000", 40 * 320),
                                        ("mimi", mimi_tree, "b_c0_t000000", 12 * 1920)):
        told = tmp_path / f"{codec}.wav"
        result = run("decode", "--codec", codec, folder / f"{name}.npy", "-o", told, weights=weights_file,
                     env_extra=env)
        assert result.returncode == 0, result.stderr
        found = next((tmp_path / "auto").rglob(f"{name}.wav"))
        assert sf.info(found).frames == frames and found.read_bytes() == told.read_bytes()
    np.save(tmp_path / "two.npy", rng.integers(0, 1024, (2, 1, 8, 40)))
    result = run("decode", "--codec", "encodec-24khz", tmp_path / "two.npy", "-o", tmp_path / "two.wav", env_extra=env)
    assert result.returncode == 1 and "has shape [2, 1, 8, 40]; codes are [K, frames] or [C, K, frames]" in \
        result.stderr
    (tree / "codec_info.json").write_text(json.dumps({"codec_type": "dac", "codec_model": "descript/dac_44khz",
                                                      "sampling_rate": 44100, "codebook_size": 1024}))
    shown = tree / "speaker1" / "a_c0_t000000.npy"
    result = run("decode", shown, "-o", tmp_path / "dac.wav", env_extra=env)
    assert result.returncode == 1 and not (tmp_path / "dac.wav").exists()
    assert result.stderr == (f"error: {shown}: {tree / 'codec_info.json'}, which describes the codes below it, says "
                             "they are dac codes (descript/dac_44khz, 44100 Hz, 1024 per codebook), which mimi-cli "
                             "does not decode; correct or remove it, or give --codec (mimi, encodec-24khz)\n")
    result = run("decode", "--codec", "encodec-24khz", shown, "-o", tmp_path / "told.wav", env_extra=env)
    assert result.returncode == 0, result.stderr
    (tree / "codec_info.json").write_text(json.dumps({"codec_type": "encodec", "codebook_size": 1024}))
    result = run("decode", shown, "-o", tmp_path / "unsaid.wav", env_extra=env)  # it said "None Hz"
    assert result.returncode == 1 and "says they are encodec codes (1024 per codebook) but not their sampling_rate, " \
        "which mimi-cli needs to know which codec made them; correct or remove it" in result.stderr, result.stderr
    (tree / "codec_info.json").write_text("[")
    result = run("decode", shown, "-o", tmp_path / "bad.wav", env_extra=env)
    assert result.returncode == 1 and "codec_info.json, which describes the codes below it, is not JSON" in \
        result.stderr


def test_codes_from_standard_input_or_a_pipe_are_described_from_the_working_folder(tmp_path, weights_file,
                                                                                    encodec_weights):
    """An array from standard input or a pipe has no folder: its codec_info.json was looked for above the copy
    kept of it (in /proc or TMPDIR), so codes piped inside a codec-bpe tree of EnCodec codes decoded as Mimi's
    (6 s of noise for 1 s of codes). The working folder stands for the input's folder now, as it does for the
    paths in a list read from standard input."""
    import json

    tree = tmp_path / "encodec_24khz"
    tree.mkdir()
    (tree / "codec_info.json").write_text(json.dumps({"codec_type": "encodec", "sampling_rate": 24000,
                                                      "codebook_size": 1024}))
    np.save(tree / "a.npy", np.random.default_rng(0).integers(0, 1024, (8, 75)))
    env = {"ENCODEC_WEIGHTS": str(encodec_weights)}
    assert run("decode", tree / "a.npy", "-o", tmp_path / "file.wav", weights=weights_file,
               env_extra=env).returncode == 0
    assert sf.info(tmp_path / "file.wav").frames == 75 * 320  # EnCodec's
    for source, name in (("-", "stdin"), ("/dev/fd/0", "pipe")):  # a pipe: as <(cat a.npy) gives one
        result = subprocess.run([sys.executable, "-m", "mimi_cli", "decode", source, "-o", tmp_path / f"{name}.wav"],
                                input=(tree / "a.npy").read_bytes(), capture_output=True, cwd=tree, timeout=300,
                                env={**os.environ, **env, "MIMI_WEIGHTS": str(weights_file)})
        assert result.returncode == 0, result.stderr
        assert (tmp_path / f"{name}.wav").read_bytes() == (tmp_path / "file.wav").read_bytes()
    elsewhere = run("decode", "--codec", "mimi", tree / "a.npy", "-o", tmp_path / "told.wav", weights=weights_file)
    assert elsewhere.returncode == 0 and sf.info(tmp_path / "told.wav").frames == 75 * 1920  # --codec still rules


def test_codes_saved_as_pickles_are_named_and_never_loaded(tmp_path, weights_file):
    """torch.save's file (a zip holding data.pkl; a bare pickle before torch 1.6) and pickle.dump's: "it holds no
    arrays" before; now what it is, and how to save codes that load. Nothing is unpickled: a pickle that would
    run code when loaded leaves no trace."""
    import pickle
    import zipfile

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = pickle.dumps(Payload(), protocol=2)
    with zipfile.ZipFile(tmp_path / "codes.pt", "w") as archive:  # torch.save's layout
        archive.writestr("codes/data.pkl", data)
        archive.writestr("codes/data/0", bytes(80))
        archive.writestr("codes/version", "3\n")
    (tmp_path / "old.pt").write_bytes(data)
    (tmp_path / "codes.pkl").write_bytes(pickle.dumps(Payload(), protocol=5))
    for name, kind in (("codes.pt", "a PyTorch file (torch.save's pickle)"), ("old.pt", "a Python pickle"),
                       ("codes.pkl", "a Python pickle")):
        result = run("decode", tmp_path / name, "-o", tmp_path / "out.wav", weights=weights_file)
        assert result.returncode == 1 and result.stderr == (
            f"error: {tmp_path / name} is a pickle (what torch.save and pickle.dump write), which is never loaded: "
            "loading one can run code; save the codes with np.save(path, codes.numpy()) or safetensors' save_file\n")
        result = run("encode", tmp_path / name, "-o", tmp_path / "out.npz", weights=weights_file)  # given as audio
        assert result.returncode == 1 and f"; it holds {kind}, not audio;" in result.stderr, result.stderr
        result = run("inspect", tmp_path / name)  # given as weights
        assert result.returncode != 0 and "looks like a PyTorch pickle, which can run arbitrary code and is never " \
            "loaded" in result.stdout + result.stderr
    assert not marker.exists() and not any(tmp_path.glob("out.*"))


def test_a_codes_file_keeps_its_codec_and_says_so(tmp_path, weights_file, encoded):
    """--codec is for bare arrays; given with a codes file of another codec it is not used, with a warning."""
    result = run("decode", "--codec", "encodec-24khz", encoded, "-o", tmp_path / "a.wav", weights=weights_file,
                 env_extra={"ENCODEC_WEIGHTS": str(tmp_path / "absent.safetensors")})
    assert result.returncode == 0, result.stderr
    assert "holds Mimi codes, as it says; --codec encodec-24khz is for bare arrays (.npy) and was not used" in \
        " ".join(result.stderr.split())
    quiet = run("decode", encoded, "-o", tmp_path / "b.wav", weights=weights_file)
    assert quiet.returncode == 0 and "warning" not in quiet.stderr
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()


# -- pipes ----------------------------------------------------------------------------------------

def offline(weights) -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "MIMI_WEIGHTS": str(weights)}


def mimi(*args, stdin: bytes | None = None, weights=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mimi_cli", *map(str, args)], input=stdin, capture_output=True,
                          env=offline(weights), timeout=300)


def test_stdin_and_stdout_in_both_directions(tmp_path, weights_file, dialogue, encoded):
    wav = (dialogue / "left.wav").read_bytes()
    piped = mimi("encode", "-", "-o", "-", stdin=wav, weights=weights_file)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr.decode().startswith("standard input: 2.50 s → "), piped.stderr  # it said "-: 2.50 s → …"
    (tmp_path / "piped.npz").write_bytes(piped.stdout)
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "piped.npz").codes, CodesFile.load(encoded).codes)
    decoded = mimi("decode", "-", "-o", "-", stdin=piped.stdout, weights=weights_file)
    assert decoded.returncode == 0, decoded.stderr
    assert run("decode", encoded, "-o", tmp_path / "ref.wav", weights=weights_file).returncode == 0
    assert decoded.stdout == (tmp_path / "ref.wav").read_bytes()
    np.save(tmp_path / "gen.npy", CodesFile.load(encoded).codes[0])
    from_array = mimi("decode", "-", "-o", tmp_path / "gen.wav", stdin=(tmp_path / "gen.npy").read_bytes(),
                      weights=weights_file)
    assert from_array.returncode == 0, from_array.stderr


def test_what_a_c_library_prints_never_reaches_standard_output(tmp_path, weights_file):
    """libsndfile's reader of MIDI sample dumps (.sds) prints "Error A : 04" on descriptor 1 for a data packet that
    does not begin as one. It went into the codes `mimi encode x.sds -o -` wrote (which NumPy then refused) and
    into `roundtrip --json`'s JSON; it goes to standard error now."""
    import io

    path = tmp_path / "x.sds"
    sf.write(path, np.sin(np.arange(2000, dtype=np.float32) / 7) * 0.4, 16000, format="SDS")
    data = bytearray(path.read_bytes())
    packet = 21 + 36 * 127  # the 37th data packet, after the 21-byte header: F0 7E, channel, 02, number, data…
    assert data[packet:packet + 2] == b"\xf0\x7e"
    data[packet] = 0x04
    path.write_bytes(bytes(data))
    encoded = mimi("encode", path, "-o", "-", weights=weights_file)
    assert encoded.returncode == 0 and b"Error A" not in encoded.stdout, encoded.stderr  # (on stderr: libsndfile 1.2)
    with np.load(io.BytesIO(encoded.stdout), allow_pickle=False) as npz:
        assert npz["codes"].shape[:2] == (1, 8)
    metrics = mimi("roundtrip", path, "--json", weights=weights_file)
    assert metrics.returncode == 0 and json.loads(metrics.stdout)["input"] == str(path), metrics.stdout[:80]


def test_a_wav_whose_writer_could_not_seek_back(tmp_path, weights_file, dialogue, encoded):
    """`sox in.flac -t wav - tempo 1.1 | mimi encode -`: a WAV written to a pipe says 0 (or sox's 0x7ffff000)
    for its length; it was "no audio samples" (or "truncated"); now it is the same codes as the file's."""
    wav = bytearray((dialogue / "left.wav").read_bytes())
    field = wav.index(b"data") + 4
    for placeholder in (0, 0x7FFFF000):
        wav[field:field + 4] = placeholder.to_bytes(4, "little")
        piped = mimi("encode", "-", "-o", "-", stdin=bytes(wav), weights=weights_file)
        assert piped.returncode == 0, piped.stderr
        (tmp_path / "piped.npz").write_bytes(piped.stdout)
        np.testing.assert_array_equal(CodesFile.load(tmp_path / "piped.npz").codes, CodesFile.load(encoded).codes)


def test_streaming_pipe_chain(tmp_path, weights_file, dialogue):
    command = (f"{sys.executable} -m mimi_cli encode --stream - -o - < {dialogue / 'stereo.wav'} | "
               f"{sys.executable} -m mimi_cli decode --stream - -o - > {tmp_path / 'out.wav'}")
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=300, env=offline(weights_file))
    assert done.returncode == 0, done.stderr
    assert run("encode", "--stream", dialogue / "stereo.wav", "-o", tmp_path / "s.npz",
               weights=weights_file).returncode == 0
    assert run("decode", "--stream", tmp_path / "s.npz", "-o", tmp_path / "s.wav", weights=weights_file).returncode == 0
    # the samples of the file decode --stream writes (the pipe's WAV, sent as it is decoded, has no comment tag)
    piped, from_file = sf.read(tmp_path / "out.wav", dtype="int16"), sf.read(tmp_path / "s.wav", dtype="int16")
    assert piped[1] == from_file[1] and piped[0].shape == from_file[0].shape
    np.testing.assert_array_equal(piped[0], from_file[0])


@pytest.mark.parametrize("unbuffered", ["1", ""])
@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_a_reader_that_stops_early_ends_the_run_in_silence(weights_file, encoded, stream, unbuffered):
    """``mimi decode codes.npz -o - | head -c 44`` (a peek at the header): the reader chose to stop, so, as a Unix
    tool ended by SIGPIPE and as click's commands do, the run ends with exit code 1 and says nothing (it said
    "standard output was closed before the output was written" in one case, BrokenPipeError in another).
    Under PYTHONUNBUFFERED=1 standard output is a raw file, whose write stopped short when the reader went
    away mid-block: the rest was dropped in silence, and the run said it was done (exit 0)."""
    command = [sys.executable, "-m", "mimi_cli", "decode", str(encoded), "-o", "-", *stream]  # 120 KB: more than
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**offline(weights_file), "PYTHONUNBUFFERED": unbuffered})
    assert len(process.stdout.read(10)) == 10  # a pipe holds (64 KB), so the writer is still at work...
    time.sleep(1.0)  # ...and waits inside a write, part of which the pipe took
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 1
    assert "error" not in stderr and "Traceback" not in stderr and "Exception" not in stderr, stderr


@pytest.mark.parametrize("args, message", [
    (["encode", "-"], "give -o"),
    (["encode", "-", "-o", "x.npz", "--jobs", "2"], "drop --jobs"),
    # a worker read /dev/null there: "'-' reads standard input, which is the device /dev/null here", as its file
    (["roundtrip", str(SAMPLE_AUDIO / "music_24k.flac"), "-", "--jobs", "2"],
     "'-' (standard input) is read in this process; drop --jobs"),
    # -o a folder named the output "-.npz": standard input has no name of its own to give it
    (["encode", "-", "-o", "out/"], "standard input has no name of its own to give its output in the folder out/: "
                                    "give -o a file's name (out/NAME.npz), or - for standard output"),
    (["decode", "-", "-o", "out/"], "(out/NAME.wav)"),
])
def test_stdin_misuse_is_one_line(tmp_path, weights_file, args, message):
    result = mimi(*args, stdin=b"RIFF", weights=weights_file)
    assert result.returncode != 0 and message in result.stderr.decode()
    assert b"Traceback" not in result.stderr


def test_empty_stdin_is_one_line(tmp_path, weights_file):
    result = mimi("encode", "-", "-o", tmp_path / "x.npz", stdin=b"", weights=weights_file)
    assert result.returncode == 1 and b"standard input is empty" in result.stderr
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("args, code, message", [
    (["encode", "-", "-o", "x.npz"], 1, "cannot read standard input as audio (libsndfile: "),
    (["roundtrip", "-"], 1, "cannot read standard input as audio (libsndfile: "),
    (["decode", "-", "-o", "x.wav"], 1, "standard input is not a codes file"),
    (["inspect", "-"], 2, "standard input is not a codes file"),
])
@pytest.mark.parametrize("random", [True, False])
def test_a_pipe_that_never_ends_is_judged_by_its_first_bytes(tmp_path, weights_file, args, code, message, random):
    """``cat /dev/urandom | mimi encode -``: a pipe was copied whole before any reader looked at it, so one that
    never ends was copied until the disk was full (TMPDIR's, at about 1 GB/s). Its first MiB is looked at now,
    and the run ends having read little more than that."""
    fill = np.random.default_rng(0).bytes(1 << 16) if random else bytes(1 << 16)
    exit_code, stderr, sent = run_on_an_endless_pipe(*args, weights=weights_file, cwd=tmp_path, fill=fill)
    assert exit_code == code and message in stderr and "Traceback" not in stderr, stderr
    assert sent < 8 << 20, f"{sent:,} bytes were read"
    assert not list(tmp_path.iterdir())


def bash(command: str, weights) -> subprocess.CompletedProcess:
    """``command`` in bash, where ``<(...)`` hands mimi a pipe's name (``/dev/fd/63``)."""
    return subprocess.run(["bash", "-c", command.replace("mimi ", f"{sys.executable} -m mimi_cli ")],
                          capture_output=True, text=True, timeout=300, env=offline(weights))


@pytest.mark.parametrize("command, name", [
    ("encode", "x.npz"), ("encode --stream", "x.npz"), ("encode --channels split", "x.npz"), ("roundtrip", None)])
def test_a_pipe_by_name_reads_like_the_file(tmp_path, weights_file, dialogue, command, name):
    """``<(command)``: read once, front to back, where the readers seek (it used to fail, or crash roundtrip)."""
    wav = dialogue / "stereo.wav"
    out = f"-o {tmp_path / name}" if name else "--json"
    piped = bash(f"mimi {command} <(cat {wav}) {out}", weights_file)
    assert piped.returncode == 0, piped.stderr
    direct = bash(f"mimi {command} {wav} {out.replace('x.npz', 'y.npz')}", weights_file)
    assert direct.returncode == 0, direct.stderr
    if name:
        piped_codes, direct_codes = (CodesFile.load(tmp_path / n).codes for n in ("x.npz", "y.npz"))
        np.testing.assert_array_equal(piped_codes, direct_codes)
    else:  # the same metrics, but for the input's name and the times
        import json

        metrics = [json.loads(r.stdout) for r in (piped, direct)]
        assert metrics[0].pop("input").startswith("/dev/fd/") and metrics[1].pop("input") == str(wav)
        for m in metrics:
            del m["encode_rtf"], m["decode_rtf"]
        assert metrics[0] == metrics[1] and metrics[0]["frames"] > 0


def test_an_npz_of_one_array_decodes_as_that_array(tmp_path, weights_file, encoded):
    """Another tool's container, `np.savez("x.npz", audio_codes=codes)`: "not a complete codes file: missing
    codes, frame_rate…". Its one array is a bare array now (the same audio as the .npy); an archive of several
    arrays names them; the member's header is checked before anything is decompressed."""
    import struct
    import zipfile

    codes = CodesFile.load(encoded).codes[0]
    np.save(tmp_path / "gen.npy", codes)
    np.savez_compressed(tmp_path / "lm.npz", audio_codes=codes)
    for source in ("gen.npy", "lm.npz"):
        result = run("decode", tmp_path / source, "-o", tmp_path / f"{source}.wav", weights=weights_file)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "gen.npy.wav").read_bytes() == (tmp_path / "lm.npz.wav").read_bytes()
    np.savez(tmp_path / "two.npz", codes=codes.astype(np.float32), logits=codes)
    two = run("decode", tmp_path / "two.npz", "-o", tmp_path / "two.wav", weights=weights_file)
    assert two.returncode == 1 and "is not a codes file: it holds codes, logits; for codes alone" in two.stderr
    header = repr({"descr": "<i8", "fortran_order": False, "shape": (64, 32, 10**9)}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(10**6))
    bomb = run("decode", tmp_path / "bomb.npz", "-o", tmp_path / "bomb.wav", weights=weights_file)
    assert bomb.returncode == 1 and "bomb.npz (x): its header declares [64, 32, 1000000000]" in bomb.stderr
    assert not (tmp_path / "bomb.wav").exists() and not (tmp_path / "two.wav").exists()
    np.savez(tmp_path / "float.npz", x=codes.astype(np.float32))
    floats = run("decode", tmp_path / "float.npz", "-o", tmp_path / "f.wav", weights=weights_file)
    assert floats.returncode == 1 and "float.npz (x): holds float32 values; codes are integers" in floats.stderr


def test_a_safetensors_file_of_one_tensor_decodes_as_that_tensor(tmp_path, weights_file, encoded):
    """A language model's codes saved with safetensors (`save_file({"codes": t}, …)`, torch's safe format) were
    "not a codes file; it holds .safetensors weights". Its one tensor is a bare array now, any integer dtype
    (the same audio as the .npy), checked as one; a file of several tensors is weights, as before."""
    from safetensors.numpy import save_file

    codes = CodesFile.load(encoded).codes[0]
    np.save(tmp_path / "gen.npy", codes)
    save_file({"audio_codes": codes.astype(np.int32)}, str(tmp_path / "gen.safetensors"))
    for source in ("gen.npy", "gen.safetensors"):
        result = run("decode", tmp_path / source, "-o", tmp_path / f"{source}.wav", weights=weights_file)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "gen.npy.wav").read_bytes() == (tmp_path / "gen.safetensors.wav").read_bytes()
    # a header whose length's first byte is "[" or "{" (a writer that does not pad it to 8 bytes) was taken
    # for JSON text: "is not JSON ('utf-8' codec can't decode byte …)"
    for first in (ord("["), ord("{")):
        header = json.dumps({"codes": {"dtype": "I64", "shape": list(codes.shape),
                                       "data_offsets": [0, codes.size * 8]}}).encode().ljust(256 + first)
        (tmp_path / "odd.safetensors").write_bytes((256 + first).to_bytes(8, "little") + header
                                                   + codes.astype("<i8").tobytes())
        odd = run("decode", tmp_path / "odd.safetensors", "-o", tmp_path / "odd.wav", "-f", weights=weights_file)
        assert odd.returncode == 0 and (tmp_path / "odd.wav").read_bytes() == (tmp_path / "gen.npy.wav").read_bytes(), \
            odd.stderr
    save_file({"logits": codes.astype(np.float32)}, str(tmp_path / "float.safetensors"))
    floats = run("decode", tmp_path / "float.safetensors", "-o", tmp_path / "f.wav", weights=weights_file)
    assert floats.returncode == 1 and "float.safetensors (logits): holds float32 values; codes are integers" \
        in floats.stderr
    save_file({"a": codes, "b": codes}, str(tmp_path / "two.safetensors"))
    two = run("decode", tmp_path / "two.safetensors", "-o", tmp_path / "two.wav", weights=weights_file)
    assert two.returncode == 1 and "it holds .safetensors weights" in two.stderr
    assert not (tmp_path / "f.wav").exists() and not (tmp_path / "two.wav").exists()


def test_a_json_array_decodes_as_that_array(tmp_path, weights_file, encoded):
    """A language model's codes as an HTTP service returns them, ``[[…], […]]`` saved to a file or piped in, were
    "not a codes file; it holds text". A JSON array of arrays of integers is a bare array now (the same audio as
    the .npy); what is not a rectangle of integers, or not JSON, is one line and writes nothing."""
    codes = CodesFile.load(encoded).codes[0]
    np.save(tmp_path / "gen.npy", codes)
    (tmp_path / "gen.json").write_text("\n " + json.dumps(codes.tolist(), indent=1))
    for source in ("gen.npy", "gen.json"):
        result = run("decode", tmp_path / source, "-o", tmp_path / f"{source}.wav", weights=weights_file)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "gen.npy.wav").read_bytes() == (tmp_path / "gen.json.wav").read_bytes()
    piped = subprocess.run([sys.executable, "-m", "mimi_cli", "decode", "-", "-o", "-"], capture_output=True,
                           input=(tmp_path / "gen.json").read_bytes(), env={**os.environ, "MIMI_WEIGHTS": str(
                               weights_file), "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert piped.returncode == 0 and piped.stdout == (tmp_path / "gen.json.wav").read_bytes(), piped.stderr
    shown = json.loads(run("inspect", tmp_path / "gen.json", "--json").stdout)
    assert (shown["kind"], shown["codebooks"], shown["frames"]) == ("a bare integer array", *codes.shape)
    # a folder of them is not searched for JSON (more often metadata there): the refusal says how to give them
    (tmp_path / "generated").mkdir()
    (tmp_path / "gen.json").rename(tmp_path / "generated" / "gen.json")
    refused = run("decode", tmp_path / "generated", "-o", tmp_path / "out/", weights=weights_file)
    assert refused.returncode == 1 and f"a quoted glob: '{tmp_path / 'generated' / '*.json'}'" in refused.stderr
    globbed = run("decode", tmp_path / "generated" / "*.json", "-o", tmp_path / "out/", weights=weights_file)
    assert globbed.returncode == 0 and (tmp_path / "out" / "gen.wav").read_bytes() == \
        (tmp_path / "gen.npy.wav").read_bytes(), globbed.stderr
    # inspect reads them as decode does: the folder gets decode's hint (it was "weights folder … holds no
    # .safetensors file"), and the glob it gives is read ("weights file …/*.json does not exist")
    refused = run("inspect", tmp_path / "generated")
    assert refused.returncode == 2 and f"a quoted glob: '{tmp_path / 'generated' / '**' / '*.json'}'" in \
        refused.stderr and len(refused.stderr.splitlines()) == 1, refused.stderr
    globbed = json.loads(run("inspect", tmp_path / "generated" / "**" / "*.json", "--json").stdout)
    assert (globbed["kind"], globbed["codebooks"], globbed["frames"]) == ("1 codes file matched", *codes.shape)
    (tmp_path / "generated" / "gen.json").rename(tmp_path / "gen.json")
    # a service's response, an object holding the array, was "not a codes file": its "codes", or its one array
    for name, document in (("codes", {"codes": codes.tolist(), "sample_rate": 24000, "tokens": 7}),
                           ("lone", {"audio_codes": codes.tolist(), "model": "moshi"})):
        (tmp_path / f"{name}.json").write_text(json.dumps(document))
        result = run("decode", tmp_path / f"{name}.json", "-o", tmp_path / f"{name}.wav", weights=weights_file)
        assert result.returncode == 0 and (tmp_path / f"{name}.wav").read_bytes() == \
            (tmp_path / "gen.npy.wav").read_bytes(), result.stderr
    for text, said in (("[[1, 2, 3], [4, 5]]", "holds rows of different lengths"),
                       ("[[1.5, 2]]", "holds float64 values; codes are integers (logits"),
                       ("[[true, false]]", "holds bool values"), ('[["a"]]', "holds values that are not numbers"),
                       ("[[" + "1," * 3 + str(2**70) + "]]", "holds values that are not numbers"),
                       ("[" * 100_000, "is not JSON (nested too deeply)"), ("[[1, 2]", "is not JSON ("),
                       ("[" * 70 + "1" + "]" * 70, "nests its arrays 70 deep"),  # was "rows of different lengths"
                       ("[]", "holds no codes (an empty array)"), ("[[4096, 1]]", "holds values 1..4096"),
                       ('{"a": [[1]], "b": [[2]]}', "is a JSON object ('a', 'b') without a codes array or a lone "
                                                    "array; give the array itself (jq .KEY)"),
                       ('{"codes": "x"}', "holds values that are not numbers")):
        (tmp_path / "bad.json").write_text(text)
        result = run("decode", tmp_path / "bad.json", "-o", tmp_path / "bad.wav", weights=weights_file)
        assert result.returncode == 1 and said in result.stderr and len(result.stderr.splitlines()) == 1, \
            (text[:20], result.stderr)
        assert not (tmp_path / "bad.wav").exists()


def test_json_lines_a_frame_each_decode_as_the_array_and_as_they_come(tmp_path, weights_file, full_model, encoded):
    """What a model prints as it generates, a frame a line (``[K]`` codes, ``[C][K]`` for several streams, or an
    object holding them), is the array of those frames: ``load_codes`` gives the array saved as .npy, and inspect
    and decode read it from a file or a pipe (it was "is not JSON (Extra data …)"). ``decode --stream -`` decodes
    each frame as its line comes, a frame a step: the audio of the first frames reaches standard output while the
    next are still to be written (a pipe that stayed open), equal to the Python API's stream decoder at one frame
    a step; a bad line later fails the run in one line naming it, and a file output is then not written; codes that
    all fit EnCodec's codebook are warned of once they have all come, as a file's are."""
    from mimi_cli.codes import load_codes

    codes = CodesFile.load(encoded).codes[0][:, :12]  # [K, frames]
    lines = [json.dumps(frame.tolist()) + "\n" for frame in codes.T]
    (tmp_path / "gen.jsonl").write_text(lines[0] + "\n" + "".join(
        json.dumps({"step": i, "codes": frame.tolist()}) + "\r\n" for i, frame in enumerate(codes.T[1:], 1)))
    np.testing.assert_array_equal(load_codes(tmp_path / "gen.jsonl").codes, codes[None])
    (tmp_path / "two.jsonl").write_text("".join(json.dumps([f.tolist(), f[::-1].tolist()]) + "\n" for f in codes.T))
    np.testing.assert_array_equal(load_codes(tmp_path / "two.jsonl").codes, np.stack([codes, codes[::-1]]))
    assert not load_codes(tmp_path / "gen.jsonl").bare  # its axes are said: no "[frames, K]?" warning
    for text, said in (("[1, 2]\n[3]\n", "line 2 holds an array of shape [1], not [2] as line 1"),
                       ("[1, 2]\nnot json\n", "line 2 is not JSON (")):
        (tmp_path / "bad.jsonl").write_text(text)
        with pytest.raises(MimiError, match=re.escape(said)):
            load_codes(tmp_path / "bad.jsonl")

    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}
    live = subprocess.Popen([sys.executable, "-m", "mimi_cli", "decode", "--stream", "-", "-o", "-", "--raw",
                             "s16le"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        live.stdin.write("".join(lines[:3]).encode())
        live.stdin.flush()
        first = b""
        while len(first) < 2 * 1920:  # a frame's audio, while the pipe is still open: decoded as it came
            assert select.select([live.stdout], [], [], 120)[0], "no audio before the rest of the codes came"
            first += os.read(live.stdout.fileno(), 2 * 1920 - len(first))
        live.stdin.write("".join(lines[3:]).encode())
        live.stdin.close()
        rest, errors = live.stdout.read(), live.stderr.read()
    finally:
        live.kill() if live.poll() is None else None
    assert live.wait(60) == 0, errors
    decoder = full_model.stream_decoder(frames_per_step=1)
    expected = np.concatenate([decoder.push(codes[:, i:i + 1]) for i in range(codes.shape[1])] + [decoder.flush()])
    reference = io.BytesIO()
    sf.write(reference, np.clip(expected, -1, 1), 24000, format="RAW", subtype="PCM_16", endian="LITTLE")
    assert first + rest == reference.getvalue()

    bad = "".join(lines[:4]) + json.dumps([5000] * 8) + "\n" + "".join(lines[4:])
    failed = subprocess.run([sys.executable, "-m", "mimi_cli", "decode", "--stream", "-", "-o", tmp_path / "x.wav"],
                            input=bad.encode(), capture_output=True, env=env, timeout=300)
    assert failed.returncode == 1 and failed.stderr.decode() == "error: standard input: line 5 holds values " \
        "5000..5000; Mimi codes are 0..2047 (strip special tokens or offsets first)\n", failed.stderr
    assert not (tmp_path / "x.wav").exists()
    small = "".join(json.dumps((frame % 1024).tolist()) + "\n" for frame in codes.T)  # EnCodec's, by their range
    warned = subprocess.run([sys.executable, "-m", "mimi_cli", "decode", "--stream", "-", "-o", tmp_path / "y.wav"],
                            input=small.encode(), capture_output=True, env=env, timeout=300)
    assert warned.returncode == 0 and "warning: standard input: every code is below 1024, as EnCodec 24 kHz's " \
        "are" in warned.stderr.decode(), warned.stderr
    shown = json.loads(run("inspect", tmp_path / "two.jsonl", "--json").stdout)
    assert (shown["kind"], shown["streams"], shown["codebooks"], shown["frames"]) == (
        "JSON lines of a frame each (a bare array)", 2, 8, 12)


def test_encode_writes_json_lines_and_reads_raw_samples_as_they_come(tmp_path, weights_file, dialogue):
    """encode writes codes as JSON lines, a frame each (-o x.jsonl, or -o - --suffix .jsonl): the codes of the
    .npy, one frame's [K] a line. ``encode --stream --raw ENC -`` reads standard input's samples as they come,
    not copied whole first, and with -o - --suffix .jsonl each step's frames are written as they are made: lines
    reach standard output while the pipe is still open, and in all they are ``encode --stream``'s codes of the
    same samples in a file. A sample cut at the end, or a WAV given as samples, ends it in one line."""
    pcm, rate = sf.read(dialogue / "left.wav", dtype="float32")
    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}

    def encode(*args, given: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mimi_cli", "encode", *map(str, args)], input=given, env=env,
                              capture_output=True, timeout=300)

    for args in ([tmp_path / "a.npy"], [tmp_path / "a.jsonl"], ["-", "--suffix", ".jsonl"]):
        made = encode(dialogue / "left.wav", "-o", *args)
        assert made.returncode == 0, made.stderr
    lines = (tmp_path / "a.jsonl").read_bytes()
    assert encode(dialogue / "left.wav", "-o", "-", "--suffix", "jsonl").stdout == lines
    assert lines.splitlines() == [json.dumps(frame.tolist(), separators=(",", ":")).encode()
                                  for frame in np.load(tmp_path / "a.npy").T]

    whole = encode("--stream", dialogue / "left.wav", "-o", "-", "--suffix", ".jsonl")
    assert whole.returncode == 0, whole.stderr
    live = subprocess.Popen([sys.executable, "-m", "mimi_cli", "encode", "--stream", "--raw", f"f32le:{rate}", "-",
                             "-o", "-", "--suffix", ".jsonl"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        live.stdin.write(pcm[:int(1.5 * rate)].tobytes())  # 18 frames: a step of 16 made while the rest is to come
        live.stdin.flush()
        first = b""
        while not first.endswith(b"\n"):
            assert select.select([live.stdout], [], [], 120)[0], "no codes before the rest of the samples came"
            first += os.read(live.stdout.fileno(), 1 << 16)
        live.stdin.write(pcm[int(1.5 * rate):].tobytes())
        live.stdin.close()
        rest, errors = live.stdout.read(), live.stderr.read()
    finally:
        live.kill() if live.poll() is None else None
    assert live.wait(60) == 0, errors
    assert first + rest == whole.stdout and whole.stdout.count(b"\n") == 32

    for given, said in ((pcm[:1000].tobytes() + b"\0\0", "error: standard input ends 2 bytes into a sample of 4 "
                                                          "bytes: check --raw f32le:24000:1, or it was cut short"),
                        ((dialogue / "left.wav").read_bytes(), "error: standard input holds audio (WAV), not "
                                                                "headerless samples as --raw reads them")):
        refused = encode("--stream", "--raw", "f32le", "-", "-o", tmp_path / "x.npz", given=given)
        assert refused.returncode == 1 and refused.stderr.decode().startswith(said), refused.stderr
        assert refused.stderr.count(b"\n") == 1 and not (tmp_path / "x.npz").exists()


def test_a_file_named_dash_is_named_as_unix_names_it(tmp_path, weights_file, dialogue):
    """`./-` names a file called "-" (as with cat or rm); it was read as standard input ("standard input is
    empty"), as a Path makes ./- into -. Now it is that file, as input and as output."""
    (tmp_path / "-").write_bytes((dialogue / "left.wav").read_bytes())
    encoded = run("encode", "./-", "-o", "./-.npz", weights=weights_file, cwd=tmp_path)
    assert encoded.returncode == 0, encoded.stderr
    assert run("encode", dialogue / "left.wav", "-o", tmp_path / "direct.npz", weights=weights_file).returncode == 0
    got, want = (CodesFile.load(tmp_path / name).codes for name in ("-.npz", "direct.npz"))
    np.testing.assert_array_equal(got, want)
    (tmp_path / "-").unlink()
    (tmp_path / "-").mkdir()
    decoded = run("decode", "./-.npz", "-o", "./-/", weights=weights_file, cwd=tmp_path)
    assert decoded.returncode == 0 and (tmp_path / "-" / "-.wav").is_file(), decoded.stderr


def test_codes_and_arrays_by_pipe_decode(tmp_path, weights_file, encoded):
    np.save(tmp_path / "gen.npy", CodesFile.load(encoded).codes[0])
    for source in (encoded, tmp_path / "gen.npy"):
        assert run("decode", source, "-o", tmp_path / "ref.wav", "-f", weights=weights_file).returncode == 0
        done = bash(f"mimi decode <(cat {source}) -o {tmp_path / 'piped.wav'} -f", weights_file)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "piped.wav").read_bytes() == (tmp_path / "ref.wav").read_bytes()


def test_a_named_pipe_is_read_once(tmp_path, weights_file, dialogue, encoded):
    import os
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes((dialogue / "left.wav").read_bytes()))
    writer.start()
    result = run("encode", fifo, "-o", tmp_path / "x.npz", weights=weights_file)
    writer.join(timeout=60)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "x.npz").codes, CodesFile.load(encoded).codes)


@pytest.mark.parametrize("command, message", [
    ("mimi encode <(cat {wav})", "is a pipe, with no folder to write beside it; give -o: a file, or - for"),
    ("mimi encode <(cat {wav}) -o {tmp}/", "/dev/fd/63 (a pipe, as <(command) names it) has no name of its own"),
    ("mimi encode <(cat {wav}) <(cat {wav}) -o {tmp}/ --jobs 2", "only this process can read; drop --jobs"),
    ("mimi encode <(head -c 5000 /dev/urandom) -o {tmp}/x.npz", "cannot read /dev/fd/"),
    ("mimi encode - -o {tmp}/x.npz < <(head -c 5000 /dev/urandom)", "cannot read standard input as audio"),
    ("mimi encode /dev/zero -o {tmp}/x.npz", "/dev/zero is a device, not an audio file"),
    # (a zip reader looked for /dev/zero's end until the machine's memory ran out)
    ("ulimit -v 4000000; mimi decode /dev/zero -o {tmp}/x.wav", "/dev/zero is a device, not a codes file"),
    # (its copy, kept to be read again, grew until the disk was full: here, until a 100 MB file-size limit)
    ("ulimit -f 100000; mimi encode - -o {tmp}/x.npz < /dev/zero", "which is the device /dev/zero here; pipe the"),
    ("mimi encode {wav} -o {tmp}/x.npz --weights <(cat {weights})", "is a pipe (FIFO), not a file; save them"),
    ("mimi inspect <(cat {weights})", "is a pipe (FIFO), not a file; save them"),
])
def test_pipe_misuse_is_one_line(tmp_path, weights_file, dialogue, command, message):
    command = command.format(wav=dialogue / "left.wav", tmp=tmp_path, weights=weights_file)
    result = bash(command, weights_file)
    said = result.stderr + result.stdout
    assert result.returncode != 0 and message in said and len(said.splitlines()) == 1, said
    assert "Traceback" not in said and "mimi-input-" not in said
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob(".*partial*"))


def test_a_codes_file_written_by_hand_as_documented(tmp_path, weights_file):
    """docs/codes-format.md's hand-written codes file (a language model's output): with an empty weights_id it
    decodes without a word; with a name that is not the weights' own ("sha256:unknown", which the example
    wrote before) every decode warned of other weights."""
    codes = np.random.default_rng(0).integers(0, 2048, (8, 20))
    for weights_id, warned in (("", False), ("sha256:unknown", True)):
        np.savez(tmp_path / "generated.npz", codes=codes.astype(np.uint16)[None], format_version=np.array(1),
                 sample_rate=np.array(24000), frame_rate=np.array(12.5), codebook_size=np.array(2048),
                 num_samples=np.array(codes.shape[1] * 1920), source_sample_rate=np.array(24000),
                 source_channels=np.array(1), weights_id=np.array(weights_id))
        result = run("decode", tmp_path / "generated.npz", "-o", tmp_path / "out.wav", "-f", weights=weights_file)
        assert result.returncode == 0, result.stderr
        assert ("was encoded with weights sha256:unknown" in result.stderr) == warned, result.stderr
        assert sf.info(tmp_path / "out.wav").frames == 20 * 1920


def test_each_levels_use_is_counted_as_a_naive_count_would():
    """inspect's counts of each code at each level (one count over level-offset codes for a table's many short
    rows; a level at a time for a long file, whose codes as int64 would take four times their memory) equal a
    count per stream, level and code."""
    from mimi_cli.inspect import _level_counts

    rng = np.random.default_rng(3)
    for shape, size in (((1, 8, 13), 2048), ((2, 4, 7), 1024), ((1, 32, 40000), 2048)):
        codes = rng.integers(0, size, shape).astype(np.uint16)
        naive = np.zeros((shape[1], size), np.int64)
        for stream in codes:
            for level, row in enumerate(stream):
                np.add.at(naive[level], row.astype(np.int64), 1)
        np.testing.assert_array_equal(_level_counts(codes, size), naive)
    assert codes.size > 1 << 20  # the last took the long file's way
