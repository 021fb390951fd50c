"""`mimi inspect` and `mimi convert` as a user runs them."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SHARED, run
from safetensors.numpy import save_file

from mimi_cli.weights.safetensors import SafetensorsFile

FIXTURES = SHARED / "coreml-fixtures"
FIXTURE_MODELS = sorted(p for p in FIXTURES.glob("**/*") if p.suffix in (".mlmodelc", ".mlpackage")) + sorted(
    p for p in FIXTURES.glob("*-mlmodelc")) + sorted(p for p in FIXTURES.glob("*-mlpackage"))


def inspect_json(*args) -> tuple[int, dict]:
    result = run("inspect", *args, "--json")
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/coreml-fixtures is not present")
@pytest.mark.parametrize("model", FIXTURE_MODELS, ids=lambda p: p.name)
def test_inspect_every_fixture(model):
    code, report = inspect_json(model)
    assert code == 0 and report["errors"] == []
    assert report["format"].startswith(("Core ML ML Program", "Core ML Neural Network"))
    assert report["tensors"] and all(t["nonfinite"] == 0 and t["params"] == int(np.prod(t["shape"]))
                                     for t in report["tensors"])
    table = run("inspect-weights", model)
    assert table.returncode == 0 and "no errors" in table.stdout
    assert report["tensors"][0]["name"] in table.stdout


def test_inspect_mimi_file_table_json_filter(weights_file):
    code, report = inspect_json(weights_file)
    assert code == 0 and report["format"] == "Mimi original" and report["errors"] == []
    assert set(report) == {"path", "format", "container", "details", "tensors", "warnings", "errors"}
    assert len(report["tensors"]) == 318
    assert set(report["tensors"][0]) == {"name", "dtype", "shape", "params", "min", "max", "mean", "std", "nonfinite"}
    in_proj = next(t for t in report["tensors"] if t["name"].endswith("layers.0.self_attn.in_proj_weight"))
    assert in_proj["shape"] == [1536, 512] and in_proj["dtype"] == "F32"
    code, filtered = inspect_json(weights_file, "--filter", "decoder_transformer.*.linear1.weight", "--no-stats")
    assert code == 0 and len(filtered["tensors"]) == 8
    assert all(t["min"] is None and t["std"] is None for t in filtered["tensors"])
    table = run("inspect", weights_file, "--filter", "upsample.*")
    assert table.returncode == 0
    assert "upsample.convtr.convtr.convtr.weight" in table.stdout and "\n1 tensor, 2,048 parameters" in table.stdout
    # a glob matches whole names: a part of one matches nothing, and the report says how to match a part
    code, none = inspect_json(weights_file, "--filter", "linear1", "--no-stats")
    assert code == 0 and none["tensors"] == [] and none["warnings"] == [
        "no tensor name matches 'linear1' (of 318, such as 'decoder.model.0.conv.conv.bias'); a glob matches whole "
        "names: '*linear1*' matches a part"]
    assert len(inspect_json(weights_file, "--filter", "*linear1*", "--no-stats")[1]["tensors"]) == 16
    table = run("inspect", weights_file, "--filter", "linear1", "--no-stats")
    assert table.returncode == 0 and table.stdout.endswith("\n0 tensors, 0 parameters\nwarning: no tensor name "
                                                           "matches 'linear1' (of 318, such as "
                                                           "'decoder.model.0.conv.conv.bias'); a glob matches whole "
                                                           "names: '*linear1*' matches a part\nno errors, 1 warning\n")


def test_no_stats_reads_headers_only_and_stats_find_nan(tmp_path):
    tensors = {"v": np.ones((4, 8, 1), np.float32), "w": np.arange(6, dtype=np.float32)}
    tensors["w"][2] = np.nan
    save_file(tensors, str(tmp_path / "nan.safetensors"))
    code, report = inspect_json(tmp_path / "nan.safetensors", "--no-stats")  # the data is not read
    assert code == 0 and report["errors"] == [] and [t["nonfinite"] for t in report["tensors"]] == [None, None]
    code, report = inspect_json(tmp_path / "nan.safetensors")
    assert code == 2
    assert any("w: 1 of 6 values are NaN or Inf" in e for e in report["errors"])
    w = next(t for t in report["tensors"] if t["name"] == "w")
    assert w["nonfinite"] == 1 and w["min"] == 0 and w["max"] == 5 and w["mean"] == pytest.approx(13 / 5)


def test_inspect_warnings_keep_exit_zero(tmp_path):
    save_file({"zeros": np.zeros(8, np.float32), "big": np.array([1, 2e5], np.float32),
               "flat": np.full(4, 0.5, np.float32), "empty": np.zeros((0, 3), np.float32)},
              str(tmp_path / "odd.safetensors"))
    code, report = inspect_json(tmp_path / "odd.safetensors")
    assert code == 0 and report["format"] == "unknown"
    assert sorted(w.split(":")[0] for w in report["warnings"]) == ["big", "flat", "zeros"]
    empty = next(t for t in report["tensors"] if t["name"] == "empty")  # no values, so no range (it said 0 to 0)
    assert [empty[k] for k in ("params", "min", "max", "mean", "std", "nonfinite")] == [0, None, None, None, None, 0]


def malformed(path, kind: str) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    data = b"\0" * 8
    files = {
        "header past end": struct.pack("<Q", 10_000) + header + data,
        "huge header": struct.pack("<Q", 1 << 62) + header + data,
        "bad json": struct.pack("<Q", len(header)) + header[:-1] + b"!" + data,
        "offsets outside": struct.pack("<Q", len(header)) + header.replace(b"[0, 8]", b"[0, 800]") + data,
        "size mismatch": struct.pack("<Q", len(header)) + header.replace(b"[2]", b"[3]") + data,
        "unknown dtype": struct.pack("<Q", len(header)) + header.replace(b"F32", b"F48") + data,
        "overlap": struct.pack("<Q", 0),
        "empty": b"",
    }
    if kind == "overlap":
        both = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
        files[kind] = struct.pack("<Q", len(both)) + both + b"\0" * 12
    path.write_bytes(files[kind])


@pytest.mark.parametrize("kind", ["header past end", "huge header", "bad json", "offsets outside", "size mismatch",
                                  "unknown dtype", "overlap", "empty"])
def test_inspect_malformed_safetensors(tmp_path, kind):
    path = tmp_path / "bad.safetensors"
    malformed(path, kind)
    result = run("inspect", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: cannot read weights") and len(result.stderr.splitlines()) == 1
    assert not result.stdout  # (it was printed there, as a report that was only its error line)
    code, report = inspect_json(path)
    assert code == 2 and report["format"] == "unreadable" and len(report["errors"]) == 1


def test_inspect_missing_path(tmp_path):
    """Weights not found are looked for in the Hub's cache too, and said so; a name that could only be a file or a
    folder (audio, codes, a trailing /) was "weights file take1.wav does not exist" and is now that name alone."""
    result = run("inspect", tmp_path / "nope.safetensors")
    assert result.returncode == 1 and result.stderr == f"error: weights file {tmp_path / 'nope.safetensors'} does " \
        "not exist\n"
    for name in ("take1.wav", "codes.npz", "gen.json", "corpus/"):
        result = run("inspect", f"{tmp_path}/{name}")
        assert result.returncode == 1 and result.stderr == f"error: {tmp_path}/{name} does not exist\n"


def test_inspect_given_audio_names_what_runs_on_audio(tmp_path):
    """`mimi inspect clip.wav` said "holds audio (WAV), not weights; give a .safetensors file" (inspect shows codes
    too), and a folder of recordings "weights folder … holds no .safetensors file". Each now says it is audio and
    which commands take it (quoted for a shell); a folder of codes or weights is still shown."""
    (tmp_path / "my recordings").mkdir()
    sf.write(tmp_path / "my recordings" / "a b.flac", np.zeros(2400, np.float32), 24000)
    for given, kind in ((tmp_path / "my recordings" / "a b.flac", "audio (FLAC)"),
                        (tmp_path / "my recordings", "audio files (a b.flac, …)")):
        result = run("inspect", given)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert f"{given} holds {kind}, not weights or codes" in result.stderr
        assert f"`mimi roundtrip '{given}'` measures how the codec keeps it" in result.stderr
    # named as audio, bytes no reader knows (a download cut off, a wrong file): it was read as weights, "header
    # length 11,270,941,398,591,487,376 is over the 100 MiB limit safetensors sets"
    (tmp_path / "cut.wav").write_bytes(bytes(range(7, 107)))
    result = run("inspect", tmp_path / "cut.wav")
    said = f"error: {tmp_path / 'cut.wav'} is named as audio, not weights or codes, which mimi inspect shows;"
    assert result.returncode == 2 and result.stderr.startswith(said), result.stderr
    np.save(tmp_path / "my recordings" / "a b.npy", np.zeros((8, 3), np.int64))  # codes beside (encode's default)
    shown = run("inspect", tmp_path / "my recordings", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["kind"] == "a folder of 1 codes file", shown.stderr


def test_inspect_names_text_and_shards_and_reads_json_codes_under_any_name(tmp_path):
    """`mimi inspect notes.txt` said "holds text, not weights; give a .safetensors file or a Core ML model", as if
    inspect read only weights, and a JSON array saved as gen.txt (which decode reads) was "text" too. Text and a
    tar shard now say what inspect reads; the array is shown as codes, as decode reads it."""
    import tarfile

    (tmp_path / "notes.txt").write_text("to do: encode the corpus\n")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        tar.add(tmp_path / "notes.txt", "notes.txt")
    for given, kind, advice in (("notes.txt", "text", "give a .safetensors file, a Core ML model or a codes file"),
                                ("shard.tar", "a tar archive (a WebDataset shard?)", "`mimi encode` reads")):
        result = run("inspect", tmp_path / given)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert f"{given} holds {kind}, not weights or codes, which mimi inspect shows; {advice}" in result.stderr
    (tmp_path / "gen.txt").write_text(" [[1, 2, 3], [4, 5, 6]]\n")
    shown = run("inspect", tmp_path / "gen.txt", "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert (report["kind"], report["codebooks"], report["frames"]) == ("a bare integer array", 2, 3)


def test_a_repository_of_core_ml_models_names_them(tmp_path):
    """A model repository whose Core ML models sit in folders of their own (with a config.json beside them) said
    "holds no .safetensors file and no Core ML model"; it names them now, and a folder of JSON files that is such
    a repository is still weights to inspect, not a folder of codes."""
    (tmp_path / "repo" / "Mimi.mlpackage").mkdir(parents=True)
    (tmp_path / "repo" / "Mimi.mlpackage" / "Manifest.json").write_text("{}")
    (tmp_path / "repo" / "config.json").write_text('{"sample_rate": 24000}')
    expected = (f"error: weights folder {tmp_path / 'repo'} holds no .safetensors file, and Core ML models in folders "
                f"of their own (Mimi.mlpackage); give one's path ({tmp_path / 'repo' / 'Mimi.mlpackage'})\n")
    result = run("inspect", tmp_path / "repo")
    assert result.returncode == 1 and result.stderr == expected
    sf.write(tmp_path / "a.wav", np.zeros(2400, np.float32), 24000)
    result = run("encode", tmp_path / "a.wav", "--weights", tmp_path / "repo")
    assert result.returncode == 1 and result.stderr == expected.replace(" holds no", " (from --weights) holds no"), \
        result.stderr


def test_weights_named_by_dash_or_a_link_loop(tmp_path, weights_file):
    """Weights given as '-' "did not exist" (encode and decode read '-' as standard input), and a loop of links
    "did not exist" for --weights; now each is said as what it is, by every command that takes weights."""
    (tmp_path / "loop.safetensors").symlink_to(tmp_path / "loop.safetensors")
    sf.write(tmp_path / "a.wav", np.zeros(2400, np.float32), 24000)
    for command in (("inspect", "-"), ("convert", "-", tmp_path / "out.safetensors"),
                    ("encode", tmp_path / "a.wav", "--weights", "-")):
        result = subprocess.run([sys.executable, "-m", "mimi_cli", *map(str, command)], input=weights_file.read_bytes(),
                                capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert result.returncode == 1 and b"are read from a file, not standard input" in result.stderr, command
    for command in (("inspect", tmp_path / "loop.safetensors"),
                    ("encode", tmp_path / "a.wav", "--weights", tmp_path / "loop.safetensors")):
        result = run(*command)
        assert result.returncode == 1 and "Too many levels of symbolic links" in result.stderr, result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_round_trip_is_bit_identical(tmp_path, weights_file):
    hf, back = tmp_path / "hf.safetensors", tmp_path / "back.safetensors"
    assert run("convert", weights_file, hf, "--naming", "hf").returncode == 0
    code, report = inspect_json(hf, "--no-stats")
    assert code == 0 and report["format"] == "Mimi Hugging Face" and len(report["tensors"]) == 350
    result = run("convert", hf, back)
    assert result.returncode == 0, result.stderr
    original, converted = SafetensorsFile(weights_file), SafetensorsFile(back)
    assert original.infos.keys() == converted.infos.keys()
    for name in original.infos:
        assert original.raw(name).tobytes() == converted.raw(name).tobytes(), name
    # a folder receives the source's name, as cp's does: new (a trailing /) or existing ("cannot write weights as a
    # file without extension" was said of both)
    for folder in (f"{tmp_path / 'new'}/", str(tmp_path / "new"), str(tmp_path)):
        result = run("convert", hf, folder)
        said = "already exists" if folder == str(tmp_path / "new") else "is also an input" if folder == str(tmp_path) \
            else "→ " + str(tmp_path / "new" / "hf.safetensors")
        assert said in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert (tmp_path / "new" / "hf.safetensors").read_bytes() == back.read_bytes()  # (named so, in original naming)


def test_converted_hf_file_encodes_to_the_same_codes(tmp_path, weights_file):
    hf = tmp_path / "hf.safetensors"
    assert run("convert", weights_file, hf, "--naming", "hf", "--dtype", "f32").returncode == 0
    audio = tmp_path / "a.wav"
    import soundfile as sf

    sf.write(audio, 0.2 * np.sin(np.linspace(0, 900, 30_000)).astype(np.float32), 24_000)
    codes = {}
    for label, weights in (("original", weights_file), ("hf", hf)):
        out = tmp_path / f"{label}.npz"
        result = run("encode", audio, "-o", out, "-n", "32", "--weights", weights)
        assert result.returncode == 0, result.stderr
        codes[label] = np.load(out, allow_pickle=False)["codes"]
    np.testing.assert_array_equal(codes["original"], codes["hf"])


def test_convert_dtypes(tmp_path, weights_file):
    bf16 = tmp_path / "bf16.safetensors"
    assert run("convert", weights_file, bf16, "--dtype", "bf16").returncode == 0
    reader = SafetensorsFile(bf16)
    assert {info.dtype for info in reader.infos.values()} == {"BF16"}
    source = SafetensorsFile(weights_file)
    name = "decoder.model.0.conv.conv.weight"
    x = source.tensor(name)
    rounded = reader.tensor(name)
    assert np.all(np.abs(rounded - x) <= np.abs(x) * 2.0 ** -8)  # round to nearest: half an 8-bit-mantissa ulp
    again = tmp_path / "again.safetensors"
    assert run("convert", bf16, again).returncode == 0  # bf16 source: bf16 kept by default
    assert SafetensorsFile(again).raw(name).tobytes() == reader.raw(name).tobytes()


def test_convert_refusals_leave_no_file(tmp_path, weights_file):
    other = tmp_path / "other.safetensors"
    save_file({"w": np.ones(3, np.float32)}, str(other))
    cases = [  # (arguments, exit code: 2 for usage errors, message)
        (("convert", other, tmp_path / "out.safetensors"), 1, "not a Mimi checkpoint"),
        (("convert", weights_file, tmp_path / "out.npz"), 1, "cannot write weights as .npz; give a .safetensors name"),
        (("convert", weights_file, "-"), 1, "weights go to a file here, not to standard output ('-'); give a "
                                            ".safetensors name"),  # was "as a file without extension"
        (("convert", weights_file, tmp_path / "out.safetensors", "--dtype", "f8"), 2, "--dtype takes one of"),
        (("convert", weights_file, tmp_path / "out.safetensors", "--naming", "x"), 2, "--naming takes one of"),
        (("convert", weights_file, weights_file, "-f"), 1, "is also an input of this run"),
        (("convert", weights_file, tmp_path / "fifo.safetensors"), 1, "fifo.safetensors is a pipe (FIFO); outputs "
         "are only ever regular files: give a file name that does not exist or names a regular file\n"),
    ]  # (the pipe: not "give - (standard output) and pipe it", which convert refuses, above)
    os.mkfifo(tmp_path / "fifo.safetensors")
    big = tmp_path / "big.safetensors"  # one weight beyond f16's ±65504: written as f16, it would be inf
    state = SafetensorsFile(weights_file)
    tensors = {name: np.array(state.tensor(name)) for name in state.infos}
    tensors["decoder.model.0.conv.conv.weight"][0, 0, 0] = -1e6
    save_file(tensors, str(big))
    cases.append((("convert", big, tmp_path / "out.safetensors", "--dtype", "f16"), 1,
                  "decoder.model.0.conv.conv.weight holds values up to 1e+06 in magnitude, beyond the range of F16; "
                  "write f32 or bf16 instead"))
    for args, code, message in cases:
        result = run(*args)
        assert result.returncode == code and message in result.stderr and "Traceback" not in result.stderr, args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors", "fifo.safetensors", "other.safetensors"]
    assert run("convert", big, tmp_path / "bf16.safetensors", "--dtype", "bf16").returncode == 0  # bf16 holds it
    # -1e6 is 0xC9742400 in f32; bf16 keeps the top half, rounded to nearest (0x2400 < 0x8000: down): -999424
    assert SafetensorsFile(tmp_path / "bf16.safetensors").tensor("decoder.model.0.conv.conv.weight")[0, 0, 0] == -999424
    (tmp_path / "bf16.safetensors").unlink()
    exists = tmp_path / "exists.safetensors"
    exists.write_text("keep me")
    result = run("convert", weights_file, exists)
    assert result.returncode == 1 and "already exists" in result.stderr and exists.read_text() == "keep me"


def test_convert_from_python_checks_its_output_as_the_command_does(tmp_path, weights_file):
    """convert_checkpoint(w, w, dtype="bf16", replace=True) rounded its own source in place (the command's
    checks were the command's alone), and dtype="f8" raised a KeyError after reading the whole source."""
    from mimi_cli.convert import convert_checkpoint
    from mimi_cli.errors import MimiError

    source = tmp_path / "w.safetensors"
    source.write_bytes(weights_file.read_bytes())
    before = source.read_bytes()
    for destination, given, said in (
            (source, dict(dtype="bf16", replace=True), "w.safetensors is also an input of this run and would be "
                                                      "destroyed; choose another output"),
            (tmp_path / "out.safetensors", dict(dtype="f8"), "unknown dtype 'f8'; choose one of f32, f16, bf16"),
            (Path("/dev/null"), dict(replace=True), "/dev/null is a device; outputs are only ever regular files"),
            (tmp_path / "new" / "out.safetensors", {}, "new does not exist; create it first")):
        with pytest.raises(MimiError, match=re.escape(said)):
            convert_checkpoint(source, destination, **given)
    assert source.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    made = tmp_path / "new" / "out.safetensors"
    assert convert_checkpoint(str(source), str(made), "hf", create_parents=True) == ("original", "F32", 350)
    assert run("inspect", made, "--no-stats", "--json").returncode == 0


def test_inspect_core_ml_model_with_mimi_names(tmp_path, full_state):
    from coreml_builder import write_mlmodelc

    from mimi_cli.models.mimi import checkpoint

    hf = checkpoint.from_original(full_state, checkpoint.HF, 8)
    model = write_mlmodelc(tmp_path / "mimi.mlmodelc", {n.replace(".", "_") + "_to_fp16": v.astype(np.float16)
                                                        for n, v in hf.items()})
    code, report = inspect_json(model, "--no-stats")
    assert code == 0, report["errors"]
    assert report["format"] == "Core ML ML Program 1.3 (ios18), Mimi Hugging Face names"
    assert len(report["tensors"]) == 350
    converted = tmp_path / "from_coreml.safetensors"
    result = run("convert", model, converted)
    assert result.returncode == 0, result.stderr
    reader = SafetensorsFile(converted)
    assert len(reader.infos) == 318 and {i.dtype for i in reader.infos.values()} == {"F16"}
    name = "encoder_transformer.transformer.layers.2.self_attn.in_proj_weight"
    np.testing.assert_array_equal(reader.tensor(name), full_state[name].astype(np.float16).astype(np.float32))
