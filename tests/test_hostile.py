"""Files from strangers, through the CLI: one line, the documented exit code, bounded memory, honest words.

Each test is one observation of the issue "Every parser survives hostile bytes".
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import codes_arrays, npz_with_codes_header, run, run_on_an_endless_pipe
from coreml_builder import varint, write_mlmodelc

from mimi_cli.errors import InvalidCodesError, WeightsError


def inspect_fails(path: Path, *expected: str, command: str = "inspect") -> str:
    """`mimi inspect` on a malformed model: exit 2, the problem as an error line, no traceback."""
    result = run(command, path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "no errors" not in result.stdout
    text = result.stdout + result.stderr
    for word in expected:
        assert word in text, text
    return text


MIL_HEAD = "program(1.0)\n{\n    func main<ios15>(tensor<fp32, [1]> x) {\n"
MIL_TAIL = "    } -> (w);\n}\n"


def _mil_model(folder: Path, statement: str) -> Path:
    folder.mkdir()
    (folder / "model.mil").write_text(MIL_HEAD + "        " + statement + "\n" + MIL_TAIL)
    return folder


@pytest.mark.parametrize("statement,expected", [
    ('tensor<fp16, [4]> w = const()[val = tensor<fp16, [4]>(BLOBFILE(path = tensor<string, []>("@model_path/w.bin"), '
     'offset = tensor<string, []>("64")))];', "integer offset"),
    ('tensor<fp16, [4]> w = const()[val = tensor<fp16, [4]>(BLOBFILE(path = tensor<string, []>("@model_path/w.bin"), '
     'offset = tensor<uint64, [2]>([1, 2])))];', "integer offset"),
    ("tensor<fp32, [1]> w = const()[val = tensor<fp32, [1]>(" + "[" * 50000 + "]" * 50000 + ")];", "nesting deeper"),
    ("tensor<fp32, [1]> w = const()[val = tensor<fp32, [1]>(" + "(" * 50000 + ")" * 50000 + ")];", "nesting deeper"),
    ("tensor<fp32, []> w = const()[val = tensor<fp32, []>(0x1p+99999999999)];", "cannot be read"),
    ("tensor<int32, []> w = const()[val = tensor<int32, []>(" + "7" * 100000 + ")];", "100000-character number"),
    ('tensor<string, []> w = const()[val = tensor<string, []>("\\x4")];', "broken escape"),
    # a type of 70 dimensions (its blob read failed at NumPy's 64 with a traceback from `mimi run`), and one whose
    # "dimensions" were the tokens of a program pasted into its brackets
    ("tensor<fp32, [" + "1, " * 69 + "1]> w = const()[val = tensor<fp32, [1]>([0])];", "more than 64 dimensions"),
    ("tensor<fp32, [program(1.0) {]> w = const()[val = tensor<fp32, [1]>([0])];", "'(', neither a size nor a symbol"),
])
def test_hostile_model_mil(tmp_path, statement, expected):
    inspect_fails(_mil_model(tmp_path / "m.mlmodelc", statement), "cannot parse Core ML program", expected)


def _vector_lut_model(folder: Path, indices: int, vector: int) -> Path:
    """An iOS 18 program whose one weight is ``indices`` 1-bit indices into a table of two vectors of
    ``vector`` fp16 values: ``indices × vector`` values from a file of ``indices / 8 + 4 · vector`` bytes."""
    from coreml_builder import write_blob_storage

    packed = np.packbits(np.arange(indices) % 2, bitorder="little").tobytes()
    table = np.ones((1, 2, vector), np.float16).tobytes()
    offsets = write_blob_storage(folder / "weights" / "weight.bin", [("uint1", packed), ("fp16", table)])
    blob = 'BLOBFILE(path = string("@model_path/weights/weight.bin"), offset = uint64({}))'
    (folder / "model.mil").write_text(
        "program(1.3)\n{\n    func main<ios18>(tensor<fp32, [1]> x) {\n"
        f"        tensor<uint1, [{indices}]> i = const()[name = string(\"i\"), val = tensor<uint1, [{indices}]>("
        f"{blob.format(offsets[0])})];\n"
        f"        tensor<fp16, [1, 2, {vector}]> t = const()[name = string(\"t\"), val = tensor<fp16, [1, 2, "
        f"{vector}]>({blob.format(offsets[1])})];\n"
        f"        tensor<fp16, [{indices * vector}]> w = constexpr_lut_to_dense(indices = i, lut = t, "
        "vector_axis = int32(0))[name = string(\"w\")];\n    } -> (w);\n}\n")
    return folder


def test_a_weight_that_declares_more_values_than_memory_is_refused_before_rebuilding(tmp_path, monkeypatch):
    """2 MB of file, 1.6·10¹² values declared (a 16 MB one of 4·10⁹ took 23 GB and 48 s before): refused in
    one line by inspect and run; and, on a machine of 0.5 MB, a table of 40,000 values is refused the same way."""
    from mimi_cli.weights.coreml import constexpr

    model = _vector_lut_model(tmp_path / "huge.mlmodelc", 8_000_000, 200_000)
    expected = "cannot rebuild w from constexpr_lut_to_dense: it would make 1,600,000,000,000 values, more than"
    inspect_fails(model, expected)
    ran = run("run", model)
    assert ran.returncode == 1 and "Traceback" not in ran.stderr and expected in ran.stderr, ran.stderr
    small = np.arange(400) % 2, np.ones((1, 2, 100), np.float16)
    assert constexpr.lut_to_dense(*small, vector_axis=0).shape == (40_000,)
    monkeypatch.setattr(constexpr, "usable_memory", lambda: 500_000)
    with pytest.raises(ValueError, match="it would make 40,000 values, more than this machine's 0.0005 GB can rebuild"):
        constexpr.lut_to_dense(*small, vector_axis=0)


def test_hostile_package_manifest_and_espresso(tmp_path):
    package = tmp_path / "p.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Manifest.json").write_text(json.dumps(
        {"rootModelIdentifier": "A", "itemInfoEntries": {"A": {"path": 7}}}))
    inspect_fails(package, "invalid Manifest.json")
    espresso = tmp_path / "e.mlmodelc"
    espresso.mkdir()
    (espresso / "model.espresso.net").write_text(json.dumps({"layers": [1, "two", None]}))
    inspect_fails(espresso, "cannot read Core ML network")


def test_json_nested_too_deeply_is_malformed_not_a_crash(tmp_path):
    """`[[[[…` a hundred thousand deep overflows Python's JSON parser (RecursionError, which no reader caught
    as malformed data): said as the file's own error by every reader of JSON."""
    deep = "[" * 100_000 + "]" * 100_000
    header = deep.encode()
    (tmp_path / "w.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    inspect_fails(tmp_path / "w.safetensors", "header is not valid JSON (nested too deeply)")
    package = tmp_path / "p.mlpackage"
    package.mkdir()
    (package / "Manifest.json").write_text(deep)
    inspect_fails(package, "invalid Manifest.json (nested too deeply)")
    espresso = tmp_path / "e.mlmodelc"
    espresso.mkdir()
    (espresso / "model.espresso.net").write_text(deep)
    inspect_fails(espresso, "not plain JSON with layers (nested too deeply)")


def _package(folder: Path, model: bytes) -> Path:
    (folder / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (folder / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(model)
    (folder / "Manifest.json").write_text(json.dumps(
        {"rootModelIdentifier": "A", "itemInfoEntries": {"A": {"path": "com.apple.CoreML/model.mlmodel"}}}))
    return folder


def test_empty_or_nested_protobuf_is_not_a_sound_model(tmp_path):
    inspect_fails(_package(tmp_path / "empty.mlpackage", b""), "the file is empty")
    nested = b""
    for _ in range(3000):  # field 1, length-delimited, inside itself
        nested = b"\x0a" + varint(len(nested)) + nested
    text = inspect_fails(_package(tmp_path / "nested.mlpackage", nested), "not a valid model.mlmodel")
    assert "<memory at" not in text


def test_safetensors_header_over_the_cap_is_said_as_such(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", 200 << 20) + b"{}" + bytes(64))
    inspect_fails(path, "over the 100 MiB limit")


def test_inspect_weights_on_a_codes_file_says_what_it_is(tmp_path):
    np.savez(tmp_path / "codes.npz", codes=np.zeros((1, 8, 3), np.uint16))
    text = inspect_fails(tmp_path / "codes.npz", "NumPy .npz archive", "`mimi inspect` shows what a codes file holds",
                         command="inspect-weights")
    assert "pickle" not in text


def test_a_model_with_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "e.mlmodelc").mkdir()
    write_mlmodelc(tmp_path / "e.mlmodelc", {})
    inspect_fails(tmp_path / "e.mlmodelc", "no tensors could be read")



def test_a_model_folders_id_never_reads_outside_it(tmp_path, monkeypatch):
    """The id written into codes files hashes a Core ML folder's files; a link in the folder to a file outside it
    was followed and read (a link to /proc/self/mem ended "OSError: [Errno 5] Input/output error"). A link out
    now counts by its text; an ordinary folder's id is what it always was: each file's path and bytes, sorted."""
    import hashlib

    from mimi_cli.errors import WeightsError
    from mimi_cli.weights import resolve

    model = write_mlmodelc(tmp_path / "m.mlmodelc", {"w": np.arange(12, dtype=np.float32)})
    expected = hashlib.sha256()
    for name in ("model.mil", "weights/weight.bin"):
        expected.update(name.encode() + b"\0" + (model / name).read_bytes())
    assert resolve.weights_id(model) == "sha256:" + expected.hexdigest()[:16]
    outside = tmp_path / "secret"
    outside.write_bytes(b"one")
    (model / "weights" / "link").symlink_to(outside)
    with_link = resolve.weights_id(model)
    outside.write_bytes(b"two")  # what the link points to is not read
    assert resolve.weights_id(model) == with_link
    (model / "weights" / "link").unlink()
    (model / "weights" / "link").symlink_to(tmp_path / "elsewhere")
    assert resolve.weights_id(model) != with_link  # the link's text is
    (model / "weights" / "link").unlink()
    (model / "weights" / "inside").symlink_to("weight.bin")  # a link within the folder is followed
    (model / "weights" / "mem").symlink_to("/proc/self/mem")
    assert resolve.weights_id(model) != with_link

    def unreadable(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(resolve, "open", unreadable, raising=False)
    with pytest.raises(WeightsError, match=r"^cannot read model.mil in the model folder .*m.mlmodelc: Input/output"):
        resolve.weights_id(model)


# ----------------------------------------------------------------------------- codes files


def decode_fails(path: Path, tmp_path: Path, *expected: str, extra: tuple = ()) -> float:
    start = time.monotonic()
    result = run("decode", path, "-o", tmp_path / "out.wav", *extra, weights=tmp_path / "unused")
    elapsed = time.monotonic() - start
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in expected:
        assert word in result.stderr, result.stderr
    assert not (tmp_path / "out.wav").exists()
    return elapsed


def test_codes_file_that_inflates_is_refused_from_its_directory(tmp_path):
    """Members whose uncompressed size is far beyond what a codes file holds: refused before inflating."""
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in codes_arrays().items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.save(member, value)
                for _ in range(32 if key == "format_version" else 0):  # 512 MiB of zeros after the value
                    member.write(bytes(16 << 20))
    assert (tmp_path / "bomb.npz").stat().st_size < 2 << 20  # deflated to well under 1 MB
    for extra in ((), ("--stream",)):
        elapsed = decode_fails(tmp_path / "bomb.npz", tmp_path, "member format_version", "bytes", extra=extra)
        assert elapsed < 30


def test_an_npy_header_that_declares_gigabytes_of_itself_is_refused_unread(tmp_path):
    """A .npy header's own length (4 bytes in versions 2 and 3): NumPy reads that many bytes before checking it.
    A codes file of 1 MB whose codes member declared a 1 GiB header over 1 GiB of zeros had 2 GB allocated and
    was then called "pickled"; a 20-byte .npy file had what its header declared (4 GB) allocated. Now both are
    refused from the length (here 4 GB declared over 256 MiB of zeros, deflated to 256 KiB)."""
    import tracemalloc

    from mimi_cli.codes import load_codes

    lie = b"\x93NUMPY\x02\x00" + (0xFFFFFFF0).to_bytes(4, "little")
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in codes_arrays().items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                if key != "codes":
                    np.save(member, value)
                    continue
                member.write(lie)
                for _ in range(16):
                    member.write(bytes(16 << 20))
    (tmp_path / "lie.npy").write_bytes(lie + b"{}\n")
    (tmp_path / "v77.npy").write_bytes(b"\x93NUMPYMP" + bytes(40))  # a version NumPy would read as 2.0
    for name, words in (("bomb.npz", "bytes of itself"), ("lie.npy", "bytes of itself"),
                        ("v77.npy", "version 77.80, which does not exist")):
        tracemalloc.start()
        with pytest.raises(InvalidCodesError, match=words):
            load_codes(tmp_path / name)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 32 << 20, f"{name}: {peak >> 20} MiB"
    decode_fails(tmp_path / "bomb.npz", tmp_path, "(codes)", "bytes of itself", "damaged")

def _deflated_array(path: Path, shape: tuple[int, ...], dtype: str) -> None:
    """An .npz of one member, ``shape`` zeros of ``dtype``: a bare array of codes (an LM's) that deflates 1000:1."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("codes.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": dtype, "fortran_order": False, "shape": shape})
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        for at in range(0, size, 16 << 20):
            member.write(bytes(min(16 << 20, size - at)))


def test_a_bare_array_is_refused_by_its_header_before_it_is_inflated(tmp_path, monkeypatch):
    """A bare array's shape was checked after it was read: a 2.3 MB .npz of one member declaring
    [8, 150000000] int16 took 4.8 GB before "has 150000000 frames". Now its header is checked first (the
    shape as any array's is, floats beyond 64 MiB refused unread, and no more than half the memory)."""
    import tracemalloc

    from mimi_cli import codes
    from mimi_cli.codes import load_codes

    cases = (((32, 8_000_000), "|i1", "has 8000000 frames; 1..7560000 are decoded"),  # 256 MiB inflated
             ((8, 8_000_000), "<f4", "holds float32 values; codes are integers (whole numbers? store them as "
                                     "integers, e.g. array.astype(np.int64); logits or probabilities? take the "
                                     "argmax over the vocabulary first)"),
             ((40, 8_000_000), "|u1", "has 40 codebooks (axis -2); Mimi has 1..32"))
    for shape, dtype, words in cases:
        _deflated_array(tmp_path / "bomb.npz", shape, dtype)
        tracemalloc.start()
        with pytest.raises(InvalidCodesError) as refused:
            load_codes(tmp_path / "bomb.npz")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert str(refused.value) == f"{tmp_path / 'bomb.npz'} (codes): {words}"
        assert peak < 16 << 20, f"{shape}: {peak >> 20} MiB"
    _deflated_array(tmp_path / "small.npz", (8, 100), "<f4")  # a float array read to say what its values are
    with pytest.raises(InvalidCodesError, match=r"\(these are whole numbers: store them as integers"):
        load_codes(tmp_path / "small.npz")
    _deflated_array(tmp_path / "week.npz", (8, 1_000_000), "<i8")  # a shape that is decoded, beyond memory
    monkeypatch.setattr(codes, "usable_memory", lambda: 100 << 20)
    with pytest.raises(InvalidCodesError, match=r"\(codes\): its \[8, 1000000\] int64 values would take 0.1 GB, "
                                                r"more than half this machine's 0.1 GB; split the codes"):
        load_codes(tmp_path / "week.npz")
    monkeypatch.undo()
    assert load_codes(tmp_path / "week.npz").codes.shape == (1, 8, 1_000_000)


def test_codes_header_claiming_a_huge_shape(tmp_path):
    (tmp_path / "huge.npz").write_bytes(npz_with_codes_header((1, 8, 2**40), "<u2", bytes(64)))
    for extra in ((), ("--stream",)):
        decode_fails(tmp_path / "huge.npz", tmp_path, "does not fit 1099511627776 frames", extra=extra)


def test_format_version_zero_is_not_called_old(tmp_path):
    np.savez(tmp_path / "v0.npz", **{**codes_arrays(), "format_version": np.array(0)})
    decode_fails(tmp_path / "v0.npz", tmp_path, "never written by mimi-cli", "damaged")


# ----------------------------------------------------------------------------- honest words, safe terminals


def test_symlink_loop_and_unreadable_audio_say_what_is_wrong(tmp_path):
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    result = run("encode", tmp_path / "loop.wav", "-o", tmp_path / "x.npz", weights=tmp_path / "unused")
    assert result.returncode == 1 and "Too many levels of symbolic links" in result.stderr, result.stderr
    assert "does not exist" not in result.stderr
    locked = tmp_path / "locked.wav"
    sf.write(locked, np.zeros(2400, np.float32), 24000)
    locked.chmod(0)
    args = ["encode", tmp_path / "locked.wav", tmp_path / "loop.wav", "-o", tmp_path / "out"]
    if os.geteuid() == 0:  # root reads files whatever their permissions, unless it gives up that capability
        if shutil.which("setpriv") is None:
            pytest.skip("root reads files whatever their permissions, and setpriv is not here to drop that")
        result = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
                                 sys.executable, "-m", "mimi_cli", *map(str, args)], capture_output=True, text=True,
                                env={**os.environ, "MIMI_WEIGHTS": str(tmp_path / "unused"), "HF_HUB_OFFLINE": "1"})
    else:
        result = run(*args, weights=tmp_path / "unused")
    assert result.returncode == 1 and "locked.wav: Permission denied" in result.stderr, result.stderr
    assert "give a WAV" not in result.stderr


def test_a_folder_that_cannot_be_listed_fails_as_an_input_of_its_own(tmp_path, weights_file):
    """`mimi encode corpus -r` left a folder without read permission out in silence (pathlib's glob skips it),
    its files never done, exit 0; a named one said "locked/wav.scp: Permission denied" (asked whether it was a
    Kaldi folder); the files of a folder without search permission stopped the whole run. Now the folder
    fails alone, saying so, and so does each file that cannot be read; the others are done. A quoted glob
    passed over such folders in silence too, and now says so as a walk does."""
    tree = tmp_path / "tree"
    for folder, name in (("ok", "a.wav"), ("locked", "b.wav"), ("noexec", "c.wav")):
        (tree / folder).mkdir(parents=True)
        sf.write(tree / folder / name, np.zeros(4800, np.float32), 24000)
    (tree / "locked").chmod(0)
    (tree / "noexec").chmod(0o644)
    as_a_user = [] if os.geteuid() != 0 else ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                                              "--inh-caps=-all"]
    if as_a_user and shutil.which("setpriv") is None:
        pytest.skip("root reads folders whatever their permissions, and setpriv is not here to drop that")
    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}
    try:
        walked = subprocess.run([*as_a_user, sys.executable, "-m", "mimi_cli", "encode", "tree", "-r", "-o", "out",
                                 "--manifest", "m.jsonl"], capture_output=True, text=True, env=env, cwd=tmp_path)
        named = subprocess.run([*as_a_user, sys.executable, "-m", "mimi_cli", "encode", "tree/locked", "-o", "x/"],
                               capture_output=True, text=True, env=env, cwd=tmp_path)
        # a quoted glob, which Python's glob (like a shell's) lets pass over such folders in silence
        globbed = {pattern: subprocess.run([*as_a_user, sys.executable, "-m", "mimi_cli", "encode", pattern, "-o",
                                            f"g{i}/"], capture_output=True, text=True, env=env, cwd=tmp_path)
                   for i, pattern in enumerate(("tree/*/*.wav", "tree/**/*.wav", "tree/*/b.wav", "tree/locked/*"))}
    finally:
        (tree / "locked").chmod(0o755)
        (tree / "noexec").chmod(0o755)
    assert walked.returncode == 1 and "Traceback" not in walked.stderr, walked.stderr
    rows = {r["input"]: r for r in map(json.loads, (tmp_path / "m.jsonl").read_text().splitlines())}
    assert rows["tree/ok/a.wav"]["status"] == "done" and (tmp_path / "out" / "ok" / "a.npz").is_file()
    assert rows["tree/locked"]["error"] == "cannot list the folder tree/locked: Permission denied; what it holds " \
                                           "is left out"
    assert rows["tree/noexec/c.wav"]["error"] == "cannot read tree/noexec/c.wav: Permission denied"
    assert named.returncode == 1 and "failed: cannot list the folder tree/locked: Permission denied" in named.stderr
    assert "wav.scp" not in named.stderr and not (tmp_path / "x").exists()
    for pattern, result in globbed.items():
        assert result.returncode == 1 and "Traceback" not in result.stderr, (pattern, result.stderr)
        assert "failed: cannot list the folder tree/locked: Permission denied" in result.stderr, pattern
    assert (tmp_path / "g0" / "ok" / "a.npz").is_file() and (tmp_path / "g1" / "ok" / "a.npz").is_file()
    assert "failed: cannot list the folder tree/noexec" in globbed["tree/*/b.wav"].stderr  # cannot look for b.wav


def test_a_loop_of_two_links_is_said_where_a_path_is_resolved(tmp_path, weights_file):
    """Path.resolve raises RuntimeError on a loop (a → b → a): among a batch's inputs (made the same file
    once) and as a Core ML weight file (checked to stay inside the model), it is said, not a traceback."""
    (tmp_path / "a.wav").symlink_to(tmp_path / "b.wav")
    (tmp_path / "b.wav").symlink_to(tmp_path / "a.wav")
    sf.write(tmp_path / "ok.wav", np.zeros(2400, np.float32), 24000)
    result = run("encode", tmp_path / "ok.wav", tmp_path / "a.wav", "-o", tmp_path / "out", weights=weights_file)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "1 encoded" in result.stderr and "a.wav: Too many levels of symbolic links" in result.stderr
    model = _mil_model(tmp_path / "m.mlmodelc", 'tensor<fp32, [1]> w = const()[val = tensor<fp32, [1]>(BLOBFILE('
                                                 'path = tensor<string, []>("@model_path/w.bin"), '
                                                 'offset = tensor<uint64, []>(64)))];')
    (model / "w.bin").symlink_to(model / "v.bin")
    (model / "v.bin").symlink_to(model / "w.bin")
    inspect_fails(model, "refusing weight path 'w.bin': it is a loop of symbolic links")
    ran = run("run", model)
    assert ran.returncode == 1 and "Traceback" not in ran.stderr and "a loop of symbolic links" in ran.stderr


def test_roundtrip_json_is_valid_for_a_one_sample_input(tmp_path, weights_file):
    sf.write(tmp_path / "one.wav", np.array([0.0], np.float32), 24000, subtype="FLOAT")
    result = run("roundtrip", tmp_path / "one.wav", "--json", weights=weights_file)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)  # strict: bare NaN would not parse
    assert metrics["si_sdr_db"] is None and metrics["frames"] == 1


