"""Every parser against hostile bytes: only the reader's own error escapes, in bounded memory and time.

Each test mutates real inputs (files our writers make, and the Core ML fixtures in
../shared when present): bytes flipped, deleted, inserted, duplicated, truncated,
plus inputs built to lie about their sizes. Per example, the property is:

- the only exception that escapes is the reader's own (WeightsError, InvalidCodesError,
  InvalidAudioError), never a Python error, never MemoryError;
- the peak of traced allocations (NumPy's included) stays under MEMORY_CAP_BYTES;
- it takes under TIME_CAP_SECONDS.

The default example count suits CI; ``MIMI_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz.py``
is a long run (docs/weights.md records what one covered).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import sys
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SAMPLE_AUDIO, SHARED, codes_arrays, ffmpeg_file, npz_with_codes_header, run
from coreml_builder import proto_field as field
from coreml_builder import write_mlmodelc

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mimi_cli.errors import InvalidAudioError, InvalidCodesError, WeightsError  # noqa: E402

EXAMPLES = int(os.environ.get("MIMI_FUZZ_EXAMPLES", "40"))
MEMORY_CAP_BYTES = 256 << 20
TIME_CAP_SECONDS = 10.0
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="MIMI_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def bounded(call, allowed: type[Exception]) -> None:
    """Run ``call``; the reader's error is fine, anything else escapes; memory and time are checked. An error
    raised where Python can only print it (a callback from C code, a finalizer) fails too: a user sees its
    traceback."""
    unraisable, hook = [], sys.unraisablehook
    sys.unraisablehook = unraisable.append
    tracemalloc.start()
    start = time.perf_counter()
    try:
        call()
    except allowed:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        sys.unraisablehook = hook
    elapsed = time.perf_counter() - start
    assert peak < MEMORY_CAP_BYTES, f"allocated {peak / 2**20:.0f} MiB"
    assert elapsed < TIME_CAP_SECONDS, f"took {elapsed:.1f} s"
    assert not unraisable, f"printed, not raised: {unraisable[0].exc_value!r} ({unraisable[0].err_msg})"


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """One seed with a few random edits (or, now and then, random bytes)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=4096))
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "set", "delete", "insert", "duplicate", "truncate"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("["), ord("("), ord('"'), ord("9")]))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 50))
        else:
            del data[at:]
    return bytes(data)


def _fuzz_file(seeds: list[bytes], path: Path, read, allowed: type[Exception]) -> None:
    """Each seed with bytes changed, written to ``path``, then ``read()``: only ``allowed`` escapes."""
    @FUZZ
    @given(mutated(seeds))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        bounded(read, allowed)

    check()


def _fixture_files(pattern: str) -> list[bytes]:
    root = SHARED / "coreml-fixtures"
    return [p.read_bytes() for p in sorted(root.glob(pattern))[:12]] if root.is_dir() else []


# ----------------------------------------------------------------------------- Core ML: model.mil and blobs


def _built_program(folder: Path, dialect: str) -> Path:
    tensors = {"w_a": np.arange(12, dtype=np.float32).reshape(3, 4) / 7, "w_b": np.ones(5, np.float16)}
    return write_mlmodelc(folder, tensors, dialect=dialect)


@pytest.fixture(scope="module")
def programs(tmp_path_factory) -> list[Path]:
    return [_built_program(tmp_path_factory.mktemp(f"mil{d}"), d) for d in ("1.0", "1.3")]


def _read_everything(path: Path) -> None:
    from mimi_cli.weights import open_weights

    for entry in open_weights(path).tensors.values():
        entry.load()


def test_fuzz_mil_text(programs):
    from mimi_cli.weights.coreml.mil import parse

    seeds = [(p / "model.mil").read_bytes() for p in programs] + _fixture_files("*/model.mil")

    @FUZZ
    @given(mutated(seeds))
    def check(data: bytes) -> None:
        bounded(lambda: parse(data.decode("utf-8", errors="replace")), WeightsError)

    check()


def test_fuzz_mil_nesting_and_literals():
    """Text built to exhaust the stack or the number converters."""
    from mimi_cli.weights.coreml.mil import parse

    head = "program(1.0) { func main<ios15>() { tensor<fp32, [1]> w = const()[val = tensor<fp32, [1]>("
    tail = ")]; } -> (w); }"

    @FUZZ
    @given(st.integers(1, 20000), st.sampled_from(["[", "(", "{", "tensor<fp32, []>("]),
           st.sampled_from(["0x1p+99999999999", "9" * 5000, '"\\x4"', '"\\N{nope}"', "1e999999", "-nan"]))
    def check(depth: int, opening: str, literal: str) -> None:
        closing = {"[": "]", "(": ")", "{": "}"}.get(opening, ")")
        bounded(lambda: parse(head + opening * depth + literal + closing * depth + tail), WeightsError)

    check()


