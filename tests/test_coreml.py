"""Core ML readers: real fixtures (from ../shared, skipped when absent), crafted models, and every decoding rule.

References: the fixtures' documented rows and hashes, coremltools' own dense
weights (``expected/*.npy``), hand-checked sub-byte bytes, and naive loops.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from conftest import SHARED
from coreml_builder import pack_bits, write_blob_storage, write_mlmodelc

from mimi_cli.errors import WeightsError
from mimi_cli.weights import open_weights
from mimi_cli.weights.coreml import constexpr, mil
from mimi_cli.weights.coreml.blob import BlobFile
from mimi_cli.weights.dtypes import unpack_bits

FIXTURES = SHARED / "coreml-fixtures"
SUMMARY = FIXTURES / "synthetic-coremltools9" / "expected" / "summary.json"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/coreml-fixtures is not present")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- real models


@needs_fixtures
def test_silero_compiled_program():
    model = FIXTURES / "silero-vad-v6-mlmodelc"
    digest = "853cf34740d3f5061f977ebe2976f7c921b064261c9c4753b3a1196f2dba42b4"
    assert sha256(model / "weights" / "weight.bin") == digest
    weights = open_weights(model)
    assert weights.details["program version"] == "1.0" and weights.details["opset"] == "ios15"
    assert weights.details["ops"]["lstm"] == 1 and weights.details["ops"]["conv"] == 6
    blob_names = [n for n in weights.tensors if n != "decoder_final_conv_bias_to_fp16"]  # that one is inline
    assert len(blob_names) == 13  # one per blob in the file
    # Rows from the fixture's documentation: dtype, shape and value range.
    rows = {"stft_forward_basis_to_fp16": ("fp16", (258, 1, 256), -1, 1),
            "encoder_layers_0_weight_to_fp16": ("fp16", (128, 129, 3), -31.69, 5.83),
            "concat_0": ("fp32", (512,), -1.42, 1.04), "concat_1": ("fp32", (512, 128), -2.61, 2.66),
            "concat_2": ("fp32", (512, 128), -2.85, 3.12)}
    for name, (dtype, shape, low, high) in rows.items():
        entry = weights.tensors[name]
        values = entry.load()
        assert (entry.dtype, entry.shape, values.shape) == (dtype, shape, shape)
        assert np.isfinite(values).all()
        assert values.min() == pytest.approx(low, abs=0.01) and values.max() == pytest.approx(high, abs=0.01)
    # Cross-check one tensor against the raw bytes at the documented data offset.
    raw = (model / "weights" / "weight.bin").read_bytes()[357_632: 357_632 + 262_144]
    np.testing.assert_array_equal(weights.tensors["concat_1"].load(), np.frombuffer(raw, "<f4").reshape(512, 128))


@needs_fixtures
def test_whisper_package():
    package = FIXTURES / "whisper-logmel-8s-mlpackage"
    weights = open_weights(package)
    assert weights.details["specification version"] == 8 and weights.details["model type"] == "ML Program"
    assert [(n, e.dtype, e.shape) for n, e in weights.tensors.items()] == [
        ("cos_weights_to_fp16", "fp16", (201, 1, 400)), ("sin_weights_to_fp16", "fp16", (201, 1, 400)),
        ("mel_filters_to_fp16", "fp16", (80, 201))]
    mel = weights.tensors["mel_filters_to_fp16"].load()
    assert mel.min() == 0 and mel.max() == pytest.approx(0.0259, abs=1e-4)
    cos = weights.tensors["cos_weights_to_fp16"].load()
    assert cos.min() == -1 and cos.max() == 1


@needs_fixtures
def test_espresso_network():
    model = FIXTURES / "parkinson-wave-espresso-mlmodelc"
    weights = open_weights(model)
    assert weights.container.startswith("Core ML Neural Network")
    shapes = {n: e.shape for n, e in weights.tensors.items()}
    assert shapes["sequential/conv1/BiasAdd.weights"] == (128, 1, 5, 5)
    assert shapes["sequential/conv2/BiasAdd.weights"] == (64, 128, 5, 5)
    assert shapes["sequential/fc1/BiasAdd.weights"] == (64, 32)
    assert shapes["sequential/fc3/BiasAdd.biases"] == (2,)  # the first 2 floats of a zero-padded 8-float blob
    raw = (model / "model.espresso.weights").read_bytes()
    np.testing.assert_array_equal(weights.tensors["sequential/conv1/BiasAdd.weights"].load().ravel(),
                                  np.frombuffer(raw[960: 960 + 12_800], "<f4"))
    assert all(np.abs(e.load()).max() <= 0.36 for e in weights.tensors.values())


@needs_fixtures
@pytest.mark.parametrize("package", sorted(json.loads(SUMMARY.read_text())) if SUMMARY.is_file() else [])
def test_compressed_weights_match_coremltools(package):
    root = FIXTURES / "synthetic-coremltools9"
    summary = json.loads((root / "expected" / "summary.json").read_text())[package]
    weights = open_weights(root / f"{package}.mlpackage")
    entry = weights.tensors[summary["var"]]
    assert list(entry.shape) == summary["shape"] and entry.dtype == "fp16"
    assert summary["op"] in (entry.encoding or "const")
    expected = np.load(root / "expected" / f"{package}.dense_weight.npy", allow_pickle=False)
    np.testing.assert_array_equal(entry.load(), expected.astype(np.float32))  # bit-exact


@needs_fixtures
def test_hand_checked_sub_byte_blobs():
    blobs = BlobFile(FIXTURES / "synthetic-coremltools9" / "subbyte_types.weight.bin")
    expected = {
        64: ("uint3", [1, 2, 3, 4, 5, 6, 7, 0] * 4 + [5]), 192: ("int4", [-8, -1, 0, 1, 7]), 320: ("uint6", [63, 1, 2]),
        448: ("uint2", [0, 1, 2, 3, 3]), 576: ("uint1", [1, 0, 1, 1, 0, 0, 0, 0, 1, 1]),
        704: ("uint16", list(range(12))), 832: ("int32", list(range(-5, 7))),
    }
    assert blobs.offsets() == sorted(expected)
    for offset, (dtype, values) in expected.items():
        np.testing.assert_array_equal(blobs.read(offset, dtype, (len(values),)), values)


# ----------------------------------------------------------------------------- crafted models


def test_both_mil_dialects_and_garbage_reserved_fields(tmp_path):
    tensors = {"a_weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
               "b_weight_to_fp16": np.linspace(-2, 2, 10).astype(np.float16)}
    for dialect in ("1.0", "1.3"):
        model = write_mlmodelc(tmp_path / f"{dialect}.mlmodelc", tensors, dialect=dialect, garbage=True)
        weights = open_weights(model)
        assert weights.details["program version"] == dialect
        for name, value in tensors.items():
            np.testing.assert_array_equal(weights.tensors[name].load(), value.astype(np.float32))


@pytest.mark.parametrize("path", ["@model_path/../outside.bin", "@model_path/weights/../../outside.bin",
                                  "/etc/passwd", "@model_path//etc/passwd", "weights/weight.bin"])
def test_blob_paths_leaving_the_model_are_refused(tmp_path, path):
    (tmp_path / "outside.bin").write_bytes(b"secret")
    model = write_mlmodelc(tmp_path / "m.mlmodelc", {"w": np.ones(12, np.float32)}, weight_path=path)
    with pytest.raises(WeightsError, match="refusing"):
        open_weights(model).tensors["w"].load()


def test_symlinked_weights_leaving_the_model_are_refused(tmp_path):
    model = write_mlmodelc(tmp_path / "m.mlmodelc", {"w": np.ones(12, np.float32)})
    outside = tmp_path / "elsewhere.bin"
    shutil.move(model / "weights" / "weight.bin", outside)
    os.symlink(outside, model / "weights" / "weight.bin")
    with pytest.raises(WeightsError, match="outside the model folder"):
        open_weights(model).tensors["w"].load()


def test_a_pipe_in_place_of_the_weights_is_refused_not_waited_on(tmp_path):
    model = write_mlmodelc(tmp_path / "m.mlmodelc", {"w": np.ones(12, np.float32)})
    (model / "weights" / "weight.bin").unlink()
    os.mkfifo(model / "weights" / "weight.bin")  # opening it would wait for a writer forever
    with pytest.raises(WeightsError, match="is a pipe"):
        open_weights(model).tensors["w"].load()


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[:64 + 16], "outside the"),  # record cut off
    (lambda b: b[:64] + b"\0\0\0\0" + b[68:], "no blob record"),  # sentinel wiped
    (lambda b: b[:68] + (2).to_bytes(4, "little") + b[72:], "holds fp32"),  # dtype changed to fp32
    (lambda b: b[:72] + (10).to_bytes(8, "little") + b[80:], "needs 24"),  # size too small for the shape
    (lambda b: b[:80] + (1 << 40).to_bytes(8, "little") + b[88:], "past the end"),  # data offset far away
    (lambda b: b[:4] + (1).to_bytes(4, "little") + b[8:], "version 1"),
    (lambda b: b[:10], "too short"),
])
def test_corrupt_blob_storage_gives_clean_errors(tmp_path, corrupt, message):
    model = write_mlmodelc(tmp_path / "m.mlmodelc", {"w_to_fp16": np.ones(12, np.float16)})
    blob = model / "weights" / "weight.bin"
    blob.write_bytes(corrupt(blob.read_bytes()))
    with pytest.raises(WeightsError, match=message):
        open_weights(model).tensors["w_to_fp16"].load()


@pytest.mark.parametrize("text", ["program(1.0)\n{ func main<ios15>() { tensor<fp32, [2]> w = const()[", "garbage $",
                                  "program(1.3) { func main<ios18>() { x = const()[]; } -> (x); }"])
def test_malformed_program_text(tmp_path, text):
    model = tmp_path / "m.mlmodelc"
    model.mkdir()
    (model / "model.mil").write_text(text)
    with pytest.raises(WeightsError, match="cannot parse Core ML program"):
        open_weights(model)


def test_truncated_package_protobuf(tmp_path):
    if not FIXTURES.is_dir():
        pytest.skip("../shared/coreml-fixtures is not present")
    package = tmp_path / "w.mlpackage"
    shutil.copytree(FIXTURES / "whisper-logmel-8s-mlpackage", package)
    spec = package / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec.chmod(0o644)
    spec.write_bytes(spec.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="not a valid model.mlmodel"):
        open_weights(package)


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(WeightsError, match="not a Core ML model"):
        open_weights(tmp_path)


# ----------------------------------------------------------------------------- the text grammar


def test_mil_literals_multi_outputs_and_nested_blocks():
    text = """program(1.3)
