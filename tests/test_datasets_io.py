"""Corpora as they ship: JSONL manifests with offsets, WebDataset tar shards, Hugging Face datasets,
Parquet out (read back by pandas and datasets), M4A through FFmpeg, PESQ and STOI."""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ffmpeg_file, run, speech_at

from mimi_cli.codes import CodesFile
from mimi_cli.errors import MimiError


@pytest.fixture(scope="module")
def speech():
    pcm, rate = speech_at(), 24000
    return pcm, rate


@pytest.fixture(scope="module")
def reference(tmp_path_factory, weights_file, speech):
    """Clips written as plain files and encoded one by one, the way every container must agree with."""
    pcm, rate = speech
    folder = tmp_path_factory.mktemp("reference")
    clips = {"whole": pcm[:3 * rate], "span": pcm[int(0.5 * rate):int(2.0 * rate)], "one": pcm[3 * rate:4 * rate],
             "two": pcm[4 * rate:int(5.5 * rate)]}
    codes = {}
    for name, clip in clips.items():
        sf.write(folder / f"{name}.wav", clip, rate, subtype="FLOAT")
        assert run("encode", folder / f"{name}.wav", "-o", folder / f"{name}.npz", weights=weights_file).returncode == 0
        codes[name] = CodesFile.load(folder / f"{name}.npz").codes
    return folder, codes


def test_manifest_with_offsets_and_bad_lines(tmp_path, weights_file, reference):
    folder, codes = reference
    manifest = tmp_path / "train.jsonl"
    lines = [{"audio_filepath": str(folder / "whole.wav"), "offset": 0.5, "duration": 1.5, "text": "a span",
              "speaker": 2**70},  # an id beyond 64 bits: Arrow has no such integer, so the column is JSON text
             {"path": str(folder / "whole.wav"), "text": "all of it", "speaker": 7,
              "deep": json.loads("[" * 150 + "]" * 150)},  # deeper than Parquet readers go: JSON text too
             {"audio_filepath": str(folder / "nowhere.wav"), "text": "missing"},
             {"audio_filepath": str(folder / "whole.wav"), "offset": 99.0},
             {"no_audio": True}]
    manifest.write_text("\n".join(map(json.dumps, lines)) + "\n{broken json\n")
    out = tmp_path / "codes"
    result = run("encode", "--inputs-from", manifest, "-o", out, "--manifest", tmp_path / "run.jsonl",
                 "--parquet", tmp_path / "pq", weights=weights_file)
    assert result.returncode == 1 and "2 encoded" in result.stderr and "4 failed" in result.stderr
    failures = [line for line in result.stderr.splitlines() if line.strip().startswith("failed:")]
    assert len(failures) == 4 and "nowhere.wav does not exist" in result.stderr
    assert "offset 99.0 s is past the end" in result.stderr and "no audio_filepath" in result.stderr
    np.testing.assert_array_equal(CodesFile.load(out / "whole_500ms.npz").codes, codes["span"])
    np.testing.assert_array_equal(CodesFile.load(out / "whole.npz").codes, codes["whole"])
    rows = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done", "done", "failed", "failed", "failed", "failed"]
    assert rows[0]["text"] == "a span" and rows[0]["speaker"] == 2**70 and rows[1]["speaker"] == 7
    import pandas as pd

    table = pd.read_parquet(tmp_path / "pq")
    assert list(table["text"]) == ["a span", "all of it"] and len(table) == 2
    assert list(table["speaker"]) == [str(2**70), "7"]
    assert list(table["deep"].fillna("")) == ["", "[" * 150 + "]" * 150]


def test_hostile_manifest_lines_fail_alone(tmp_path, weights_file, reference):
    """Lines a careless or hostile producer writes: each its own one-line failure (a traceback before, for a
    deep nesting or an offset of 1e308 s), the good line still encoded."""
    folder, codes = reference
    whole = str(folder / "whole.wav")
    lines = ["[" * 100_000 + "]" * 100_000, json.dumps({"audio_filepath": whole, "offset": 1e308}),
             json.dumps({"audio_filepath": whole, "duration": 1e308}), json.dumps({"audio_filepath": whole + "\0x"}),
             "[1, 2]", "null", json.dumps({"audio_filepath": [whole]}), json.dumps({"text": "no path"}),
             json.dumps({"audio_filepath": ""}), json.dumps({"audio_filepath": "/"}),
             json.dumps({"path": "a/..", "offset": 1}), json.dumps({"audio_filepath": "file:///"}),
             json.dumps({"audio_filepath": whole, "offset": 0.5, "duration": 1.5})]
    manifest = tmp_path / "hostile.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    result = run("encode", manifest, "-o", tmp_path / "out", weights=weights_file)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    failures = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("failed:")]
    assert failures == [f"failed: {manifest}:1 is not JSON (nested too deeply)",
                        f"failed: {manifest}:2: offset must be a number of seconds from 0 to 1,000,000,000",
                        f"failed: {manifest}:3: duration must be a number of seconds above 0, at most 1,000,000,000",
                        f"failed: {manifest}:4: its audio_filepath holds a NUL character, which no file name can",
                        f"failed: {manifest}:5 is a JSON array, not an object",
                        f"failed: {manifest}:6 is a JSON null, not an object",
                        f"failed: {manifest}:7: audio_filepath must be a file's path (a string), not a JSON array",
                        f"failed: {manifest}:8 has no audio_filepath (or path, or file_name)",
                        # a traceback for the whole run before (an output named after no file name)
                        f"failed: {manifest}:9: its audio_filepath is empty",
                        f"failed: {manifest}:10: / names a folder, not a file",
                        f"failed: {manifest}:11: a/.. names a folder, not a file",
                        f"failed: {manifest}:12: file:/// names a folder, not a file"], result.stderr
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "out" / "whole_500ms.npz").codes, codes["span"])


def test_a_list_longer_than_memory_can_plan_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    """`yes | mimi encode --inputs-from -` read standard input until the machine's memory ran out; a list is
    read up to an eighth of the memory, and no more lines are parsed than half the memory can plan."""
    from mimi_cli import sources

    monkeypatch.setattr(sources, "usable_memory", lambda: 1_000_000)  # 125 kB of text, 244 lines
    (tmp_path / "long.txt").write_text("a.wav\n" * 300)
    [entry] = sources.list_items(tmp_path / "long.txt", manifest=True)
    assert entry.item.error == (f"manifest {tmp_path / 'long.txt'} holds 300 lines; planning them would take more "
                                "than half this machine's 0.001 GB (2,048 bytes each): split it into smaller lists")
    (tmp_path / "endless.txt").write_text("a.wav " * 30_000)
    [entry] = sources.list_items(tmp_path / "endless.txt", manifest=True)
    assert "goes on past 0.00013 GB, an eighth of this machine's 0.001 GB" in entry.item.error
    (tmp_path / "fine.txt").write_text("a.wav\n" * 200)
    assert len(sources.list_items(tmp_path / "fine.txt", manifest=True)) == 200


def test_a_manifest_by_any_name_or_pipe(tmp_path, weights_file, reference):
    """NeMo names its JSON-lines manifests .json; --inputs-from takes any name, and a pipe (read once while
    planning, relative paths from the working folder, so --jobs works)."""
    import os
    import subprocess
    import sys

    folder, codes = reference
    line = json.dumps({"audio_filepath": "whole.wav", "offset": 0.5, "duration": 1.5, "text": "a span"}) + "\n"
    (folder / "train_manifest.json").write_text(line)
    (folder / "list.txt").write_text(line)
    runs = {"json": run("encode", folder / "train_manifest.json", "-o", tmp_path / "json", weights=weights_file),
            "txt": run("encode", "--inputs-from", folder / "list.txt", "-o", tmp_path / "txt", weights=weights_file)}
    runs["pipe"] = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m mimi_cli encode --inputs-from <(cat list.txt) -o {tmp_path / 'pipe'} "
                       "--jobs 2"], cwd=folder, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "MIMI_WEIGHTS": str(weights_file)})
    for name, result in runs.items():
        assert result.returncode == 0, (name, result.stderr)
        np.testing.assert_array_equal(CodesFile.load(tmp_path / name / "whole_500ms.npz").codes, codes["span"])


def test_manifests_as_other_tools_write_them(tmp_path, weights_file, reference):
    """Manifests from Windows tools and JSON exports: a UTF-8 byte-order mark (Notepad) made the first line
    "does not exist", UTF-16 (PowerShell's `>`) was unreadable, a .json file holding one JSON array was
    "a JSON array, not an object", and one file name that is not UTF-8 in a `find -print0` list made the
    whole list unreadable; a Hugging Face audiofolder's metadata.jsonl names files by file_name. Each is read
    now, to the same codes as the files alone."""
    import os

    folder, codes = reference
    odd = os.fsencode(folder) + b"/caf\xe9.wav"  # Latin-1, as old archives have them
    with open(odd, "wb") as f:
        f.write((folder / "one.wav").read_bytes())
    line = {"audio_filepath": "whole.wav", "offset": 0.5, "duration": 1.5}
    lists = {"bom.jsonl": b"\xef\xbb\xbf" + (json.dumps(line) + "\r\n").encode(),
             "bom.txt": b"\xef\xbb\xbfone.wav\r\ntwo.wav\r\n",
             "utf16.txt": "one.wav\r\ntwo.wav\r\n".encode("utf-16"),
             "array.json": json.dumps([line, "two.wav", 7]).encode(),
             "print0.list": b"one.wav\0caf\xe9.wav\0",
             # a Hugging Face audiofolder's metadata: file_name, beside the audio (every line failed: no path)
             "metadata.jsonl": b'{"file_name": "one.wav", "transcription": "hi"}\n{"file_name": "two.wav"}\n'}
    for name, data in lists.items():
        (folder / name).write_bytes(data)
        out = tmp_path / f"{name}.out"  # (x.jsonl names a file of codes as JSON lines)
        result = run("encode", "--inputs-from", folder / name, "-o", out, weights=weights_file)
        made = {os.fsdecode(p.relative_to(out)): CodesFile.load(p).codes for p in out.rglob("*.npz")}
        want = {"bom.jsonl": {"whole_500ms.npz": "span"}, "bom.txt": {"one.npz": "one", "two.npz": "two"},
                "utf16.txt": {"one.npz": "one", "two.npz": "two"},
                "array.json": {"whole_500ms.npz": "span", "two.npz": "two"},
                "print0.list": {"one.npz": "one", os.fsdecode(b"caf\xe9.npz"): "one"},
                "metadata.jsonl": {"one.npz": "one", "two.npz": "two"}}[name]
        assert sorted(made) == sorted(want), (name, result.stderr)
        for output, clip in want.items():
            np.testing.assert_array_equal(made[output], codes[clip])
        if name == "array.json":  # an item that is neither an object nor a path fails alone, numbered from 1
            assert result.returncode == 1 and f"failed: {folder / name}:3 is a JSON number" in result.stderr
        else:
            assert result.returncode == 0, (name, result.stderr)


def test_a_file_that_is_not_a_list_is_refused_as_a_list(tmp_path, weights_file, reference):
    """`--inputs-from speech.wav` read the WAV as a list of names (its NUL bytes as `find -print0`'s separators)
    and failed on "\\x01 and \\x01 would both write out/\\x01.npz"; audio, an .npz (gzip'd too) and a WAV on
    standard input now fail in one line that says what the file is."""
    import gzip
    import subprocess

    folder, _ = reference
    np.savez(tmp_path / "codes.npz", codes=np.zeros((8, 3), np.int64))
    (tmp_path / "codes.npz.gz").write_bytes(gzip.compress((tmp_path / "codes.npz").read_bytes()))
    for given, kind in ((folder / "one.wav", "audio (WAV)"), (tmp_path / "codes.npz", "a zip archive"),
                        (tmp_path / "codes.npz.gz", "a zip archive")):
        result = run("encode", "--inputs-from", given, "-o", tmp_path / "out", weights=weights_file)
        assert result.returncode == 1 and f"failed: manifest {given} is {kind}" in result.stderr, result.stderr
        assert "name it without --inputs-from" in result.stderr and not (tmp_path / "out").exists()
    command = [sys.executable, "-m", "mimi_cli", "encode", "--inputs-from", "-", "-o", str(tmp_path / "out")]
    piped = subprocess.run(command, input=(folder / "one.wav").read_bytes(), capture_output=True,
                           env={**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"})
    assert piped.returncode == 1 and b"--inputs-from - (standard input) is audio (WAV)" in piped.stderr, piped.stderr
    (tmp_path / "clip.jsonl").write_bytes((folder / "one.wav").read_bytes())  # named as an input: read as a list
    named = run("encode", tmp_path / "clip.jsonl", "-o", tmp_path / "out", weights=weights_file)
    assert named.returncode == 1 and "is audio (WAV), not a list of inputs (paths, JSON lines, CSV or TSV); rename " \
        "it: its name says it is a list" in named.stderr, named.stderr
    # a list of printable names is a list, though it start as a format's magic does (AIFF's FORM)
    (tmp_path / "FORMANT").mkdir()
    (tmp_path / "FORMANT" / "one.wav").write_bytes((folder / "one.wav").read_bytes())
    (tmp_path / "names.txt").write_text("FORMANT/one.wav\n")
    listed = run("encode", "--inputs-from", tmp_path / "names.txt", "-o", tmp_path / "ok", weights=weights_file)
    assert listed.returncode == 0 and (tmp_path / "ok" / "FORMANT" / "one.npz").is_file(), listed.stderr


def test_lines_that_give_a_span_under_other_names_are_said_to_be_read_whole(tmp_path, weights_file, reference):
    """A line giving start and end (WhisperX's segments, a hand-made list) instead of NeMo's offset and duration
    encoded its whole file without a word. It still does (those keys may be a cut's place in its recording), and
    the run now says so once, naming the first such line and the keys; a line with an offset is read as before."""
    from mimi_cli.sources import list_manifest

    folder, codes = reference
    manifest = tmp_path / "segments.jsonl"
    lines = [{"audio_filepath": str(folder / "one.wav"), "start": 0.5, "end": 1.0, "text": "hi"},
             {"audio_filepath": str(folder / "two.wav"), "begin_time": 12, "speaker": "b"},
             {"audio_filepath": str(folder / "whole.wav"), "offset": 0.5, "duration": 1.5, "start": 3.0},
             {"audio_filepath": str(folder / "whole.wav"), "end": "soon"}]  # not seconds: nothing to say
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run("encode", "--inputs-from", manifest, "-o", tmp_path / "codes", "--manifest", tmp_path / "run.jsonl",
                 weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert f"note: {manifest}:1 and 1 more line give start, end and begin_time, carried along and not read: the " \
        "whole file is encoded (a span is offset and duration, in seconds)\n" in result.stderr, result.stderr
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "codes" / "one.npz").codes, codes["one"])
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "codes" / "whole_500ms.npz").codes, codes["span"])
    first = json.loads((tmp_path / "run.jsonl").read_text().splitlines()[0])
    assert (first["start"], first["end"], first["offset"], first["duration"]) == (0.5, 1.0, 0.0, None)
    # a CSV's values are text: "0.5" is seconds too
    (tmp_path / "rows.csv").write_text(f"path,start,stop\n{folder}/one.wav,0.5,1\n{folder}/two.wav,,\n")
    assert [entry.unread for entry in list_manifest(tmp_path / "rows.csv")] == [("start", "stop"), ()]