def test_fuzz_blob_storage(programs, tmp_path_factory):
    seeds = [(p / "weights" / "weight.bin").read_bytes() for p in programs]
    seeds += _fixture_files("*/weights/weight.bin") + _fixture_files("synthetic-coremltools9/*.weight.bin")
    folder = tmp_path_factory.mktemp("blob")
    _built_program(folder, "1.3")
    _fuzz_file(seeds, folder / "weights" / "weight.bin", lambda: _read_everything(folder), WeightsError)


def _runnable_program() -> str:
    """A small program whose ops take literals of every kind a run turns into arrays: shapes, axes, masks,
    indices, weights."""
    from mil_builder import op, type_text

    body = [op("reshape", ("r", "fp32", (4, 6)), x="x", shape=[4, -1]),
            op("transpose", ("t", "fp32", (6, 4)), x="r", perm=[1, 0]),
            op("linear", ("l", "fp32", (6, 3)), x="t", weight=np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
               bias=np.ones(3, np.float32)),
            op("slice_by_index", ("s", "fp32", (3, 3)), x="l", begin=[0, 0], end=[6, 3], stride=[2, 1],
               end_mask=[False, True]),
            op("gather", ("g", "fp32", (3, 2)), x="s", indices=[2, 0], axis=np.int32(1))]
    return (f"program(1.0)\n{{\n    func main<ios16>({type_text('fp32', (2, 3, 4))} x) {{\n        "
            + "\n        ".join(body) + "\n    } -> (g);\n}\n")


def test_fuzz_programs_run(tmp_path_factory):
    """`mimi run`'s path beyond the parser: a changed program loaded and run on zeros (its literals made
    arrays, its ops run); only the library's own one-line errors escape."""
    import shutil

    from mimi_cli.coreml import load_program
    from mimi_cli.errors import MimiError

    folder = tmp_path_factory.mktemp("run") / "p.mlmodelc"
    silero = SHARED / "coreml-fixtures" / "silero-vad-v6-mlmodelc"
    shutil.copytree(silero, folder) if silero.is_dir() else folder.mkdir()
    seeds = [_runnable_program().encode(), *([(silero / "model.mil").read_bytes()] if silero.is_dir() else [])]

    def run_on_zeros() -> None:
        program = load_program(folder)
        program.predict({port.name: np.zeros([d or 1 for d in port.shape], program.dtype(port.dtype))
                         for port in program.inputs})

    for seed in seeds:  # each seed itself runs
        (folder / "model.mil").write_bytes(seed)
        run_on_zeros()
    _fuzz_file(seeds, folder / "model.mil", run_on_zeros, MimiError)


# ----------------------------------------------------------------------------- Core ML: protobuf, manifest, espresso


def _built_mlmodel() -> bytes:
    """A Model (spec 9) holding an ML Program with one const op whose value is in blob storage."""
    tensor_type = field(1, field(1, 10) + field(2, 1) + field(3, field(1, field(1, 4))))
    value_type = field(1, tensor_type)
    blob_value = field(2, value_type) + field(5, field(1, "@model_path/weights/weight.bin") + field(2, 64))
    operation = (field(1, "const") + field(3, field(1, "w") + field(2, value_type))
                 + field(5, field(1, "val") + field(2, blob_value)))
    block = field(3, operation)
    function = field(2, "CoreML7") + field(3, field(1, "CoreML7") + field(2, block))
    program = field(1, 1) + field(2, field(1, "main") + field(2, function))
    return field(1, 9) + field(502, program)


def test_fuzz_protobuf_model():
    from mimi_cli.weights.coreml.proto import read_model

    seeds = [_built_mlmodel(), *_fixture_files("*/Data/com.apple.CoreML/model.mlmodel"),
             *_fixture_files("synthetic-coremltools9/*/Data/com.apple.CoreML/model.mlmodel")]
    version, _, program = read_model(seeds[0], "built")
    assert version == 9 and [op.op for op in program.operations()] == ["const"]  # the seed itself is sound

    @FUZZ
    @given(mutated(seeds))
    def check(data: bytes) -> None:
        bounded(lambda: read_model(data, "fuzzed"), WeightsError)

    check()