[buildInfo = dict<string, string>({{"k", "v"}})]
{
    func main<ios18>(tensor<fp16, [1, ?, 4]> x, tensor<fp32, [1, 4]> h) [FlexibleShapeInformation = tuple<>(())] {
        tensor<fp32, [5]> v = const()[name = string("v"),
                                      val = tensor<fp32, [5]>([0x1.8p+1, -0x1p-2, inf, -inf, 0x0p+0])];
        tensor<int32, [2, 2]> n = const()[name = string("n"), val = tensor<int32, [2, 2]>([[1, -2], [3, 4]])];
        fp16 s = const()[name = string("s"), val = fp16(0x1p-5)];
        tensor<fp32, [1, 4]> a, tensor<fp32, [1, 4]> b = lstm(x = h, weights = (v, n))[name = string("l")];
        tensor<fp32, [1, 4]> c = cond(pred = s)[name = string("c")] {
            tensor<fp32, [3]> inner = const()[name = string("inner"), val = tensor<fp32, [3]>([1.5, 2, 3e0])];
        } -> (inner);
    } -> (a, c);
}"""
    program = mil.parse(text)
    ops = {op.outputs[0][0]: op for op in program.operations()}
    assert list(ops) == ["v", "n", "s", "a", "c", "inner"]
    assert ops["v"].attrs["val"].data == [3.0, -0.25, float("inf"), float("-inf"), 0.0]
    assert ops["n"].attrs["val"].data == [[1, -2], [3, 4]]
    assert ops["s"].attrs["val"] == mil.Value(mil.TensorType("fp16", ()), 0.03125)
    assert [name for name, _ in ops["a"].outputs] == ["a", "b"]
    assert ops["a"].args["weights"] == [mil.Ref("v"), mil.Ref("n")]
    assert ops["a"].outputs[0][1] == mil.TensorType("fp32", (1, 4))
    assert ops["inner"].attrs["val"].data == [1.5, 2, 3.0]


def test_mil_strings_keep_their_characters_and_c_escapes():
    """A name is UTF-8 text: "café" stays "café" (read as escapes over Latin-1 bytes it became "cafÃ©"),
    and C's escapes are decoded; a backslash before anything else is refused, not passed on."""
    def value(literal: str) -> str:
        text = f'program(1.3)\n{{\n    func main<ios18>(tensor<fp32, [1]> x) {{\n        string s = const()[name = ' \
               f'string("s"), val = string({literal})];\n    }} -> (x);\n}}'
        return next(mil.parse(text).operations()).attrs["val"].data

    assert value('"café ☕ 名"') == "café ☕ 名"
    assert value(r'"a\"b\\c\n\t\101\x42\u00e9\U0001F600"') == 'a"b\\c\n\tAB\u00e9\U0001F600'
    for broken in (r'"\d"', r'"\x4"', r'"\uD800"', r'"\U00110000"'):
        with pytest.raises(WeightsError, match="broken escape"):
            value(broken)


