"""Every bad input gets one line saying what is wrong, a non-zero exit, no traceback, no output file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import damaged_mp3s, lying_flac, run


def assert_clean_failure(result, workdir: Path, before: set[str], *expected: str, code: int = 1) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for text in expected:
        assert text in lines[0], lines[0]
    assert {p.name for p in workdir.iterdir()} == before, "an output or temporary file was left behind"


def encode_fails(tmp_path: Path, target: Path, *expected: str, weights: Path | None = None) -> None:
    before = {p.name for p in tmp_path.iterdir()}
    result = run("encode", target, "-o", tmp_path / "out.npz", weights=weights or tmp_path / "unused")
    assert_clean_failure(result, tmp_path, before, *expected)


def write_wav(path: Path, samples: np.ndarray, subtype: str = "PCM_16") -> Path:
    sf.write(path, samples, 24000, subtype=subtype)
    return path


# ----------------------------------------------------------------------------- audio inputs


def test_missing_path(tmp_path):
    encode_fails(tmp_path, tmp_path / "nowhere.wav", "nowhere.wav does not exist")


def test_a_missing_name_that_starts_or_ends_in_space_is_quoted(tmp_path, weights_file):
    """`mimi encode " "` said "error:   does not exist", and "a.wav " (a stray space) "a.wav  does not exist"."""
    for name in (" ", "a.wav "):
        result = run("encode", name, "-o", tmp_path / "out.npz", cwd=tmp_path, weights=weights_file)
        assert result.returncode == 1 and result.stderr == f"error: {name} does not exist (the name, quoted: " \
            f"'{name}')\n"
    sf.write(tmp_path / "a.wav", np.zeros(2400, np.float32), 24000)
    result = run("encode", "a.wav", "-o", tmp_path / "out.npz", cwd=tmp_path, env_extra={"MIMI_WEIGHTS": " "})
    assert result.stderr == "error: weights file   (from $MIMI_WEIGHTS) does not exist (the name, quoted: ' ')\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.wav"]


def test_a_home_folder_of_no_user_is_a_path_that_does_not_exist(tmp_path, weights_file):
    """``~user`` that names nobody (quoted, so the shell left it) stays as written, as the shell leaves it:
    Path.expanduser raises there, which came out as a traceback."""
    nobody = "~no-such-user-of-mimi"
    encode_fails(tmp_path, Path(f"{nobody}/a.wav"), f"{nobody}/a.wav does not exist")
    clip = write_wav(tmp_path / "clip.wav", np.zeros(2400, np.float32))
    (tmp_path / "out").mkdir()
    before = {p.name for p in tmp_path.iterdir()}
    for args, expected in ((["-o", f"{nobody}/a.npz"], f"cannot write {nobody}/a.npz: folder {nobody} does not"),
                           (["-o", tmp_path / "x.npz", "--weights", f"{nobody}/w"], f"{nobody}/w (from --weights) "
                                                                                     "does not exist"),
                           (["-o", tmp_path / "out", "--inputs-from", f"{nobody}/list.txt"], "cannot read manifest")):
        result = run("encode", clip, *args, weights=weights_file)
        assert result.returncode == 1 and "Traceback" not in result.stderr and expected in result.stderr, result.stderr
        assert {p.name for p in tmp_path.iterdir()} == before


def test_empty_directory(tmp_path):
    """A folder is a batch of its audio files; an empty one says so (and how to search deeper)."""
    (tmp_path / "folder.wav").mkdir()
    encode_fails(tmp_path, tmp_path / "folder.wav", "no .wav", "folder.wav", "-r")


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    encode_fails(tmp_path, tmp_path / "empty.wav", "is empty (0 bytes)")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="no /proc on this system")
def test_a_file_that_says_0_bytes_but_holds_text_is_not_called_empty(tmp_path):
    """/proc's files report a size of 0 and read as text: not audio, rather than empty."""
    encode_fails(tmp_path, Path("/proc/self/status"), "cannot read /proc/self/status as audio")


def test_truncated_wav(tmp_path):
    path = write_wav(tmp_path / "cut.wav", np.zeros(24000, np.float32))
    path.write_bytes(path.read_bytes()[:20000])
    encode_fails(tmp_path, path, "is truncated")


def test_truncated_flac(tmp_path):
    path = tmp_path / "cut.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 48000), 24000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    encode_fails(tmp_path, path, "cannot read", "as audio")