def test_fuzz_package_manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pkg") / "m.mlpackage"
    (folder / "Data" / "com.apple.CoreML").mkdir(parents=True)
    (folder / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(_built_mlmodel())
    good = {"fileFormatVersion": "1.0.0", "rootModelIdentifier": "A",
            "itemInfoEntries": {"A": {"path": "com.apple.CoreML/model.mlmodel", "name": "model.mlmodel"}}}
    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                               lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=4), max_leaves=12)

    @FUZZ
    @given(st.sampled_from(["rootModelIdentifier", "itemInfoEntries", "path", "whole"]), json_values)
    def check(where: str, value) -> None:
        manifest = json.loads(json.dumps(good))
        if where == "path":
            manifest["itemInfoEntries"]["A"]["path"] = value
        elif where == "whole":
            manifest = value
        else:
            manifest[where] = value
        (folder / "Manifest.json").write_text(json.dumps(manifest))
        bounded(lambda: _read_everything(folder), WeightsError)

    check()


def _built_espresso(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    net = {"format_version": 200, "storage": "model.espresso.weights", "layers": [
        {"type": "convolution", "name": "conv", "C": 2, "K": 3, "Nx": 2, "Ny": 1, "blob_weights": 1, "blob_biases": 3},
        {"type": "inner_product", "name": "fc", "nC": 2, "nB": 4, "blob_weights": 5}]}
    (folder / "model.espresso.net").write_text(json.dumps(net))
    blobs = [(1, np.ones(12, np.float32)), (3, np.zeros(2, np.float32)), (5, np.arange(8, dtype=np.float32))]
    table = struct.pack("<Q", len(blobs)) + b"".join(struct.pack("<QQ", i, v.nbytes) for i, v in blobs)
    (folder / "model.espresso.weights").write_bytes(table + b"".join(v.tobytes() for _, v in blobs))


def test_fuzz_espresso(tmp_path_factory):
    folder = tmp_path_factory.mktemp("espresso") / "m.mlmodelc"
    _built_espresso(folder)
    _read_everything(folder)  # the seed itself is sound
    net_seeds = [(folder / "model.espresso.net").read_bytes(), *_fixture_files("*/model.espresso.net")]
    weight_seeds = [(folder / "model.espresso.weights").read_bytes()]
    original_net, original_weights = net_seeds[0], weight_seeds[0]

    @FUZZ
    @given(mutated(net_seeds), mutated(weight_seeds), st.booleans())
    def check(net: bytes, weights: bytes, which: bool) -> None:
        (folder / "model.espresso.net").write_bytes(net if which else original_net)
        (folder / "model.espresso.weights").write_bytes(original_weights if which else weights)
        bounded(lambda: _read_everything(folder), WeightsError)

    check()


# ----------------------------------------------------------------------------- safetensors


def test_fuzz_safetensors(tmp_path_factory):
    from safetensors.numpy import save

    seeds = [save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)}),
             save({"w": np.zeros((3, 3), np.float32)}, metadata={"format": "pt"})]
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    _fuzz_file(seeds, path, lambda: _read_everything(path), WeightsError)


# ----------------------------------------------------------------------------- codes files


