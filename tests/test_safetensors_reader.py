"""The safetensors reader: every dtype, zero-copy float32, and a clean error for each malformation."""

from __future__ import annotations

import json
import resource
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from mimi_cli.errors import WeightsError
from mimi_cli.weights import open_weights
from mimi_cli.weights.safetensors import SafetensorsFile


def write_raw(path, header: dict, data: bytes = b"", header_len: int | None = None) -> None:
    """A safetensors file byte by byte, so that any field can be wrong."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + data)


def test_numpy_dtypes_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f64": rng.standard_normal((3, 4)), "f32": rng.standard_normal((2, 5)).astype(np.float32),
        "f16": rng.standard_normal(7).astype(np.float16), "i64": np.arange(-3, 3, dtype=np.int64),
        "i32": np.arange(6, dtype=np.int32).reshape(2, 3), "i16": np.array([-7, 9], np.int16),
        "i8": np.array([-128, 127], np.int8), "u8": np.array([0, 255], np.uint8),
        "bool": np.array([True, False, True]), "empty": np.zeros((0, 3), np.float32),
    }
    save_file(tensors, str(tmp_path / "t.safetensors"))
    loaded = open_weights(tmp_path / "t.safetensors").read_all()
    assert loaded.keys() == tensors.keys()
    for name, value in tensors.items():
        assert loaded[name].dtype == np.float32 and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value.astype(np.float32))


def test_bf16_is_exact_and_fp8_follows_the_ocp_formats(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 2.0**-66, -np.inf], np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")  # these values are exact in bf16
    # E4M3FN: 0x38 = 1.0, 0x7E = 448 (max), 0x01 = 2^-9, 0x7F = NaN; E5M2: 0x3C = 1.0, 0x7C = inf, 0x7B = 57344
    e4m3 = np.array([0x38, 0x7E, 0x01, 0xB8, 0x7F], np.uint8)
    e5m2 = np.array([0x3C, 0x7C, 0x7B, 0x01, 0xFE], np.uint8)
    header = {"b": {"dtype": "BF16", "shape": [5], "data_offsets": [0, 10]},
              "e4": {"dtype": "F8_E4M3", "shape": [5], "data_offsets": [10, 15]},
              "e5": {"dtype": "F8_E5M2", "shape": [5], "data_offsets": [15, 20]}}
    write_raw(tmp_path / "t.safetensors", header, bf16.tobytes() + e4m3.tobytes() + e5m2.tobytes())
    f = SafetensorsFile(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(f.tensor("b"), values)
    np.testing.assert_array_equal(f.tensor("e4")[:4], [1.0, 448.0, 2.0**-9, -1.0])
    assert np.isnan(f.tensor("e4")[4])
    np.testing.assert_array_equal(f.tensor("e5")[:4], [1.0, np.inf, 57344.0, 2.0**-16])
    assert np.isnan(f.tensor("e5")[4])


def test_float32_is_a_read_only_view_of_the_file(tmp_path):
    save_file({"w": np.ones((64, 64), np.float32)}, str(tmp_path / "t.safetensors"))
    w = SafetensorsFile(tmp_path / "t.safetensors").tensor("w")
    assert not w.flags.writeable and not w.flags.owndata


def test_listing_a_huge_file_reads_only_the_header(tmp_path):
    """A 2 GB tensor (a sparse file): names, dtypes and shapes come without reading its data."""
    size = 2 * 1024**3
    header = {"big": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}}
    write_raw(tmp_path / "big.safetensors", header)
    with open(tmp_path / "big.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) + size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    f = SafetensorsFile(tmp_path / "big.safetensors")
    assert f.infos["big"].shape == (size // 4,)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # kB


GOOD = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize("header,data,header_len,message", [
    (GOOD, bytes(16), 10**12, "over the 100 MiB limit"),
    (GOOD, bytes(16), 2**64 - 1, "over the 100 MiB limit"),
    (None, b"{not json", None, "not valid JSON"),
    ([1, 2], b"", None, "not a JSON object"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 32]}}, bytes(16), None, "outside the 16-byte"),
    ({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 4]}}, bytes(16), None, "outside"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, bytes(16), None, "is 12 bytes"),
    ({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}}, bytes(16), None, "unknown dtype 'Q4'"),
    ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, bytes(16), None, "invalid shape"),
    ({"w": {"dtype": "F32", "shape": [4]}}, bytes(16), None, "lacks dtype, shape or data_offsets"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(16), None, "overlap"),
])
def test_malformed_files_give_clean_errors(tmp_path, header, data, header_len, message):
    path = tmp_path / "bad.safetensors"
    if header is None:
        path.write_bytes(struct.pack("<Q", len(data)) + data)
    else:
        write_raw(path, header, data, header_len)
    with pytest.raises(WeightsError, match=message):
        open_weights(path).read_all()


@pytest.mark.parametrize("content", [b"", b"\x01\x02\x03"])
def test_too_short_files(tmp_path, content):
    (tmp_path / "s.safetensors").write_bytes(content)
    with pytest.raises(WeightsError, match="too short"):
        open_weights(tmp_path / "s.safetensors").read_all()


def test_a_tensor_named_twice_is_refused(tmp_path):
    """A header naming one tensor twice, over two stretches of data: this reader kept the second silently (as
    Python's json does), while safetensors itself refuses the file. Now it is refused here too: which one a
    reader takes is not the file's to leave open."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    entry = '{{"dtype": "F32", "shape": [4], "data_offsets": [{}, {}]}}'
    header = f'{{"x": {entry.format(0, 16)}, "x": {entry.format(16, 32)}}}'.encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / "twice.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + np.arange(8, dtype=np.float32).tobytes())
    with pytest.raises(SafetensorError):
        load_file(path)
    with pytest.raises(WeightsError, match="header is not valid JSON \\(it names 'x' twice\\)"):
        SafetensorsFile(path)