def test_truncated_mp3(tmp_path):
    """Refused in one line, before mpg123 prints its own warning about the stream's size on stderr."""
    path = tmp_path / "cut.mp3"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 48000), 24000, format="MP3")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    encode_fails(tmp_path, path, "cut.mp3 is truncated: its Xing header announces")


def test_damaged_ogg(tmp_path):
    """libsndfile skipped the damaged page silently (Vorbis: other samples in its place); one line now."""
    path = tmp_path / "damaged.ogg"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 72000), 24000, format="OGG", subtype="VORBIS")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    encode_fails(tmp_path, path, "damaged.ogg is damaged: its Ogg page at byte", "fails its checksum")


def test_an_mp3_file_whose_decoder_stops_at_damage(tmp_path):
    """Encoded in part, silently but for mpg123's own lines on stderr; one line now, from this tool alone."""
    path = tmp_path / "damaged.mp3"
    path.write_bytes(damaged_mp3s()[0])
    encode_fails(tmp_path, path, "damaged.mp3 is damaged: it holds", "a damaged part was skipped")


def test_damage_mpg123_skips_is_one_warning_naming_it(tmp_path, weights_file):
    """mpg123 printed several lines of its own on stderr for each damaged place, naming no file, even with -q.
    The file still encodes (a frame or two lost, as players do), with one warning that says what it said."""
    path = tmp_path / "damaged.mp3"
    path.write_bytes(damaged_mp3s()[1][0])
    for stream in ([], ["--stream"]):
        result = run("encode", "-q", *stream, path, "-o", tmp_path / "out.npz", "-f", weights=weights_file)
        assert result.returncode == 0, result.stderr
        assert result.stderr.startswith("warning: libsndfile's MP3 decoder (mpg123) said: Note: Illegal "
                                        "Audio-MPEG-Header"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    (tmp_path / "folder").mkdir()
    path.rename(tmp_path / "folder" / "damaged.mp3")
    result = run("encode", tmp_path / "folder", "-o", tmp_path / "codes", weights=weights_file)
    warnings = [line for line in result.stderr.splitlines() if "mpg123" in line]
    assert result.returncode == 0 and len(warnings) == 1, result.stderr
    assert warnings[0].startswith(f"warning: {tmp_path / 'folder' / 'damaged.mp3'}: libsndfile's MP3 decoder")
    assert not any(line.startswith(("Note:", "[src")) for line in result.stderr.splitlines()), result.stderr


def test_corrupt_header(tmp_path):
    path = write_wav(tmp_path / "bad.wav", np.zeros(2400, np.float32))
    data = bytearray(path.read_bytes())
    data[12:36] = b"\xff" * 24  # the fmt chunk
    path.write_bytes(bytes(data))
    encode_fails(tmp_path, path, "cannot read", "as audio")


def test_text_file_named_wav(tmp_path):
    (tmp_path / "notes.wav").write_text("this is not audio\n")
    encode_fails(tmp_path, tmp_path / "notes.wav", "cannot read", "WAV, FLAC, OGG or MP3")


def test_zero_length_audio(tmp_path):
    path = write_wav(tmp_path / "zero.wav", np.zeros(0, np.float32))
    encode_fails(tmp_path, path, "contains no audio samples")


@pytest.mark.parametrize("bad, subtype", [(np.nan, "FLOAT"), (np.inf, "FLOAT"), (-np.inf, "FLOAT"), (np.inf, "DOUBLE")])
def test_non_finite_samples(tmp_path, bad, subtype):
    samples = np.zeros(4800, np.float32)
    samples[100] = bad
    path = write_wav(tmp_path / "nan.wav", samples, subtype=subtype)
    encode_fails(tmp_path, path, "NaN or Inf samples (first at 0.004 s)")


# ----------------------------------------------------------------------------- codes files


def valid_codes_arrays() -> dict[str, np.ndarray]:
    return {"codes": np.zeros((1, 8, 3), np.uint16), "format_version": np.array(1), "sample_rate": np.array(24000),
            "frame_rate": np.array(12.5), "codebook_size": np.array(2048), "num_samples": np.array(5000),
            "source_sample_rate": np.array(24000), "source_channels": np.array(1),
            "weights_id": np.array("sha256:0000000000000000")}


@pytest.mark.parametrize("change,expected", [
    ({"codes": np.full((1, 8, 3), 2048, np.uint16)}, "must be below 2048"),
    ({"codes": np.zeros((1, 8, 3), np.int64)}, "codes must be uint16, got int64"),
    ({"num_samples": None}, "missing num_samples"),
    ({"format_version": np.array(99)}, "format_version 99 is newer than this mimi-cli reads"),
    ({"weights_id": np.array([object()], dtype=object)}, "pickled objects"),
    ({"codes": np.zeros((1, 40, 3), np.uint16)}, "40 codebooks"),
])
def test_bad_codes_file(tmp_path, change, expected):
    arrays = valid_codes_arrays()
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(tmp_path / "codes.npz", **arrays)
    before = {p.name for p in tmp_path.iterdir()}
    result = run("decode", tmp_path / "codes.npz", "-o", tmp_path / "out.wav", weights=tmp_path / "unused")
    assert_clean_failure(result, tmp_path, before, expected)


def test_text_file_as_codes(tmp_path):
    (tmp_path / "codes.npz").write_text("hello")
    before = {p.name for p in tmp_path.iterdir()}
    assert_clean_failure(run("decode", tmp_path / "codes.npz"), tmp_path, before, "is not a codes file")


@pytest.mark.parametrize("command, given, what, hint", [
    ("encode", "codes.npz", "a zip archive (an .npz codes file?), not audio", "`mimi decode` reads codes"),
    ("encode", "codes.npy", "a NumPy .npy array, not audio", "`mimi decode` reads codes"),
    ("encode", "w.safetensors", ".safetensors weights, not audio", "give a WAV"),
    ("decode", "clip.wav", "it holds audio (WAV)", "`mimi encode` turns into codes"),
    ("decode", "w.safetensors", "it holds .safetensors weights", "which commands take as --weights and `mimi "
     "inspect` shows one file at a time"),
    ("inspect", "*.safetensors", "it holds .safetensors weights", "`mimi inspect` shows one file at a time"),
])
def test_a_file_given_to_the_wrong_command_is_named(tmp_path, short_clip, command, given, what, hint):
    """Each reader says what the file holds when it is another kind this tool knows."""
    from safetensors.numpy import save_file

    np.savez(tmp_path / "codes.npz", **valid_codes_arrays())
    np.save(tmp_path / "codes.npy", np.zeros((8, 3), np.uint16))
    save_file({"w": np.zeros(4, np.float32), "b": np.zeros(2, np.float32)}, str(tmp_path / "w.safetensors"))
    before = {p.name for p in tmp_path.iterdir()}  # weights hold many tensors (one alone is a bare array)
    output = [] if command == "inspect" else ["-o", tmp_path / ("out.npz" if command == "encode" else "out.wav")]
    result = run(command, tmp_path / given, *output)  # inspect: a quoted glob's matches are taken as codes
    assert_clean_failure(result, tmp_path, before, what, hint, code=2 if command == "inspect" else 1)  # inspect -h


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_a_rate_no_filter_could_resample_is_refused(tmp_path, stream):
    """A header declaring 2³¹ − 1 Hz asked resample_poly for a 320 GiB filter (a MemoryError's text)."""
    sf.write(tmp_path / "fast.wav", np.zeros(4800, np.float32), 2**31 - 1, subtype="FLOAT")
    before = {p.name for p in tmp_path.iterdir()}
    result = run("encode", *stream, tmp_path / "fast.wav", "-o", tmp_path / "out.npz", weights=tmp_path / "unused")
    assert_clean_failure(result, tmp_path, before, "fast.wav declares 2,147,483,647 Hz", "1 to 768,000 Hz")


def test_a_very_low_rate_is_streamed_in_blocks_of_bounded_size(tmp_path, small_model, monkeypatch):
    """--stream read 65,536 source frames at a time whatever the rate: a 1 Hz file's block became 1.6 billion
    samples at 24 kHz at once (an out-of-memory failure, which then advised --stream). No block resamples to more
    than 2¹⁸ samples now (a second here: 1 Hz), and the blocks are the file's samples in order."""
    from mimi_cli import pipeline
    from mimi_cli.audio import StreamResampler

    path = tmp_path / "slow.wav"
    samples = np.random.default_rng(1).uniform(-0.5, 0.5, (40, 1)).astype(np.float32)
    sf.write(path, samples, 1, subtype="FLOAT")  # 40 s: 960,000 samples at 24 kHz

    def resampled(loaded, blocks, rate, channels, *rest):  # what encode_blocks resamples, block by block
        resampler = StreamResampler(rate, loaded.model.config.sample_rate)
        read = list(blocks)
        return read, [len(resampler.push(block[:, 0])) for block in read] + [len(resampler.flush())]

    monkeypatch.setattr(pipeline, "encode_blocks", resampled)
    loaded = pipeline.LoadedModel(small_model, path, pipeline.Background(str, path), 0.0)
    read, made = pipeline.encode_stream(loaded, path, 4)
    assert np.array_equal(np.concatenate(read), samples) and len(read) > 1
    # the flush adds what the filter still held: its half-length, 10 source samples (resample_poly's filter)
    assert max(made[:-1]) <= 1 << 18 and made[-1] <= (1 << 18) + 10 * 24_000 and sum(made) == 960_000, made


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_an_output_rate_beyond_audio_is_refused_before_any_work(tmp_path, stream):
    np.savez(tmp_path / "codes.npz", **valid_codes_arrays())
    before = {p.name for p in tmp_path.iterdir()}
    result = run("decode", *stream, tmp_path / "codes.npz", "-o", tmp_path / "out.wav", "--sample-rate", "1000000000",
                 weights=tmp_path / "unused")  # refused before the weights are looked for
    assert result.returncode == 2 and result.stderr == "error: Invalid value for '--sample-rate': 1,000,000,000 " \
        "Hz is above the 768,000 Hz this tool resamples to (see mimi decode -h)\n"
    assert {p.name for p in tmp_path.iterdir()} == before
    # a rate meant in kHz wrote 29 s of speech as 466 samples at 16 Hz
    result = run("decode", *stream, tmp_path / "codes.npz", "-o", tmp_path / "out.wav", "--sample-rate", "16",
                 weights=tmp_path / "unused")
    assert result.returncode == 2 and result.stderr == "error: Invalid value for '--sample-rate': 16 is below 1000 " \
        "Hz (rates are in Hz: 16 kHz is 16000) (see mimi decode -h)\n" and not (tmp_path / "out.wav").exists()


def test_audio_given_as_weights_is_named(tmp_path, short_clip):
    encode_fails(tmp_path, short_clip, "clip.wav holds audio (WAV), not weights", weights=short_clip)


def test_what_a_file_holds_is_named_from_its_first_bytes(tmp_path):
    """A table, a list or a shard given as weights was "header length 9,229,287,500,433,998,160 is over the
    100 MiB limit"; now named. A safetensors file whose header is 123 bytes starts with "{" too: weights."""
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mimi_cli.fileio import holds

    pq.write_table(pa.table({"codes": [[1, 2]]}), tmp_path / "t.parquet")
    (tmp_path / "list.jsonl").write_text('{"audio_filepath": "a.wav"}\n')
    with tarfile.open(tmp_path / "shard.tar", "w") as shard:
        shard.add(tmp_path / "list.jsonl", arcname="0001.json")
    for size in (123, 200):  # a header of 123 bytes: its length's first byte is "{"
        text = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
        (tmp_path / f"h{size}.safetensors").write_bytes(size.to_bytes(8, "little") + text.ljust(size) + bytes(4))
        assert holds(tmp_path / f"h{size}.safetensors") == ".safetensors weights"
    for name, kind in (("t.parquet", "a Parquet table"), ("list.jsonl", "JSON text"),
                       ("shard.tar", "a tar archive (a WebDataset shard?)")):
        assert holds(tmp_path / name) == kind
        result = run("inspect-weights", tmp_path / name)  # (`mimi inspect` reads a table as rows of codes)
        assert result.returncode != 0 and f"{name} holds {kind}, not weights" in result.stderr


def test_text_and_web_pages_are_named(tmp_path):
    """A text file was "header length 7,594,323,931,670,277,998 is over the 100 MiB limit" to inspect, and a web
    page saved for a download (Hugging Face's /blob/ link) the same; a list of files given to encode as audio is
    pointed at --inputs-from. Bytes that are not text are still named by nothing."""
    from mimi_cli.fileio import holds

    (tmp_path / "notes.wav").write_bytes(b"x" * 263 + "é, the first bytes end inside a character".encode())
    (tmp_path / "list.wav").write_text("a.wav\nb.wav\n")
    (tmp_path / "model.safetensors").write_text("\n  <!DOCTYPE html>\n<html lang=en><head><title>model")
    (tmp_path / "noise.wav").write_bytes(bytes(range(7, 250)) * 2)
    assert holds(tmp_path / "notes.wav") == holds(tmp_path / "list.wav") == "text"
    assert holds(tmp_path / "model.safetensors").startswith("a web page (HTML")
    assert holds(tmp_path / "noise.wav") is None
    result = run("inspect", tmp_path / "notes.wav")
    assert result.returncode == 2 and "notes.wav holds text, not weights" in result.stderr, result.stderr
    result = run("inspect", tmp_path / "model.safetensors")
    assert result.returncode == 2 and "holds a web page (HTML; a Hugging Face /blob/ link saves the page, a " \
        "/resolve/ link the file), not weights" in result.stderr, result.stderr
    before = {p.name for p in tmp_path.iterdir()}
    result = run("encode", tmp_path / "list.wav", weights=tmp_path / "model.safetensors")
    assert_clean_failure(result, tmp_path, before, "it holds text, not audio (a list of files? give it with "
                                                   "--inputs-from)")


def test_a_git_lfs_pointer_is_named_wherever_it_stands_for_a_file(tmp_path, short_clip, weights_file):
    """A clone of a Hugging Face repository without git-lfs holds pointers (three lines of text) in place of its
    audio, tables, shards and weights: each was read as damaged ("header length 2,336,927,755,350,992,246 is over
    the 100 MiB limit", "Parquet magic bytes not found"); now each says what it is and how to fetch the file.
    A file of another kind under a table's name says what it holds too."""
    pointer = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"4d7a" * 16 + b"\nsize 385000000\n")
    said = "it holds a Git LFS pointer (fetch the file: git lfs pull)"
    for name in ("a.wav", "model.safetensors", "codes.npz", "train-00000-of-00001.parquet", "data.arrow", "0.tar"):
        (tmp_path / name).write_bytes(pointer)
    for args in (("encode", tmp_path / "a.wav", "-o", tmp_path / "a.npz"), ("decode", tmp_path / "codes.npz"),
                 ("encode", short_clip, "-o", tmp_path / "b.npz", "--weights", tmp_path / "model.safetensors"),
                 ("encode", tmp_path / "train-00000-of-00001.parquet", "-o", tmp_path / "out/"),
                 ("encode", tmp_path / "data.arrow", "-o", tmp_path / "out/"),
                 ("encode", tmp_path / "0.tar", "-o", tmp_path / "out/")):
        result = run(*args, weights=weights_file)
        text = " ".join(result.stderr.split())
        assert result.returncode == 1 and (said in text or said.replace("it holds", "holds") in text), text
        assert "Traceback" not in result.stderr
    (tmp_path / "audio.parquet").write_bytes(short_clip.read_bytes())
    result = run("encode", tmp_path / "audio.parquet", "-o", tmp_path / "out/", weights=weights_file)
    assert result.returncode == 1 and "; it holds audio (WAV)" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.npz"))