def _npz(arrays: dict, compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def test_fuzz_codes_files(tmp_path_factory):
    from mimi_cli.codes import CodesFile

    seeds = [_npz(codes_arrays(5)), _npz(codes_arrays(1)), _npz({**codes_arrays(3), "codec": np.array("mimi")}),
             _npz(codes_arrays(5), compressed=True)]  # deflated members: zlib's errors too
    path = tmp_path_factory.mktemp("codes") / "c.npz"
    path.write_bytes(seeds[0])
    assert CodesFile.load(path).num_frames == 5  # the seed itself is sound
    _fuzz_file(seeds, path, lambda: CodesFile.load(path), InvalidCodesError)


def test_fuzz_bare_arrays_of_codes(tmp_path_factory):
    """A language model's codes without mimi's container (a .npy, one array in an .npz, one tensor in a
    .safetensors file) with bytes changed: reading them raises InvalidCodesError only."""
    from safetensors.numpy import save

    from mimi_cli.codes import load_codes

    codes = np.arange(40).reshape(8, 5) % 2048
    forms = {".npy": [], ".npz": [], ".safetensors": []}
    for array in (codes.astype(np.int64), codes.astype(np.uint16), codes[None].astype(np.int32)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        forms[".npy"].append(buffer.getvalue())
        forms[".npz"] += [_npz({"audio_codes": array}), _npz({"audio_codes": array}, compressed=True)]
        forms[".safetensors"].append(save({"codes": array}))
    folder = tmp_path_factory.mktemp("bare")
    for suffix, seeds in forms.items():
        (folder / f"seed{suffix}").write_bytes(seeds[0])
        assert load_codes(folder / f"seed{suffix}").num_frames == 5  # the seeds themselves are sound

    @FUZZ
    @given(st.sampled_from(sorted(forms)).flatmap(lambda suffix: st.tuples(st.just(suffix), mutated(forms[suffix]))))
    def check(case) -> None:
        suffix, data = case
        path = folder / f"c{suffix}"
        path.write_bytes(data)
        bounded(lambda: load_codes(path), InvalidCodesError)

    check()


def test_fuzz_ecdc_files(tmp_path_factory):
    """EnCodec's .ecdc files (2, 8 and 32 levels, some codes across byte boundaries) with bytes changed: read as
    codes or refused with InvalidCodesError, nothing else."""
    from mimi_cli.codes import CodesFile, load_codes
    from mimi_cli.models import codec_spec

    config = codec_spec("encodec-24khz").config()
    folder = tmp_path_factory.mktemp("ecdc")
    seeds = []
    for levels, frames in ((2, 3), (8, 5), (32, 2)):
        codes = np.arange(levels * frames, dtype=np.uint16).reshape(levels, frames) * 37 % 1024
        CodesFile.from_codes(codes, config, frames * 320 - 11, 24000, 1, "").save(folder / "seed.ecdc", replace=True)
        assert np.array_equal(load_codes(folder / "seed.ecdc").codes[0], codes)  # the seeds themselves are sound
        seeds.append((folder / "seed.ecdc").read_bytes())
    _fuzz_file(seeds, folder / "c.ecdc", lambda: load_codes(folder / "c.ecdc"), InvalidCodesError)


def test_fuzz_codes_headers_that_lie(tmp_path_factory):
    """Headers declaring huge or odd shapes over a few bytes, and members that inflate: refused before reading."""
    from mimi_cli.codes import CodesFile

    path = tmp_path_factory.mktemp("lies") / "c.npz"
    dims = st.integers(0, 2**40)

    @FUZZ
    @given(st.tuples(dims, dims, dims) | st.tuples(dims) | st.tuples(dims, dims, dims, dims),
           st.sampled_from(["<u2", "<f8", "|O", "<u8", "|b1"]), st.binary(max_size=64))
    def check(shape: tuple, descr: str, payload: bytes) -> None:
        path.write_bytes(npz_with_codes_header(shape, descr, payload))
        bounded(lambda: CodesFile.load(path), InvalidCodesError)

    check()
    # a member that inflates: 200 MB of zeros deflated to a few hundred kB
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, value in codes_arrays().items():
            item = io.BytesIO()
            np.save(item, value)
            padding = bytes(200 << 20) if key == "num_samples" else b""
            archive.writestr(f"{key}.npy", item.getvalue() + padding)
    path.write_bytes(buffer.getvalue())
    bounded(lambda: CodesFile.load(path), InvalidCodesError)


# ----------------------------------------------------------------------------- audio headers


def test_fuzz_wav_headers(tmp_path_factory):
    from mimi_cli.audio import read_audio

    pcm, rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32", frames=1600)
    seeds = []
    for subtype in ("PCM_16", "FLOAT", "PCM_24"):
        buffer = io.BytesIO()
        sf.write(buffer, pcm, rate, format="WAV", subtype=subtype)
        seeds.append(buffer.getvalue())
    folder = Path(tempfile.mkdtemp(dir=tmp_path_factory.mktemp("wav")))

    @FUZZ
    @given(st.lists(st.tuples(st.integers(0, 43), st.integers(0, 255)), min_size=1, max_size=6),
           st.sampled_from(seeds), st.integers(0, 2000))
    def check(edits, seed: bytes, cut: int) -> None:
        data = bytearray(seed)
        for at, value in edits:  # the 44-byte header: sizes, format, channels, rate
            data[at] = value
        path = folder / "x.wav"
        path.write_bytes(bytes(data[: len(data) - cut]))
        bounded(lambda: read_audio(path), InvalidAudioError)

    check()


def test_fuzz_compressed_audio(tmp_path_factory):
    """FLAC, Ogg Vorbis, Opus and MP3 files (and MP3 files of two formats joined), and with the ffmpeg extra M4A,
    AAC, WebM and Matroska files, with bytes changed: read as a file and as a tar member's bytes, through
    libsndfile or FFmpeg, only InvalidAudioError escapes. (At 3,000 examples this found FFmpeg's "Frame does not
    match AudioResampler setup": a damaged MP3 frame's channels; a driver of 3,000 damaged Matroska files, a
    channel count beyond the 64 FFmpeg converts.)"""
    pcm, rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32", frames=8000)
    seeds = []
    for container, subtype, samples, at in (("FLAC", "PCM_16", pcm, rate), ("OGG", "VORBIS", pcm, rate),
                                            ("OGG", "OPUS", pcm, 48000), ("MP3", "MPEG_LAYER_III", pcm, rate),
                                            ("MP3", "MPEG_LAYER_III", np.stack([pcm, pcm], 1), rate)):
        buffer = io.BytesIO()
        sf.write(buffer, samples, at, format=container, subtype=subtype)
        seeds.append(buffer.getvalue())
    seeds.append(seeds[3] + seeds[4])  # mono then stereo MP3
    folder = Path(tempfile.mkdtemp(dir=tmp_path_factory.mktemp("compressed")))
    from mimi_cli.audio import resample

    if importlib.util.find_spec("av"):  # what FFmpeg alone reads: M4A, ADTS AAC, WebM (Opus), Matroska (PCM)
        for name, codec, at in (("a.m4a", "aac", rate), ("a.aac", "aac", rate), ("a.webm", "libopus", 48000),
                                ("a.mka", "pcm_s16le", rate)):
            ffmpeg_file(folder / name, pcm if at == rate else resample(pcm, rate, at), rate=at, codec=codec)
            seeds.append((folder / name).read_bytes())
    _fuzz_audio(seeds, folder)


def test_fuzz_other_containers(tmp_path_factory):
    """The other files libsndfile reads (WAV with WAVE_FORMAT_EXTENSIBLE, RF64, W64, AIFF and AIFF-C, AU, CAF;
    ADPCM, A-law, μ-law, GSM and 8-bit samples) with bytes changed anywhere: read as a file and as bytes held in
    memory, only InvalidAudioError escapes. (At 3,000 examples this found the seek before the start below.)"""
    pcm = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32", frames=2000)[0]
    seeds = []
    for container, subtype, channels in (("WAV", "PCM_16", 2), ("WAVEX", "PCM_24", 1), ("RF64", "FLOAT", 1),
                                         ("W64", "PCM_16", 1), ("AIFF", "PCM_16", 2), ("AIFF", "FLOAT", 1),
                                         ("AU", "ULAW", 1), ("CAF", "ALAC_16", 1), ("CAF", "PCM_16", 2),
                                         ("WAV", "MS_ADPCM", 1), ("WAV", "IMA_ADPCM", 1), ("WAV", "ALAW", 1),
                                         ("WAV", "PCM_U8", 1), ("WAV", "GSM610", 1)):
        buffer = io.BytesIO()
        sf.write(buffer, pcm if channels == 1 else np.stack([pcm, pcm[::-1]], 1), 16000, format=container,
                 subtype=subtype)
        seeds.append(buffer.getvalue())
    _fuzz_audio(seeds, Path(tempfile.mkdtemp(dir=tmp_path_factory.mktemp("containers"))))


def _fuzz_audio(seeds: list[bytes], folder: Path) -> None:
    """Each seed with bytes changed, read as a file and as bytes held in memory: only InvalidAudioError escapes."""
    from mimi_cli.audio import read_audio, read_open
    from mimi_cli.sources import open_bytes

    @FUZZ
    @given(mutated(seeds))
    def check(data: bytes) -> None:
        path = folder / "x.audio"
        path.write_bytes(data)
        bounded(lambda: read_audio(path), InvalidAudioError)
        bounded(lambda: read_open("member", open_bytes(data, "member")), InvalidAudioError)

    check()


# ----------------------------------------------------------------------------- WebDataset tar shards


def _read_items(path: Path) -> None:
    """Every item a container lists, each read whole, then the run planned; an item's own error is fine: it
    fails alone."""
    from mimi_cli.errors import MimiError
    from mimi_cli.sources import list_items, open_item

    for entry in list_items(path):
        try:
            with open_item(entry.item, entry.name) as reader:
                reader.read()
        except MimiError:
            pass
    _planned(path)


def _planned(path: Path, command: str = "encode") -> None:
    """``command`` of ``path`` into a folder beside it planned, as the command line does before any work: each
    item's output named and checked (a key holding a NUL once stopped it with a ValueError)."""
    from mimi_cli.batch import Job, plan
    from mimi_cli.pipeline import Settings

    plan(Job(Settings(command, str(path.parent / "weights.safetensors")), (str(path),), f"{path.parent / 'out'}/"))


def test_fuzz_tar_shards(tmp_path_factory):
    """A shard (audio, text and JSON members, hard and symbolic links, long names in PAX and GNU headers) with
    bytes changed: listing it and reading each item's audio raise the reader's own errors only."""
    import tarfile

    from mimi_cli.errors import MimiError
    from mimi_cli.sources import _tar_headers, list_items

    buffer = io.BytesIO()
    sf.write(buffer, np.linspace(-0.5, 0.5, 480, dtype=np.float32), 24000, format="WAV", subtype="PCM_16")
    wav = buffer.getvalue()
    folder = tmp_path_factory.mktemp("tar")
    seeds = []
    for number, form in enumerate((tarfile.PAX_FORMAT, tarfile.GNU_FORMAT)):
        with tarfile.open(folder / f"seed{number}.tar", "w", format=form) as shard:
            for name, data in (("k1.wav", wav), ("k1.json", b'{"text": "hi"}'), ("d/" + "n" * 120 + ".wav", wav),
                               ("k2.txt", b"words")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                shard.addfile(info, io.BytesIO(data))
            for name, kind, target in (("k3.wav", tarfile.LNKTYPE, "k1.wav"), ("k2.wav", tarfile.SYMTYPE, "k1.wav")):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                shard.addfile(info)
        seeds.append((folder / f"seed{number}.tar").read_bytes())
    path = folder / "x.tar"

    def read_all() -> None:
        _read_items(path)

    path.write_bytes(seeds[0])
    assert len(list_items(path)) == 4  # k1, the long name, and the two links

    @FUZZ
    @given(mutated(seeds))
    def check(data: bytes) -> None:
        _tar_headers.cache_clear()
        path.write_bytes(data)
        bounded(read_all, MimiError)

    check()


# ----------------------------------------------------------------------------- manifests (NeMo, lhotse; compressed)


_JSON_KEYS = st.sampled_from(["audio_filepath", "path", "offset", "duration", "type", "sources", "recording", "start",
                              "channel", "channels", "source", "transforms", "name", "id", "text"])
_JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.floats(), st.text(max_size=8),
                          st.sampled_from(["file", "url", "a.wav", "/", "..", "MonoCut", "MultiCut", "MixedCut"]))
_JSON_VALUES = st.recursive(_JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_JSON_KEYS, inner, max_size=5)), max_leaves=24)