def test_csv_and_tsv_lists_with_a_header_row(tmp_path, weights_file, reference):
    """Common Voice's train.tsv (its files by name in clips/ beside it; no quoting: a sentence keeps its quotes)
    and an audiofolder's metadata.csv (quoted values, a duration) were taken for audio ("cannot read as audio")
    when named, and for one path a line with --inputs-from. Each row is an item, its columns carried; a row of
    the wrong width fails alone; a first row naming no path column refuses the list, in one line."""
    import gzip

    import pyarrow.parquet as pq

    folder, codes = reference
    cv = tmp_path / "cv"
    (cv / "clips").mkdir(parents=True)
    for name in ("one", "two"):
        (cv / "clips" / f"common_voice_{name}.wav").write_bytes((folder / f"{name}.wav").read_bytes())
    header = "client_id\tpath\tsentence\tup_votes\tage"
    rows = ['c1\tcommon_voice_one.wav\tHe said "hi", then left.\t2\ttwenties', "c2\tcommon_voice_two.wav\tAnd so.\t0\t",
            "c3\tcommon_voice_two.wav\ttoo few", "c4\tcommon_voice_gone.wav\tMissing.\t0\t",
            f"c5\t{'n' * 300}.wav\tA name too long for a file system.\t0\t"]  # a traceback, found by the fuzzer
    (cv / "train.tsv").write_text("\n".join([header, *rows]) + "\n")
    result = run("encode", cv / "train.tsv", "-o", tmp_path / "codes", "--parquet", tmp_path / "pq",
                 weights=weights_file)
    assert result.returncode == 1 and "2 encoded" in result.stderr, result.stderr
    assert f"failed: {cv}/train.tsv:4 has 3 values, and its first row names 5" in result.stderr
    assert f"failed: {cv}/train.tsv:5: {cv}/clips/common_voice_gone.wav does not exist" in result.stderr
    assert f"failed: {cv}/train.tsv:6: cannot read {cv}/clips/{'n' * 300}.wav: File name too long" in result.stderr
    for name in ("one", "two"):
        np.testing.assert_array_equal(CodesFile.load(tmp_path / "codes" / f"common_voice_{name}.npz").codes,
                                      codes[name])
    first = pq.read_table(tmp_path / "pq").to_pylist()[0]
    assert (first["sentence"], first["client_id"], first["up_votes"]) == ('He said "hi", then left.', "c1", "2")

    metadata = tmp_path / "metadata.csv.gz"  # compressed, and given by --inputs-from: the same reading
    metadata.write_bytes(gzip.compress(f'file_name,transcription,offset,duration\n{folder}/whole.wav,"a, ""b""",'
                                       '0.5,1.5\n'.encode()))
    result = run("encode", "--inputs-from", metadata, "-o", tmp_path / "csv", "--manifest", tmp_path / "run.jsonl",
                 weights=weights_file)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "csv" / "whole_500ms.npz").codes, codes["span"])
    assert json.loads((tmp_path / "run.jsonl").read_text())["transcription"] == 'a, "b"'

    (tmp_path / "names.csv").write_text("speaker,text\n1,hi\n")
    result = run("encode", tmp_path / "names.csv", "-o", tmp_path / "none", weights=weights_file)
    assert result.returncode == 1 and f"failed: {tmp_path}/names.csv: its first row names no column of paths " \
        "(audio_filepath, path, file_name), but 'speaker', 'text'" in result.stderr, result.stderr


def test_a_kaldi_data_folder_is_its_utterances(tmp_path, weights_file, reference, monkeypatch):
    """A Kaldi data folder (wav.scp, segments, text, utt2spk) was a folder without audio ("no .wav or .flac…
    files"). Each segment is a span of its recording's file (paths from the working folder), named by its id,
    its words and speaker carried; without segments each recording is whole. Commands, archive places, unknown
    recordings and malformed lines fail alone, saying which."""
    folder, codes = reference
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "w.wav").write_bytes((folder / "whole.wav").read_bytes())
    (data / "wav.scp").write_text(f"r1 audio/w.wav\nr2 {folder}/one.wav\nr3 sox a.wav -t wav - remix 1 |\n"
                                  "r4 /data/raw.ark:1234\nr5\n")
    (data / "segments").write_text("u1 r1 0.5 2.0\nu2 r2 0 -1\nu3 r3 0 1\nu4 r4 0 1\nu5 rX 0 1\nu6 r1 2 1\nbroken\n"
                                   "u7 r5 0 1\n")
    (data / "text").write_text("u1 A SPAN OF IT\nu2 ONE\n")
    (data / "utt2spk").write_text("u1 s1\nu2 s2\n")
    result = run("encode", "data/train", "-o", tmp_path / "codes", "--manifest", tmp_path / "run.jsonl",
                 weights=weights_file)
    assert result.returncode == 1 and "2 encoded" in result.stderr, result.stderr
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "codes" / "train" / "u1.npz").codes, codes["span"])
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "codes" / "train" / "u2.npz").codes, codes["one"])
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "run.jsonl").read_text().splitlines()) if "id" in r}
    assert (rows["u1"]["text"], rows["u1"]["speaker"], rows["u1"]["recording_id"]) == ("A SPAN OF IT", "s1", "r1")
    failed = sorted(line.strip() for line in result.stderr.splitlines() if line.strip().startswith("failed:"))
    assert failed == [
        "failed: data/train/segments:3: its recording r3 (wav.scp line 3) is a command (sox a.wav -t wav - remix 1 "
        "|), which mimi does not run: give the file it reads",
        "failed: data/train/segments:4: its recording r4 (wav.scp line 4) is a place in an archive "
        "(/data/raw.ark:1234), which mimi does not read: give an audio file",
        "failed: data/train/segments:5 names recording rX, which data/train/wav.scp does not list",
        "failed: data/train/segments:6: start and end must be seconds, start below end (end -1 for the recording's "
        "end)",
        "failed: data/train/segments:7 has 1 fields; a segment is <utterance> <recording> <start> <end>",
        "failed: data/train/segments:8: its recording r5 (wav.scp line 5) names no file"], result.stderr
    (data / "segments").unlink()  # each recording whole
    result = run("encode", data, "-o", tmp_path / "whole", weights=weights_file)
    assert result.returncode == 1 and "2 encoded" in result.stderr, result.stderr
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "whole" / "train" / "r1.npz").codes, codes["whole"])


def test_a_run_manifest_given_back_as_input(tmp_path, weights_file, reference):
    """A run's --manifest, given as the next run's --inputs-from (to redo a corpus), carries the earlier run's
    "status", "error", "frames" and "manifest_line": they overwrote the new run's own, so a file that failed
    then and is done now was recorded as failed; and a failed item's row lacked the keys it carries (its
    audio_filepath), so it could not be redone from it. The run's own fields win now, as in Parquet, and
    every item's row has its keys."""
    folder, codes = reference
    (folder / "late.wav").unlink(missing_ok=True)
    lines = [{"audio_filepath": "one.wav", "text": "a"}, {"audio_filepath": "late.wav", "text": "b"}]
    (folder / "first.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    first = run("encode", "--inputs-from", folder / "first.jsonl", "-o", tmp_path / "a", "--manifest",
                folder / "first.run.jsonl", weights=weights_file)  # beside it: relative paths hold
    assert first.returncode == 1 and "late.wav does not exist" in first.stderr
    failed = json.loads((folder / "first.run.jsonl").read_text().splitlines()[1])  # keeps its keys, to be redone
    assert (failed["status"], failed["audio_filepath"], failed["text"]) == ("failed", "late.wav", "b")
    (folder / "late.wav").write_bytes((folder / "two.wav").read_bytes())
    again = run("encode", "--inputs-from", folder / "first.run.jsonl", "-o", tmp_path / "b", "--manifest",
                tmp_path / "again.run.jsonl", weights=weights_file)
    (folder / "late.wav").unlink()
    assert again.returncode == 0, again.stderr
    rows = [json.loads(line) for line in (tmp_path / "again.run.jsonl").read_text().splitlines()]
    assert [(r["status"], r["error"], r["manifest_line"], r["text"]) for r in rows] == [
        ("done", None, 1, "a"), ("done", None, 2, "b")]
    assert [r["frames"] for r in rows] == [codes["one"].shape[-1], codes["two"].shape[-1]]
    assert rows[0]["input"] == f"{folder / 'first.run.jsonl'}:1"


def _mp3_without_its_length(path: Path, speech) -> None:
    """A VBR MP3 whose first frame (the Xing header with the true length) is gone, quiet at first: libsndfile
    then takes its length from the first frames' small bitrate, about three times the truth."""
    pcm, rate = speech
    clip = pcm[: 5 * rate].copy()
    clip[:rate] *= 0.001
    sf.write(path, clip, rate, format="MP3", bitrate_mode="VARIABLE", compression_level=0.9)
    data = path.read_bytes()
    tag = max(data.find(b"Xing"), data.find(b"Info"))
    assert tag > 0
    first = data.rfind(b"\xff", 0, tag)
    second = next(i for i in range(tag, len(data) - 1) if data[i] == 0xFF and data[i + 1] & 0xE0 == 0xE0)
    path.write_bytes(data[:first] + data[second:])


def test_a_span_past_the_real_end_of_a_file_that_overstates_its_length(tmp_path, weights_file, speech):
    """A span from 8 s of a 5 s MP3 that declares about 15 s was "done" with 0 frames (an empty codes file);
    it fails now as a span past the end does, batch and streaming; the rest of the file is encoded whole."""
    mp3 = tmp_path / "speech.mp3"
    _mp3_without_its_length(mp3, speech)
    with sf.SoundFile(mp3) as f:
        assert f.frames > 2 * len(f.read())  # what libsndfile declares, and what it then reads
    lines = [{"audio_filepath": str(mp3), "offset": 8.0}, {"audio_filepath": str(mp3), "offset": 4.0}]
    (tmp_path / "spans.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for mode in ([], ["--stream"]):
        out = tmp_path / f"out{len(mode)}"
        result = run("encode", "--inputs-from", tmp_path / "spans.jsonl", "-o", out, *mode, weights=weights_file)
        assert result.returncode == 1, result.stderr
        assert f"spans.jsonl:1: offset 8.0 s is past the end of {mp3}" in result.stderr
        assert [p.name for p in out.iterdir()] == ["speech_4000ms.npz"]
        assert CodesFile.load(out / "speech_4000ms.npz").num_frames > 0


def test_a_plain_list_of_paths_on_standard_input(tmp_path, weights_file, reference):
    """`find … | mimi encode --inputs-from - -o DIR`: each line a path, relative to the working folder; JSON
    lines may be mixed in; a broken JSON line is still said to be broken; the outputs mirror the paths, the
    same codes as each file alone."""
    import os
    import subprocess
    import sys

    folder, codes = reference
    names = ["one.wav", "two.wav", json.dumps({"audio_filepath": "whole.wav", "offset": 0.5, "duration": 1.5}),
             "{broken"]
    listed = "\n".join(names) + "\n"
    done = subprocess.run([sys.executable, "-m", "mimi_cli", "encode", "--inputs-from", "-", "-o", str(tmp_path),
                           "--manifest", str(tmp_path / "run.jsonl")],
                          input=listed, cwd=folder, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "MIMI_WEIGHTS": str(weights_file)})
    assert done.returncode == 1 and "3 encoded" in done.stderr and "1 failed" in done.stderr, done.stderr
    assert "-:4 is not JSON" in done.stderr
    rows = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [row["input"] for row in rows] == ["one.wav", "two.wav", "-:3", "-:4"]  # a path alone is its input
    for name, output in (("one", "one.npz"), ("two", "two.npz"), ("span", "whole_500ms.npz")):
        np.testing.assert_array_equal(CodesFile.load(tmp_path / output).codes, codes[name])
    both = subprocess.run([sys.executable, "-m", "mimi_cli", "encode", "-", "--inputs-from", "-", "-o",
                           str(tmp_path / "x")], input="", capture_output=True, text=True, timeout=60)
    assert both.returncode == 1 and "standard input can be read once" in both.stderr


def test_a_nul_separated_list(tmp_path):
    """`find -print0`'s list: entries split at NUL (a name may hold a line break), each a path."""
    from mimi_cli.sources import list_manifest

    (tmp_path / "list").write_bytes(b"a.wav\0odd\nname.wav\0sub/b.flac\0")
    entries = list_manifest(tmp_path / "list")
    assert [e.item.container for e in entries] == [str(tmp_path / n) for n in ("a.wav", "odd\nname.wav", "sub/b.flac")]
    assert [str(e.relative) for e in entries] == ["a", "odd\nname", "sub/b"]