def test_encode_refuses_an_audio_name_for_its_codes(tmp_path, short_clip):
    before = {p.name for p in tmp_path.iterdir()}
    result = run("encode", short_clip, "-o", tmp_path / "codes.WAV")
    assert_clean_failure(result, tmp_path, before, "codes.WAV is an audio file's name", "give a .npz name")


@pytest.mark.parametrize("name, shown", [("codes.txt", ".txt; give a .npz, .npy, .ecdc or .jsonl name"), (
    "codes", "a file without extension; give a .npz, .npy, .ecdc or .jsonl name, or end it with / for a folder")])
def test_encode_refuses_a_codes_name_of_another_kind(tmp_path, short_clip, name, shown):
    # as decode refuses to write audio under a name no audio format has: a zip named .txt misleads the next tool
    (tmp_path / name).write_bytes(b"kept")
    before = {p.name for p in tmp_path.iterdir()}
    result = run("encode", "-f", short_clip, "-o", tmp_path / name)
    assert_clean_failure(result, tmp_path, before, f"cannot write codes as {shown}")
    assert (tmp_path / name).read_bytes() == b"kept"


def test_an_existing_output_of_the_wrong_kind_is_named_as_such(tmp_path, short_clip, weights_file):
    """An existing file under a name of the wrong kind said "already exists; pass -f/--force", and -f then said the
    name was wrong. The name is said first, as without the file."""
    np.savez(tmp_path / "codes.npz", **valid_codes_arrays())
    (tmp_path / "notes.txt").write_text("kept")
    write_wav(tmp_path / "take2.wav", np.zeros(2400, np.float32))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for args, said in ((("encode", short_clip, "-o", tmp_path / "take2.wav"), "take2.wav is an audio file's name"),
                       (("encode", short_clip, "-o", tmp_path / "notes.txt"), "cannot write codes as .txt"),
                       (("decode", tmp_path / "codes.npz", "-o", tmp_path / "notes.txt"), "cannot write audio as .txt"),
                       (("roundtrip", short_clip, "-o", tmp_path / "codes.npz"), "cannot write audio as .npz")):
        result = run(*args, weights=weights_file)
        assert_clean_failure(result, tmp_path, set(before), said)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ----------------------------------------------------------------------------- weights