def test_fuzz_manifest_lines(tmp_path_factory):
    """Manifest lines of any shape, NeMo's keys and lhotse's (cuts, recordings, sources, channels) mixed, as
    text and gzip-compressed with bytes changed, CSV and TSV lists and a Kaldi folder's tables with bytes
    changed: listing them raises nothing (each bad line is an invalid entry saying why); a compressed file
    that cannot be read is the reader's own error."""
    import gzip

    from mimi_cli.errors import MimiError
    from mimi_cli.sources import list_kaldi, list_manifest

    folder = tmp_path_factory.mktemp("manifest")
    path = folder / "cuts.jsonl.gz"
    seed = gzip.compress(b'{"id": "c", "start": 0.5, "duration": 1, "channel": 0, "recording": {"id": "r", '
                         b'"sources": [{"type": "file", "channels": [0], "source": "a.wav"}]}}\n'
                         b'{"audio_filepath": "b.wav", "offset": 1}\n')
    tables = [b'path\tsentence\tduration\na.wav\tHe said "hi".\t1.5\n',
              b'file_name,text,offset\n"a,b.wav","x ""y""",2\n']

    kaldi = folder / "kaldi"
    kaldi.mkdir()
    scp, segments = b"r1 a.wav\nr2 sox b.wav -t wav - |\nr3 x.ark:12\n", b"u1 r1 0.5 2\nu2 r2 0 -1\nu3 r9 1 0\n"

    @FUZZ
    @given(st.lists(st.dictionaries(_JSON_KEYS, _JSON_VALUES, max_size=7), max_size=6), mutated([seed]),
           mutated(tables), mutated([scp]), mutated([segments]))
    def check(records: list[dict], compressed: bytes, table: bytes, scp_bytes: bytes, segments_bytes: bytes) -> None:
        path.write_text("\n".join(json.dumps(r) for r in records))
        bounded(lambda: (list_manifest(path), _planned(path)), MimiError)
        path.write_bytes(compressed)
        bounded(lambda: (list_manifest(path), _planned(path)), MimiError)
        for name in ("train.tsv", "metadata.csv"):  # CSV and TSV lists (Common Voice, an audiofolder)
            (folder / name).write_bytes(table)
            bounded(lambda table_path=folder / name: list_manifest(table_path), MimiError)
        (kaldi / "wav.scp").write_bytes(scp_bytes)  # a Kaldi data folder
        (kaldi / "segments").write_bytes(segments_bytes)
        bounded(lambda: (list_kaldi(kaldi), _planned(kaldi)), MimiError)

    check()