def test_comment_lines_of_a_list_are_left_out(tmp_path):
    """A hand-written list's `# …` lines were inputs, each failing as a file that does not exist; they are
    comments, as rsync's --files-from has them, unless the line names a file (`#take#.wav`, an editor's
    backup); a NUL-separated list (machine-made) has none."""
    from mimi_cli.sources import list_manifest

    (tmp_path / "#take#.wav").touch()
    (tmp_path / "list.txt").write_text("# the test set\na.wav\n  # indented, after a blank line\n\n#take#.wav\n"
                                       '{"audio_filepath": "b.wav"}\n# gone.wav\n')
    entries = list_manifest(tmp_path / "list.txt")
    assert [e.item.container for e in entries] == [str(tmp_path / n) for n in ("a.wav", "#take#.wav", "b.wav")]
    assert [e.item.carried["manifest_line"] for e in entries] == [2, 5, 6]  # numbered as the file's lines are
    (tmp_path / "list0").write_bytes(b"#one.wav\0a.wav\0")
    assert [e.item.container for e in list_manifest(tmp_path / "list0")] == [str(tmp_path / "#one.wav"),
                                                                            str(tmp_path / "a.wav")]


@pytest.mark.parametrize("module, name", [("gzip", "cuts.jsonl.gz"), ("bz2", "list.bz2"), ("lzma", "list.xz")])
def test_a_compressed_manifest_is_read_through_its_compression(tmp_path, module, name):
    """`mimi encode train.jsonl.gz` took the file for audio and `--inputs-from list.xz` read its compressed bytes
    as paths; each is decompressed (found by its magic bytes, whatever its name), as far as an eighth of the
    memory; a truncated one is one line saying so."""
    import importlib

    from mimi_cli.batch import Job, plan
    from mimi_cli.pipeline import Settings
    from mimi_cli.sources import list_manifest

    lines = [json.dumps({"audio_filepath": "a.wav", "offset": 1.0, "text": "hi"}), "sub/b.flac"]
    packed = importlib.import_module(module).compress("\n".join(lines).encode())
    (tmp_path / name).write_bytes(packed)
    entries = list_manifest(tmp_path / name)
    assert [e.item.container for e in entries] == [str(tmp_path / "a.wav"), str(tmp_path / "sub/b.flac")]
    assert [str(e.relative) for e in entries] == ["a_1000ms", "sub/b"]
    assert json.loads(entries[0].item.extra)["text"] == "hi"
    inputs = (str(tmp_path / name),) if name.endswith(".jsonl.gz") else ()  # named as an input: by its name
    planned = plan(Job(Settings("encode"), inputs, str(tmp_path / "out"),
                       manifests=() if inputs else (str(tmp_path / name),)))
    assert [str(t.input) for t in planned.tasks] == [f"{tmp_path / name}:1", "sub/b.flac"]  # a path alone: itself
    (tmp_path / name).write_bytes(packed[: len(packed) // 2])
    with pytest.raises(MimiError, match=rf"^cannot decompress manifest .*{name} \({module}: .*\); it is cut short "
                                        "or damaged$"):
        list_manifest(tmp_path / name)


def test_lhotse_cuts_and_recordings_read_as_the_nemo_lines_they_mean(tmp_path, monkeypatch):
    """lhotse's manifests (cuts.jsonl.gz, recordings.jsonl.gz) had no audio_filepath: every line failed. A cut
    of one file is that file from its start for its duration, a recording the whole file (paths from the
    working folder, as lhotse opens them), the same items as the NeMo lines; what names no one file, or some
    of its channels, fails alone saying so."""
    from mimi_cli.sources import list_manifest

    monkeypatch.chdir(tmp_path)

    def recording(source, channels=(0,)):
        return {"id": "rec", "sources": [{"type": "file", "channels": list(channels), "source": source}],
                "sampling_rate": 16000, "num_samples": 48000, "duration": 3.0}

    lhotse = [{"id": "c1", "start": 0.5, "duration": 1.25, "channel": 0, "type": "MonoCut",
               "supervisions": [{"text": "hi"}], "recording": recording("wav/a.flac")},
              {"id": "c2", "start": 1, "duration": 2, "channel": 0, "recording": recording("/abs/b.wav")},  # lhotse 1.0
              recording("wav/a.flac"),
              {"id": "c3", "start": 0, "duration": 1, "channel": [0, 1], "type": "MultiCut",
               "recording": recording("st.wav", (0, 1))},
              {"id": "c4", "start": 0, "duration": 1, "channel": 1, "recording": recording("st.wav", (0, 1))},
              {"id": "m", "type": "MixedCut", "tracks": []},
              {"id": "c5", "start": 0, "duration": 1, "channel": 0,
               "recording": {"id": "u", "sources": [{"type": "url", "channels": [0], "source": "https://x/a.wav"}]}},
              {"id": "c6", "start": 0, "duration": 1, "channel": 0,
               "recording": {"id": "two", "sources": [{"type": "file", "channels": [0], "source": "l.wav"},
                                                      {"type": "file", "channels": [1], "source": "r.wav"}]}},
              {"id": "sp1.1-c1", "start": 0, "duration": 1, "channel": 0,  # lhotse's speed perturbation
               "recording": {**recording("wav/a.flac"), "transforms": [{"name": "Speed", "kwargs": {"factor": 1.1}}]}},
              {"start": 0, "channel": [0, "a"], "recording": recording("a.wav")},  # hostile: no traceback
              {"start": 0, "channel": 0, "recording": recording("a.wav", ([0],))}]
    nemo = [{"audio_filepath": "wav/a.flac", "offset": 0.5, "duration": 1.25},
            {"audio_filepath": "/abs/b.wav", "offset": 1, "duration": 2}, {"audio_filepath": "wav/a.flac"},
            {"audio_filepath": "st.wav", "offset": 0, "duration": 1}]
    (tmp_path / "m").mkdir()  # a manifest in another folder: lhotse's paths still start at the working folder
    (tmp_path / "m" / "cuts.jsonl").write_text("\n".join(map(json.dumps, lhotse)))
    (tmp_path / "nemo.jsonl").write_text("\n".join(map(json.dumps, nemo)))
    got, want = list_manifest(tmp_path / "m" / "cuts.jsonl"), list_manifest(tmp_path / "nemo.jsonl")
    for a, b in zip(got[:4], want, strict=True):
        assert (a.item.container, a.item.offset, a.item.duration, a.relative) == \
            (b.item.container, b.item.offset, b.item.duration, b.relative)
    carried = json.loads(got[0].item.extra)
    assert carried["id"] == "c1" and carried["supervisions"] == [{"text": "hi"}] and "recording" not in carried
    assert [e.item.error for e in got[4:]] == [
        f"{tmp_path}/m/cuts.jsonl:5: its lhotse cut takes channel(s) [1] of the 2 in st.wav; mimi encodes every "
        "channel (mixed, or each with --channels split)",
        f"{tmp_path}/m/cuts.jsonl:6 is a lhotse MixedCut, which mimi does not read: only cuts of one recording "
        "(MonoCut, MultiCut) and recordings",
        f"{tmp_path}/m/cuts.jsonl:7: its lhotse source is of type 'url', and mimi reads files (type 'file') only",
        f"{tmp_path}/m/cuts.jsonl:8: its lhotse recording is kept in 2 files (a channel each?), which mimi does "
        "not join; give one file per recording",
        f"{tmp_path}/m/cuts.jsonl:9: its lhotse recording is transformed on loading (Speed), which mimi does not "
        "do; encode the recording without them",
        f"{tmp_path}/m/cuts.jsonl:10: its lhotse cut's channel must be a channel number or a list of them, not "
        "[0, 'a']",
        f"{tmp_path}/m/cuts.jsonl:11: its lhotse source's channels must be a channel number or a list of them, not "
        "[[0]]"]


def test_decode_reads_a_list_of_codes_files(tmp_path, weights_file):
    """`find codes -name '*.npy' -print0 | mimi decode --inputs-from - -o DIR`: each listed file decoded whole,
    as it is alone, its output mirroring the path as listed, once if listed twice; a JSON line names one by
    path, and a line that picks a span (offset, duration) fails alone."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    (tmp_path / "codes" / "sub").mkdir(parents=True)
    arrays = {"codes/a.npy": rng.integers(0, 2048, (8, 6)), "codes/sub/b.npy": rng.integers(0, 2048, (4, 3))}
    for name, array in arrays.items():
        np.save(tmp_path / name, array)
    listed = "\0".join([*arrays, "./codes/a.npy"]) + "\0"  # find -print0's list, a file in it twice
    done = subprocess.run([sys.executable, "-m", "mimi_cli", "decode", "--inputs-from", "-", "-o", "out/"],
                          input=listed, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "MIMI_WEIGHTS": str(weights_file)})
    assert done.returncode == 0 and "2 decoded" in done.stderr, done.stderr
    for name in arrays:
        assert run("decode", tmp_path / name, "-o", tmp_path / "alone.wav", "-f", weights=weights_file).returncode == 0
        np.testing.assert_array_equal(sf.read(tmp_path / "out" / Path(name).with_suffix(".wav"))[0],
                                      sf.read(tmp_path / "alone.wav")[0])
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": "codes/a.npy", "text": "hi"}) + "\n" +
                                         json.dumps({"path": "codes/sub/b.npy", "duration": 1.0}) + "\n")
    mixed = run("decode", "--inputs-from", tmp_path / "list.jsonl", "-o", tmp_path / "json", weights=weights_file)
    assert mixed.returncode == 1 and "1 decoded" in mixed.stderr, mixed.stderr
    assert "list.jsonl:2: offset and duration pick part of an audio file; codes are decoded whole" in mixed.stderr
    assert (tmp_path / "json" / "codes" / "a.wav").exists() and not (tmp_path / "json" / "codes" / "sub").exists()
    (tmp_path / "empty.txt").write_text("\n")
    empty = run("decode", "--inputs-from", tmp_path / "empty.txt", "-o", tmp_path / "none", weights=weights_file)
    assert empty.returncode == 1 and "empty.txt holds nothing to decode (no lines)" in empty.stderr, empty.stderr


def test_plain_files_without_o_go_to_parquet_only(tmp_path, weights_file, reference):
    """As items do: no codes file is left beside the audio of a corpus (it wrote one beside each file)."""
    folder, codes = reference
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("one", "two"):
        (corpus / f"{name}.wav").write_bytes((folder / f"{name}.wav").read_bytes())
    result = run("encode", corpus, "--parquet", tmp_path / "pq", weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in corpus.iterdir()) == ["one.wav", "two.wav"]
    import pandas as pd

    table = pd.read_parquet(tmp_path / "pq").sort_values("input")
    assert list(table["output"]) == ["", ""]
    for row, name in zip(table.itertuples(), ("one", "two"), strict=True):
        np.testing.assert_array_equal(np.array([list(level) for level in row.codes], np.uint16), codes[name][0])


def test_parquet_shards_decode_back_as_their_codes_files_do(tmp_path, weights_file, reference, speech):
    """`mimi decode` reads the shards --parquet wrote ("is not a codes file" before): each row's audio equals,
    bit for bit, that of the .npz the same run wrote, for mixed and split channels; the row's columns reach
    the run's manifest."""
    pytest.importorskip("pyarrow")
    folder, _ = reference
    pcm, rate = speech
    sf.write(tmp_path / "dialogue.wav", np.stack([pcm[:2 * rate], pcm[2 * rate:4 * rate]], axis=1), rate)
    runs = {"mixed": [folder / "one.wav", folder / "two.wav"], "split": [tmp_path / "dialogue.wav"]}
    for name, clips in runs.items():
        split = ["--channels", "split"] if name == "split" else []
        encoded = run("encode", *clips, *split, "-o", f"{tmp_path / f'npz-{name}'}/", "--parquet",
                      tmp_path / f"pq-{name}", weights=weights_file)
        assert encoded.returncode == 0, encoded.stderr
        decoded = run("decode", tmp_path / f"pq-{name}", "-o", tmp_path / f"from-pq-{name}", "--manifest",
                      tmp_path / f"{name}.jsonl", weights=weights_file)
        assert decoded.returncode == 0, decoded.stderr
        rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        for number, clip in enumerate(clips):
            npz = tmp_path / f"npz-{name}" / f"{clip.stem}.npz"
            assert run("decode", npz, "-o", tmp_path / f"npz-{clip.stem}.wav", weights=weights_file).returncode == 0
            from_row, _ = sf.read(tmp_path / f"from-pq-{name}" / "part-00000" / f"{number:08d}.wav", always_2d=True)
            from_file, _ = sf.read(tmp_path / f"npz-{clip.stem}.wav", always_2d=True)
            assert from_row.shape[1] == (2 if name == "split" else 1)
            np.testing.assert_array_equal(from_row, from_file)
            assert rows[number]["__row__"] == number and rows[number]["num_samples"] == len(from_file)


def test_a_folder_is_decoded_as_its_codes_files_or_else_its_shards(tmp_path):
    """`mimi encode corpus -o codes/ --parquet codes/pq` leaves both in one tree: `mimi decode codes/ -r` decodes
    the codes files once (not each input twice, the shards' rows too); a folder of shards alone, its rows."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from mimi_cli.batch import Job, plan
    from mimi_cli.pipeline import Settings

    (tmp_path / "codes" / "pq").mkdir(parents=True)
    for name in ("a", "b"):
        (tmp_path / "codes" / f"{name}.npz").write_bytes(b"PK")
    pq.write_table(pa.table({"codes": [[[1, 2]]] * 2}), tmp_path / "codes" / "pq" / "part-00000.parquet")
    both = plan(Job(Settings("decode"), (str(tmp_path / "codes"),), str(tmp_path / "out"), recursive=True))
    assert sorted(t.input.name for t in both.tasks) == ["a.npz", "b.npz"]
    shards = plan(Job(Settings("decode"), (str(tmp_path / "codes" / "pq"),), str(tmp_path / "out")))
    assert [str(t.input) for t in shards.tasks] == [f"{tmp_path / 'codes' / 'pq' / 'part-00000.parquet'}#{row}"
                                                    for row in (0, 1)]


def test_a_folder_of_shards_alone_is_encoded_as_its_rows_and_members(tmp_path):
    """A Hugging Face repo's data/ (Parquet shards) or a folder of WebDataset tars: `mimi encode data/` said
    "no .wav or .flac… files"; it reads their rows and members. A folder with audio files keeps to them."""
    import io
    import tarfile

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from mimi_cli.batch import Job, plan
    from mimi_cli.pipeline import Settings

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"audio": [{"bytes": b"RIFF", "path": "x.wav"}] * 2}), data / "train-00000.parquet")
    with tarfile.open(data / "shard-000.tar", "w") as tar:
        member = tarfile.TarInfo("key1.flac")
        member.size = 4
        tar.addfile(member, io.BytesIO(b"fLaC"))
    (data / "README.md").write_text("a dataset card")
    shards = plan(Job(Settings("encode"), (str(data),), str(tmp_path / "out")))
    assert [str(t.input) for t in shards.tasks] == [f"{data / 'shard-000.tar'}#key1.flac",
                                                    *(f"{data / 'train-00000.parquet'}#{row}" for row in (0, 1))]
    (data / "clip.wav").write_bytes(b"RIFF")
    files = plan(Job(Settings("encode"), (str(data),), str(tmp_path / "out")))
    assert [t.input.name for t in files.tasks] == ["clip.wav"]


def test_a_tree_of_datasets_keeps_each_whole_and_in_its_place(tmp_path):
    """`mimi encode -r corpus/` over dataset folders: each .arrow file was an input of its own (a save_to_disk
    folder's cache-*.arrow encoded beside its data, the folder's name lost), a Kaldi folder was nothing, a Shar
    folder's tars were WebDataset shards, and two shards of one name in two folders were refused as writing the
    same outputs. A walk takes each dataset folder whole, as when it is named, and every output keeps its place
    in the tree; a tree with audio files keeps to them."""
    import io
    import tarfile

    pa = pytest.importorskip("pyarrow")

    from mimi_cli.batch import Job, plan
    from mimi_cli.pipeline import Settings

    corpus = tmp_path / "corpus"
    for folder in ("a", "b"):  # two shards of one name
        (corpus / folder).mkdir(parents=True)
        with tarfile.open(corpus / folder / "shard.tar", "w") as tar:
            member = tarfile.TarInfo("key1.flac")
            member.size = 4
            tar.addfile(member, io.BytesIO(b"fLaC"))
    train = corpus / "hf" / "train"  # a save_to_disk folder with a cache file beside its data
    train.mkdir(parents=True)
    table = pa.table({"audio": [{"bytes": b"RIFF", "path": "x.wav"}]})
    with pa.ipc.new_stream(train / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table)
    (train / "cache-0123.arrow").write_bytes((train / "data-00000-of-00001.arrow").read_bytes())
    (train / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (train / "dataset_info.json").write_text("{}")
    (corpus / "kaldi").mkdir()
    (corpus / "kaldi" / "wav.scp").write_text("r1 /data/r1.wav\n")
    planned = plan(Job(Settings("encode"), (str(corpus),), str(tmp_path / "out"), recursive=True))
    assert sorted(str(t.output.relative_to(tmp_path / "out")) for t in planned.tasks) == [
        "a/shard/key1.npz", "b/shard/key1.npz", "hf/train/data-00000-of-00001/00000000.npz", "kaldi/r1.npz"]
    (corpus / "kaldi" / "r1.wav").write_bytes(b"RIFF")  # audio files: the tree is theirs
    assert [t.input.name for t in plan(Job(Settings("encode"), (str(corpus),), str(tmp_path / "out"),
                                           recursive=True)).tasks] == ["r1.wav"]


def test_a_table_of_generated_codes_decodes_row_by_row(tmp_path, weights_file):
    """Any table with an integer `codes` column (or one --codes-column names; [K, frames] per row: what a
    language model generated) decodes as bare arrays do; a row that is not codes fails alone, saying why."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    good = np.random.default_rng(5).integers(0, 2048, (8, 20))
    rows = [good.tolist(), (good + 3000).tolist(), [[1, 2, 3], [4, 5]], None, [[None] * 20] * 8]
    pq.write_table(pa.table({"id": list(range(len(rows))), "codes": rows}), tmp_path / "generated.parquet")
    pq.write_table(pa.table({"codes": [(good / 2048).tolist()]}), tmp_path / "logits.parquet")
    np.save(tmp_path / "good.npy", good)
    assert run("decode", tmp_path / "good.npy", "-o", tmp_path / "good.wav", weights=weights_file).returncode == 0
    result = run("decode", tmp_path / "generated.parquet", tmp_path / "logits.parquet", "-o", tmp_path / "out",
                 "--manifest", tmp_path / "run.jsonl", weights=weights_file)
    assert result.returncode == 1 and "1 decoded" in result.stderr, result.stderr
    low, high = good.min() + 3000, good.max() + 3000
    for expected in (f"#1: holds values {low}..{high}; Mimi codes are 0..2047", "#2: its codes are lists of unequal",
                     "#3: its codes hold null lists", "#4: its codes hold null values",
                     "logits.parquet#0: holds float64 values; codes are integers (logits or probabilities?"):
        assert expected in result.stderr, result.stderr
    np.testing.assert_array_equal(sf.read(tmp_path / "out" / "generated" / "00000000.wav")[0],
                                  sf.read(tmp_path / "good.wav")[0])
    rows = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows if r["status"] == "done"] == [0]
    without = run("decode", tmp_path / "generated.parquet")
    assert without.returncode == 1 and "give -o DIR for an audio file per row" in without.stderr
    pq.write_table(pa.table({"audio_tokens": [good.tolist()]}), tmp_path / "named.parquet")
    named = run("decode", tmp_path / "named.parquet", "-o", tmp_path / "named", "--codes-column", "audio_tokens",
                weights=weights_file)
    assert named.returncode == 0, named.stderr
    np.testing.assert_array_equal(sf.read(tmp_path / "named" / "named" / "00000000.wav")[0],
                                  sf.read(tmp_path / "good.wav")[0])
    unnamed = run("decode", tmp_path / "named.parquet", "-o", tmp_path / "unnamed")
    assert "has no column 'codes' (columns: audio_tokens)" in unnamed.stderr and "--codes-column" in unnamed.stderr
    as_file = run("decode", tmp_path / "logits.parquet", "-o", tmp_path / "one.wav")  # one row, yet a table's
    assert as_file.returncode == 1 and "the inputs hold items (lines, members, rows), for which -o names a folder" \
        in as_file.stderr, as_file.stderr


def test_each_row_is_found_in_its_row_group_whatever_their_sizes(tmp_path):
    """A row is read from the row group that holds it (found by the groups' first rows), an empty group
    between others included; a row past the last is said to be missing, not read from another group."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from mimi_cli.sources import Item, row_codes

    rows = [np.full((2, 3), i).tolist() for i in range(7)]
    schema = pa.table({"codes": rows}).schema
    with pq.ParquetWriter(tmp_path / "groups.parquet", schema) as writer:
        for piece in (rows[:2], [], rows[2:5], rows[5:6], [], rows[6:]):  # groups of 2, 0, 3, 1, 0, 1 rows
            writer.write_table(pa.table({"codes": piece}, schema=schema))
    table = str(tmp_path / "groups.parquet")
    for i in range(7):
        np.testing.assert_array_equal(row_codes(Item("row", table, str(i), "codes"), f"#{i}", "mimi").codes[0],
                                      np.full((2, 3), i))
    with pytest.raises(MimiError, match="has no row 7"):
        row_codes(Item("row", table, "7", "codes"), "#7", "mimi")


def test_pyarrow_reads_tables_through_its_own_files(tmp_path, monkeypatch):
    """Tables are opened by pyarrow (a NativeFile), never through a Python file object: pyarrow kept what it read
    from one as buffers of Python objects, freed later by its own threads with the GIL; a row group a worker
    kept, freed as the interpreter exited, ended `mimi decode shards/` with SIGABRT after its work was done
    ("terminate called without an active exception", exit -6; seen once in CI; reading through a Python file
    and freeing the table at exit aborted 23 times in 40 here). Names that are not UTF-8 open as before."""
    import io
    import os

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from mimi_cli.sources import list_items, open_item, row_codes

    given = []
    for owner, name in ((pq.ParquetFile, "__init__"), (pa.ipc, "open_stream"), (pa.ipc, "open_file")):
        original = getattr(owner, name)

        def recording(*args, _original=original, _method=name == "__init__", **kwargs):
            given.append(args[1 if _method else 0])
            return _original(*args, **kwargs)
        monkeypatch.setattr(owner, name, recording)
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(1600, np.float32), 16000, format="WAV")
    audio = pa.table({"audio": [{"bytes": buffer.getvalue(), "path": "a.wav"}], "text": ["hello"]})
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    with pa.OSFile(os.fsencode(folder / "audio.parquet"), "wb") as sink:  # pyarrow takes a str name as UTF-8
        pq.write_table(audio, sink)
    with pa.OSFile(os.fsencode(folder / "audio.arrow"), "wb") as sink, pa.ipc.new_stream(sink, audio.schema) as out:
        out.write_table(audio)
    with pa.OSFile(os.fsencode(folder / "codes.parquet"), "wb") as sink:
        pq.write_table(pa.table({"codes": [np.zeros((8, 3), int).tolist()]}), sink)
    for name in ("audio.parquet", "audio.arrow"):
        (entry,) = list_items(folder / name)
        with open_item(entry.item, "row") as f:
            assert len(f.read()) == 1600
    (entry,) = list_items(folder / "codes.parquet", "codes")
    assert row_codes(entry.item, "row", "mimi").num_frames == 3
    assert given and all(isinstance(source, pa.NativeFile) for source in given), given


def _forged_row_counts(path: Path, rows: int) -> tuple[bytes, bytes]:
    """``path``'s bytes with its footer's row count, then its row group's, set to ``rows``: each an i64 field
    (Thrift compact: byte 0x16, then a zigzag varint) rewritten in place, the footer's length updated."""
    import pyarrow.parquet as pq

    data = path.read_bytes()
    start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    footer, value, zigzag = data[start:-8], bytearray(), rows << 1
    while True:
        value.append((zigzag & 0x7F) | (0x80 if zigzag >> 7 else 0))
        zigzag >>= 7
        if not zigzag:
            break
    forged = {}
    for at in (i for i in range(len(footer) - 1) if footer[i] == 0x16):
        new = footer[:at + 1] + bytes(value) + footer[at + 2:]
        candidate = data[:start] + new + len(new).to_bytes(4, "little") + b"PAR1"
        path.with_suffix(".try").write_bytes(candidate)
        try:
            meta = pq.ParquetFile(path.with_suffix(".try")).metadata
        except Exception:
            continue
        key = "file" if meta.num_rows == rows else "group" if meta.row_group(0).num_rows == rows else None
        forged.setdefault(key, candidate)
    return forged["file"], forged["group"]


def test_a_table_that_declares_more_rows_than_it_holds_is_refused_before_listing(tmp_path, monkeypatch):
    """A Parquet footer that declares 10¹² rows (a few bytes changed) was listed row by row, until memory ran
    out; the footer's count must agree with its row groups' now, and no more rows are listed than memory holds."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from mimi_cli import sources

    pq.write_table(pa.table({"codes": [[[1, 2, 3]]] * 3}), tmp_path / "three.parquet")
    footer, group = _forged_row_counts(tmp_path / "three.parquet", 10**12)
    for name, data, message in (("footer", footer, "declares 1,000,000,000,000 rows, and its row groups 3"),
                                ("group", group, "declares 3 rows, and its row groups 1,000,000,000,000")):
        (tmp_path / f"{name}.parquet").write_bytes(data)
        result = run("decode", tmp_path / f"{name}.parquet", "-o", tmp_path / name)
        assert result.returncode == 1 and message in result.stderr and "damaged" in result.stderr, result.stderr
    monkeypatch.setattr(sources, "usable_memory", lambda: 10_000)
    with pytest.raises(MimiError, match="declares 3 rows; listing them would take more than half this machine's"):
        sources.list_table(tmp_path / "three.parquet", "codes")


def test_an_arrow_file_whose_lengths_overstate_its_buffers_is_refused(tmp_path):
    """An Arrow file whose lengths say more than its buffers hold was read past their ends: rows of whatever
    lay beyond were decoded, or a traceback (ArrowIndexError). Its buffers are checked against its lengths."""
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"codes": [[[1, 2, 3]]] * 7})
    with pa.ipc.new_stream(tmp_path / "seven.arrow", table.schema) as writer:
        writer.write_table(table)
    data, seven = (tmp_path / "seven.arrow").read_bytes(), (7).to_bytes(8, "little")
    damaged = []
    for at in (i for i in range(len(data) - 8) if data[i:i + 8] == seven):  # a length, or an offset
        path = tmp_path / f"damaged-{at}.arrow"
        path.write_bytes(data[:at] + (500_000).to_bytes(8, "little") + data[at + 8:])
        try:
            read = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
        except (pa.ArrowException, OSError):
            continue  # refused by pyarrow itself
        with pytest.raises(pa.ArrowInvalid):
            read.validate()
        damaged.append(path)
    assert damaged
    for path in damaged:
        result = run("decode", path, "-o", tmp_path / path.stem)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"cannot read {path} as a table" in result.stderr, result.stderr
        assert "too small" in result.stderr or "larger than values" in result.stderr, result.stderr
        assert not (tmp_path / path.stem).exists()


def test_a_file_name_that_is_not_utf8_reaches_the_manifest_and_parquet(tmp_path, weights_file, reference):
    """Linux file names are bytes: a run's manifest keeps the exact name (JSON \\udcXX escapes that
    os.fsencode undoes), Parquet the readable ``\\xff`` (it holds UTF-8 only). Both were tracebacks."""
    import os

    folder, _ = reference
    odd = tmp_path / os.fsdecode(b"caf\xe9.wav")  # Latin-1, as old archives have them
    odd.write_bytes((folder / "one.wav").read_bytes())
    result = run("encode", odd, "--parquet", tmp_path / "pq", "--manifest", tmp_path / "run.jsonl",
                 weights=weights_file)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    row = json.loads((tmp_path / "run.jsonl").read_text(encoding="utf-8"))
    assert os.fsencode(row["input"]).endswith(b"caf\xe9.wav") and os.path.exists(row["input"])
    import pandas as pd

    assert pd.read_parquet(tmp_path / "pq")["input"][0].endswith("caf\\xe9.wav")


def test_names_that_are_not_utf8_are_written_and_read_by_every_library(tmp_path, weights_file, reference):
    """libsndfile's soundfile and pyarrow take a str name as UTF-8: decoding to `caf\\xe9.wav` (a plain or
    streamed write, and reading it back for --skip-existing), roundtrip -o, and a Parquet or Arrow table in a
    folder so named failed ("'utf-8' codec can't encode character '\\udce9'"; roundtrip's a traceback)."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, _ = reference
    odd = lambda name: tmp_path / os.fsdecode(name)  # noqa: E731
    (odd(b"caf\xe9.wav")).write_bytes((folder / "one.wav").read_bytes())
    steps = [("encode", odd(b"caf\xe9.wav"), "-o", odd(b"caf\xe9.npz")),
             ("decode", odd(b"caf\xe9.npz"), "-o", odd(b"na\xefve.wav")),
             ("decode", odd(b"caf\xe9.npz"), "-o", odd(b"fl\xfbte.flac"), "--stream"),
             ("decode", odd(b"caf\xe9.npz"), "-o", odd(b"na\xefve.wav"), "--skip-existing"),
             ("roundtrip", odd(b"caf\xe9.wav"), "-o", odd(b"r\xe9.wav")),
             ("encode", odd(b"caf\xe9.wav"), "--parquet", odd(b"t\xe9")),
             ("decode", odd(b"t\xe9"), "-o", odd(b"d\xe9"))]
    for step in steps:
        result = run(*step, weights=weights_file)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (step, result.stderr)
    for name in (b"na\xefve.wav", b"fl\xfbte.flac", b"r\xe9.wav"):
        assert sf.info(os.fsencode(odd(name))).duration > 0.9
    with open(odd(b"t\xe9") / "part-00000.parquet", "rb") as f:
        table = pq.read_table(f)
    with open(odd(b"t\xe9.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as writer:
        writer.write_table(table)  # as datasets' save_to_disk writes it
    result = run("decode", odd(b"t\xe9.arrow"), "-o", odd(b"a\xe9"), weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert [p.suffix for p in odd(b"a\xe9").rglob("*.wav")] == [".wav"]


def test_an_output_named_in_utf8_under_an_ascii_locale(tmp_path, weights_file, reference):
    """Under LC_ALL=C with Python's UTF-8 mode off, names are ASCII with surrogate escapes: the temporary name
    beside `ü.npz` was decoded from its bytes as UTF-8 (a real ü, which ASCII cannot encode) and the write
    failed with "UnicodeEncodeError: 'ascii' codec can't encode character '\\xfc'"."""
    folder, _ = reference
    output = tmp_path / "\u00fc.npz"
    result = run("encode", folder / "one.wav", "-o", output, weights=weights_file,
                 env_extra={"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr
    assert CodesFile.load(output).codes.shape[-2] == 8 and [p.name for p in tmp_path.iterdir()] == [output.name]
    # a manifest's name that ASCII cannot hold: one line saying so and what to do (it was a traceback)
    (tmp_path / "list.jsonl").write_text(json.dumps({"audio_filepath": str(folder / "\u00e9.wav")}) + "\n")
    result = run("encode", tmp_path / "list.jsonl", "-o", tmp_path / "codes", weights=weights_file,
                 env_extra={"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot hold; run under a UTF-8 locale" in result.stderr and not (tmp_path / "codes").exists()


def _flac_bytes(pcm, rate) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, pcm, rate, format="FLAC")
    return buffer.getvalue()


def _add(shard: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    shard.addfile(info, io.BytesIO(data))


def test_webdataset_shard_keeps_its_keys(tmp_path, weights_file, reference, speech):
    pcm, rate = speech
    folder, codes = reference
    shard_path = tmp_path / "shard-000000.tar"
    with tarfile.open(shard_path, "w") as shard:
        for key, name in (("utt-0001", "one"), ("utt-0002", "two")):
            clip, _ = sf.read(folder / f"{name}.wav", dtype="float32")
            _add(shard, f"{key}.flac", _flac_bytes(clip, rate))
            _add(shard, f"{key}.json", json.dumps({"text": f"words of {key}"}).encode())
        _add(shard, "utt-0003.wav", b"RIFF\x00\x00not really audio")
    result = run("encode", shard_path, "-o", tmp_path / "codes", "--parquet", tmp_path / "pq", weights=weights_file)
    assert result.returncode == 1 and "2 encoded" in result.stderr and "utt-0003.wav" in result.stderr
    for key, name in (("utt-0001", "one"), ("utt-0002", "two")):
        np.testing.assert_array_equal(CodesFile.load(tmp_path / "codes" / shard_path.stem / f"{key}.npz").codes,
                                      codes[name])
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "pq").to_pylist()
    assert [r["__key__"] for r in rows] == ["utt-0001", "utt-0002"]
    assert rows[0]["json"]["text"] == "words of utt-0001"
    assert not (tmp_path / "codes" / shard_path.stem / "utt-0003.npz").exists()


def _shar_cut(cut_id: str, seconds: float, text: str) -> dict:
    """A cut as lhotse 1.33's SharWriter writes it: start 0, its recording a placeholder of type shar."""
    return {"id": cut_id, "start": 0, "duration": seconds, "channel": 0, "type": "MonoCut",
            "supervisions": [{"id": f"{cut_id}-s", "start": 0, "duration": seconds, "text": text}],
            "recording": {"id": f"rec-{cut_id}", "sources": [{"type": "shar", "channels": [0], "source": ""}],
                          "sampling_rate": 16000, "num_samples": round(seconds * 16000), "duration": seconds,
                          "channel_ids": [0]}}


def test_a_lhotse_shar_folder_is_its_cuts(tmp_path, weights_file, reference, speech):
    """lhotse Shar (cuts.NNNNNN.jsonl.gz beside recording.NNNNNN.tar, whose {cut id}.flac is the cut's audio and
    {cut id}.json its recording): the folder was taken for a folder of WebDataset tars (the cuts' text lost) and
    its cuts file for a manifest of unreadable sources. Each cut is its member, read whole, with the cut's keys
    carried; a cut lhotse wrote without audio (.nodata), one whose member is missing, and a shard without its
    tar fail alone."""
    import gzip

    import pyarrow.parquet as pq

    pcm, rate = speech
    folder, codes = reference
    shar = tmp_path / "shar"
    shar.mkdir()
    shards = {".000000": [("c-one", "one", 1.0), ("c-two", "two", 1.5)], ".000001": [("c-whole", "whole", 3.0),
                                                                                  ("c-empty", None, 1.0)]}
    for number, cuts in shards.items():
        with tarfile.open(shar / f"recording{number}.tar", "w") as tar:
            for cut_id, clip, seconds in cuts:
                if clip is None:  # what SharWriter writes for a cut without a recording
                    _add(tar, f"{cut_id}.nodata", b"")
                    _add(tar, f"{cut_id}.nometa", b"")
                else:
                    _add(tar, f"{cut_id}.flac", _flac_bytes(sf.read(folder / f"{clip}.wav", dtype="float32")[0], rate))
                    _add(tar, f"{cut_id}.json", json.dumps(_shar_cut(cut_id, seconds, "")["recording"]).encode())
        lines = [_shar_cut(cut_id, seconds, f"words of {cut_id}") for cut_id, _, seconds in cuts]
        (shar / f"cuts{number}.jsonl.gz").write_bytes(gzip.compress("\n".join(map(json.dumps, lines)).encode()))
    out = tmp_path / "codes"
    result = run("encode", shar, "-o", out, "--parquet", tmp_path / "pq", weights=weights_file)
    assert result.returncode == 1 and "3 encoded" in result.stderr and "1 failed" in result.stderr, result.stderr
    assert f"failed: {shar}/cuts.000001.jsonl.gz:2: lhotse wrote cut c-empty without its audio (c-empty.nodata in " \
        f"{shar}/recording.000001.tar)" in result.stderr
    for cut_id, clip in (("c-one", "one"), ("c-two", "two"), ("c-whole", "whole")):
        np.testing.assert_array_equal(CodesFile.load(out / "shar" / f"{cut_id}.npz").codes, codes[clip])
    rows = {r["__key__"]: r for r in pq.read_table(tmp_path / "pq").to_pylist()}
    assert sorted(rows) == ["c-one", "c-two", "c-whole"] and "recording" not in rows["c-one"]
    assert rows["c-two"]["supervisions"][0]["text"] == "words of c-two" and rows["c-two"]["duration"] == 1.5
    assert rows["c-whole"]["__url__"] == str(shar / "recording.000001.tar")

    (shar / "recording.000001.tar").unlink()  # a shard without its audio; lhotse's unsharded names too
    (shar / "recording.000000.tar").rename(shar / "recording.tar")
    (shar / "cuts.000000.jsonl.gz").rename(shar / "cuts.jsonl.gz")
    result = run("encode", shar, "-o", tmp_path / "again", weights=weights_file)
    assert result.returncode == 1 and "2 encoded" in result.stderr, result.stderr
    assert f"failed: {shar}/cuts.000001.jsonl.gz has no recording.000001.tar beside it, which would hold its cuts' " \
        "audio" in result.stderr
    result = run("encode", shar / "cuts.jsonl.gz", "-o", tmp_path / "direct", weights=weights_file)
    assert result.returncode == 1 and f"{shar}/cuts.jsonl.gz:1 is a lhotse Shar cut, whose audio is in the " \
        "recording tar beside its cuts file: give their folder" in result.stderr
    (shar / "recording.tar").unlink()  # a lhotse manifest beside audio files is no Shar folder
    sf.write(shar / "a.wav", pcm[:rate], rate)
    result = run("encode", shar, "-o", tmp_path / "plain", weights=weights_file)
    assert result.returncode == 0 and (tmp_path / "plain" / "a.npz").is_file(), result.stderr


@pytest.mark.parametrize("name, data", [("empty.jsonl", b""), ("blank.jsonl", b"\n  \n"), ("array.json", b"[]"),
                                        ("texts.tar", None)])
def test_a_container_with_nothing_to_encode_says_so(tmp_path, name, data):
    """An empty manifest or a shard without audio was "no .wav or .flac or .ogg or .oga… files in" it."""
    path = tmp_path / name
    if data is None:
        with tarfile.open(path, "w") as shard:
            _add(shard, "a.txt", b"a transcript")
    else:
        path.write_bytes(data)
    result = run("encode", path, "-o", tmp_path / "out")
    assert result.returncode == 1 and result.stderr == f"error: {path} holds nothing to encode (no lines, no audio " \
        "members, no rows)\n", result.stderr


def test_an_item_name_longer_than_the_file_system_allows(tmp_path, weights_file, reference):
    """A tar member whose key is 300 bytes long refused the whole run ("the name is 304 bytes long, and this
    file system allows 255; choose a shorter name", which a shard's reader cannot do). Its output's name is
    shortened now, the same way each time, so that a resumed run finds it."""
    folder, codes = reference
    shard = tmp_path / "long.tar"
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as archive:
        for name, clip in (("k" * 300 + ".wav", "one"), ("short.wav", "two")):
            _add(archive, name, (folder / f"{clip}.wav").read_bytes())
    result = run("encode", shard, "-o", tmp_path / "out", weights=weights_file)
    assert result.returncode == 0, result.stderr
    made = sorted(p.name for p in (tmp_path / "out" / "long").iterdir())
    assert made[1] == "short.npz" and made[0].startswith("k" * 200) and made[0].endswith(".npz")
    assert len(made[0]) == 255 and "~" in made[0]
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "out" / "long" / made[0]).codes, codes["one"])
    again = run("encode", shard, "-o", tmp_path / "out", "--skip-existing", weights=weights_file)
    assert again.returncode == 0 and "2 skipped" in again.stderr, again.stderr


def test_two_items_with_one_output_say_what_to_do(tmp_path, reference):
    """Two items that would write one output said "rename one of them", which fits files, not a manifest's
    lines or two shards of one name: each says what can be done."""
    folder, _ = reference
    line = json.dumps({"audio_filepath": str(folder / "one.wav"), "text": "a"}) + "\n"
    (tmp_path / "twice.jsonl").write_text(line + line)
    twice = run("encode", tmp_path / "twice.jsonl", "-o", tmp_path / "out")
    assert twice.returncode == 1 and "twice.jsonl:1 and" in twice.stderr, twice.stderr
    assert "the same audio from the same millisecond (a line given twice?): remove the repeat" in twice.stderr
    for part in ("a", "b"):
        (tmp_path / part).mkdir()
        with tarfile.open(tmp_path / part / "shard.tar", "w") as archive:
            _add(archive, "x.wav", (folder / "one.wav").read_bytes())
    shards = run("encode", tmp_path / "a" / "shard.tar", tmp_path / "b" / "shard.tar", "-o", tmp_path / "out")
    assert shards.returncode == 1 and "two containers of the same name: encode them in two runs" in shards.stderr
    assert not (tmp_path / "out").exists()


def test_absolute_paths_in_a_list_mirror_the_folder_they_share(tmp_path, weights_file, reference):
    """A manifest's absolute paths were mirrored by their names alone, so a NeMo manifest of speakers' folders
    (/data/s1/001.wav, /data/s2/001.wav) could not be encoded with -o at all, and was told "the same audio
    from the same millisecond (a line given twice?)"; a ~ path made a folder named ~. They are mirrored from
    the folder they share now, as relative paths are from the list's; names that differ only in their
    extensions are said to."""
    folder, codes = reference
    corpus = tmp_path / "corpus"
    for speaker, clip in (("s1", "one"), ("s2", "two")):
        (corpus / speaker).mkdir(parents=True)
        (corpus / speaker / "001.wav").write_bytes((folder / f"{clip}.wav").read_bytes())
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.jsonl").write_text(json.dumps({"audio_filepath": str(corpus / "s1" / "001.wav")}) + "\n" +
                                       json.dumps({"audio_filepath": "~/s2/001.wav"}) + "\n")  # (made a folder ~)
    encoded = run("encode", lists / "train.jsonl", "-o", tmp_path / "codes", weights=weights_file,
                  env_extra={"HOME": str(corpus)})
    assert encoded.returncode == 0, encoded.stderr
    for speaker, clip in (("s1", "one"), ("s2", "two")):
        np.testing.assert_array_equal(CodesFile.load(tmp_path / "codes" / speaker / "001.npz").codes, codes[clip])
    (lists / "codes.txt").write_text("".join(f"{tmp_path / 'codes' / s / '001.npz'}\n" for s in ("s1", "s2")))
    decoded = run("decode", "--inputs-from", lists / "codes.txt", "-o", tmp_path / "audio", weights=weights_file)
    assert decoded.returncode == 0, decoded.stderr
    assert sorted(p.relative_to(tmp_path / "audio").as_posix() for p in (tmp_path / "audio").rglob("*.wav")) == [
        "s1/001.wav", "s2/001.wav"]
    (lists / "one.txt").write_text(f"{corpus / 's2' / '001.wav'}\n")  # one absolute path: its name alone
    assert run("encode", "--inputs-from", lists / "one.txt", "-o", tmp_path / "single",
               weights=weights_file).returncode == 0
    assert [p.name for p in (tmp_path / "single").iterdir()] == ["001.npz"]

    sf.write(corpus / "s1" / "001.flac", sf.read(corpus / "s1" / "001.wav")[0], 24000)
    (lists / "both.txt").write_text(f"{corpus / 's1' / '001.wav'}\n{corpus / 's1' / '001.flac'}\n")
    both = run("encode", "--inputs-from", lists / "both.txt", "-o", tmp_path / "both")
    assert both.returncode == 1 and "001.flac would both write" in both.stderr and "given twice" not in both.stderr
    assert "paths differ only in extensions or '..' parts, which outputs drop: rename one" in both.stderr
    assert not (tmp_path / "both").exists()
    for part, clip in (("A", "one"), ("B", "two")):  # two lists, each naming its own folder's x.wav
        (tmp_path / part).mkdir()
        (tmp_path / part / "x.wav").write_bytes((folder / f"{clip}.wav").read_bytes())
        (tmp_path / part / "list.txt").write_text("x.wav\n")
    two = run("encode", "--inputs-from", tmp_path / "A" / "list.txt", "--inputs-from", tmp_path / "B" / "list.txt",
              "-o", tmp_path / "two")
    assert two.returncode == 1 and f"lines of lists in {tmp_path / 'A'} and {tmp_path / 'B'}: encode the lists in " \
        "two runs, with two -o folders" in two.stderr, two.stderr


def test_the_shared_folder_is_a_folder_every_absolute_path_is_in(tmp_path):
    """The shared folder is found from the sorted first and last folders (a million Paths took seconds):
    checked against os.path.commonpath over every path, with names that sort between a folder and its
    sub-folders ('spk1-b' lies between 'spk1' and 'spk1/x'), POSIX's leading '//', and a relative line. It is
    the folder of every list of the run: a NeMo train and dev manifest (/data/train/…, /data/dev/…) of the same
    speakers wrote each speaker's files of both to one place."""
    from mimi_cli.batch import find_inputs

    def relatives(*lists):
        return [str(e.relative) for e in find_inputs([], [str(tmp_path / name) for name in lists], "encode")[0]]

    paths = ["/data/spk1/a.wav", "/data/spk1-b/c.wav", "/data/spk1/x/d.wav", "//data/spk1/e.wav", "rel/f.wav"]
    (tmp_path / "list.txt").write_text("".join(p + "\n" for p in paths))
    rooted = [os.path.normpath("/" + p.lstrip("/")) for p in paths if p.startswith("/")]
    shared = os.path.commonpath([os.path.dirname(p) for p in rooted])
    assert shared == "/data"
    assert relatives("list.txt") == [os.path.relpath(p, shared).removesuffix(".wav") for p in rooted] + ["rel/f"]
    (tmp_path / "one.txt").write_text("/data/spk1/a.wav\n/data/spk1/b.wav\n")
    assert relatives("one.txt") == ["a", "b"]
    (tmp_path / "train.txt").write_text("/data/train/spk1/a.wav\n/data/train/spk2/a.wav\n")
    (tmp_path / "dev.txt").write_text("/data/dev/spk1/a.wav\n")
    assert relatives("train.txt", "dev.txt") == ["train/spk1/a", "train/spk2/a", "dev/spk1/a"]


def test_a_sample_with_several_audio_fields_writes_one_output_per_field(tmp_path, weights_file, reference):
    """Two audio members of one key (a dialogue's two microphones; a .wav and a .flac) were refused as "two
    containers of the same name"; a name given twice (tar -r appends a newer copy) was refused the same way.
    Each field now has its output named after its member; a repeated name is its last copy, as tar extracts."""
    folder, codes = reference
    shard = tmp_path / "dialogues.tar"
    with tarfile.open(shard, "w") as archive:
        _add(archive, "d/0001.mic1.wav", (folder / "one.wav").read_bytes())
        _add(archive, "d/0001.mic2.wav", (folder / "two.wav").read_bytes())
        _add(archive, "d/0001.json", json.dumps({"text": "hello"}).encode())
        _add(archive, "d/0002.wav", (folder / "one.wav").read_bytes())
        _add(archive, "d/0002.flac", (folder / "two.wav").read_bytes())  # a WAV named .flac reads by its content
        _add(archive, "again.wav", (folder / "one.wav").read_bytes())
        _add(archive, "again.wav", (folder / "two.wav").read_bytes())
    out = tmp_path / "out"
    result = run("encode", shard, "-o", out, "--manifest", tmp_path / "run.jsonl", weights=weights_file)
    assert result.returncode == 0, result.stderr
    expected = {"d/0001.mic1.wav": "one", "d/0001.mic2.wav": "two", "d/0002.wav": "one", "d/0002.flac": "two",
                "again": "two"}
    assert sorted(str(p.relative_to(out / "dialogues")) for p in out.rglob("*.npz")) == \
        sorted(f"{n}.npz" for n in expected)
    for name, clip in expected.items():
        np.testing.assert_array_equal(CodesFile.load(out / "dialogues" / f"{name}.npz").codes, codes[clip])
    rows = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [r["__key__"] for r in rows[:2]] == ["d/0001", "d/0001"] and rows[1]["json"] == {"text": "hello"}
    with tarfile.open(tmp_path / "clash.tar", "w") as archive:
        for name in ("/x/a.wav", "x/a.wav"):  # one output name for both
            _add(archive, name, (folder / "one.wav").read_bytes())
    clash = run("encode", tmp_path / "clash.tar", "-o", tmp_path / "clash")
    assert clash.returncode == 1 and "differ only by '/', '.' or '..' parts: rename one" in clash.stderr


def test_each_member_of_a_shard_is_found_without_reading_the_headers_before_it(tmp_path, monkeypatch):
    """A member was found by name, which reads every header before it: reading all N members of a shard read
    about N²/2 headers (0.2 s a member in a shard of 10,000). Now the headers are read once per shard, and
    again only when the shard has been rewritten."""
    from mimi_cli.sources import list_tar, open_item

    shard = tmp_path / "shard.tar"
    clips = {f"{i:04d}": np.full(240, i / 1000, np.float32) for i in range(200)}
    with tarfile.open(shard, "w") as archive:
        for key, clip in clips.items():
            _add(archive, f"{key}.flac", _flac_bytes(clip, 24000))
    reads = []
    real = tarfile.TarInfo.fromtarfile
    monkeypatch.setattr(tarfile.TarInfo, "fromtarfile", classmethod(lambda cls, t: reads.append(1) or real(t)))

    entries = list_tar(shard)
    reads.clear()
    for entry in entries:
        with open_item(entry.item, entry.name) as reader:
            np.testing.assert_allclose(reader.read().reshape(-1), clips[entry.item.key[:4]], atol=1e-4)
    assert len(reads) <= 3 * len(entries), f"{len(reads):,} headers read for {len(entries)} members"

    with tarfile.open(shard, "w") as archive:  # rewritten in place: same name, new content and layout
        _add(archive, "0007.flac", _flac_bytes(np.full(480, 0.5, np.float32), 24000))
    with open_item(entries[7].item, entries[7].name) as reader:
        np.testing.assert_allclose(reader.read().reshape(-1), np.full(480, 0.5, np.float32), atol=1e-4)
    with pytest.raises(MimiError, match="no longer holds 0008.flac: was it rewritten"):
        open_item(entries[8].item, entries[8].name)


def test_links_inside_a_shard_are_followed_inside_it_only(tmp_path, weights_file, reference):
    """Hard and symbolic links in a shard were skipped without a word. Now each is its target's audio (and
    text), as `tar -x` would make it; a link out of the shard, to nothing, or in a loop fails alone, and
    nothing outside the shard is ever read."""
    folder, codes = reference
    shard = tmp_path / "links.tar"
    outside = folder / "one.wav"  # a symbolic link to it must not reach it
    with tarfile.open(shard, "w") as archive:
        _add(archive, "s/a.wav", (folder / "one.wav").read_bytes())
        _add(archive, "s/a.txt", b"words")
        for name, kind, target in (("s/hard.wav", tarfile.LNKTYPE, "s/a.wav"), ("s/soft.wav", tarfile.SYMTYPE, "a.wav"),
                                   ("s/soft.txt", tarfile.SYMTYPE, "./a.txt"),
                                   ("s/up.wav", tarfile.SYMTYPE, "../../" + outside.name),
                                   ("s/abs.wav", tarfile.SYMTYPE, str(outside)), ("x.wav", tarfile.SYMTYPE, "y.wav"),
                                   ("y.wav", tarfile.SYMTYPE, "x.wav"), ("s/none.wav", tarfile.LNKTYPE, "s/no.wav")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            archive.addfile(info)
    result = run("encode", shard, "-o", tmp_path / "out", "--manifest", tmp_path / "m.jsonl", weights=weights_file)
    assert result.returncode == 1 and "3 encoded" in result.stderr and "5 failed" in result.stderr, result.stderr
    for name in ("a", "hard", "soft"):
        np.testing.assert_array_equal(CodesFile.load(tmp_path / "out" / "links" / "s" / f"{name}.npz").codes,
                                      codes["one"])
    rows = {row["input"]: row for row in map(json.loads, (tmp_path / "m.jsonl").read_text().splitlines())}
    assert rows[f"{shard}#s/soft.wav"]["txt"] == "words"
    for name, target in (("s/up.wav", "../../one.wav"), ("s/abs.wav", str(outside)), ("x.wav", "y.wav"),
                         ("s/none.wav", "s/no.wav")):
        assert (f"{shard}#{name} is a link to {target}, which leads to no file in the shard (links are followed "
                "inside it only)") in result.stderr


def test_a_key_that_cannot_name_a_file_fails_its_item_alone(tmp_path, weights_file, reference):
    """A tar member's name (a PAX header's may hold a NUL, and be any length), a lhotse cut's id or a Kaldi
    utterance id names an output. One holding a NUL, which no file name can, stopped the whole run with a
    traceback ("embedded null byte") at planning; a member nested deeper than a path may go (4,096 bytes) stopped
    it with "File name too long". Such an item fails alone now, saying why; the others are encoded."""
    import gzip

    folder, codes = reference
    one = (folder / "one.wav").read_bytes()
    deep = "ab/" * 1400 + "x.wav"
    with tarfile.open(tmp_path / "web.tar", "w", format=tarfile.PAX_FORMAT) as shard:
        for name in ("ok.wav", "é\0x.wav", deep):  # (a name not ASCII, or long, takes a PAX header)
            _add(shard, name, one)
    shar = tmp_path / "shar"
    shar.mkdir()
    with tarfile.open(shar / "recording.tar", "w", format=tarfile.PAX_FORMAT) as shard:
        for cut_id in ("c-ok", "ç\0x"):
            _add(shard, f"{cut_id}.wav", one)
    (shar / "cuts.jsonl.gz").write_bytes(gzip.compress("\n".join(json.dumps(_shar_cut(cut_id, 1.0, ""))
                                                                 for cut_id in ("c-ok", "ç\0x")).encode()))
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text(f"u-ok {folder / 'one.wav'}\nu\0x {folder / 'one.wav'}\n")
    out = tmp_path / "codes"
    result = run("encode", tmp_path / "web.tar", shar, kaldi, "-o", out, weights=weights_file)
    assert result.returncode == 1 and "3 encoded" in result.stderr and "4 failed" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    for failed in (f"{tmp_path / 'web.tar'}#é\\x00x.wav: its member name", f"{shar}/cuts.jsonl.gz:2: its cut id",
                   f"{kaldi}/wav.scp:2: its utterance id"):
        assert f"failed: {failed} holds a NUL character, which no file name can" in result.stderr, result.stderr
    size = len(os.fsencode(out / "web" / deep.replace(".wav", ".npz")))
    assert f"failed: {tmp_path / 'web.tar'}#{deep}: its output's path, {size:,} bytes, cannot be made (File name " \
        "too long)" in result.stderr, result.stderr
    for made in ("web/ok", "shar/c-ok", "kaldi/u-ok"):
        np.testing.assert_array_equal(CodesFile.load(out / f"{made}.npz").codes, codes["one"])


def test_corrupt_shard_is_one_failure(tmp_path, weights_file):
    (tmp_path / "bad.tar").write_bytes(b"\x00" * 100 + b"definitely not a tar archive" * 40)
    result = run("encode", tmp_path / "bad.tar", "-o", tmp_path / "codes", weights=weights_file)
    assert result.returncode == 1 and "cannot read tar shard" in result.stderr and "Traceback" not in result.stderr


def test_a_compressed_shard_is_said_to_be_one(tmp_path, weights_file, reference):
    """A .tar.gz shard was read as audio ("give a WAV, FLAC…"); its members cannot be read one by one, so it
    is one failure saying to decompress it, and the run goes on with the other inputs."""
    folder, _ = reference
    shard = tmp_path / "shard.tar.gz"
    with tarfile.open(shard, "w:gz") as archive:
        archive.add(folder / "one.wav", arcname="one.wav")
    result = run("encode", shard, folder / "two.wav", "-o", tmp_path / "codes", weights=weights_file)
    assert result.returncode == 1 and "1 encoded" in result.stderr and "Traceback" not in result.stderr
    assert f"failed: {shard} is a compressed tar shard" in result.stderr and "give the .tar" in result.stderr


@pytest.fixture(scope="module")
def hf_dataset(tmp_path_factory, reference):
    datasets = pytest.importorskip("datasets")
    folder, _ = reference
    root = tmp_path_factory.mktemp("hf")
    audio = [{"bytes": (folder / f"{name}.wav").read_bytes(), "path": f"{name}.wav"} for name in ("one", "two")]
    dataset = datasets.Dataset.from_dict({"audio": audio, "text": ["first", "second"], "id": [11, 12]})
    dataset = dataset.cast_column("audio", datasets.Audio(decode=False))
    dataset.save_to_disk(str(root / "saved"))
    # loaded back and mapped or filtered, it keeps their caches beside its data (cache-*.arrow): not its rows
    loaded = datasets.load_from_disk(str(root / "saved"))
    loaded.map(lambda row: {"text": row["text"].upper()}).filter(lambda row: row["id"] == 12)
    assert len(list((root / "saved").glob("cache-*.arrow"))) == 2
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(root / "splits"))
    dataset.to_parquet(str(root / "train.parquet"))
    return root


@pytest.mark.parametrize("form", ["saved", "splits", "train.parquet"])
def test_hugging_face_dataset_in_parquet_out(tmp_path, weights_file, reference, hf_dataset, form):
    _, codes = reference
    shards = tmp_path / "pq"
    result = run("encode", hf_dataset / form, "--parquet", shards, weights=weights_file)  # no -o: Parquet only
    assert result.returncode == 0, result.stderr
    import datasets
    import pandas as pd

    by_pandas = pd.read_parquet(shards)
    loaded = datasets.load_dataset("parquet", data_files=str(shards / "*.parquet"), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert len(by_pandas) == len(loaded) == 2
    for index, name in enumerate(("one", "two")):
        row = loaded[index]
        assert row["text"] == ["first", "second"][index] and row["id"] == [11, 12][index]
        np.testing.assert_array_equal(np.array(row["codes"], np.uint16), codes[name][0])
        assert row["num_samples"] == int(by_pandas["num_samples"][index]) and row["codec"] == "mimi"
    assert not any(p.suffix == ".npz" for p in tmp_path.rglob("*"))


def test_a_dataset_state_naming_files_elsewhere_is_refused(tmp_path, weights_file, hf_dataset):
    """A save_to_disk folder's state.json names its data files: a path out of the folder is never followed."""
    import shutil

    saved = tmp_path / "saved"
    shutil.copytree(hf_dataset / "saved", saved)
    for listed, problem in ((f"../{saved.name}/data-00000-of-00001.arrow", "which is no file in"),
                            (str(saved / "data-00000-of-00001.arrow"), "which is no file in"),
                            ({"name": "x"}, "is not a dataset's state")):
        entry = {"filename": listed} if isinstance(listed, str) else listed
        (saved / "state.json").write_text(json.dumps({"_data_files": [entry]}))
        result = run("encode", saved, "-o", tmp_path / "codes", weights=weights_file)
        assert result.returncode == 1 and problem in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "codes").exists()


def _one_clip_every_row(path: Path, clip: bytes, rows: int) -> None:
    """A Parquet file whose ``rows`` rows all refer to one dictionary entry holding ``clip``, with no Arrow
    schema beside it: readers that expand the dictionary copy the clip into every row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    audio = pa.StructArray.from_arrays([pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)),
                                                                       pa.array([clip], pa.binary())),
                                        pa.array([f"{i}.wav" for i in range(rows)])], names=["bytes", "path"])
    pq.write_table(pa.table({"audio": audio, "text": [str(i) for i in range(rows)]}), path, compression="zstd",
                   dictionary_pagesize_limit=1 << 30, store_schema=False)


def test_a_row_group_is_read_as_stored_and_checked_against_memory(tmp_path, weights_file, reference, monkeypatch):
    """200 rows referring to one 1.5 s clip: the row group is read as its dictionary (the clip once, not
    200 times: 2 MB of file was 384 MB read with 20 s clips), every row still gives the clip; a row group
    declaring more than half the memory once decompressed is refused before it is read."""
    pa = pytest.importorskip("pyarrow")
    from mimi_cli import sources

    folder, codes = reference
    clip = (folder / "two.wav").read_bytes()
    _one_clip_every_row(tmp_path / "one.parquet", clip, 200)
    before = pa.total_allocated_bytes()
    table = sources._row_group(str(tmp_path / "one.parquet"), 0, ("audio",))
    assert pa.total_allocated_bytes() - before < 10 * len(clip)  # expanded into every row: 200 copies
    assert all(table.slice(row, 1).to_pylist()[0]["audio"]["bytes"] == clip for row in (0, 7, 199))
    shards = tmp_path / "pq"
    _one_clip_every_row(tmp_path / "three.parquet", clip, 3)
    assert run("encode", tmp_path / "three.parquet", "--parquet", shards, weights=weights_file).returncode == 0
    import pyarrow.parquet as pq

    for row in pq.read_table(shards).to_pylist():
        np.testing.assert_array_equal(np.array(row["codes"], np.uint16), codes["two"][0])
    sources._row_group.cache_clear()
    monkeypatch.setattr(sources, "usable_memory", lambda: 2 * len(clip))
    with pytest.raises(MimiError, match="row group 0 takes 0.0 GB once read, by what it declares; more than"):
        sources._row_group(str(tmp_path / "one.parquet"), 0, ("audio",))


def test_a_row_of_one_value_repeated_is_checked_by_its_count_of_values(tmp_path, weights_file, monkeypatch):
    """A 700-byte Parquet file whose one row holds 10⁹ zero codes (RLE: a run is a few bytes) declared a
    decompressed size of 95 bytes, passed the memory check and was read: 17 GB. Its count of values, read
    from the footer (pyarrow's column metadata can end the process), now bounds it; here 4·10⁶ values against
    a machine of 100 MB."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from mimi_cli import sources

    values = 4_000_000
    inner = pa.LargeListArray.from_arrays(np.array([0, values], np.int64), pa.array(np.zeros(values, np.int16)))
    pq.write_table(pa.table({"codes": pa.ListArray.from_arrays(np.array([0, 1], np.int32), inner),
                             "text": ["x"]}), tmp_path / "zeros.parquet", compression="zstd")
    assert pq.ParquetFile(tmp_path / "zeros.parquet").metadata.row_group(0).total_byte_size < 1000
    monkeypatch.setattr(sources, "usable_memory", lambda: 100 << 20)
    with pytest.raises(MimiError, match=r"row group 0 takes 0\.1 GB once read, by what it declares; more than half "
                                        "this machine's 0.1 GB: write it with smaller row groups"):
        sources._row_group(str(tmp_path / "zeros.parquet"), 0, ("codes",))
    assert sources._row_group(str(tmp_path / "zeros.parquet"), 0, ("text",)).num_rows == 1  # 1 value: read


def test_an_arrow_files_compressed_buffers_are_checked_against_memory(tmp_path, monkeypatch):
    """An Arrow IPC file (or stream) may hold its buffers compressed, and pyarrow decompresses them all as it
    reads: 18 KB of zstd held 600 MB of zero codes, 62 KB 2 GB. What they take once decompressed, read from
    each buffer's own length, must fit in half the memory, before they are read; the count is what pyarrow
    allocates (dictionary batches and every batch of a file included), and nothing for buffers read in
    place."""
    pa = pytest.importorskip("pyarrow")
    from mimi_cli import sources
    from mimi_cli.arrow_ipc import declared_bytes

    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 2048, (8, int(rng.integers(1, 400)))).tolist() for _ in range(30)]
    table = pa.table({"codes": codes, "speaker": pa.array([f"s{i % 3}" for i in range(30)]).dictionary_encode(),
                      "zeros": pa.array(np.zeros((30, 1000), np.int64).tolist())})
    for compression in (None, "zstd", "lz4"):
        for new in (pa.ipc.new_stream, pa.ipc.new_file):
            path = tmp_path / f"{compression}-{new.__name__}.arrow"
            with new(path, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
                for part in (table.slice(0, 10), table.slice(10)):  # two record batches
                    writer.write_table(part)
            source = pa.memory_map(str(path))
            declared = declared_bytes(source)
            source.seek(0)
            read = None  # the last table's buffers, freed before counting
            before = pa.total_allocated_bytes()
            read = (pa.ipc.open_file if new is pa.ipc.new_file else pa.ipc.open_stream)(source).read_all()
            allocated = pa.total_allocated_bytes() - before
            assert read.equals(table)
            if compression is None:
                assert declared == 0 and allocated < 4096
            else:  # pyarrow pads each buffer it allocates to 64 bytes
                assert declared <= allocated <= declared + 64 * 40, (declared, allocated)
                assert declared > 30 * 1000 * 8 > path.stat().st_size / 4  # the zeros, and far more than stored
    monkeypatch.setattr(sources, "usable_memory", lambda: 2 * declared - 2)
    sources._arrow_table.cache_clear()
    with pytest.raises(MimiError, match=r"lz4-new_file.arrow declares 0\.0 GB once decompressed, more than half this "
                                        r"machine's [0-9.]+ GB; write it without compression"):
        sources._arrow_table(str(path))
    monkeypatch.setattr(sources, "usable_memory", lambda: 2 * declared)
    assert sources._arrow_table(str(path)).num_rows == 30


def test_the_footers_counts_of_values_are_pyarrows(tmp_path):
    """The hand-read footer (mimi_cli.parquet_footer) against pyarrow's metadata: every chunk's column, physical
    type and count of values, in files of several row groups, nested lists, structs, nulls and every physical
    type; damaged footers raise a ValueError, as pyarrow does."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from mimi_cli.parquet_footer import DamagedFooterError, column_values

    rng = np.random.default_rng(0)
    rows = 50
    table = pa.table({
        "codes": [rng.integers(0, 2048, (2, int(rng.integers(0, 9)))).tolist() for _ in range(rows)],
        "audio": [{"bytes": bytes(int(rng.integers(0, 99))), "path": f"{i}.wav"} if i % 7 else None
                  for i in range(rows)],
        "flag": [bool(i % 3) for i in range(rows)], "n": np.arange(rows, dtype=np.int64),
        "x": rng.standard_normal(rows).astype(np.float32), "y": rng.standard_normal(rows),
        "when": pa.array(np.arange(rows), pa.timestamp("ns")), "fixed": pa.array([b"abcd"] * rows, pa.binary(4)),
        "text": [None if i % 5 == 0 else "é" * i for i in range(rows)]})
    for group_rows, options in ((rows, {}), (7, {"compression": "zstd"}),
                                (16, {"use_dictionary": False, "write_statistics": False}),
                                (1, {"use_deprecated_int96_timestamps": True})):
        path = tmp_path / "t.parquet"
        pq.write_table(table, path, row_group_size=group_rows, **options)
        column_values.cache_clear()
        meta = pq.ParquetFile(path).metadata
        physical = ("BOOLEAN", "INT32", "INT64", "INT96", "FLOAT", "DOUBLE", "BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY")
        expected = [[(chunk.path_in_schema.split(".")[0], physical.index(chunk.physical_type), chunk.num_values)
                     for chunk in map(meta.row_group(g).column, range(meta.num_columns))]
                    for g in range(meta.num_row_groups)]
        assert column_values(str(path)) == expected and len(expected) == -(-rows // group_rows)
    data = path.read_bytes()
    length = int.from_bytes(data[-8:-4], "little")
    for name, damaged in (("cut", data[:-1]), ("short", b"PAR1"),
                          ("long", data[:-8] + (len(data)).to_bytes(4, "little") + b"PAR1"),
                          ("deep", b"PAR1" + b"\x1c" * 200 + b"\x00" * 200 + (400).to_bytes(4, "little") + b"PAR1"),
                          ("huge list", data[:-8 - length] + b"\x19\xfc\xff\xff\xff\x0f" + (6).to_bytes(4, "little")
                           + b"PAR1"),
                          ("ends inside", data[:-8 - length] + data[-8 - length:-8 - length // 2]
                           + (length - length // 2).to_bytes(4, "little") + b"PAR1")):
        (tmp_path / f"{name}.parquet").write_bytes(damaged)
        with pytest.raises(DamagedFooterError):  # a ValueError, which the table readers say as damaged
            column_values(str(tmp_path / f"{name}.parquet"))


def test_decoded_audio_saved_as_a_plain_struct(tmp_path, weights_file, reference, speech):
    """A dataset `map`ped to {"array", "sampling_rate"} (datasets' decoded form) and saved as a plain struct: the
    samples are read as they are (mono [N], stereo [2, N]), the same codes as the file; a bad row fails alone, a
    sample of 1e300 said as such."""
    datasets = pytest.importorskip("datasets")
    folder, codes = reference
    pcm, rate = sf.read(folder / "one.wav", dtype="float32")
    rows = [{"array": pcm.tolist(), "sampling_rate": rate}, {"array": pcm.tolist(), "sampling_rate": 5_000_000},
            {"array": [], "sampling_rate": rate}, {"array": [0.1, 1e300, 0.2], "sampling_rate": rate},
            {"array": [0.1, float("nan")], "sampling_rate": rate}]
    datasets.Dataset.from_dict({"audio": rows}).to_parquet(str(tmp_path / "mono.parquet"))
    two = [{"array": np.stack([pcm, pcm]).tolist(), "sampling_rate": rate}]
    datasets.Dataset.from_dict({"audio": two}).to_parquet(str(tmp_path / "stereo.parquet"))
    result = run("encode", tmp_path / "mono.parquet", tmp_path / "stereo.parquet", "-o", tmp_path / "codes",
                 weights=weights_file)
    assert result.returncode == 1 and "2 encoded" in result.stderr and "Traceback" not in result.stderr
    assert "mono.parquet#1 declares 5,000,000 Hz, outside" in result.stderr
    assert "mono.parquet#2: its audio array has shape [0]" in result.stderr
    # a value past float32's range is said as it is (as float32 it was Inf, called "NaN or Inf")
    assert "mono.parquet#3 has samples of magnitude 1e+300" in result.stderr, result.stderr
    assert "mono.parquet#4 contains NaN or Inf samples" in result.stderr, result.stderr
    mono, stereo = (CodesFile.load(tmp_path / "codes" / name / "00000000.npz") for name in ("mono", "stereo"))
    np.testing.assert_array_equal(mono.codes, codes["one"])
    np.testing.assert_array_equal(stereo.codes, codes["one"])  # both channels the same: their mean is the clip
    assert stereo.source_channels == 2


def test_a_row_whose_path_no_file_system_takes_fails_alone(tmp_path, weights_file, reference):
    """A row's path with a NUL or too long for the file system (found by the audio-table fuzzer): the look-up
    beside the table raised ("ValueError: embedded null byte", "OSError: [Errno 36] …"). Each row fails alone,
    in words, and the good row is encoded."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder, codes = reference
    paths = ["a\0b.wav", "x" * 300 + ".wav", str(folder / "one.wav")]
    pq.write_table(pa.table({"audio": [{"bytes": None, "path": p} for p in paths]}), tmp_path / "t.parquet")
    result = run("encode", tmp_path / "t.parquet", "-o", tmp_path / "codes", weights=weights_file)
    assert result.returncode == 1 and "1 encoded" in result.stderr and "Traceback" not in result.stderr
    assert "t.parquet#0: its path holds a NUL character" in result.stderr, result.stderr
    assert "t.parquet#1: cannot read" in result.stderr and "(File name too long)" in result.stderr, result.stderr
    assert "Error:" not in result.stderr, result.stderr
    np.testing.assert_array_equal(CodesFile.load(tmp_path / "codes" / "t" / "00000002.npz").codes, codes["one"])

def test_a_manifest_carries_nan_as_json_null(tmp_path, weights_file, reference):
    """A float column's missing values (NaN, as pandas writes them) and infinities carried into the run's manifest
    were written as Python's NaN and Infinity, which are not JSON: jq, JavaScript and most readers refused the
    line. They are null now; the Parquet shards keep them as the floats they are."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    folder, _ = reference
    wav = (folder / "one.wav").read_bytes()
    pq.write_table(pa.table({"audio": [{"bytes": wav, "path": "one.wav"}], "snr": [float("nan")],
                             "score": [float("-inf")]}), tmp_path / "t.parquet")
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": str(folder / "one.wav"), "x": [1, float("inf")],
                                                  "y": {"z": float("nan")}}) + "\n")
    result = run("encode", tmp_path / "t.parquet", tmp_path / "m.jsonl", "-o", tmp_path / "codes", "--manifest",
                 tmp_path / "run.jsonl", "--parquet", tmp_path / "pq", weights=weights_file)
    assert result.returncode == 0, result.stderr

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    rows = [json.loads(line, parse_constant=refuse) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert (rows[0]["snr"], rows[0]["score"], rows[1]["x"], rows[1]["y"]) == (None, None, [1, None], {"z": None})
    shard = pq.read_table(tmp_path / "pq").to_pylist()
    assert np.isnan(shard[0]["snr"]) and shard[0]["score"] == float("-inf")

def test_dataset_without_the_audio_column(tmp_path, weights_file, hf_dataset):
    result = run("encode", hf_dataset / "train.parquet", "--audio-column", "speech", "--parquet", tmp_path / "pq",
                 weights=weights_file)
    assert result.returncode == 1 and "has no column 'speech'" in result.stderr and "--audio-column" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip().startswith("failed:")]) == 1


def test_items_need_an_output(tmp_path, weights_file, hf_dataset):
    result = run("encode", hf_dataset / "train.parquet", weights=weights_file)
    assert result.returncode == 1 and "give -o DIR" in result.stderr


@pytest.mark.ray
def test_dataset_through_ray(tmp_path, weights_file, reference, hf_dataset):
    pytest.importorskip("ray.data")
    _, codes = reference
    result = run("encode", hf_dataset / "train.parquet", "--engine", "ray", "--jobs", "2", "-o", tmp_path / "codes",
                 "--parquet", tmp_path / "pq", weights=weights_file, env_extra={"RAY_ADDRESS": ""})
    assert result.returncode == 0, result.stderr
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "pq").to_pylist()
    assert [r["text"] for r in rows] == ["first", "second"]
    np.testing.assert_array_equal(np.array(rows[1]["codes"], np.uint16), codes["two"][0])


# -- FFmpeg-only containers ------------------------------------------------------------------------

def test_m4a_is_read_through_ffmpeg(tmp_path, weights_file, speech):
    av = pytest.importorskip("av")
    pcm, rate = speech
    ffmpeg_file(tmp_path / "clip.m4a", pcm[:2 * rate], rate=rate)
    with av.open(str(tmp_path / "clip.m4a")) as container:  # what FFmpeg itself decodes, written losslessly
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    sf.write(tmp_path / "decoded.wav", decoded, rate, subtype="FLOAT")
    for flags in ([], ["--stream"]):
        assert run("encode", *flags, tmp_path / "clip.m4a", "-o", tmp_path / "m4a.npz", "-f",
                   weights=weights_file).returncode == 0
        assert run("encode", *flags, tmp_path / "decoded.wav", "-o", tmp_path / "wav.npz", "-f",
                   weights=weights_file).returncode == 0
        np.testing.assert_array_equal(CodesFile.load(tmp_path / "m4a.npz").codes,
                                      CodesFile.load(tmp_path / "wav.npz").codes)


def test_a_cut_matroska_file_is_refused_as_truncated(tmp_path, weights_file, speech):
    """FFmpeg read the part of a cut Matroska/WebM file that is there, silently: half a recording was encoded
    as if whole. Its stored length is now checked at the end; a stream's own length only (a container's is
    its longest stream's)."""
    pytest.importorskip("av")
    pcm, rate = speech
    ffmpeg_file(tmp_path / "whole.mka", pcm[:3 * rate], rate=rate, codec="flac")
    data = (tmp_path / "whole.mka").read_bytes()
    (tmp_path / "cut.mka").write_bytes(data[:len(data) // 2])
    for flags in ([], ["--stream"]):
        assert run("encode", *flags, tmp_path / "whole.mka", "-o", tmp_path / "whole.npz", "-f",
                   weights=weights_file).returncode == 0
        cut = run("encode", *flags, tmp_path / "cut.mka", "-o", tmp_path / "cut.npz", weights=weights_file)
        assert cut.returncode == 1 and not (tmp_path / "cut.npz").exists(), cut.stderr
        assert cut.stderr.startswith(f"error: {tmp_path / 'cut.mka'} is truncated: its container declares 3.00 s "
                                     "of audio, the file holds 1.") and cut.stderr.count("\n") == 1, cut.stderr
    ffmpeg_file(tmp_path / "two.mka", pcm[:rate], pcm[:3 * rate], rate=rate, codec="flac")  # a first stream of 1 s of 3
    assert run("encode", tmp_path / "two.mka", "-o", tmp_path / "two.npz", weights=weights_file).returncode == 0
    assert CodesFile.load(tmp_path / "two.npz").num_samples == 24_000  # its own 1 s, at the codec's rate


def test_a_channel_count_ffmpeg_cannot_convert_is_one_line(tmp_path, weights_file, speech):
    """FFmpeg's converter takes at most 64 channels: a Matroska file whose header says 65 (a damaged byte)
    ended in "error: ArgumentError: Invalid argument returned 22"."""
    pytest.importorskip("av")
    pcm, rate = speech
    ffmpeg_file(tmp_path / "mono.mka", pcm[:rate], rate=rate, codec="pcm_s16le")
    data = (tmp_path / "mono.mka").read_bytes()
    assert data.count(b"\x9f\x81\x01") == 1  # Matroska's Channels element: ID 0x9F, 1 byte, 1
    (tmp_path / "many.mka").write_bytes(data.replace(b"\x9f\x81\x01", b"\x9f\x81\x41"))
    done = run("encode", tmp_path / "many.mka", "-o", tmp_path / "many.npz", weights=weights_file)
    assert done.returncode == 1 and not (tmp_path / "many.npz").exists(), done.stderr
    assert done.stderr.startswith(f"error: cannot read {tmp_path / 'many.mka'} as audio: FFmpeg cannot convert its "
                                  "65 channel(s) of s16 samples") and done.stderr.count("\n") == 1, done.stderr


def test_a_damaged_packet_says_ffmpegs_reason_without_its_error_number(tmp_path, speech):
    """An ADTS AAC file whose second half is zeros: "(FFmpeg: Invalid data found when processing input)", where
    it said "([Errno 1094995529] Invalid data found when processing input: 'avcodec_send_packet()')"."""
    pytest.importorskip("av")
    from mimi_cli.audio import read_audio

    pcm, rate = speech
    ffmpeg_file(tmp_path / "clip.aac", pcm[:rate], rate=rate)
    data = (tmp_path / "clip.aac").read_bytes()
    (tmp_path / "zeros.aac").write_bytes(data[:len(data) // 2] + bytes(len(data) // 2))
    with pytest.raises(MimiError) as refused:
        read_audio(tmp_path / "zeros.aac")
    assert str(refused.value) == (f"cannot read {tmp_path / 'zeros.aac'} as audio (FFmpeg: Invalid data found when "
                                  "processing input); the file may be corrupt")


def _understate_length(path: Path, factor: int) -> None:
    """Divide the durations an MP4 file's movie, track and media headers declare by ``factor``."""
    import struct

    data = bytearray(path.read_bytes())
    for atom, offset in ((b"mvhd", 20), (b"tkhd", 24), (b"mdhd", 20)):  # version 0: 32-bit fields
        at = data.find(atom) + offset
        (duration,) = struct.unpack(">I", data[at:at + 4])
        data[at:at + 4] = struct.pack(">I", duration // factor)
    path.write_bytes(data)


def test_a_container_that_understates_its_length_is_checked_as_it_is_read(tmp_path, speech, monkeypatch):
    """Batch mode checks memory against the length a file declares; an M4A whose headers say 0.3 s of
    its 3 s passes that check, and is refused as the read goes past what memory allows (here 1 s)."""
    pytest.importorskip("av")
    from mimi_cli import errors, pipeline
    from mimi_cli.audio import open_audio

    pcm, rate = speech
    path = tmp_path / "liar.m4a"
    ffmpeg_file(path, pcm[:3 * rate], rate=rate)
    _understate_length(path, 10)
    with open_audio(path) as f:
        assert f.frames / f.samplerate < 0.35
        whole = pipeline.read_for_batch(path, f, "mimi")  # this machine's memory: all of it
    assert whole.duration > 2.9
    one_second = pipeline.codec_spec("mimi").batch_bytes(1, 1.0) / 0.9
    monkeypatch.setattr(errors, "usable_memory", lambda: one_second)
    with open_audio(path) as f, pytest.raises(MimiError, match="of audio would need about .* in batch "
                                                                 "mode, more than .* use --stream"):
        pipeline.read_for_batch(path, f, "mimi")


def test_without_the_ffmpeg_extra_the_message_names_it(tmp_path, speech):
    pytest.importorskip("av")
    pcm, rate = speech
    ffmpeg_file(tmp_path / "clip.m4a", pcm[:rate], rate=rate)
    fake = tmp_path / "site"
    (fake / "av").mkdir(parents=True)
    (fake / "av" / "__init__.py").write_text("raise ModuleNotFoundError('not installed here', name='av')\n")
    result = run("encode", tmp_path / "clip.m4a", "-o", tmp_path / "x.npz", env_extra={"PYTHONPATH": str(fake)})
    assert result.returncode == 1 and 'pip install "mimi-cli[ffmpeg]"' in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- perceptual metrics ----------------------------------------------------------------------------

def test_pesq_and_stoi_are_the_libraries_scores(speech):
    pesq = pytest.importorskip("pesq")
    pystoi = pytest.importorskip("pystoi")
    from mimi_cli.audio import resample
    from mimi_cli.metrics import perceptual

    pcm, rate = speech
    clean = resample(pcm[:3 * rate], rate, 24000)
    noisy = clean + np.random.default_rng(0).standard_normal(len(clean)).astype(np.float32) * 0.02
    same, degraded = perceptual(clean, clean, 24000), perceptual(clean, noisy, 24000)
    assert same["pesq_wb"] > 4.4 and same["stoi"] > 0.999
    assert degraded["pesq_wb"] < same["pesq_wb"] - 1 and degraded["stoi"] < same["stoi"]
    a, b = resample(clean, 24000, 16000), resample(noisy, 24000, 16000)
    assert degraded["pesq_wb"] == pytest.approx(pesq.pesq(16000, a.astype(np.float64), b.astype(np.float64), "wb"))
    assert degraded["stoi"] == pytest.approx(pystoi.stoi(a, b, 16000))
    # unrelated noises: a real score just below 0 (pystoi's -0.037), not "undefined"
    rng = np.random.default_rng(1)
    noise, other = (rng.standard_normal(16000 * 2) * 0.1 for _ in range(2))
    unrelated = perceptual(noise, other, 16000)["stoi"]
    assert unrelated == pytest.approx(pystoi.stoi(noise, other, 16000)) and -0.1 < unrelated < 0
    assert perceptual(clean[:4800], clean[:4800], 24000)["stoi"] is None  # 0.2 s: too few frames to score
    assert perceptual(noise * 0, other, 16000)["stoi"] is None  # a silent reference (pystoi: 0.0)


def test_a_pesq_that_crashes_is_an_undefined_score_and_a_warning(tmp_path, weights_file):
    """Beyond 10 s, PESQ runs in a child process (the pesq library crashes on long speech, see test_metrics):
    here a pesq that dies of SIGSEGV there, as the real one does on 175 s of the sample speech."""
    pytest.importorskip("pystoi")
    fake = tmp_path / "site" / "pesq"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os, signal\nclass PesqError(RuntimeError): pass\n"
                                      "def pesq(rate, reference, degraded, mode):\n"
                                      "    os.kill(os.getpid(), signal.SIGSEGV)\n")
    sf.write(tmp_path / "long.wav", speech_at(24000)[:11 * 24000], 24000)
    result = run("roundtrip", tmp_path / "long.wav", "--json", weights=weights_file,
                 env_extra={"PYTHONPATH": str(tmp_path / "site")})
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["pesq_wb"] is None and 0 < metrics["stoi"] <= 1
    assert result.stderr == ("warning: PESQ is undefined: the pesq library crashed (SIGSEGV) on 11 s of audio (its "
                             "reference code holds 50 utterances, and long speech has more): measure PESQ on "
                             "shorter clips\n"), result.stderr


def test_roundtrip_shows_them(tmp_path, weights_file, clip):
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    result = run("roundtrip", clip, "--json", weights=weights_file)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert 1.0 <= metrics["pesq_wb"] <= 4.7 and 0.0 <= metrics["stoi"] <= 1.0