@pytest.fixture
def short_clip(tmp_path) -> Path:
    return write_wav(tmp_path / "clip.wav", 0.1 * np.sin(np.arange(4800, dtype=np.float32) / 10))


def test_weights_with_a_missing_tensor(tmp_path, full_state, short_clip):
    from safetensors.numpy import save_file

    state = dict(full_state)
    del state["decoder.model.14.conv.conv.bias"]
    save_file(state, str(tmp_path / "w.safetensors"))
    encode_fails(tmp_path, short_clip, "1 missing: decoder.model.14.conv.conv.bias", weights=tmp_path / "w.safetensors")


def test_truncated_weights(tmp_path, weights_file, short_clip):
    with open(weights_file, "rb") as f:
        (tmp_path / "w.safetensors").write_bytes(f.read(10_000_000))
    encode_fails(tmp_path, short_clip, "cannot read weights", "complete .safetensors",
                 weights=tmp_path / "w.safetensors")


def test_weights_that_are_not_safetensors(tmp_path, short_clip):
    (tmp_path / "w.safetensors").write_text("{}")
    encode_fails(tmp_path, short_clip, "w.safetensors holds JSON text, not weights", weights=tmp_path / "w.safetensors")


# ----------------------------------------------------------------------------- outputs


def test_output_folder_missing(tmp_path, short_clip):
    before = {p.name for p in tmp_path.iterdir()}
    result = run("encode", short_clip, "-o", tmp_path / "no" / "such" / "dir.npz")
    assert_clean_failure(result, tmp_path, before, "does not exist")