# ----------------------------------------------------------------------------- tables (Parquet, Arrow)


def _table_files(tables: list, folder: Path, form: str) -> list[bytes]:
    """Each table as the bytes of a Parquet file, or an Arrow IPC stream (what save_to_disk writes) and an IPC
    file of compressed buffers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    seeds = []
    for number, table in enumerate(tables):
        seed = folder / f"seed{number}.{form}"
        if form == "parquet":
            pq.write_table(table, seed)
        else:
            with pa.ipc.new_file(seed, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
                writer.write_table(table)
            seeds.append(seed.read_bytes())
            with pa.ipc.new_stream(seed, table.schema) as writer:
                writer.write_table(table)
        seeds.append(seed.read_bytes())
    return seeds


def _forget_tables() -> None:
    """The readers' caches of tables, which hold a file by its name: one name takes new bytes each time."""
    from mimi_cli.parquet_footer import column_values
    from mimi_cli.sources import _arrow_table, _row_group, _row_group_starts, _table_shape

    for cached in (_arrow_table, _row_group, _row_group_starts, _table_shape, column_values):
        cached.cache_clear()


def _fuzz_table(seeds: list[bytes], path: Path, read_all) -> None:
    """Each seed with bytes changed, written to ``path`` and read by ``read_all``: only MimiError escapes."""
    from mimi_cli.errors import MimiError

    @FUZZ
    @given(mutated(seeds))
    def check(data: bytes) -> None:
        _forget_tables()
        path.write_bytes(data)
        bounded(read_all, MimiError)

    check()


