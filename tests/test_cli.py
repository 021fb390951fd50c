"""The `mimi` command as a user runs it: real processes, real files, real exit codes."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import typer.main
from conftest import SAMPLE_AUDIO, run, speech_at

from mimi_cli.cli import app
from mimi_cli.errors import MimiError
from mimi_cli.weights import weights_id


def test_encode_then_decode(tmp_path, clip_16k, weights_file, full_model):
    src = tmp_path / clip_16k.name
    src.write_bytes(clip_16k.read_bytes())
    encoded = run("encode", src, weights=weights_file)
    assert encoded.returncode == 0, encoded.stderr
    codes_path = tmp_path / "speech.npz"
    assert "2.50 s → 32 frames × 8 codebooks (1.10 kbps)" in encoded.stderr
    assert "resampled from 16000 Hz to 24000 Hz" in encoded.stderr
    with np.load(codes_path, allow_pickle=False) as npz:
        codes = npz["codes"]
        assert codes.shape == (1, 8, 32) and codes.dtype == np.uint16
        assert int(npz["num_samples"]) == 60000 and int(npz["source_sample_rate"]) == 16000
        assert str(npz["weights_id"]) == weights_id(weights_file)
    # the CLI's codes are the library's codes for the same (resampled) audio
    from mimi_cli.audio import read_audio, to_mono

    expected = full_model.encode(to_mono(read_audio(src), 24000))
    np.testing.assert_array_equal(codes[0], expected)

    decoded = run("decode", codes_path, weights=weights_file)
    assert decoded.returncode == 0, decoded.stderr
    audio, rate = sf.read(tmp_path / "speech.decoded.wav", dtype="float32")
    assert rate == 24000 and len(audio) == 60000  # trimmed to the original length
    reference = full_model.decode(codes[0].astype(np.int64))[:60000]
    np.testing.assert_allclose(audio, np.clip(reference, -1, 1), atol=1 / 32768 + 1e-6)  # 16-bit WAV
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speech.decoded.wav", "speech.npz", "speech.wav"]


def test_stereo_44k_and_32_codebooks(tmp_path, weights_file):
    out = tmp_path / "codes.npz"
    result = run("encode", SAMPLE_AUDIO / "speech_44k_stereo.wav", "-o", out, "-n", "32", "--threads", "1",
                 weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert "2 channels downmixed to mono" in result.stderr and "from 44100 Hz" in result.stderr
    assert "× 32 codebooks (4.40 kbps)" in result.stderr
    with np.load(out) as npz:
        assert npz["codes"].shape[1] == 32 and int(npz["source_channels"]) == 2


def test_one_frame_one_codebook_in_the_singular(tmp_path, weights_file):
    short = tmp_path / "short.wav"
    sf.write(short, np.full(100, 0.1, np.float32), 24000)  # 4 ms: one 80 ms frame
    result = run("encode", short, "-n", "1", weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert "0.00 s → 1 frame × 1 codebook (0.14 kbps)" in result.stderr
    result = run("encode", tmp_path, "-n", "1", "-f", weights=weights_file)  # a folder of one file
    assert result.returncode == 0, result.stderr
    assert "1 file, 0 already done; 1 worker" in result.stderr and "1 encoded (0.0 s of audio)" in result.stderr


def test_decode_at_another_rate_and_weights_mismatch_warning(tmp_path, clip, weights_file):
    codes_path = tmp_path / "c.npz"
    assert run("encode", clip, "-o", codes_path, "-n", "2", weights=weights_file).returncode == 0
    with np.load(codes_path) as npz:
        arrays = dict(npz)
    arrays["weights_id"] = np.array("sha256:ffffffffffffffff")
    np.savez(codes_path, **arrays)
    result = run("decode", codes_path, "-o", tmp_path / "o.flac", "--sample-rate", "16000", weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert "warning: " in result.stderr and "sha256:ffffffffffffffff" in result.stderr
    audio, rate = sf.read(tmp_path / "o.flac")
    assert rate == 16000 and len(audio) == 40000


def test_roundtrip_table_and_json(tmp_path, clip, weights_file):
    table = run("roundtrip", clip, "-o", tmp_path / "rt.wav", weights=weights_file)
    assert table.returncode == 0, table.stderr
    for row in ("bitrate", "1.10 kbps", "SI-SDR", "log-mel distance", "encode real-time factor",
                "decode real-time factor"):
        assert row in table.stdout
    assert sf.info(tmp_path / "rt.wav").frames == 60000
    as_json = run("roundtrip", clip, "--json", "-n", "4", weights=weights_file)
    metrics = json.loads(as_json.stdout)
    assert metrics["codebooks"] == 4 and metrics["bitrate_kbps"] == 0.55 and metrics["frames"] == 32
    assert {"si_sdr_db", "log_mel_distance", "encode_rtf", "decode_rtf"} <= metrics.keys()


def test_roundtrip_o_a_folder_receives_the_audio_as_decode_does(tmp_path, clip, weights_file):
    """`roundtrip clip.wav -o out/` said "cannot write audio as a file without extension". A folder (existing, or
    written with a trailing / and made once the audio is) receives clip's name with .wav, as decode's -o does."""
    assert run("roundtrip", clip, "-o", tmp_path / "rt.wav", weights=weights_file).returncode == 0
    made = run("roundtrip", clip, "-o", f"{tmp_path / 'new'}/", weights=weights_file)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "new" / "speech.wav").read_bytes() == (tmp_path / "rt.wav").read_bytes()
    again = run("roundtrip", clip, "-o", tmp_path / "new", weights=weights_file)  # an existing folder, no slash
    assert again.returncode == 1 and f"{tmp_path / 'new' / 'speech.wav'} already exists" in again.stderr
    assert run("roundtrip", clip, "-o", tmp_path / "new", "-f", weights=weights_file).returncode == 0
    piped = subprocess.run([sys.executable, "-m", "mimi_cli", "roundtrip", "-", "-o", f"{tmp_path / 'other'}/"],
                           input=clip.read_bytes(), capture_output=True, text=False)
    assert piped.returncode == 1 and b"standard input has no name of its own" in piped.stderr
    assert not (tmp_path / "other").exists()


def test_roundtrip_of_several_files_shows_each_and_their_mean(tmp_path, clip, weights_file):
    """A test set: each file's metrics as its own round trip gives them, their mean over the files done, each
    failure a line and exit 1; -o naming one file is refused with several."""
    pcm, rate = sf.read(clip, dtype="float32")
    other = tmp_path / "other.wav"
    sf.write(other, pcm[::-1] * 0.5, rate)
    result = run("roundtrip", clip, other, tmp_path / "missing.wav", "--json", "-n", "4", weights=weights_file)
    assert result.returncode == 1 and "failed: " in result.stderr and "missing.wav does not exist" in result.stderr
    report = json.loads(result.stdout)
    assert report["files"][2] == {"input": str(tmp_path / "missing.wav"),
                                  "error": f"{tmp_path / 'missing.wav'} does not exist"}
    timing = ("encode_rtf", "decode_rtf")
    for row, path in zip(report["files"][:2], (clip, other), strict=True):
        alone = json.loads(run("roundtrip", path, "--json", "-n", "4", weights=weights_file).stdout)
        assert {k: v for k, v in row.items() if k not in timing} == {k: v for k, v in alone.items() if k not in timing}
    mean, rows = report["mean"], report["files"][:2]
    assert mean["files"] == 2 and mean["duration_s"] == pytest.approx(rows[0]["duration_s"] + rows[1]["duration_s"])
    for key in ("si_sdr_db", "log_mel_distance"):
        assert mean[key] == pytest.approx((rows[0][key] + rows[1][key]) / 2, abs=0.006)  # shown, rounded
    assert rows[0]["si_sdr_db"] != rows[1]["si_sdr_db"]
    for key in timing:  # the time over the audio, all files together
        together = sum(r[key] * r["duration_s"] for r in rows) / sum(r["duration_s"] for r in rows)
        assert mean[key] == pytest.approx(together, abs=2e-4)
    # files of a few samples: "0.0 s" each in milliseconds, so the factors' mean is the files' own mean
    for n in (3, 7):
        sf.write(tmp_path / f"tiny{n}.wav", pcm[:n], rate)
    tiny = run("roundtrip", tmp_path / "tiny3.wav", tmp_path / "tiny7.wav", "--json", weights=weights_file)
    assert tiny.returncode == 0, tiny.stderr
    tiny = json.loads(tiny.stdout)
    for key in timing:
        assert tiny["mean"][key] == pytest.approx(sum(r[key] for r in tiny["files"]) / 2, abs=2e-4)
        assert tiny["mean"][key] > 1  # a few samples take longer than they last
    shown = run("roundtrip", tmp_path / "tiny3.wav", tmp_path / "tiny7.wav", weights=weights_file)
    assert shown.returncode == 0 and shown.stderr == "" and "× real time), decode" in shown.stdout, shown.stderr
    table = run("roundtrip", clip, other, "-n", "1", weights=weights_file, env_extra={"COLUMNS": "300"})  # whole paths
    assert table.returncode == 0 and "mean of 2" in table.stdout and "other.wav" in table.stdout, table.stderr
    assert "round trips, 1 codebook (0.138 kbps)" in table.stdout, table.stdout
    refused = run("roundtrip", clip, other, "-o", tmp_path / "x.wav", weights=weights_file)
    assert refused.returncode == 1 and refused.stderr == f"error: -o {tmp_path / 'x.wav'} looks like a file; with " \
        f"several inputs -o names a folder (end it with / for a folder of that name: -o {tmp_path / 'x.wav'}/)\n"
    assert not (tmp_path / "x.wav").exists()


def test_roundtrip_reads_what_encode_reads(tmp_path, clip, weights_file):
    """A test set as a folder (-r for its sub-folders; --jobs), a tar shard or a manifest's spans: a row for each
    file or item, equal to the round trip of that audio as a file of its own. -o DIR/ and --plot DIR/ receive
    each one's audio and spectrograms, mirrored as encode's -o mirrors the inputs (they were refused: "-o and
    --plot go with one input file")."""
    import tarfile

    pcm, rate = sf.read(clip, dtype="int16")
    (tmp_path / "set" / "sub").mkdir(parents=True)
    sf.write(tmp_path / "set" / "a.wav", pcm, rate, subtype="PCM_16")
    sf.write(tmp_path / "set" / "sub" / "b.wav", pcm[::-1] // 2, rate, subtype="PCM_16")
    sf.write(tmp_path / "part.wav", pcm[rate // 2:rate // 2 + rate], rate, subtype="PCM_16")  # the span below
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        tar.add(tmp_path / "set" / "sub" / "b.wav", "key.wav")
    (tmp_path / "list.jsonl").write_text(json.dumps({"audio_filepath": str(clip), "offset": 0.5, "duration": 1.0}))

    def rows(*args):
        result = run("roundtrip", *args, "--json", "-n", "4", weights=weights_file)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)  # several: a row each; one file: its metrics
        return {row.pop("input"): {k: v for k, v in row.items() if not k.endswith("_rtf")}
                for row in report.get("files", [report])}

    def written(report: dict) -> dict:  # where each one's audio and plot went, taken out of its metrics
        return {name: (row.pop("output", None), row.pop("plot", None)) for name, row in report.items()}

    alone = {name: rows(tmp_path / name, "-o", tmp_path / f"rt_{name.replace('/', '_')}")[str(tmp_path / name)]
             for name in ("set/a.wav", "set/sub/b.wav", "part.wav")}
    assert [row.pop("output") for row in alone.values()] == [
        str(tmp_path / f"rt_{name}") for name in ("set_a.wav", "set_sub_b.wav", "part.wav")]
    assert rows(tmp_path / "set") == {str(tmp_path / "set" / "a.wav"): alone["set/a.wav"]}
    both = {str(tmp_path / "set" / "a.wav"): alone["set/a.wav"],
            str(tmp_path / "set" / "sub" / "b.wav"): alone["set/sub/b.wav"]}
    many = rows(tmp_path / "set", "-r", "-o", f"{tmp_path}/out/", "--plot", f"{tmp_path}/plots/")
    assert written(many) == {str(tmp_path / "set" / name): (str(tmp_path / "out" / name), str(
        tmp_path / "plots" / name.replace(".wav", ".png"))) for name in ("a.wav", "sub/b.wav")} and many == both
    for name in ("a.wav", "sub/b.wav"):  # each as its own round trip wrote it, mirrored as encode's -o mirrors
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / f"rt_set_{name.replace('/', '_')}").read_bytes()
        assert (tmp_path / "plots" / name).with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert rows(tmp_path / "set", "-r", "--jobs", "2") == both  # in two worker processes, a thread each
    assert rows(tmp_path / "shard.tar") == {f"{tmp_path / 'shard.tar'}#key.wav": alone["set/sub/b.wav"]}
    assert rows("--inputs-from", tmp_path / "list.jsonl") == {f"{tmp_path / 'list.jsonl'}:1": alone["part.wav"]}
    assert alone["set/a.wav"]["si_sdr_db"] != alone["part.wav"]["si_sdr_db"]
    for extra in (["-o", tmp_path / "x.wav"], ["--plot", tmp_path / "x.png"]):
        refused = run("roundtrip", tmp_path / "set", *extra, weights=weights_file)
        assert refused.returncode == 1 and "for a folder, a glob or a list of inputs (even of one file) " \
            f"{extra[0]} names a folder" in refused.stderr, refused.stderr
    again = run("roundtrip", tmp_path / "set", "-r", "-o", tmp_path / "out", weights=weights_file)
    assert again.returncode == 1 and "2 output(s) already exist" in again.stderr, again.stderr
    assert not list(tmp_path.glob("x.*"))


@pytest.mark.parametrize("stream", [False, True])
def test_decode_takes_the_first_levels(tmp_path, clip, weights_file, stream):
    """``decode -n 8`` of 32-level codes plays exactly what encoding with -n 8 and decoding plays (each level
    quantizes what the levels before it left); more levels than the file holds are refused, nothing written."""
    flags = ["--stream"] if stream else []
    for levels in (32, 8):
        assert run("encode", *flags, clip, "-n", levels, "-o", tmp_path / f"{levels}.npz",
                   weights=weights_file).returncode == 0
    fewer = run("decode", *flags, tmp_path / "32.npz", "-n", "8", "-o", tmp_path / "32-8.wav", weights=weights_file)
    assert fewer.returncode == 0 and "× 8 codebooks" in fewer.stderr, fewer.stderr
    assert run("decode", *flags, tmp_path / "8.npz", "-o", tmp_path / "8.wav", weights=weights_file).returncode == 0
    assert run("decode", *flags, tmp_path / "32.npz", "-o", tmp_path / "32.wav", weights=weights_file).returncode == 0
    np.testing.assert_array_equal(sf.read(tmp_path / "32-8.wav")[0], sf.read(tmp_path / "8.wav")[0])
    assert not np.array_equal(sf.read(tmp_path / "32.wav")[0], sf.read(tmp_path / "8.wav")[0])
    refused = run("decode", *flags, tmp_path / "8.npz", "-n", "9", "-o", tmp_path / "9.wav", weights=weights_file)
    assert refused.returncode == 1 and "8.npz holds 8 codebooks; -n 9 asks for more" in refused.stderr
    assert not (tmp_path / "9.wav").exists()


def test_decode_rescale_scales_loud_audio_down_instead_of_clipping(tmp_path, clip, full_state):
    """Audio beyond full scale (weights whose last bias adds 1.5) is clipped, with a warning naming --rescale;
    --rescale writes it scaled to a peak of 0.99, as encodec's -r does, and says by how much; not with --stream."""
    from safetensors.numpy import save_file

    from mimi_cli import Mimi
    from mimi_cli.codes import load_codes

    loud = dict(full_state)
    loud["decoder.model.14.conv.conv.bias"] = full_state["decoder.model.14.conv.conv.bias"] + np.float32(1.5)
    save_file(loud, str(tmp_path / "loud.safetensors"))
    assert run("encode", clip, "-o", tmp_path / "c.npz", weights=tmp_path / "loud.safetensors").returncode == 0
    codes = load_codes(tmp_path / "c.npz")
    pcm = Mimi.from_state_dict(loud).decode(codes.codes)[0, : codes.num_samples]  # unclipped: beyond full scale
    clipped = run("decode", tmp_path / "c.npz", "-o", tmp_path / "clipped.wav", weights=tmp_path / "loud.safetensors")
    assert clipped.returncode == 0 and "samples beyond [-1, 1] were clipped (--rescale scales the audio down " \
        "instead)" in clipped.stderr, clipped.stderr
    np.testing.assert_allclose(sf.read(tmp_path / "clipped.wav")[0], np.clip(pcm, -1, 1), atol=1 / 32768)
    result = run("decode", tmp_path / "c.npz", "-o", tmp_path / "scaled.wav", "--rescale",
                 weights=tmp_path / "loud.safetensors")
    peak = np.abs(pcm).max()
    assert result.returncode == 0 and f"scaled by {0.99 / peak:.3g} (its peak was {peak:.3g})" in result.stderr
    assert "clipped" not in result.stderr, result.stderr
    np.testing.assert_allclose(sf.read(tmp_path / "scaled.wav")[0], pcm * 0.99 / peak, atol=1 / 32768)
    refused = run("decode", tmp_path / "c.npz", "-o", tmp_path / "x.wav", "--rescale", "--stream",
                  weights=tmp_path / "loud.safetensors")
    assert refused.returncode == 2 and "--rescale needs the whole output's peak" in refused.stderr
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_reports_on_a_stdout_without_unicode(tmp_path, clip, weights_file, encoding):
    """An ASCII or Latin-1 locale (PYTHONIOENCODING, LC_ALL): characters it lacks, ours ("→") or a file's
    name, are written as escapes, as Python writes them on stderr, not a UnicodeEncodeError."""
    named = tmp_path / "poids-€.safetensors"
    named.write_bytes(weights_file.read_bytes())
    env = {**os.environ, "PYTHONIOENCODING": encoding, "HF_HUB_OFFLINE": "1", "MIMI_WEIGHTS": str(weights_file)}
    for args, shown in ((["inspect", named, "--no-stats"], "poids-\\u20ac.safetensors: Mimi"),
                        (["roundtrip", clip, "-n", "2"], "real time)")):
        result = subprocess.run([sys.executable, "-m", "mimi_cli", *map(str, args)], capture_output=True, env=env,
                                timeout=300)
        assert result.returncode == 0 and shown in result.stdout.decode(encoding), result.stderr.decode(encoding)


def test_existing_output_needs_force(tmp_path, clip, weights_file):
    out = tmp_path / "c.npz"
    out.write_bytes(b"precious")
    refused = run("encode", clip, "-o", out, weights=weights_file)
    assert refused.returncode == 1 and "already exists; pass -f/--force" in refused.stderr
    assert out.read_bytes() == b"precious"
    forced = run("encode", clip, "-o", out, "-f", weights=weights_file)
    assert forced.returncode == 0 and out.read_bytes()[:2] == b"PK"


def test_weights_resolution_order(tmp_path, clip, weights_file):
    # --weights beats $MIMI_WEIGHTS
    missing = tmp_path / "absent.safetensors"
    result = run("encode", clip, "-o", tmp_path / "a.npz", "--weights", weights_file, weights=missing)
    assert result.returncode == 0, result.stderr
    result = run("encode", clip, "-o", tmp_path / "b.npz", weights=missing)
    assert result.returncode == 1 and "absent.safetensors (from $MIMI_WEIGHTS) does not exist" in result.stderr
    # nothing given, offline, empty cache: says how to get weights
    result = run("encode", clip, "-o", tmp_path / "c.npz", env_extra={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 1
    assert "no Mimi weights" in result.stderr and "--weights" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.npz").exists()


def test_weights_from_a_local_copy_of_a_hub_repository(tmp_path, clip, weights_file):
    """A folder given as weights that is no Core ML model: a repository downloaded or cloned (kyutai/mimi:
    model.safetensors beside config.json; kyutai/moshiko-pytorch-bf16: the codec's file beside the LM's
    model.safetensors; a folder of one .safetensors file) means its weights file; the same codes as the file's.
    Any other folder: one line naming what it holds (it said "not a Core ML model")."""
    from safetensors.numpy import save_file

    assert run("encode", clip, "-o", tmp_path / "direct.npz", "--weights", weights_file).returncode == 0
    mimi, moshiko, single, two, empty = (tmp_path / name for name in ("mimi", "moshiko", "single", "two", "empty"))
    for folder in (mimi, moshiko, single, two, empty):
        folder.mkdir()
    assert run("convert", weights_file, mimi / "model.safetensors", "--naming", "hf").returncode == 0
    (mimi / "config.json").write_text("{}")
    (moshiko / "tokenizer-e351c8d8-checkpoint125.safetensors").symlink_to(weights_file)  # as in the Hub's cache
    save_file({"lm.weight": np.zeros(4, np.float32)}, str(moshiko / "model.safetensors"))
    (single / "mine.safetensors").write_bytes(weights_file.read_bytes())
    for name in ("a.safetensors", "b.safetensors"):
        (two / name).write_bytes(weights_file.read_bytes())
    for folder in (mimi, moshiko, f"{single}/"):
        result = run("encode", clip, "-o", tmp_path / "got.npz", "-f", "--weights", folder)
        assert result.returncode == 0, result.stderr
        with np.load(tmp_path / "got.npz") as got, np.load(tmp_path / "direct.npz") as want:
            np.testing.assert_array_equal(got["codes"], want["codes"])
    (tmp_path / "got.npz").unlink()
    for folder, holds in ((two, "2 .safetensors files (a.safetensors, b.safetensors), none named "
                                "tokenizer-e351c8d8-checkpoint125.safetensors or model.safetensors"),
                          (empty, "no .safetensors file and no Core ML model")):
        result = run("encode", clip, "-o", tmp_path / "got.npz", weights=folder)
        assert result.returncode == 1 and not (tmp_path / "got.npz").exists()
        assert result.stderr == (f"error: weights folder {folder} (from $MIMI_WEIGHTS) holds {holds}; give a "
                                 f".safetensors file's path ({folder}/FILE), an .mlmodelc or an .mlpackage\n")
    from mimi_cli.errors import WeightsError
    from mimi_cli.models import codec_spec
    from mimi_cli.weights.resolve import resolve_weights

    with pytest.raises(WeightsError, match=r"give a \.safetensors file's path \(/FILE\),"):  # it said (//FILE)
        resolve_weights("/", codec_spec("mimi"))


def test_weights_from_a_hub_repository(tmp_path, clip, weights_file, monkeypatch):
    """--weights OWNER/REPO[/FILE] (or a Hub URL of it) that is no file here: the file from the Hugging Face cache
    (laid out here as huggingface_hub lays it out), the same codes as from the file itself; offline and not
    cached, one line."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--someone--mimi-hf"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    (snapshot / "sub").mkdir(parents=True)
    assert run("convert", weights_file, snapshot / "model.safetensors", "--naming", "hf").returncode == 0
    (snapshot / "sub" / "other.safetensors").write_bytes(weights_file.read_bytes())
    hf = {"HF_HOME": str(tmp_path / "hf")}
    assert run("encode", clip, "-o", tmp_path / "direct.npz", "--weights", weights_file).returncode == 0
    for name, given in (("repo.npz", "someone/mimi-hf"), ("file.npz", "someone/mimi-hf/sub/other.safetensors")):
        result = run("encode", clip, "-o", tmp_path / name, "--weights", given, env_extra=hf, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        with np.load(tmp_path / name) as got, np.load(tmp_path / "direct.npz") as want:
            np.testing.assert_array_equal(got["codes"], want["codes"])
    inspected = run("inspect", "someone/mimi-hf", "--json", "--no-stats", env_extra=hf)
    assert inspected.returncode == 0 and json.loads(inspected.stdout)["format"] == "Mimi Hugging Face", inspected.stderr
    converted = run("convert", "someone/mimi-hf", tmp_path / "back.safetensors", env_extra=hf)
    assert converted.returncode == 0 and "someone/mimi-hf (hf naming) →" in converted.stderr, converted.stderr
    quiet = run("convert", "someone/mimi-hf", tmp_path / "back.safetensors", "-f", "-q", env_extra=hf)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr  # -q as in encode and decode
    result = run("encode", clip, "-o", tmp_path / "c.npz", "--weights", "someone/absent", env_extra=hf)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert ("weights file someone/absent (from --weights) does not exist here, and model.safetensors of "
            "someone/absent is not in the Hugging Face cache and HF_HUB_OFFLINE is set") in result.stderr
    result = run("encode", clip, "-o", tmp_path / "c.npz", "--weights", "", weights=weights_file)  # "$UNSET"
    assert result.returncode == 2 and "an empty argument ('') after --weights" in result.stderr, result.stderr
    assert not (tmp_path / "c.npz").exists()
    # the repository's and its files' URLs, as huggingface_hub and a browser write them, at a revision too; a
    # file:// URI is a path (resolved here in this process, through the same cache; one of them by the command)
    from huggingface_hub import constants

    from mimi_cli.errors import WeightsError
    from mimi_cli.models import codec_spec
    from mimi_cli.weights.resolve import locate

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub, other = "https://huggingface.co/someone/mimi-hf", snapshot / "sub" / "other.safetensors"
    for given, file in ((weights_file.as_uri(), weights_file), ("hf://someone/mimi-hf", snapshot / "model.safetensors"),
                        (f"hf://someone/mimi-hf@{revision}/sub/other.safetensors", other),
                        (hub, snapshot / "model.safetensors"), (f"{hub}/tree/main", snapshot / "model.safetensors"),
                        (f"{hub}/blob/main/sub/other.safetensors", other),
                        (f"{hub}/resolve/{revision}/sub/other.safetensors?download=true", other)):
        assert locate(given, codec_spec("mimi")) == file, given
    with pytest.raises(WeightsError, match=f"^weights {hub}/blob/v2/sub/other.safetensors: sub/other.safetensors of "
                                           "someone/mimi-hf at revision v2 is not in the Hugging Face cache and "
                                           "HF_HUB_OFFLINE is set"):
        locate(f"{hub}/blob/v2/sub/other.safetensors", codec_spec("mimi"))
    result = run("encode", clip, "-o", tmp_path / "url.npz", "--weights", f"{hub}/blob/main/sub/other.safetensors",
                 env_extra=hf)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "url.npz") as got, np.load(tmp_path / "direct.npz") as want:
        np.testing.assert_array_equal(got["codes"], want["codes"])
    for path_like in ("someone/absent.safetensors", "./someone/absent", "someone/../absent"):
        result = run("encode", clip, "-o", tmp_path / "c.npz", "--weights", path_like, env_extra=hf)
        assert f"weights file {path_like.removeprefix('./')} (from --weights) does not exist\n" in result.stderr
    # a file of the cache cut short (copied in by hand, a disk's fault) names the folder whose removal fetches it anew
    from mimi_cli.weights.safetensors import SafetensorsFile

    (snapshot / "cut.safetensors").write_bytes(weights_file.read_bytes()[:1000])
    (tmp_path / "cut.safetensors").write_bytes(weights_file.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=re.escape(f"(a download cut short? delete {repo} and run again to download "
                                                     "it anew)")):
        SafetensorsFile(snapshot / "cut.safetensors")
    with pytest.raises(WeightsError, match=re.escape("(is it a complete .safetensors file?)")):
        SafetensorsFile(tmp_path / "cut.safetensors")


def test_version_and_help():
    assert run("--version").stdout.startswith("mimi-cli ")
    help_text = run("--help").stdout
    for command in ("encode", "decode", "roundtrip"):
        assert command in help_text
    assert "--codebooks" in run("encode", "--help").stdout
    usages = {}
    commands = typer.main.get_command(app).commands
    for command in ("encode", "decode", "roundtrip", "bench", "inspect", "inspect-weights", "convert", "run"):
        result = run(command, "--help")  # rich renders every help
        assert result.returncode == 0 and "Usage: mimi " + command in result.stdout, result.stderr
        usages[command] = next(line for line in result.stdout.splitlines() if "Usage:" in line).split()[2:]
        # every help text whole: rich takes [word] for markup and drops it ("integer lists [K][frames]" showed
        # as "[K]"), unless written \\[word]; compared without spaces and table borders, which rich's wrapping moves
        shown = re.sub(r"[\s│]", "", result.stdout)
        for text in [commands[command].help] + [p.help for p in commands[command].params if p.help]:
            assert re.sub(r"\s", "", text.replace("\\[", "[")) in shown, (command, text)
    # Click's convention: names in capitals, '...' once after a repeatable one ("[INPUT...]..." was shown)
    assert usages["encode"][1:] == usages["roundtrip"][1:] == ["[OPTIONS]", "[INPUT]..."]
    assert usages["decode"][1:] == ["[OPTIONS]", "[CODES]..."]
    assert usages["convert"][1:] == ["[OPTIONS]", "{SOURCE}", "{DESTINATION}"]
    assert usages["run"][1:] == ["[OPTIONS]", "{MODEL}"] and usages["inspect"][1:] == ["[OPTIONS]", "{PATH|REPO}..."]


@pytest.mark.parametrize("width", [{"COLUMNS": "0"}, {"COLUMNS": "3"}, {"TERMINAL_WIDTH": "abc"},
                                   {"TERMINAL_WIDTH": "0"}])
def test_a_width_no_one_can_read_is_not_used(tmp_path, width):
    """COLUMNS=0 made rich print nothing at all: no error, no help; a few columns left table cells empty;
    typer's TERMINAL_WIDTH=abc was a traceback. Such a width is dropped: the terminal's, else 80."""
    missing = run("encode", tmp_path / "nope.wav", env_extra=width)
    assert missing.returncode == 1 and missing.stderr == f"error: {tmp_path / 'nope.wav'} does not exist\n"
    shown = run("encode", "--help", env_extra=width)
    assert shown.returncode == 0 and "Usage: mimi encode" in shown.stdout and not shown.stderr
    assert max(map(len, shown.stdout.splitlines())) == (80 if "COLUMNS" in width else 200)  # run() gives 200


@pytest.mark.parametrize("args, message", [
    (["encode", "{clip}", "-b", "nan"], "nan is not a finite number"),
    (["encode", "{clip}", "-b", "-inf"], "-inf is not a finite number"),
    (["encode", "{clip}", "-b", "-1"], "Mimi offers 0.1375 to 4.4 kbps (0.1375 kbps per codebook), not -1"),  # as 0 is
    (["bench", "--seconds", "nan"], "nan is not a finite number"),
    (["bench", "--seconds", "0.5"], "0.5 is below 1"),
    (["bench", "--seconds", "601"], "601 is above 600"),
    (["encode", "{clip}", "-n", "0"], "Invalid value for '--codebooks' / '-n': Input should be greater than or "
                                      "equal to 1 (see mimi encode -h)"),
    (["encode", "{clip}", "--codec", "nope"], "'nope' is not a codec here; choose one of mimi, encodec-24khz"),
    (["encode", "{clip}", "--bogus"], "No such option: --bogus"),
    (["convert"], "Missing argument 'SOURCE'. (see mimi convert -h)"),
    (["nosuch"], "No such command 'nosuch'. (see mimi -h)"),
    # an unset shell variable: '' as a path was the current folder (-o wrote beside the input, --parquet into .)
    (["encode", "{clip}", "-o", ""], "an empty argument ('') after -o; is a shell variable unset?"),
    (["encode", "{clip}", "--parquet", ""], "an empty argument ('') after --parquet;"),
    (["encode", "{clip}", "--output="], "--output= gives an empty value;"),
    (["decode", ""], "an empty argument ('') after decode;"),
    (["convert", "{clip}", ""], "an empty argument ('') after "),
])
def test_usage_errors_are_one_line(clip, args, message):
    """Numbers that make no sense, unknown options and commands, missing arguments: exit code 2 and one line
    (click's usage text and its boxed error, six lines or more, before), naming where help is."""
    result = run(*[str(a).format(clip=clip) for a in args])
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr


def test_a_file_read_as_an_option_says_how_to_name_it(clip, weights_file, tmp_path):
    """`mimi encode -take.wav` is refused as the option -t; when that argument names a file, the line says
    how to give it (as `rm -foo` does); so when it is read as an option and its value (`-café.wav`: -c afé.wav,
    a codec no one has); an unknown option or bad value that is no file's name points to the help."""
    for name in ("-take one.wav", "--take.wav", "-café.wav", "-n9.wav"):
        (tmp_path / name).write_bytes(clip.read_bytes())
        result = run("encode", name, cwd=tmp_path)
        quoted = shlex.quote(name)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.endswith(f"; to name the file {quoted}, write {shlex.quote('./' + name)} or put -- "
                                      "before it\n"), result.stderr
        if name.endswith("take.wav") or name.endswith("one.wav"):  # after --, it is encoded (once a kind is enough)
            assert run("encode", "-q", "--", name, cwd=tmp_path, weights=weights_file).returncode == 0
    for other in (run("encode", "--frob", "-take one.wav", cwd=tmp_path), run("encode", "-c", "x", cwd=tmp_path)):
        assert other.returncode == 2 and other.stderr.endswith("(see mimi encode -h)\n"), other.stderr


def test_codebooks_out_of_range_is_a_usage_error(clip):
    result = run("encode", clip, "-n", "33")
    assert result.returncode == 2 and "--codebooks" in result.stderr and "32" in result.stderr


def test_planning_shows_what_it_does_on_a_terminal_once_it_takes_a_while(monkeypatch):
    """A resume of a large corpus reads every existing output back before any work (minutes for a million):
    a terminal is told what planning does and how far it is; a plan that ends at once shows nothing."""
    import io

    from rich.console import Console

    from mimi_cli import cli

    for after, shown in ((0.0, True), (60.0, False)):
        screen = io.StringIO()
        monkeypatch.setattr(cli, "err", Console(file=screen, force_terminal=True, width=100))
        with cli._Messages(quiet=False).planning(after=after) as report:
            report("Listing inputs", 0, None)
            report("Reading back existing outputs", 1234, 5000)
            if shown:  # until the bar has drawn once
                for _ in range(1000):  # (10 s at most, on a busy machine)
                    if "5,000" in screen.getvalue():
                        break
                    time.sleep(0.01)
        assert ("Reading back existing outputs… " in screen.getvalue() and "1,234/5,000" in screen.getvalue()) \
            == shown, screen.getvalue()
    monkeypatch.setattr(cli, "err", Console(file=io.StringIO(), force_terminal=False))
    with cli._Messages(quiet=False).planning(after=0.0) as report:  # not a terminal: a no-op
        report("Listing inputs", 0, None)
    assert cli.err.file.getvalue() == ""

    import threading

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(cli, "err", Console(file=io.StringIO(), force_terminal=True))
    monkeypatch.setattr(threading.Thread, "start", no_thread)  # ulimit -u: planning goes on, shown or not
    with cli._Messages(quiet=False).planning(after=0.0) as report:
        report("Reading back existing outputs", 1, 2)


@pytest.mark.parametrize("times", [24.46, 1.0, 0.1, 0.0999, 0.0123, 0.00042, 8.04e-5])
def test_speed_keeps_two_digits_of_a_slow_run(times):
    """A file of ten samples takes 0.03 s: 0.012× real time, which ".1f" showed as "0.0×"."""
    from mimi_cli.cli import _speed

    shown = _speed(times)
    assert shown.endswith("× real time") and "e" not in shown.split("×")[0]
    number = float(shown.split("×")[0])
    assert number > 0 and abs(number - times) / times < 0.06  # two significant digits at least


def test_raw_samples_encode_as_a_file_of_the_same_samples_does(tmp_path, weights_file):
    """--raw ENC[:RATE[:CH]]: headerless samples (a corpus's .pcm files, `ffmpeg -f s16le -`, arecord) give the
    codes a WAV file of the same samples gives, read by libsndfile from its header: 16-bit mono at the codec's
    rate (the default) from a file, standard input, a folder's .pcm and .raw files (--jobs 2) and a manifest's
    span; 32-bit float big-endian stereo at 16 kHz, split; and a round trip's figures. What --raw cannot take is
    refused in one line, before any output: a file with a header, a size no whole number of samples, tar
    members, a malformed spec; a .pcm file given without --raw is told of it. decode --raw ENC -o - writes the
    samples of the WAV it would write, alone (or as floats)."""
    import tarfile

    from mimi_cli.audio import RawFormat
    from mimi_cli.batch import Job, execute, plan
    from mimi_cli.pipeline import Settings

    mono = (speech_at(24000)[:36000] * 32767).astype(np.int16)
    sf.write(tmp_path / "mono.wav", mono, 24000, subtype="PCM_16")
    mono.astype("<i2").tofile(tmp_path / "mono.pcm")
    stereo = np.stack([speech_at(16000)[:24000], -0.5 * speech_at(16000)[8000:32000]], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 16000, subtype="FLOAT")
    stereo.astype(">f4").tofile(tmp_path / "stereo.f32")
    (tmp_path / "set" / "sub").mkdir(parents=True)
    for name in ("set/a.pcm", "set/sub/b.raw"):
        (tmp_path / name).write_bytes((tmp_path / "mono.pcm").read_bytes())
    sf.write(tmp_path / "set" / "c.wav", mono, 24000)  # not headerless samples: a folder gives .pcm and .raw

    def codes(name) -> np.ndarray:
        return np.load(tmp_path / name)["codes"]

    def encoded(*args, stdin: Path | None = None) -> None:
        result = subprocess.run([sys.executable, "-m", "mimi_cli", "encode", *map(str, args), "-n", "4"], env={
            **os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}, capture_output=True,
            stdin=None if stdin is None else open(stdin, "rb"), timeout=300)
        assert result.returncode == 0, result.stderr

    encoded(tmp_path / "mono.wav", "-o", tmp_path / "mono.npz")
    encoded(tmp_path / "mono.pcm", "--raw", "s16le", "-o", tmp_path / "file.npz")
    encoded("-", "--raw", "s16le:24000:1", "-o", tmp_path / "stdin.npz", stdin=tmp_path / "mono.pcm")
    encoded(tmp_path / "set", "-r", "--raw", "s16le", "-o", tmp_path / "out", "--jobs", "2")
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.npz")) == [
        "a.npz", "sub/b.npz"]
    for name in ("file.npz", "stdin.npz", "out/a.npz", "out/sub/b.npz"):
        np.testing.assert_array_equal(codes(name), codes("mono.npz"), err_msg=name)
    assert np.load(tmp_path / "file.npz")["num_samples"] == len(mono)
    encoded(tmp_path / "stereo.wav", "--channels", "split", "-o", tmp_path / "stereo.npz")
    encoded(tmp_path / "stereo.f32", "--raw", "f32be:16000:2", "--channels", "split", "-o", tmp_path / "split.npz")
    assert codes("stereo.npz").shape[0] == 2 and np.load(tmp_path / "split.npz")["source_sample_rate"] == 16000
    np.testing.assert_array_equal(codes("split.npz"), codes("stereo.npz"))
    for name in ("stereo.f32", "stereo.wav"):  # a manifest's span of each: its file read as --raw says
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"audio_filepath": name, "offset": 0.25, "duration": 1}))
        encoded("--inputs-from", tmp_path / f"{name}.jsonl", *["--raw", "f32be:16000:2"] * name.endswith("f32"),
                "-o", tmp_path / name.replace(".", "_"))
    np.testing.assert_array_equal(codes("stereo_f32/stereo_250ms.npz"), codes("stereo_wav/stereo_250ms.npz"))
    assert codes("stereo_f32/stereo_250ms.npz").shape == (1, 4, 13)
    same = run("roundtrip", tmp_path / "mono.wav", "-n", "4", "--json", weights=weights_file)
    raw = run("roundtrip", tmp_path / "mono.pcm", "--raw", "s16le", "-n", "4", "--json", weights=weights_file)
    assert raw.returncode == same.returncode == 0, raw.stderr
    assert {k: v for k, v in json.loads(raw.stdout).items() if not k.endswith(("_rtf", "input"))} == \
        {k: v for k, v in json.loads(same.stdout).items() if not k.endswith(("_rtf", "input"))}

    # decode --raw ENC -o -: the samples alone, as a player or program at the end of a pipe reads them
    def decoded(*args) -> bytes:
        result = subprocess.run([sys.executable, "-m", "mimi_cli", "decode", tmp_path / "file.npz", *args],
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout

    decoded("-o", tmp_path / "decoded.wav", "--weights", weights_file)
    wav, rate = sf.read(tmp_path / "decoded.wav", dtype="int16")
    assert rate == 24000 and len(wav) == len(mono)
    assert decoded("-o", "-", "--raw", "s16le", "--weights", weights_file) == wav.astype("<i2").tobytes()
    floats = np.frombuffer(decoded("-o", "-", "--raw", "f32be", "--stream", "--weights", weights_file), ">f4")
    np.testing.assert_allclose(floats, wav / 32768, atol=1.01 / 32768)  # the WAV's 16 bits round them
    with pytest.raises(MimiError, match="--raw writes headerless samples to standard output: give -o -"):
        plan(Job(Settings("decode", raw_output="s16le"), (str(tmp_path / "file.npz"),), str(tmp_path / "x.wav")))
    assert Settings("encode", raw="s16le").raw == RawFormat("s16le", 24000, 1)
    assert Settings("encode", codec="encodec-24khz", raw="F32LE:16000:2").raw == RawFormat("f32le", 16000, 2)
    with pytest.raises(ValueError, match="for encode and roundtrip"):
        Settings("decode", raw="s16le")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        tar.add(tmp_path / "mono.wav", "key.wav")
    (tmp_path / "odd.pcm").write_bytes(b"\0" * 1001)

    def refused(name: str, raw: str | None = "s16le") -> str:
        [result] = execute(plan(Job(Settings("encode", weights=str(weights_file), raw=raw), (str(tmp_path / name),),
                                    f"{tmp_path}/refused/", manifests=())))
        assert result.status == "failed" and "\n" not in result.error, result
        return result.error

    assert refused("mono.wav") == f"{tmp_path / 'mono.wav'} holds audio (WAV), not headerless samples as --raw " \
                                  "reads them; run without --raw, which reads its header"
    assert refused("odd.pcm") == f"{tmp_path / 'odd.pcm'} holds 1,001 bytes, not a whole number of s16le samples " \
                                 "of 1 channel (2 bytes each): check --raw s16le:24000:1, or the file is cut short"
    assert refused("mono.pcm", raw=None).endswith("; for headerless samples, give --raw (--raw s16le:16000, say)")
    with pytest.raises(MimiError, match="the tar members of .*shard.tar hold audio files of their own format"):
        plan(Job(Settings("encode", raw="s16le"), (str(tmp_path / "shard.tar"),), f"{tmp_path}/refused/"))
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
    spec = run("encode", tmp_path / "mono.pcm", "--raw", "s16le:16k", weights=weights_file)
    assert spec.returncode == 2 and spec.stderr == "error: Invalid value for '--raw': 's16le:16k' is not " \
        "ENCODING[:RATE[:CHANNELS]] (s16le, s16le:16000, s16le:48000:2) (see mimi encode -h)\n", spec.stderr
    spec = run("decode", tmp_path / "file.npz", "-o", "-", "--raw", "s16le:16000", weights=weights_file)
    assert spec.returncode == 2 and spec.stderr == "error: Invalid value for '--raw': give the encoding alone " \
        "(s16le): decode's rate is --sample-rate's, its channels the codes' (see mimi decode -h)\n", spec.stderr
