"""The .npz codes file: round trip, pickle-freedom and validation of every field."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mimi_cli.codes import FORMAT_VERSION, KEYS, CodesFile
from mimi_cli.errors import InvalidCodesError
from mimi_cli.models.mimi import MimiConfig

CONFIG = MimiConfig()


def make(frames: int = 5, levels: int = 8) -> CodesFile:
    codes = np.random.default_rng(0).integers(0, 2048, (levels, frames))
    return CodesFile.from_codes(codes, CONFIG, num_samples=frames * 1920 - 100, source_sample_rate=16000,
                                source_channels=2, weights_id="sha256:0123456789abcdef")


def test_first_levels_and_asking_for_more_than_there_are():
    codes = make(levels=8)
    np.testing.assert_array_equal(codes.first_levels(3, "a.npz").codes, codes.codes[:, :3])
    one = codes.first_levels(1, "a.npz")
    assert one.num_codebooks == 1 and one.num_samples == codes.num_samples
    for held, asked in ((codes, 9), (one, 2)):  # "holds 1 codebooks" before
        with pytest.raises(InvalidCodesError) as refused:
            held.first_levels(asked, "a.npz")
        assert str(refused.value) == f"a.npz holds {held.num_codebooks} codebook{'s' * (held is codes)}; -n {asked} " \
            f"asks for more (give -n {held.num_codebooks} or fewer)"


def test_round_trip_and_documented_layout(tmp_path):
    path = tmp_path / "c.npz"
    original = make()
    original.save(path)
    with np.load(path, allow_pickle=False) as raw:  # plain arrays, nothing pickled
        assert set(raw.files) == {*KEYS, "codec"} and str(raw["codec"]) == "mimi"
        assert raw["codes"].dtype == np.uint16 and raw["codes"].shape == (1, 8, 5)
        assert int(raw["format_version"]) == FORMAT_VERSION == 1
        assert (int(raw["sample_rate"]), float(raw["frame_rate"]), int(raw["codebook_size"])) == (24000, 12.5, 2048)
        assert str(raw["weights_id"]) == "sha256:0123456789abcdef"
    loaded = CodesFile.load(path)
    np.testing.assert_array_equal(loaded.codes, original.codes)
    assert (loaded.num_samples, loaded.source_sample_rate, loaded.source_channels) == (5 * 1920 - 100, 16000, 2)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    np.testing.assert_array_equal(CodesFile.load(str(path)).codes, original.codes)  # from Python, a str (it raised)
    original.save(str(tmp_path / "s.npz"))  # and save: "'str' object has no attribute 'parent'"
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "s.npz").codes, original.codes)


def rewrite(tmp_path, **changes) -> np.lib.npyio.NpzFile:
    """Save a valid file, then rewrite it with some keys changed (None removes a key)."""
    arrays = {key: np.asarray(getattr(make(), key)) for key in KEYS}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("changes,message", [
    ({"codes": np.full((1, 8, 5), 2048, np.uint16)}, "codes contain 2048, but codes must be below 2048"),
    ({"codes": np.zeros((1, 8, 5), np.int32)}, "codes must be uint16, got int32"),
    ({"codes": np.zeros((1, 8, 5), np.float32)}, "codes must be uint16"),
    ({"codes": np.zeros((8, 5), np.uint16)}, "shape [C, K, frames] with C = 1 or source_channels (2), got [8, 5]"),
    ({"codes": np.zeros((3, 8, 5), np.uint16)}, "C = 1 or source_channels (2), got [3, 8, 5]"),
    ({"codes": np.zeros((1, 33, 5), np.uint16)}, "33 codebooks; expected 1..32"),
    ({"codes": np.zeros((1, 0, 5), np.uint16)}, "0 codebooks"),
    ({"num_samples": None}, "missing num_samples"),
    ({"codes": None, "weights_id": None}, "missing codes, weights_id"),
    ({"format_version": np.array(2)}, "format_version 2 is newer than this mimi-cli reads"),
    ({"format_version": np.array(1.0)}, "format_version must be an integer"),
    ({"codebook_size": np.array(1024)}, "codebook_size is 1024, but Mimi uses 2048"),
    ({"sample_rate": np.array(16000)}, "sample_rate is 16000"),
    ({"frame_rate": np.array(25.0)}, "frame_rate is 25.0"),
    ({"num_samples": np.array(5 * 1920 + 1)}, "does not fit 5 frames"),
    ({"num_samples": np.array(4 * 1920)}, "does not fit 5 frames"),
    ({"weights_id": np.array(7)}, "weights_id must be a string"),
    ({"sample_rate": np.array([24000, 1])}, "single value"),
])
def test_invalid_fields_are_named(tmp_path, changes, message):
    with pytest.raises(InvalidCodesError) as info:
        CodesFile.load(rewrite(tmp_path, **changes))
    assert message in str(info.value)


def test_object_arrays_are_never_unpickled(tmp_path):
    path = rewrite(tmp_path, weights_id=np.array({"evil": "payload"}, dtype=object))
    with pytest.raises(InvalidCodesError, match="pickled objects"):
        CodesFile.load(path)


@pytest.mark.parametrize("content,message", [
    (b"", "not a"),
    (b"just some text\n", "not a"),
    (b"PK\x03\x04truncated zip", "not a"),
])
def test_files_that_are_not_codes_files(tmp_path, content, message):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(InvalidCodesError, match=message):
        CodesFile.load(path)


def test_truncated_codes_file(tmp_path):
    path = tmp_path / "c.npz"
    make(frames=400).save(path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-300])
    with pytest.raises(InvalidCodesError, match="cut short or damaged; write it again$"):
        CodesFile.load(path)
    flipped = bytearray(whole)
    flipped[len(whole) // 2] ^= 0xFF  # inside a member: its CRC no longer matches
    path.write_bytes(bytes(flipped))
    with pytest.raises(InvalidCodesError, match="cut short or damaged; write it again$"):
        CodesFile.load(path)


def test_a_zip_directory_that_asks_for_an_unknown_zip_version(tmp_path):
    """zipfile raises NotImplementedError from the directory of a zip whose member needs a version it does not know
    (found by the bare-array fuzzer at 10,000: a changed byte of an .npz of one array ended in a traceback, from
    the look for a lone array); given as codes or as weights, one line each."""
    import struct

    from mimi_cli.codes import load_codes
    from mimi_cli.errors import WeightsError
    from mimi_cli.weights import open_weights

    for name in ("bare.npz", "c.npz"):
        file = tmp_path / name
        if name == "c.npz":
            make(frames=4).save(file)
        else:
            np.savez(file, audio_codes=np.zeros((8, 4), np.int64))
        data = bytearray(file.read_bytes())
        start = data.find(b"PK\x01\x02")
        while start >= 0:
            struct.pack_into("<H", data, start + 6, 255)  # version needed to extract: 25.5
            start = data.find(b"PK\x01\x02", start + 4)
        file.write_bytes(bytes(data))
        with pytest.raises(InvalidCodesError, match=r"is not a readable codes file \(zip file version 25.5\)"):
            load_codes(file)
        with pytest.raises(WeightsError):
            open_weights(file)


def test_a_member_marked_encrypted_or_compressed_otherwise(tmp_path):
    """zipfile raises RuntimeError for an encrypted member and NotImplementedError for a compression method it
    lacks, zlib its own error for a damaged deflate stream (found by the codes-file fuzzers: a flipped flag bit,
    a changed byte of a deflated member, each ended in a traceback). Each is one line."""
    import struct

    from mimi_cli.codes import load_codes

    path, bare = tmp_path / "c.npz", tmp_path / "bare.npz"
    make(frames=4).save(path)
    np.savez(bare, audio_codes=np.zeros((8, 4), np.int64))
    for file in (path, bare):
        whole = file.read_bytes()
        for at, words in ((6, "it is encrypted; write it without a password"), (8, "compression method")):
            data = bytearray(whole)
            for signature, offset in ((b"PK\x03\x04", at), (b"PK\x01\x02", at + 2)):  # local and central headers
                start = data.find(signature)
                while start >= 0:
                    field = struct.unpack_from("<H", data, start + offset)[0]
                    struct.pack_into("<H", data, start + offset, field | 1 if at == 6 else 99)
                    start = data.find(signature, start + 4)
            file.write_bytes(bytes(data))
            with pytest.raises(InvalidCodesError, match=words):
                load_codes(file)
    # a deflated member whose first block is of the type deflate reserves: zlib's error, not a CRC's
    made = make(frames=4)
    for file, arrays in ((path, {key: getattr(made, key) for key in KEYS}),
                         (bare, {"audio_codes": np.zeros((8, 4), np.int64)})):
        np.savez_compressed(file, **arrays)
        data = bytearray(file.read_bytes())
        names, extras = struct.unpack_from("<HH", data, 26)
        data[30 + names + extras] = 0xFF
        file.write_bytes(bytes(data))
        with pytest.raises(InvalidCodesError, match="invalid block type.*cut short or damaged; write it again$"):
            load_codes(file)

def test_npy_file_and_missing_file(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(InvalidCodesError, match=".npy array"):
        CodesFile.load(tmp_path / "a.npy")
    with pytest.raises(InvalidCodesError, match="does not exist"):
        CodesFile.load(tmp_path / "nope.npz")
    with pytest.raises(InvalidCodesError, match="is a directory"):
        CodesFile.load(tmp_path)


def test_files_without_a_codec_field_are_mimi(tmp_path):
    """Files written before the field existed (every key but ``codec``) still load, as Mimi codes."""
    path = rewrite(tmp_path)
    with np.load(path, allow_pickle=False) as raw:
        assert "codec" not in raw.files
    assert CodesFile.load(path).codec == "mimi"


def test_encodec_codes_file_round_trip(tmp_path):
    from mimi_cli.models.encodec import EncodecConfig

    codes = np.random.default_rng(0).integers(0, 1024, (8, 7))
    original = CodesFile.from_codes(codes, EncodecConfig(), num_samples=7 * 320 - 5, source_sample_rate=24000,
                                    source_channels=1, weights_id="sha256:0123456789abcdef")
    original.save(tmp_path / "e.npz")
    loaded = CodesFile.load(tmp_path / "e.npz")
    assert (loaded.codec, loaded.frame_rate, loaded.codebook_size) == ("encodec-24khz", 75.0, 1024)
    np.testing.assert_array_equal(loaded.codes, original.codes)


@pytest.mark.parametrize("changes,message", [
    ({"codec": np.array("soundstream")}, "codec must name one of mimi, encodec-24khz, got 'soundstream'"),
    ({"codec": np.array(3)}, "codec must name one of"),
    ({"codec": np.array("encodec-24khz")}, "codebook_size is 2048, but EnCodec 24 kHz uses 1024"),
])
def test_codec_field_is_validated(tmp_path, changes, message):
    with pytest.raises(InvalidCodesError, match=re.escape(message)):
        CodesFile.load(rewrite(tmp_path, **changes))


@pytest.mark.parametrize("streamed", [True, False, None])
def test_how_the_codes_were_made_is_recorded_when_known(tmp_path, streamed):
    """``streamed``: made by a stream encoder (--stream) or a batch encode, which give other Mimi codes past
    10 s; --skip-existing compares it. Absent (None) in files written before it, and in bare arrays."""
    original = make()
    original.streamed = streamed
    original.save(tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as raw:
        assert ("streamed" in raw.files) == (streamed is not None)
        assert streamed is None or (raw["streamed"].dtype == np.bool_ and bool(raw["streamed"]) is streamed)
    assert CodesFile.load(tmp_path / "c.npz").streamed is streamed


@pytest.mark.parametrize("value", [np.array(1), np.array("yes"), np.array([True, False])])
def test_the_streamed_field_is_validated(tmp_path, value):
    with pytest.raises(InvalidCodesError, match="streamed must be one true or false"):
        CodesFile.load(rewrite(tmp_path, streamed=value))


def test_one_code_stream_per_source_channel_loads(tmp_path):
    """--channels split: as many code streams as the source had channels."""
    codes = CodesFile.load(rewrite(tmp_path, codes=np.arange(80, dtype=np.uint16).reshape(2, 8, 5)))
    assert codes.channels == 2 and codes.codes[1, 0, 0] == 40


@pytest.mark.parametrize("column, value, message", [
    ("codec", ["mimi"], "codec must name one of mimi, encodec-24khz, got \"['mimi']\""),  # was a TypeError
    ("codec", 5, "codec must name one of mimi, encodec-24khz, got '5'"),
    ("num_samples", 1.5, "num_samples must be a positive integer, got 1.5"),
    ("num_samples", 10**9, "num_samples 1000000000 does not fit 3 frames of 1920 samples"),
    ("source_channels", 2, None),  # mixed to one stream: fine
    ("weights_id", 7, "weights_id must be a string, got 7"),
    ("streamed", 1, "streamed must be true or false, got '1'"),
    ("streamed", True, None),
])
def test_a_table_row_of_codes_is_checked_as_a_codes_file_is(column, value, message):
    """A row of a table (decode's Parquet input): each metadata cell checked, whatever type it holds."""
    row = {"codes": np.zeros((8, 3), np.int64), column: value}
    if message is None:
        assert CodesFile.from_row(row, "t.parquet#0", "mimi").source_channels == value
        return
    with pytest.raises(InvalidCodesError, match="^t.parquet#0: " + re.escape(message) + "$"):
        CodesFile.from_row(row, "t.parquet#0", "mimi")