@pytest.mark.parametrize("form", ["parquet", "arrow"])
def test_fuzz_table_rows_of_codes(tmp_path_factory, form):
    """A Parquet or Arrow file of codes (as --parquet writes, and a user's table) with bytes changed: listing
    its rows and reading each one's codes raise the reader's own errors only, and never end the process."""
    pa = pytest.importorskip("pyarrow")
    from mimi_cli.sources import list_table, row_codes

    folder = tmp_path_factory.mktemp(form)
    seeds = _table_files([
        pa.table({"codes": [np.arange(24).reshape(8, 3).tolist()] * 2, "codec": ["mimi", "mimi"],
                  "num_samples": [5000, 5760], "weights_id": ["sha256:00", "sha256:11"]}),
        pa.table({"codes": pa.array([[[1, 2], [3, 4]]], pa.list_(pa.list_(pa.uint16()))), "text": ["a"]}),
    ], folder, form)
    assert row_codes(list_table(folder / f"seed0.{form}", "codes")[1].item, "row", "mimi").num_samples == 5760
    path = folder / f"c.{form}"

    def read_all() -> None:
        for entry in list_table(path, "codes"):
            row_codes(entry.item, entry.name, "mimi")
        _planned(path, "decode")

    _fuzz_table(seeds, path, read_all)


@pytest.mark.parametrize("form", ["parquet", "arrow"])
def test_fuzz_table_rows_of_audio(tmp_path_factory, form):
    """A Hugging Face dataset's table of audio (the Audio feature's {bytes, path} structs, bytes alone, and
    decoded {array, sampling_rate} structs, mono and [channels, samples]) with bytes changed: listing its
    rows and reading each one's audio raise the reader's own errors only, and never end the process."""
    pa = pytest.importorskip("pyarrow")
    from mimi_cli.sources import list_items

    buffer = io.BytesIO()
    sf.write(buffer, np.linspace(-0.5, 0.5, 480, dtype=np.float32), 24000, format="WAV", subtype="PCM_16")
    wav = buffer.getvalue()
    folder = tmp_path_factory.mktemp(f"audio-{form}")
    seeds = _table_files([
        pa.table({"audio": [{"bytes": wav, "path": "a.wav"}, {"bytes": None, "path": "b.wav"}],
                  "text": ["one", "two"], "speaker": [1, 2]}),
        pa.table({"audio": [wav, wav[:100]]}),
        pa.table({"audio": [{"array": [0.1, -0.2, 0.3] * 40, "sampling_rate": 16000},
                            {"array": [0.5] * 90, "sampling_rate": 8000}]}),
        pa.table({"audio": [{"array": [[0.1] * 50, [0.2] * 50], "sampling_rate": 8000},
                            {"array": [[0.3] * 40], "sampling_rate": 24000}]}),
    ], folder, form)
    (folder / "b.wav").write_bytes(wav)
    path = folder / f"x.{form}"

    def read_all() -> None:
        _read_items(path)

    for seed in seeds:  # the seeds themselves are sound
        path.write_bytes(seed)
        _forget_tables()
        assert len(list_items(path)) == 2
        read_all()
    _fuzz_table(seeds, path, read_all)