# ----------------------------------------------------------------------------- decoding rules vs naive loops


@pytest.mark.parametrize("bits, signed", [(1, False), (2, False), (3, False), (4, False), (4, True), (6, False),
                                          (8, False)])
def test_unpack_bits_matches_a_plain_loop(bits, signed):
    """37 values, and for 3 bits (values straddle bytes) a million and 13: past the first piece unpacked."""
    rng = np.random.default_rng(bits)
    for count in (37, (1 << 20) + 13) if bits == 3 else (37,):
        values = rng.integers(-(1 << (bits - 1)) if signed else 0, 1 << (bits - 1 if signed else bits), count)
        packed = np.frombuffer(pack_bits(values.tolist(), bits), np.uint8)
        np.testing.assert_array_equal(unpack_bits(packed, count, bits, signed), values)
    with pytest.raises(ValueError, match="hold"):
        unpack_bits(packed[:-1], count, bits, signed)  # a byte short


def test_grouped_vector_lut_matches_a_loop():
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 4, (6, 4))  # 2-bit
    lut = rng.standard_normal((2, 2, 4, 3)).astype(np.float32)  # 2×2 groups, 4 palettes, vectors of 3
    dense = constexpr.lut_to_dense(indices, lut, vector_axis=1)
    expected = np.zeros((6, 12), np.float32)
    for i in range(6):
        for j in range(4):
            table = lut[i // 3, j // 2]
            expected[i, 3 * j: 3 * j + 3] = table[indices[i, j]]
    np.testing.assert_array_equal(dense, expected)


def test_blockwise_shift_scale_matches_a_loop():
    rng = np.random.default_rng(1)
    data = rng.integers(-8, 8, (4, 6)).astype(np.int8)
    scale = rng.uniform(0.1, 1, (2, 3)).astype(np.float32)
    offset = rng.integers(-2, 3, (2, 3)).astype(np.int8)
    expected = np.array([[scale[i // 2, j // 2] * (float(data[i, j]) - offset[i // 2, j // 2]) for j in range(6)]
                         for i in range(4)], np.float32)
    np.testing.assert_allclose(constexpr.blockwise_shift_scale(data, scale, offset), expected, rtol=1e-6)


def test_sparse_ops_round_trip():
    rng = np.random.default_rng(2)
    mask = rng.integers(0, 2, (5, 7)).astype(np.uint8)
    values = rng.standard_normal(int(mask.sum())).astype(np.float32)
    dense = constexpr.sparse_to_dense(values, mask)
    assert (dense[mask == 0] == 0).all() and np.array_equal(dense[mask == 1], values)
    packed = np.frombuffer(pack_bits(mask.ravel(), 1), np.uint8)
    np.testing.assert_array_equal(constexpr.sparse_to_dense(values, packed, np.array([5, 7])), dense)
    lut = np.array([[[[-1.0], [2.0]]]], np.float32)  # 1-bit per-tensor table
    indices = rng.integers(0, 2, int(mask.sum()))
    out_mask, out_values = constexpr.lut_to_sparse(mask, indices, lut)
    np.testing.assert_array_equal(out_values, lut.ravel()[indices])


def test_blob_storage_written_by_hand(tmp_path):
    values = np.array([-8, -1, 0, 1, 7])
    offsets = write_blob_storage(tmp_path / "w.bin", [("int4", pack_bits(values, 4)), ("fp32", b"\0" * 64)])
    blobs = BlobFile(tmp_path / "w.bin")
    assert blobs.offsets() == offsets == [64, 192]
    np.testing.assert_array_equal(blobs.read(64, "int4", (5,)), values)
    with pytest.raises(WeightsError, match="holds int4"):
        blobs.read(64, "uint4", (5,))