def test_control_characters_never_reach_the_terminal(tmp_path, weights_file):
    evil = tmp_path / "a\x1b[2Jb\x07.wav"
    sf.write(evil, np.zeros(2400, np.float32), 24000)
    result = run("encode", evil, "-o", tmp_path / "x.npz", weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert "\x1b[2J" not in result.stderr and "\x07" not in result.stderr and "\\x1b[2J" in result.stderr
    broken = tmp_path / "two\nlines.wav"  # a name with a line break is still one line of message
    result = run("encode", broken, "-o", tmp_path / "z.npz", weights=weights_file)
    assert result.returncode == 1 and "two\\nlines.wav does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    with np.load(tmp_path / "x.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["weights_id"] = np.array("sha256:\x1b]0;pwned\x07")
    np.savez(tmp_path / "evil.npz", **arrays)
    result = run("decode", tmp_path / "evil.npz", "-o", tmp_path / "y.wav", weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert "\x1b]0;" not in result.stderr and "\\x1b]0;pwned\\x07" in result.stderr


def test_an_npy_header_with_negative_sizes_is_refused(tmp_path):
    """NumPy's header parser takes any integers for the shape: [-2, -8] over 16 values passed every size check
    (the sizes multiply to 16) and failed at the reshape, `mimi inspect` with a traceback and `mimi decode`
    with "error: ValueError: can only specify one unknown dimension"."""
    for shape, name in (((-2, -8), "neg.npy"), ((-1, -1), "ones.npy")):
        header = repr({"descr": "<i8", "fortran_order": False, "shape": shape}).encode()
        header += b" " * (-(len(header) + 11) % 64) + b"\n"
        values = np.arange(abs(np.prod(shape)), dtype="<i8").tobytes()
        (tmp_path / name).write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + values)
        decode_fails(tmp_path / name, tmp_path, f"declares the shape {list(shape)}, with a negative size")
        inspect_fails(tmp_path / name, f"declares the shape {list(shape)}, with a negative size")
    (tmp_path / "neg.npz").write_bytes(npz_with_codes_header((1, -8, -4), "<u2", bytes(64)))
    decode_fails(tmp_path / "neg.npz", tmp_path, "(codes)", "[1, -8, -4], with a negative size", extra=("--stream",))


@pytest.mark.parametrize("literal,expected", [
    ("tensor<int32, [3]>([[], 0, 0])", "holds [[], 0, 0], which is not a tensor of int32 values"),
    ("tensor<int32, []>(1e308)", "holds 1e+308, which is not a tensor of int32 values"),
    ("tensor<int32, [2]>([99999999999999999999, 0])", "which is not a tensor of int32 values"),
    ("tensor<int8, [2]>([300, 0])", "holds 300, beyond int8's range"),
    ("tensor<uint16, [2]>([-1, 0])", "holds -1, beyond uint16's range"),
    ("tensor<uint4, [2]>([200, 0])", "holds 200, beyond uint4's range"),  # its own width, not its byte's
    ("tensor<int4, [2]>([-9, 7])", "holds -9, beyond int4's range"),
])
def test_an_integer_constant_that_no_integer_type_holds_is_refused(tmp_path, literal, expected):
    """`mimi run` of a program whose integer constant is nested, not whole or out of range: NumPy failed with a
    ValueError or OverflowError traceback, or made 1e308 into -2147483648 without a word."""
    dtype, shape = literal.split("<")[1].split(">")[0].split(", ")
    (tmp_path / "m.mlmodelc").mkdir()
    (tmp_path / "m.mlmodelc" / "model.mil").write_text(
        f"{MIL_HEAD}        tensor<{dtype}, {shape}> w = const()[val = {literal}];\n{MIL_TAIL}")
    np.save(tmp_path / "x.npy", np.zeros(1, np.float32))
    result = run("run", tmp_path / "m.mlmodelc", "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "out.npz")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("given", ["--input", "--stream"])
def test_a_programs_input_from_an_endless_pipe_is_judged_by_its_first_bytes(tmp_path, given):
    """``cat /dev/zero | mimi run m.mlmodelc --input x=-``: standard input was copied whole before it was read as
    a .npy array (or as audio), so one that never ends was copied until the disk was full."""
    model = _mil_model(tmp_path / "m.mlmodelc", "tensor<fp32, [1]> w = relu(x = x);")
    code, stderr, sent = run_on_an_endless_pipe("run", model, given, "x=-", "-o", tmp_path / "out.npz")
    expected = "standard input is not a .npy array" if given == "--input" else "cannot read standard input as audio"
    assert code == 1 and expected in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert sent < 8 << 20, f"{sent:,} bytes were read"
    assert not (tmp_path / "out.npz").exists()


def _protobuf_model(rank: int, block: bytes = b"") -> bytes:
    """A model.mlmodel (spec 6) whose program takes an fp32 x of ``rank`` dimensions of size 1, its block
    ``block`` (protobuf fields 3: operations)."""
    from coreml_builder import proto_field as field

    value_type = field(1, field(1, 10) + field(2, rank) + field(3, field(1, field(1, 1))) * rank)
    function = field(1, field(1, "x") + field(2, value_type)) + field(2, "CoreML5") + \
        field(3, field(1, "CoreML5") + field(2, block))
    return field(1, 6) + field(502, field(1, 1) + field(2, field(1, "main") + field(2, function)))


def test_a_protobuf_operation_without_outputs_is_refused(tmp_path):
    """An op with no outputs (which MIL text cannot write) read from a model.mlmodelc's protobuf: `mimi run`
    failed with an IndexError traceback naming it."""
    from coreml_builder import proto_field as field

    operation = field(1, "relu") + field(2, field(1, "x") + field(2, field(1, field(1, "x"))))  # no field 3
    data = tmp_path / "m.mlpackage" / "Data" / "com.apple.CoreML"
    data.mkdir(parents=True)
    (data / "model.mlmodel").write_bytes(_protobuf_model(1, field(3, operation)))
    (tmp_path / "m.mlpackage" / "Manifest.json").write_text(json.dumps({
        "fileFormatVersion": "1.0.0", "rootModelIdentifier": "A", "itemInfoEntries": {
            "A": {"path": "com.apple.CoreML/model.mlmodel", "name": "model.mlmodel"}}}))
    result = run("run", tmp_path / "m.mlpackage")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "an operation 'relu' with no outputs" in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_protobuf_tensor_type_of_more_dimensions_than_numpy_holds_is_refused():
    from mimi_cli.weights.coreml.proto import read_model

    assert read_model(_protobuf_model(64), "built")[2].functions["main"].inputs[0][1].shape == (1,) * 64
    with pytest.raises(WeightsError, match="a tensor type of more than 64 dimensions"):
        read_model(_protobuf_model(65), "built")