# A two-column Parquet file, bytes changed by the fuzzer above: its second chunk's level histogram does not
# fit its schema. pyarrow's metadata of that chunk ended the process (an uncaught C++ exception, pyarrow 26).
_HISTOGRAM_MISMATCH = (
    "eNptU81u00AQXm8c16AIuanWsiUfLEQsEGlJkBIByoFxmrQVLiSRoKE3E0xSSJvgmAZFPAfiARCnHnkZLogDD8LMuokpYaSxd2a+"
    "+ebH6w70qkIVrrgVCF2wImNGQ2GMcdQcqooqmLgpvDLGDaEJzamz2yr5LZWQm5v0eEzg3BeZp+d57jdD1uviRiC4ZM0bhA2RqijM"
    "MjpXVEpoKaEkueZSNlcUjsn2pxqztNlgFJ2GQmU1buUHk9fRDFO1oIG4mmqp45NZIjgFN6JxdBqdJf8LC17KACUruNgyijRWoYQj"
    "JNHHpMQCBx0mtx277DFHcLvGNMPupyUlzzL/iiG4qZtfFfNC8fY9fX0xdhm3wKgFhgNz1rhT51y13zASHZWKFdJiaSvIyM3YXHg/"
    "Fe+78vd+1riwXc325MbNz5jm6eY3zmzHKkCv9+zoUbo76xe/RzIHHwC6kMoTAHQMoQ0whOZQ+nwEHNKhCXAgHdkbLo/zlb2/QNIH"
    "eGi1W9IpSVqwEirlV477o0pa8S3i776jViiw68tWBhm/TH0ubQrtPT0/3nuxILvawaSHu8t6h+3LJlf1CN/M6of93vhVdxnvpvz4"
    "aMshXoI/T+dsZfvwYQT/9ANrfDjigeQbXgUxy52G8fsPUbI9mE63wziezN3zKJ6dTM7c+/Wdyk7VLuMFozv2Az9XB/+5P1arrzQ="
)


def test_a_chunk_whose_statistics_do_not_fit_its_schema_fails_its_row(tmp_path, weights_file):
    pytest.importorskip("pyarrow")
    import base64
    import zlib

    path = tmp_path / "damaged.parquet"
    path.write_bytes(zlib.decompress(base64.b64decode("".join(_HISTOGRAM_MISMATCH))))
    done = run("decode", path, "-o", tmp_path / "out", weights=weights_file)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr  # it was -6 (SIGABRT)
    assert "cannot read row 0 of" in done.stderr and "the file is damaged" in done.stderr, done.stderr


def test_a_field_name_that_is_not_utf8_fails_its_row_as_damaged(tmp_path, weights_file):
    """The fuzzer's find: an Arrow file whose struct field's name is not UTF-8 (one byte changed) failed its row
    as "UnicodeDecodeError: 'utf-8' codec can't decode…", Python's words, not the reader's."""
    pa = pytest.importorskip("pyarrow")
    path = tmp_path / "damaged.arrow"
    table = pa.table({"audio": [{"array": [0.1] * 3000, "sampling_rate": 16000}]})
    with pa.ipc.new_stream(path, table.schema) as writer:
        writer.write_table(table)
    data = bytearray(path.read_bytes())
    data[data.index(b"array") + 1] = 0xD4  # "a\xd4ray": a lead byte without its continuation
    path.write_bytes(bytes(data))
    done = run("encode", path, "-o", tmp_path / "out", weights=weights_file)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot read row 0 of" in done.stderr and "the file is damaged" in done.stderr, done.stderr
    assert "failed: damaged.arrow#0: UnicodeDecodeError" not in done.stderr, done.stderr


def test_a_seek_before_the_start_of_bytes_in_memory_is_refused_as_on_disk():
    """An AIFF whose sound chunk's name is damaged sends libsndfile's chunk walk back before the file's start.
    A file on disk gets -1 from the system; bytes held in memory (a tar member, a dataset's row) raised
    ValueError inside python-soundfile's C callback, which Python printed with a traceback ("Exception ignored
    from cffi callback … negative seek value -1") beside the one-line error. Found by the container fuzzer."""
    from mimi_cli.audio import read_open
    from mimi_cli.sources import open_bytes

    buffer = io.BytesIO()
    sf.write(buffer, np.linspace(-0.5, 0.5, 2000, dtype=np.float32), 16000, format="AIFF", subtype="FLOAT")
    data = bytearray(buffer.getvalue())
    assert data[80:84] == b"SSND"
    data[81] = 0xFF
    bounded(lambda: read_open("member", open_bytes(bytes(data), "member")), InvalidAudioError)