def test_unwritable_audio_extension(tmp_path):
    np.savez(tmp_path / "codes.npz", **valid_codes_arrays())
    before = {p.name for p in tmp_path.iterdir()}
    result = run("decode", tmp_path / "codes.npz", "-o", tmp_path / "out.xyz")
    assert_clean_failure(result, tmp_path, before, "cannot write audio as .xyz")
    # a name without extension may have meant a folder, as encode's -o says (decode's did not)
    result = run("decode", tmp_path / "codes.npz", "-o", tmp_path / "out")
    assert_clean_failure(result, tmp_path, before, "as a file without extension; use .wav, .flac, .ogg, .opus or "
                         ".mp3 (or another format libsndfile writes: .aiff, .au, .caf, .w64…), or end it with / for a "
                         "folder")


def test_batch_mode_refuses_what_cannot_fit_in_memory(tmp_path):
    """A codes file long enough that batch decoding could not fit in this machine's memory."""
    import os

    from mimi_cli.models import codec_spec

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    frames = int(physical / codec_spec("mimi").batch_bytes_per_second * 12.5) + 1000  # past the batch limit
    arrays = valid_codes_arrays()
    arrays["codes"] = np.zeros((1, 1, frames), np.uint16)
    arrays["num_samples"] = np.array(frames * 1920)
    np.savez(tmp_path / "long.npz", **arrays)
    before = {p.name for p in tmp_path.iterdir()}
    result = run("decode", tmp_path / "long.npz", "-o", tmp_path / "o.wav", weights=tmp_path / "unused")
    assert_clean_failure(result, tmp_path, before, "in batch mode", "use --stream")


def test_roundtrip_refuses_what_cannot_fit_in_memory_without_offering_a_stream(tmp_path):
    """roundtrip holds the whole file (with --stream too): a file too long for memory says what to do instead."""
    lying = lying_flac(tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    result = run("roundtrip", lying, weights=tmp_path / "unused")
    assert_clean_failure(result, tmp_path, before, "in batch mode", "roundtrip works on the whole file: split it "
                         "into shorter files, or use encode --stream and decode --stream")
