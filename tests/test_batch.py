"""Whole folders: many inputs, --jobs, --skip-existing, manifests, bad files in bulk, Ctrl-C, and Ray."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SAMPLE_AUDIO, poison_hook, run, speech_at

from mimi_cli.batch import Input, collect_inputs, plan_tasks
from mimi_cli.errors import MimiError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small tree of clips at different depths and formats (at 24 kHz: see conftest.speech_at)."""
    root = tmp_path_factory.mktemp("corpus")
    speech, rate = speech_at(), 24000
    (root / "spk1" / "deep").mkdir(parents=True)
    sf.write(root / "a.wav", speech[: 2 * rate], rate, subtype="PCM_16")
    sf.write(root / "spk1" / "b.flac", speech[2 * rate : 3 * rate], rate)
    sf.write(root / "spk1" / "deep" / "c.wav", speech[3 * rate : int(4.3 * rate)], rate, subtype="FLOAT")
    sf.write(root / "spk1" / "deep" / "d.ogg", speech[5 * rate : 6 * rate], rate)
    (root / "notes.txt").write_text("not audio, and not picked up: wrong suffix")
    return root


def _encode_alone(corpus: Path, weights: Path, tmp: Path) -> dict[str, Path]:
    """Each clip encoded by itself, the classic one-file way."""
    alone = {}
    for clip in sorted(p for p in corpus.rglob("*") if p.suffix in (".wav", ".flac", ".ogg")):
        relative = clip.relative_to(corpus).with_suffix(".npz")
        target = tmp / "alone" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        result = run("encode", clip, "-o", target, weights=weights)
        assert result.returncode == 0, result.stderr
        alone[str(relative)] = target
    return alone


def _same_codes_file(a: Path, b: Path) -> bool:
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        return x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_folder_with_two_jobs_equals_each_file_alone(corpus, weights_file, tmp_path):
    alone = _encode_alone(corpus, weights_file, tmp_path)
    out = tmp_path / "codes"
    result = run("encode", corpus, "-r", "-o", out, "--jobs", "2", "--manifest", tmp_path / "m.jsonl",
                 weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert "4 encoded" in result.stderr
    assert _tree(out) == sorted(alone)  # the inputs' tree, mirrored; nothing else (no temporary files)
    for relative, path in alone.items():
        assert _same_codes_file(out / relative, path), relative
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [Path(row["input"]).name for row in lines] == ["a.wav", "b.flac", "c.wav", "d.ogg"]
    assert {row["status"] for row in lines} == {"done"} and all(row["error"] is None for row in lines)
    assert set(lines[0]) == {"input", "output", "duration_s", "frames", "status", "error", "warnings"}
    assert lines[2]["duration_s"] == 1.3 and lines[2]["frames"] == 17  # 1.3 s at 12.5 Hz, rounded up

    # and back: decoding the codes folder with two jobs gives each file's own decode
    decoded = tmp_path / "decoded"
    result = run("decode", out, "-r", "-o", decoded, "--jobs", "2", weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert _tree(decoded) == sorted(str(Path(r).with_suffix(".wav")) for r in alone)
    # Workers use one thread, this run two: the same samples whatever the thread count
    single = tmp_path / "single.wav"
    result = run("decode", out / "spk1" / "b.npz", "-o", single, "--threads", "2", weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(sf.read(single)[0], sf.read(decoded / "spk1" / "b.wav")[0])


def test_a_suffix_names_the_outputs_format_in_a_folder_and_beside_inputs(corpus, weights_file, tmp_path):
    """Outputs in a folder were always NAME.npz and NAME.wav: a corpus could not be decoded to FLAC, nor encoded
    to bare arrays or EnCodec's .ecdc, but one file at a time. --suffix names them (``flac`` or ``.flac``), in
    the format it names, checked before any work; it has no place where -o names the output itself, nor with
    --parquet alone."""
    from mimi_cli.batch import Job
    from mimi_cli.pipeline import Settings

    codes, wav, flac = tmp_path / "codes", tmp_path / "wav", tmp_path / "flac"
    assert run("encode", corpus, "-r", "-o", codes, weights=weights_file).returncode == 0
    assert run("encode", corpus, "-r", "-o", tmp_path / "npy", "--suffix", ".npy", weights=weights_file
               ).returncode == 0
    assert _tree(tmp_path / "npy") == [name.replace(".npz", ".npy") for name in _tree(codes)]
    for name in _tree(codes):  # the codes alone, the same
        with np.load(codes / name) as whole:
            np.testing.assert_array_equal(np.load(tmp_path / "npy" / name.replace(".npz", ".npy")), whole["codes"][0])
    for target, suffix in ((wav, []), (flac, ["--suffix", "flac"])):
        done = run("decode", codes, "-r", "-o", target, *suffix, weights=weights_file)
        assert done.returncode == 0, done.stderr
    assert _tree(flac) == [name.replace(".wav", ".flac") for name in _tree(wav)]
    for name in _tree(wav):  # lossless: the same audio, as libsndfile rounds it to 16 bits for each format
        assert sf.info(flac / name.replace(".wav", ".flac")).format == "FLAC"
        np.testing.assert_allclose(sf.read(flac / name.replace(".wav", ".flac"), dtype="int16")[0],
                                   sf.read(wav / name, dtype="int16")[0], rtol=0, atol=1)
    beside = run("decode", codes / "a.npz", "--suffix", ".ogg", weights=weights_file)
    assert beside.returncode == 0 and (codes / "a.decoded.ogg").exists(), beside.stderr
    for args, said in [
        (["decode", codes, "-r", "-o", tmp_path / "x", "--suffix", ".xyz"], "--suffix .xyz: cannot write audio as "
         ".xyz; use .wav"),
        (["encode", corpus / "a.wav", "-o", tmp_path / "one.npz", "--suffix", ".npy"], "--suffix .npy names outputs "
         f"written in a folder or beside their inputs, and -o {tmp_path / 'one.npz'} names the output itself"),
        (["encode", corpus, "-r", "-o", tmp_path / "x", "--suffix", ".ecdc"], "--suffix .ecdc: .ecdc is EnCodec's "
         "own format, and mimi codes have no place in it"),
        (["encode", corpus, "-r", "--parquet", tmp_path / "pq", "--suffix", ".npy"], "--suffix .npy names codes "
         "files, and --parquet without -o writes none"),
        (["roundtrip", corpus / "a.wav", "--suffix", ".flac"], "--suffix .flac names the decoded audio written "
         "with -o DIR"),
    ]:
        done = run(*args, weights=weights_file)
        assert done.returncode == 1 and said in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "pq").exists()
    usage = run("decode", codes, "-o", tmp_path / "x", "--suffix", "a/b", weights=weights_file)
    assert usage.returncode == 2 and "a file suffix such as .flac (or flac), not '.a/b'" in usage.stderr
    assert Job(Settings("decode"), ("x.npz",), suffix="flac").suffix == ".flac"
    for bad in ("", ".", "..wav", " .wav", "a\0b"):
        with pytest.raises(ValueError, match="a file suffix such as .flac"):
            Job(Settings("decode"), ("x.npz",), suffix=bad)


def test_workers_started_from_a_python_script_without_a_main_guard(corpus, weights_file, tmp_path):
    """From Python, with jobs=2, in a script without ``if __name__ == "__main__":`` (or piped to ``python -``):
    each spawned worker ran the caller's script again (or found no script to run), died as it started, and
    every file failed as "its worker process died". Workers import mimi_cli alone now: all done, with the codes
    the command line's two workers write."""
    expected = tmp_path / "cli"
    assert run("encode", corpus, "-r", "-o", expected, "--jobs", "2", weights=weights_file).returncode == 0
    for how in ("script", "stdin"):
        out = tmp_path / how
        code = ("from mimi_cli.batch import Job, execute, plan\nfrom mimi_cli.pipeline import Settings\n"
                f"job = Job(Settings('encode', {str(weights_file)!r}), ({str(corpus)!r},), {str(out)!r}, "
                "recursive=True, jobs=2)\nprint(sorted(r.status for r in execute(plan(job))))\n")
        (tmp_path / "make_tokens.py").write_text(code)
        result = subprocess.run([sys.executable, "make_tokens.py" if how == "script" else "-"], cwd=tmp_path,
                                input=code if how == "stdin" else None, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0 and result.stdout.strip() == str(["done"] * 4), (how, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert _tree(out) == _tree(expected) and all(_same_codes_file(out / f, expected / f) for f in _tree(out))


def test_one_file_with_batch_options_keeps_o_as_its_file(corpus, weights_file, tmp_path):
    result = run("encode", corpus / "a.wav", "-o", tmp_path / "a-codes.npz", "--jobs", "2", "--manifest",
                 tmp_path / "m.jsonl", weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a-codes.npz").is_file()
    assert json.loads((tmp_path / "m.jsonl").read_text())["output"] == str(tmp_path / "a-codes.npz")


def test_without_recursion_only_the_top_folder(corpus, weights_file, tmp_path):
    result = run("encode", corpus, "-o", tmp_path / "top", weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert _tree(tmp_path / "top") == ["a.npz"]


def test_bad_files_in_bulk(corpus, weights_file, tmp_path):
    """Empty, truncated, text named .wav and a 5 ms clip among good ones."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("a.wav", "spk1/b.flac"):
        (folder / Path(name).name).write_bytes((corpus / name).read_bytes())
    (folder / "empty.wav").write_bytes(b"")
    (folder / "corrupt.wav").write_bytes((corpus / "a.wav").read_bytes()[:5000])  # cut mid-data
    (folder / "text.wav").write_text("this is not audio\n" * 10)
    speech, rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32")
    sf.write(folder / "short.wav", speech[5000:5080], rate)  # 5 ms: shorter than one frame, still audio
    out = tmp_path / "out"
    result = run("encode", folder, "-o", out, "--jobs", "2", "--manifest", tmp_path / "m.jsonl",
                 weights=weights_file)
    assert result.returncode == 1
    assert "3 encoded" in result.stderr and "3 failed" in result.stderr and "Traceback" not in result.stderr
    rows = map(json.loads, (tmp_path / "m.jsonl").read_text().splitlines())
    status = {Path(row["input"]).name: row for row in rows}
    assert {k for k, v in status.items() if v["status"] == "failed"} == {"empty.wav", "corrupt.wav", "text.wav"}
    assert "empty (0 bytes)" in status["empty.wav"]["error"]
    assert "truncated" in status["corrupt.wav"]["error"] or "incomplete" in status["corrupt.wav"]["error"]
    assert "cannot read" in status["text.wav"]["error"]
    assert status["short.wav"]["frames"] == 1
    assert _tree(out) == ["a.npz", "b.npz", "short.npz"]  # no output, not even a partial one, for a bad file


def test_an_output_another_run_makes_is_skipped_with_skip_existing(corpus, weights_file, tmp_path):
    """Two runs over one corpus (two machines, one shared folder): an output the other run made after
    this one planned, or while this one worked on it, is skipped with --skip-existing, the other run's
    file kept as it is; without --skip-existing the second is a failure, and the file is kept too."""
    from mimi_cli.batch import Job, execute, plan
    from mimi_cli.pipeline import Settings, Worker

    out = tmp_path / "codes"
    settings = Settings("encode", str(weights_file))
    planned = plan(Job(settings, (str(corpus),), str(out), recursive=True, skip_existing=True))
    tasks = {Path(t.input).name: t for t in planned.tasks}
    assert not any(t.skip for t in tasks.values())
    other = b"the other run's codes"
    tasks["b.flac"].output.parent.mkdir(parents=True)
    tasks["b.flac"].output.write_bytes(other)  # made after planning, before its turn
    results = {Path(r.input).name: r for r in execute(planned)}
    assert results["b.flac"].status == "skipped" and tasks["b.flac"].output.read_bytes() == other
    assert [results[n].status for n in ("a.wav", "c.wav", "d.ogg")] == ["done"] * 3

    def made_meanwhile(stage, done=0.0, total=None):  # the other run commits while this one encodes
        if stage.startswith("Encoding") and not target.exists():
            target.write_bytes(other)

    for skip_existing, status in ((True, "skipped"), (False, "failed")):
        target = tmp_path / f"meanwhile-{skip_existing}.npz"
        worker = Worker(dataclasses.replace(planned.settings, skip_existing=skip_existing))
        result = worker.run(dataclasses.replace(tasks["a.wav"], output=target), report=made_meanwhile)
        assert result.status == status and target.read_bytes() == other
        assert skip_existing or "appeared while this run was working" in result.error
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file left


@pytest.mark.parametrize("raised, said", [
    (IndexError("slice would exceed array length"), "IndexError: slice would exceed array length"),
    (KeyError("frame"), "KeyError: 'frame'"), (TypeError("unsupported operand"), "TypeError: unsupported operand"),
    (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero"),
    # an OSError in the system's words, with what to do at a limit, as the command line says it
    (PermissionError(13, "Permission denied", "x.npz"), "x.npz: Permission denied"),
    (OSError(24, "Too many open files"), "Too many open files; "),
])
def test_a_library_error_on_one_file_fails_that_file_in_one_line(tmp_path, monkeypatch, raised, said):
    """What a library raises on a hostile file beyond OSError and ValueError (pyarrow's ArrowIndexError is an
    IndexError) ended a whole batch run with a traceback; it is that file's failure now, in one line."""
    from mimi_cli import pipeline
    from mimi_cli.pipeline import Settings, Task, Worker

    def fails(*args, **kwargs):
        raise raised

    monkeypatch.setattr(pipeline, "decode_file", fails)
    (tmp_path / "x.npz").write_bytes(b"PK")
    result = Worker(Settings("decode")).run(Task(tmp_path / "x.npz", tmp_path / "x.wav"))
    assert result.status == "failed" and result.error.startswith(said) and "\n" not in result.error, result.error


@pytest.mark.parametrize("settings,error,said", [
    ({"kind": "bogus"}, ValueError, "kind must be one of 'encode', 'decode', 'roundtrip', got 'bogus'"),
    ({"channels": "left"}, ValueError, "channels must be one of 'mix', 'split', got 'left'"),
    ({"codec": "opus"}, ValueError, "codec must be one of 'mimi', 'encodec-24khz', got 'opus'"),
    ({"num_codebooks": 0}, ValueError, "num_codebooks must be in 1..32, got 0"),
    ({"kind": "decode", "num_codebooks": 0}, ValueError, "num_codebooks must be at least 1, got 0"),
    ({"num_codebooks": 33}, ValueError, "num_codebooks must be in 1..32, got 33"),
    ({"num_codebooks": "8"}, TypeError, "num_codebooks must be an integer, got '8'"),
    ({"threads": 0}, ValueError, "threads must be at least 1, got 0"),
    ({"kind": "decode", "sample_rate": 16}, ValueError, "sample_rate must be in 1,000..768,000, got 16"),
    ({"kind": "decode", "sample_rate": 8000.0}, TypeError, "sample_rate must be an integer, got 8000.0"),
    ({"stream": "no"}, TypeError, "stream must be True or False, got 'no'"),  # was taken as true
    ({"replace": 2}, TypeError, "replace must be True or False, got 2"),
    ({"weights": 3}, TypeError, "weights must be a path (str or Path), got 3"),  # was "weights file 3 does not exist"
    ({"weights": ""}, ValueError, "weights holds an empty name (''); give a path"),
])
def test_settings_from_python_are_checked_when_made(settings, error, said):
    """Settings took any value: channels="left" was mixed to mono in silence, kind="bogus" raised a KeyError
    in plan, num_codebooks=0 and sample_rate=16 failed (or wrote 16 Hz audio) one file at a time after
    planning. They are refused when made, as the options refuse them."""
    from mimi_cli.pipeline import Settings

    with pytest.raises(error, match=f"^{re.escape(said)}$"):
        Settings(**{"kind": "encode", **settings})


def test_settings_and_jobs_take_what_python_callers_pass(clip, tmp_path):
    """A Job's inputs as one string were taken for a tuple of one-letter names ("a.wav" as a, ., w, a, v) and
    Paths failed with an AttributeError; one name, str or Path, is an input, and each name may be a Path.
    Counts are checked as --jobs and --threads check them."""
    from mimi_cli.batch import Job, execute, plan
    from mimi_cli.pipeline import Settings

    decode = Settings("decode", num_codebooks=33, sample_rate=np.int64(16000))  # levels: the file's codec's
    assert decode.num_codebooks == 33 and Settings("encode", codec="encodec-24khz", num_codebooks=32)
    assert type(decode.sample_rate) is int  # np.int64 reached FileResult.sample_rate
    for inputs in (str(clip), clip, (clip,), [str(clip)]):
        job = Job(Settings("encode"), inputs, str(tmp_path / "out.npz"))
        assert job.inputs == (str(clip),)
        assert [(t.input, t.output) for t in plan(job).tasks] == [(clip, tmp_path / "out.npz")]
    assert Job(Settings("encode"), (), manifests=tmp_path / "list.txt").manifests == (str(tmp_path / "list.txt"),)
    for jobs, error, said in ((0, ValueError, "jobs must be at least 1, got 0"),
                              (1.5, TypeError, "jobs must be an integer, got 1.5")):
        with pytest.raises(error, match=f"^{said}$"):
            Job(Settings("encode"), (str(clip),), jobs=jobs)
    with pytest.raises(ValueError, match="^threads must be at least 1, got -2$"):
        Job(Settings("encode"), (str(clip),), threads=-2)
    with pytest.raises(ValueError, match="^give at least one input"):  # was " hold nothing to encode (...)"
        Job(Settings("encode"), ())
    with pytest.raises(TypeError, match=r"^execute takes a Plan, as plan\(job\) makes it, not Job$"):
        execute(job)  # was "'Job' object has no attribute 'job'"
    flags = Settings("encode", stream=np.bool_(True), replace=0)  # NumPy's booleans and 0 / 1 are flags
    assert (flags.stream, flags.replace) == (True, False) and type(flags.stream) is bool
    with pytest.raises(TypeError, match=r"^stream must be True or False, got array\(\[ True\]\)$"):
        Settings("encode", stream=np.array([True]))
    assert Settings("encode", codec=None).codec == "mimi"  # encode's default (every file failed: "unknown codec None")
    assert Settings("decode", codec=None).codec is None  # decode: each file's own codec


def test_jobs_refuse_empty_names_and_take_paths_everywhere(clip, tmp_path, monkeypatch):
    """Job(settings, "") planned the current folder, as Path("") is "." (the command line refuses an empty
    argument); output, manifest and parquet given as Paths raised "'PosixPath' object has no attribute
    'startswith'"; recursive="no" was taken as true."""
    from mimi_cli.batch import Job, plan
    from mimi_cli.pipeline import Settings

    monkeypatch.chdir(clip.parent)
    encode = Settings("encode")
    for given, error, said in (
            (dict(inputs=""), ValueError, "inputs holds an empty name (''); give a path"),
            (dict(inputs=(str(clip), 3)), TypeError, "inputs must be a path (str or Path), got 3"),
            (dict(inputs=(), manifests=""), ValueError, "manifests holds an empty name (''); give a path"),
            (dict(inputs=str(clip), output=""), ValueError, "output holds an empty name (''); give a path"),
            (dict(inputs=str(clip), parquet=""), ValueError, "parquet holds an empty name (''); give a path"),
            (dict(inputs=str(clip), manifest=5), TypeError, "manifest must be a path (str or Path), got 5"),
            (dict(inputs=str(clip), column=""), ValueError, "column holds an empty name (''); give a column's name"),
            (dict(inputs=str(clip), column=5), TypeError, "column must be a column's name (a str), got 5"),
            (dict(inputs=str(clip), recursive="no"), TypeError, "recursive must be True or False, got 'no'")):
        with pytest.raises(error, match=f"^{re.escape(said)}$"):
            Job(encode, **given)
    job = Job(encode, os.fsencode(clip), tmp_path / "codes.npz", manifest=tmp_path / "m.jsonl",
              recursive=0)
    assert (job.inputs, job.output, job.manifest) == ((str(clip),), str(tmp_path / "codes.npz"),
                                                      str(tmp_path / "m.jsonl"))
    assert [(t.input, t.output) for t in plan(job).tasks] == [(clip, tmp_path / "codes.npz")]
    parquet = plan(Job(encode, clip, parquet=tmp_path / "shards"))
    assert parquet.job.parquet == str(tmp_path / "shards") and len(parquet.tasks) == 1


def test_a_roundtrip_job_plans_as_mimi_roundtrip_does(clip, weights_file, tmp_path):
    """plan(Job(Settings("roundtrip"), ...)) went through the batch planner, which wrote NAME.decoded.wav beside
    the input (mimi roundtrip writes nothing it is not asked for); the command now plans through plan() too."""
    from mimi_cli.batch import Job, execute, plan
    from mimi_cli.errors import MimiError
    from mimi_cli.pipeline import Settings

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.wav").write_bytes(clip.read_bytes())
    settings = Settings("roundtrip", str(weights_file), num_codebooks=4)
    planned = plan(Job(settings, folder / "a.wav"))
    assert planned.single and [t.output for t in planned.tasks] == [None]
    [result] = execute(planned)
    assert result.status == "done" and result.metrics["codebooks"] == 4 and result.metrics["bitrate_kbps"] == 0.55
    assert sorted(p.name for p in folder.iterdir()) == ["a.wav"]  # nothing beside it
    [written] = execute(plan(Job(settings, folder, f"{tmp_path / 'out'}/", plot=f"{tmp_path / 'png'}/")))
    assert (written.output, (tmp_path / "png" / "a.png").exists() or not importlib.util.find_spec("matplotlib")) \
        == (str(tmp_path / "out" / "a.wav"), True)
    for given, said in ((dict(manifest=tmp_path / "m.jsonl"), "a round trip takes no manifest"),
                        (dict(engine="ray"), "a round trip takes no engine='ray'")):
        with pytest.raises(MimiError, match=re.escape(said)):
            plan(Job(settings, folder, **given))
    with pytest.raises(MimiError, match="^--plot draws a round trip's spectrograms, so it goes with `mimi roundtrip`$"):
        plan(Job(Settings("encode"), folder, plot=tmp_path / "x.png"))


def test_workers_are_no_more_than_the_memory_holds(corpus, tmp_path, monkeypatch):
    """Each local worker holds its libraries and buffers (BASE_BYTES): --jobs 1000 on a machine of 2 GB runs 6
    (0.9 × 2 GB / 0.3 GB), and says so; never more than the files to do; Ray's scheduler places its own.
    More workers than cores run, and the note says they only take turns."""
    from mimi_cli import batch
    from mimi_cli.models import BASE_BYTES
    from mimi_cli.pipeline import Settings

    monkeypatch.setattr(batch, "usable_cores", lambda: 2)
    monkeypatch.setattr(batch, "usable_memory", lambda: 24e9)
    assert batch.usable_workers(2, 5000, "local") == (2, None)
    assert batch.usable_workers(3, 5000, "local") == (3, "--jobs 3 is more workers than the 2 cores this process "
                                                         "may use: they take turns, each loading the weights; --jobs 2 "
                                                         "is as fast or faster")
    assert batch.usable_workers(3, 2, "local") == (2, None)  # two files: two workers
    monkeypatch.setattr(batch, "usable_cores", lambda: 8)
    monkeypatch.setattr(batch, "usable_memory", lambda: 2e9)
    assert BASE_BYTES == 0.3e9
    workers, note = batch.usable_workers(1000, 5000, "local")
    assert workers == 6 and note == ("--jobs 1000 is more workers than this machine's 2 GB can hold (about "
                                     "0.3 GB a worker); using 6")
    assert batch.usable_workers(1000, 3, "local") == (3, None)
    assert batch.usable_workers(1000, 5000, "ray") == (1000, None)
    planned = batch.plan(batch.Job(Settings("encode"), (str(corpus),), str(tmp_path / "out"), recursive=True,
                                   jobs=1000))
    assert planned.workers == 4 and not any("--jobs" in n for n in planned.notes)  # four files
    monkeypatch.setattr(batch, "usable_memory", lambda: 0.75e9)
    planned = batch.plan(batch.Job(Settings("encode"), (str(corpus),), str(tmp_path / "out"), recursive=True,
                                   jobs=3))
    assert planned.workers == 2 and "using 2" in planned.notes[-1]


def test_existing_outputs_resume_with_skip_existing(corpus, weights_file, tmp_path):
    out = tmp_path / "codes"
    assert run("encode", corpus, "-r", "-o", out, weights=weights_file).returncode == 0
    kept = out / "spk1" / "b.npz"
    before = kept.stat().st_mtime_ns
    (out / "a.npz").unlink()  # as if the run had stopped before this file
    again = run("encode", corpus, "-r", "-o", out, weights=weights_file)
    assert again.returncode == 1 and "3 output(s) already exist" in again.stderr and "--skip-existing" in again.stderr
    assert not (out / "a.npz").exists()  # refused before any work
    resumed = run("encode", corpus, "-r", "-o", out, "--skip-existing", "--manifest", tmp_path / "m.jsonl",
                  weights=weights_file)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 encoded" in resumed.stderr and "3 skipped" in resumed.stderr
    assert (out / "a.npz").exists() and kept.stat().st_mtime_ns == before
    statuses = [json.loads(line)["status"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert statuses == ["done", "skipped", "skipped", "skipped"]
    # what planning does, said as it goes (a display shows it: minutes for a corpus of a million)
    from mimi_cli.batch import Job, plan
    from mimi_cli.pipeline import Settings

    said = []
    plan(Job(Settings("encode", str(weights_file)), (str(corpus),), str(out), recursive=True, skip_existing=True),
         lambda *stage: said.append(stage))
    assert said == [("Listing inputs", 0, None), ("Checking outputs", 0, None),
                    *[("Reading back existing outputs", n, 4) for n in range(4)]]


def test_skip_existing_skips_only_outputs_this_run_would_write(corpus, weights_file, tmp_path):
    """A run resumed with another codec, -n, --channels, weights or (Mimi) --stream would mix two kinds of codes
    in one corpus (another --sample-rate, two kinds of audio): it refuses before any work, naming the
    difference; with -f those outputs are made again."""
    from mimi_cli.batch import Job, plan
    from mimi_cli.codes import CodesFile
    from mimi_cli.models import codec_spec
    from mimi_cli.pipeline import Settings
    from mimi_cli.weights import weights_id

    out, ours = tmp_path / "codes", weights_id(weights_file)
    (out / "spk1").mkdir(parents=True)

    def existing(codec="mimi", levels=8, streams=1, made_by=ours, streamed=False) -> None:
        config = codec_spec(codec).config()
        codes = np.zeros((streams, levels, 25), np.int64)
        CodesFile.from_codes(codes, config, 25 * config.frame_size, 16000, streams, made_by,
                             streamed).save(out / "a.npz", replace=True)

    def planned(**settings):
        job = Job(Settings("encode", str(weights_file), **settings), (str(corpus),), str(out), skip_existing=True)
        return {Path(t.input).name: t for t in plan(job).tasks}["a.wav"]

    existing()
    assert planned().skip and planned(num_codebooks=8).skip
    for made, settings, difference in (
            ({"levels": 4}, {}, "4 codebooks, not 8"),
            ({}, {"codec": "encodec-24khz"}, "codec mimi, not encodec-24khz"),
            ({"streams": 2}, {}, "2 code stream(s), not 1 (--channels mix)"),
            ({"made_by": "sha256:0123456789abcdef"}, {}, f"weights sha256:0123456789abcdef, not {ours}"),
            ({"streamed": True}, {}, "encoded with --stream"),  # Mimi's two modes differ past 10 s
            ({}, {"stream": True}, "encoded without --stream")):
        existing(**made)
        with pytest.raises(MimiError, match=re.escape(f"a.npz exists, made otherwise ({difference})")):
            planned(**settings)
        redo = planned(replace=True, **settings)
        assert not redo.skip and redo.redo
    existing(streamed=None)  # written before the field: either mode resumes it
    assert planned().skip and planned(stream=True).skip
    existing(codec="encodec-24khz", streamed=True)  # EnCodec's streamed codes are its batch codes
    assert planned(codec="encodec-24khz").skip
    (out / "a.npz").write_bytes(b"")  # not codes at all (another tool's, or damaged)
    with pytest.raises(MimiError, match="it cannot be read back as codes"):
        planned()
    # end to end: refused, every file kept; then -f encodes them again with the run's settings
    assert run("encode", corpus, "-r", "-o", out, "-f", "-n", "4", weights=weights_file).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*.npz")}
    refused = run("encode", corpus, "-r", "-o", out, "--skip-existing", weights=weights_file)
    assert refused.returncode == 1 and "4 existing outputs differ from what this run writes" in refused.stderr
    assert "(4 codebooks, not 8)" in refused.stderr and {p: p.read_bytes() for p in out.rglob("*.npz")} == before
    again = run("encode", corpus, "-r", "-o", out, "--skip-existing", "-f", weights=weights_file)
    assert again.returncode == 0 and "4 encoded" in again.stderr, again.stderr
    assert {CodesFile.load(p).num_codebooks for p in before} == {8}
    # decoded audio records its rate and channels: a resume at another --sample-rate is refused as well
    audio = tmp_path / "audio"
    assert run("decode", out, "-r", "-o", audio, "--sample-rate", "16000", weights=weights_file).returncode == 0
    (audio / "a.wav").unlink()
    refused = run("decode", out, "-r", "-o", audio, "--skip-existing", weights=weights_file)
    assert refused.returncode == 1 and "3 existing outputs differ" in refused.stderr, refused.stderr
    assert "(16000 Hz, not 24000)" in refused.stderr and "add -f to decode such outputs again" in refused.stderr
    resumed = run("decode", out, "-r", "-o", audio, "--skip-existing", "--sample-rate", "16000", weights=weights_file)
    assert resumed.returncode == 0 and "1 decoded" in resumed.stderr and "3 skipped" in resumed.stderr
    whole = (audio / "a.wav").read_bytes()  # a copy cut short (rsync stopped, a full disk elsewhere) was taken as done
    (audio / "a.wav").write_bytes(whole[:len(whole) * 2 // 3])
    refused = run("decode", out, "-r", "-o", audio, "--skip-existing", "--sample-rate", "16000", weights=weights_file)
    assert refused.returncode == 1 and f"{audio / 'a.wav'} exists, made otherwise (it holds " in refused.stderr \
        and " samples, not " in refused.stderr and ": it is cut short or damaged)" in refused.stderr, refused.stderr
    mp3 = tmp_path / "a.mp3"  # an MP3 file states its length in its header: its decoder complains on stderr itself
    assert run("decode", out / "a.npz", "-o", mp3, weights=weights_file).returncode == 0
    resumed = run("decode", out / "a.npz", "-o", mp3, "--skip-existing", weights=weights_file)
    assert resumed.returncode == 0 and "1 skipped" in resumed.stderr, resumed.stderr
    mp3.write_bytes(mp3.read_bytes()[:mp3.stat().st_size * 2 // 3])
    refused = run("decode", out / "a.npz", "-o", mp3, "--skip-existing", weights=weights_file)
    assert refused.returncode == 1 and refused.stderr.startswith(f"error: {mp3} exists, made otherwise (its MP3 "
                                                                 "decoder says: ") \
        and "it is cut short or damaged)" in refused.stderr and len(refused.stderr.splitlines()) == 1, refused.stderr
    (audio / "a.wav").write_text("not audio")  # libsndfile's reason, without its "Error opening b'…'" prefix
    refused = run("decode", out, "-r", "-o", audio, "--skip-existing", "--sample-rate", "16000", weights=weights_file)
    assert f"{audio / 'a.wav'} exists, made otherwise (it cannot be read back as audio (Format not recognised.))" \
        in refused.stderr, refused.stderr
    # a pipe blocked the check's open, a link to /dev/zero was read for ever: each is said as what it is, with
    # what -f says of it (which it refuses too), not "add -f"
    for said, make in (("is a pipe (FIFO); outputs are only ever regular files: to feed a program, give -",
                        os.mkfifo),
                       ("is a symbolic link to /dev/zero; outputs are only ever regular files: give a file name",
                        lambda path: path.symlink_to("/dev/zero"))):
        (audio / "a.wav").unlink()
        make(audio / "a.wav")
        for force in ([], ["-f"]):
            refused = run("decode", out, "-r", "-o", audio, "--skip-existing", "--sample-rate", "16000", *force,
                          weights=weights_file)
            assert refused.returncode == 1 and refused.stderr.startswith(f"error: {audio / 'a.wav'} {said}") \
                and len(refused.stderr.splitlines()) == 1, refused.stderr
    (audio / "a.wav").unlink()
    (audio / "a.wav").write_text("not audio")
    # and in its comment tag the levels decoded (-n), batch or --stream, WAV or FLAC: another -n is refused too
    for flags in ([], ["--stream"]):
        levels = tmp_path / f"levels{len(flags)}"
        assert run("decode", out, "-r", "-o", levels, "-n", "4", *flags, weights=weights_file).returncode == 0
        with sf.SoundFile(levels / "a.wav") as f:
            assert f.comment == "mimi-cli: mimi codes, 4 codebooks" + "".join(f", {flag}" for flag in flags)
        resumed = run("decode", out, "-r", "-o", levels, "-n", "4", "--skip-existing", *flags, weights=weights_file)
        assert resumed.returncode == 0 and "4 skipped" in resumed.stderr, resumed.stderr
        refused = run("decode", out, "-r", "-o", levels, "--skip-existing", *flags, weights=weights_file)
        assert refused.returncode == 1 and "(decoded from 4 codebooks, not 8)" in refused.stderr, refused.stderr
    # Mimi's streaming audio differs from its batch audio past 10 s: the other mode is refused too
    for made, flags, difference in (("levels0", ["--stream"], "without"), ("levels1", [], "with")):
        refused = run("decode", out, "-r", "-o", tmp_path / made, "-n", "4", "--skip-existing", *flags,
                      weights=weights_file)
        assert refused.returncode == 1 and f"(decoded {difference} --stream)" in refused.stderr, refused.stderr
    # and --rescale (loud audio scaled, not clipped), either way round
    rescaled = tmp_path / "rescaled"
    assert run("decode", out, "-r", "-o", rescaled, "-n", "4", "--rescale", weights=weights_file).returncode == 0
    with sf.SoundFile(rescaled / "a.wav") as f:
        assert f.comment == "mimi-cli: mimi codes, 4 codebooks, --rescale"
    for source, flags, difference in ((rescaled, [], "with"), (tmp_path / "levels0", ["--rescale"], "without")):
        refused = run("decode", out, "-r", "-o", source, "-n", "4", "--skip-existing", *flags, weights=weights_file)
        assert refused.returncode == 1 and f"(decoded {difference} --rescale)" in refused.stderr, refused.stderr
    resumed = run("decode", out, "-r", "-o", rescaled, "-n", "4", "--skip-existing", "--rescale", weights=weights_file)
    assert resumed.returncode == 0 and "4 skipped" in resumed.stderr, resumed.stderr
    assert run("decode", out / "a.npz", "-o", tmp_path / "a.flac", "-n", "2", weights=weights_file).returncode == 0
    refused = run("decode", out / "a.npz", "-o", tmp_path / "a.flac", "--skip-existing", weights=weights_file)
    assert refused.returncode == 1 and "(decoded from 2 codebooks, not 8)" in refused.stderr, refused.stderr


def test_ctrl_c_leaves_only_whole_files_and_the_run_resumes(weights_file, tmp_path):
    folder, out = tmp_path / "many", tmp_path / "out"
    folder.mkdir()
    speech, rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32")
    for i in range(8):
        sf.write(folder / f"clip{i}.wav", speech[i * rate : (i + 3) * rate], rate)
    command = [sys.executable, "-m", "mimi_cli", "encode", str(folder), "-o", str(out), "--weights",
               str(weights_file), "--manifest", str(tmp_path / "m.jsonl")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out.exists() and any(out.glob("clip*.npz"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "--skip-existing" in stderr and "Traceback" not in stderr
    finished = _tree(out)
    assert 1 <= len(finished) < 8 and all(name.endswith(".npz") and ".partial" not in name for name in finished)
    for name in finished:  # every file there is whole
        with np.load(out / name, allow_pickle=False) as npz:
            assert npz["codes"].shape[:2] == (1, 8)
    statuses = [json.loads(line)["status"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert statuses.count("done") == len(finished) and "not run" in statuses
    resumed = run("encode", folder, "-o", out, "--skip-existing", weights=weights_file)
    assert resumed.returncode == 0 and len(_tree(out)) == 8


def test_collect_and_plan(tmp_path):
    (tmp_path / "in" / "x").mkdir(parents=True)
    (tmp_path / "in" / ".ipynb_checkpoints").mkdir()  # hidden folders are left out as hidden files are, and as
    for name in ("in/a.wav", "in/x/b.flac", "in/x/c.WAV", "in/.hidden.wav", "in/readme.md",  # ** leaves them
                 "in/.ipynb_checkpoints/a.wav"):  # (a -r walk took them: a notebook's copies, a Mac's .Trashes)
        (tmp_path / name).write_bytes(b"")
    suffixes = (".wav", ".flac")
    top = collect_inputs([tmp_path / "in"], recursive=False, suffixes=suffixes)
    assert [e.path.name for e in top] == ["a.wav"]
    deep = collect_inputs([tmp_path / "in", str(tmp_path / "in" / "**" / "*.flac")], True, suffixes)
    assert [e.path.name for e in deep] == ["a.wav", "b.flac", "c.WAV"]  # the glob's b.flac only once
    assert collect_inputs([str(tmp_path / "in" / "**" / "*.wav")], True, suffixes) == deep[:1]  # (c.WAV: case)
    globbed = collect_inputs([str(tmp_path / "in" / "*" / "*.flac")], False, suffixes)
    assert globbed == [Input(tmp_path / "in" / "x" / "b.flac", tmp_path / "in")]
    tasks = plan_tasks(deep, tmp_path / "out", ".npz", ".npz", force=False, skip_existing=False)
    assert [t.output for t in tasks] == [tmp_path / "out" / "a.npz", tmp_path / "out" / "x" / "b.npz",
                                         tmp_path / "out" / "x" / "c.npz"]
    beside = plan_tasks(deep[:1], None, ".wav", ".decoded.wav", force=False, skip_existing=False)
    assert beside[0].output == tmp_path / "in" / "a.decoded.wav"
    (tmp_path / "in" / "x" / "c.flac").write_bytes(b"")
    clash = collect_inputs([tmp_path / "in"], True, suffixes)
    with pytest.raises(MimiError, match="would both write .*; rename one of them$"):
        plan_tasks(clash, tmp_path / "out", ".npz", ".npz", force=False, skip_existing=False)
    # files of two folders named one by one (a shell's glob): each mirrored from its own folder, as a.npz
    (tmp_path / "in" / "y").mkdir()
    (tmp_path / "in" / "y" / "b.flac").write_bytes(b"")
    apart = collect_inputs([tmp_path / "in" / "x" / "b.flac", tmp_path / "in" / "y" / "b.flac"], False, suffixes)
    with pytest.raises(MimiError, match=re.escape(f"would both write {tmp_path / 'out' / 'b.npz'}; outputs mirror "
                                                  f"each input from its own folder: give their common folder "
                                                  f"({tmp_path / 'in'}) with -r, or quote a glob")):
        plan_tasks(apart, tmp_path / "out", ".npz", ".npz", force=False, skip_existing=False)
    assert [t.output for t in plan_tasks(collect_inputs([tmp_path / "in"], True, (".flac",)), tmp_path / "out",
                                         ".npz", ".npz", force=False, skip_existing=False)] == [
        tmp_path / "out" / "x" / "b.npz", tmp_path / "out" / "x" / "c.npz", tmp_path / "out" / "y" / "b.npz"]


def test_entries_that_are_not_files_are_said(tmp_path):
    """A folder's broken link or pipe named like audio is left out (a walk must not block on a pipe), and
    the run says so: before, it vanished from the run without a word, or "no .wav files" named none."""
    import os

    from mimi_cli import batch
    from mimi_cli.pipeline import Settings

    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "a.wav", np.zeros(2400, np.float32), 24000)
    (folder / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    os.mkfifo(folder / "live.wav")
    (folder / "sub.wav").mkdir()  # a folder with an audio name is a folder, not a left-out file
    for given in (folder, str(folder / "*.wav")):
        planned = batch.plan(batch.Job(Settings("encode"), (str(given),), str(tmp_path / "out")))
        assert [t.input.name for t in planned.tasks] == ["a.wav"]
        assert planned.notes == [f"left out 2 entries that are not files: {folder / 'gone.wav'} (a broken "
                                 f"symbolic link), {folder / 'live.wav'} (a pipe (FIFO))"]
    (folder / "a.wav").unlink()
    with pytest.raises(MimiError, match=r"no \.wav, .* \(left out 2 entries .*gone\.wav \(a broken symbolic link\)"):
        batch.plan(batch.Job(Settings("encode"), (str(folder),), str(tmp_path / "out")))
    named = run("encode", folder / "gone.wav", "-o", tmp_path / "x.npz")
    assert named.returncode == 1 and named.stderr.strip() == f"error: {folder / 'gone.wav'} is a broken symbolic link"


def test_a_folder_or_glob_that_gives_nothing_beside_others_is_said(corpus, tmp_path):
    """`mimi encode a/ b/` took a/'s files and said nothing of b/, whose files were a level down (no -r), nor of
    a glob that matched nothing: the run looked done. Now a note names them; the others are encoded."""
    from mimi_cli import batch
    from mimi_cli.pipeline import Settings

    (tmp_path / "empty").mkdir()
    given = (str(corpus / "a.wav"), str(corpus / "spk1"), str(tmp_path / "empty"), f"{corpus}/*.mp3")
    planned = batch.plan(batch.Job(Settings("encode"), given, str(tmp_path / "out")))
    assert [t.input.name for t in planned.tasks] == ["a.wav", "b.flac"]
    assert planned.notes == [f"nothing to encode in {tmp_path / 'empty'} (no .wav, .flac, .ogg or .oga… files "
                             f"there; -r searches sub-folders); no file matches {corpus}/*.mp3"]
    planned = batch.plan(batch.Job(Settings("encode"), given, str(tmp_path / "out"), recursive=True))
    assert [t.input.name for t in planned.tasks] == ["a.wav", "b.flac", "c.wav", "d.ogg"]
    assert planned.notes[0].startswith(f"nothing to encode in {tmp_path / 'empty'} (no .wav, .flac, .ogg or .oga… "
                                       "files there); no file")


def test_batch_usage_errors(corpus, tmp_path):
    result = run("encode", tmp_path, "-o", tmp_path / "out")  # an empty folder: nothing to say of -r
    assert result.returncode == 1 and result.stderr == f"error: no .wav, .flac, .ogg or .oga… files in {tmp_path}\n"
    (tmp_path / "sub").mkdir()
    result = run("encode", tmp_path, "-o", tmp_path / "out")
    assert result.returncode == 1 and result.stderr.endswith(" (use -r to search sub-folders)\n"), result.stderr
    for globs in ([tmp_path / "zz*.wav"], [tmp_path / "zz*.wav", tmp_path / "*.flac"]):  # no "files in" a pattern
        result = run("encode", *globs, "-o", tmp_path / "out")
        given = ", ".join(map(str, globs))
        assert result.returncode == 1 and result.stderr.strip() == f"error: no file matches {given}"
    result = run("encode", corpus, "--engine", "spark")
    assert result.returncode == 2 and "--engine takes local or ray" in result.stderr
    result = run("encode", corpus, "--engine", "ray", "--stream")
    assert result.returncode == 2 and "local engine only" in result.stderr
    result = run("encode", corpus, "-r", "-o", tmp_path / "all.npz")
    assert result.returncode == 1 and "with several inputs -o names a folder" in result.stderr
    (tmp_path / "arrays").mkdir()
    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / "arrays" / name, np.zeros((8, 4), np.int64))
    for command, folder, said in (("encode", tmp_path / "arrays", "it holds .npy files, which `mimi decode` takes"),
                                  ("decode", corpus / "spk1", "it holds .flac files, which `mimi encode` takes; -r "
                                                              "searches sub-folders")):
        result = run(command, folder, "-o", tmp_path / "nothing")  # the other command's files
        assert result.returncode == 1 and result.stderr.strip().endswith(f"files in {folder} ({said})"), result.stderr
    for command, name in (("encode", "all.npy"), ("encode", "all.ecdc"), ("encode", "all.wav"), ("decode", "all.flac"),
                          ("decode", "all.npz")):  # each was made a folder of that name, holding the outputs
        result = run(command, corpus if command == "encode" else tmp_path / "arrays", "-r", "-o", tmp_path / name)
        assert result.returncode == 1 and result.stderr.strip() == (
            f"error: -o {tmp_path / name} looks like a file; with several inputs -o names a folder (end it with / "
            f"for a folder of that name: -o {tmp_path / name}/)"), result.stderr
        assert not (tmp_path / name).exists()
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.wav").write_bytes((corpus / "a.wav").read_bytes())
    (tmp_path / "list.txt").write_text("a.npz\n")
    for command, given in (("encode", [tmp_path / "one"]), ("encode", [f"{tmp_path}/one/*.wav"]),
                           ("decode", ["--inputs-from", tmp_path / "list.txt"])):
        result = run(command, *given, "-o", tmp_path / ("all.npz" if command == "encode" else "all.wav"))
        assert result.returncode == 1 and "for a folder, a glob or a list of inputs (even of one file) -o names a " \
            "folder" in result.stderr, result.stderr
    (tmp_path / "m.jsonl").write_text("an earlier run's manifest\n")
    result = run("encode", corpus, "-o", tmp_path / "out", "--manifest", tmp_path / "m.jsonl")
    assert result.returncode == 1 and "--manifest:" in result.stderr and "already exists" in result.stderr
    assert (tmp_path / "m.jsonl").read_text() == "an earlier run's manifest\n" and not (tmp_path / "out").exists()


def test_a_manifest_to_standard_output(corpus, weights_file, tmp_path):
    """`--manifest -` wrote a file named "-" in the working folder; "-" is standard output, as for -o. The lines
    come once the run is over, nothing else of the run on standard output; --parquet - and a second user of
    standard output are refused before any work."""
    result = run("encode", corpus, "-r", "-o", tmp_path / "out", "--manifest", "-", "-q", weights=weights_file,
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(Path(r["input"]).name for r in rows) == ["a.wav", "b.flac", "c.wav", "d.ogg"]
    assert all(r["status"] == "done" and Path(r["output"]).is_file() for r in rows)
    assert not (tmp_path / "-").exists()
    for extra, words in ((["-o", "-", "--manifest", "-"], "would both write to standard output"),
                         (["-o", f"{tmp_path}/p/", "--parquet", "-"], "not to standard output")):
        result = run("encode", corpus / "a.wav", *extra, weights=weights_file, cwd=tmp_path)
        assert result.returncode == 1 and words in result.stderr and not result.stdout, result.stderr
    assert not (tmp_path / "-").exists() and not (tmp_path / "p").exists()
    # the outputs' folder given as the manifest failed once every file was encoded ("appeared while this run was
    # working"); a manifest inside the folder the run makes was refused ("folder … does not exist")
    for manifest in (f"{tmp_path}/new/", f"{tmp_path}/new"):
        result = run("encode", corpus, "-r", "-o", f"{tmp_path}/new/", "--manifest", manifest, weights=weights_file)
        assert result.returncode == 1 and result.stderr == f"error: --manifest {manifest} names a folder the " \
            f"outputs go into; the manifest is one file: give its name ({tmp_path}/new/manifest.jsonl)\n"
        assert not (tmp_path / "new").exists()
    result = run("encode", corpus, "-r", "-o", f"{tmp_path}/new/", "--manifest", f"{tmp_path}/new/m.jsonl", "-q",
                 weights=weights_file)
    assert result.returncode == 0 and len((tmp_path / "new" / "m.jsonl").read_text().splitlines()) == 4, \
        result.stderr

def test_ray_engine_without_ray_says_how_to_install_it(corpus, weights_file, tmp_path):
    fake = tmp_path / "site"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ModuleNotFoundError('not installed here', name='ray')\n")
    result = run("encode", corpus, "-o", tmp_path / "out", "--engine", "ray", weights=weights_file,
                 env_extra={"PYTHONPATH": str(fake)})
    assert result.returncode == 1 and 'pip install "mimi-cli[ray]"' in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.ray
def test_ray_engine_matches_the_local_engine(corpus, weights_file, tmp_path):
    """Ray for real, in local mode (2 CPUs): same files, byte for byte, and Parquet shards of the codes; the
    manifests name the files as given (relative), as the local engine's do (Ray's named them absolute: its
    actors started in folders of their own, so every path was made absolute before it was sent)."""
    pytest.importorskip("ray.data")
    pq = pytest.importorskip("pyarrow.parquet")
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    given = os.path.relpath(corpus, tmp_path)
    assert run("encode", given, "-r", "-o", "local", "--jobs", "2", "--manifest", "local.jsonl", weights=weights_file,
               cwd=tmp_path).returncode == 0
    result = run("encode", given, "-r", "-o", "ray", "--jobs", "2", "--engine", "ray", "--parquet",
                 tmp_path / "shards", "--manifest", "m.jsonl", weights=weights_file,
                 env_extra={"RAY_ADDRESS": ""}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {name: [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
            for name in ("local.jsonl", "m.jsonl")}
    assert [r["input"] for r in rows["m.jsonl"]] == [r["input"] for r in rows["local.jsonl"]]
    assert all(r["input"].startswith(given) for r in rows["m.jsonl"])
    outputs = [r["output"].replace("local", "ray", 1) for r in rows["local.jsonl"]]
    assert [r["output"] for r in rows["m.jsonl"]] == outputs
    assert _tree(on_ray) == _tree(local)
    for name in _tree(local):
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
    table = pq.read_table(tmp_path / "shards").to_pylist()
    assert len(table) == 4
    for row in table:
        relative = Path(row["input"]).relative_to(given).with_suffix(".npz")
        with np.load(local / relative, allow_pickle=False) as npz:
            assert np.array_equal(np.array(row["codes"]), npz["codes"][0])
            assert row["num_samples"] == int(npz["num_samples"]) and row["codec"] == "mimi"
    assert [json.loads(line)["status"] for line in (tmp_path / "m.jsonl").read_text().splitlines()] == ["done"] * 4


@pytest.mark.ray
def test_ray_runs_with_standard_error_closed_and_warnings_as_errors(corpus, weights_file, tmp_path):
    """`2>&-` (a cron job's): Ray's driver enables faulthandler on Python's standard error, which Python leaves
    None then; every file was "not run" and the run ended with exit code 1, saying nothing. And under
    PYTHONWARNINGS=error, Ray Data's deprecation notices were a traceback."""
    pytest.importorskip("ray.data")
    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "",
           "PYTHONWARNINGS": "error"}
    done = subprocess.run([sys.executable, "-m", "mimi_cli", "encode", str(corpus), "-r", "-o", "out", "--engine",
                           "ray", "--manifest", "m.jsonl"], stdout=subprocess.PIPE, env=env, cwd=tmp_path,
                          timeout=300, preexec_fn=lambda: os.close(2))
    assert done.returncode == 0
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done"] * 4 and len(_tree(tmp_path / "out")) == 4


@pytest.mark.ray
def test_a_ray_address_that_nothing_answers_at_is_said_at_once(corpus, weights_file, tmp_path):
    """RAY_ADDRESS naming a port nothing listens on had Ray's driver wait for minutes (over five here); a
    malformed one was a traceback. Each is one line within seconds, nothing written."""
    pytest.importorskip("ray.data")
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address, said in ((f"127.0.0.1:{port}", f"no Ray cluster answers at RAY_ADDRESS=127.0.0.1:{port} "
                                                 "(Connection refused); start it (ray start --head) or unset"),
                          ("garbage", "RAY_ADDRESS=garbage is not a Ray cluster's address")):
        start = time.monotonic()
        result = run("encode", corpus, "-r", "-o", tmp_path / "out", "--engine", "ray", weights=weights_file,
                     env_extra={"RAY_ADDRESS": address})
        assert result.returncode == 1 and f"error: {said}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "╭" not in result.stderr and time.monotonic() - start < 60
    assert not (tmp_path / "out").exists()


@pytest.mark.ray
def test_a_folder_ray_cannot_keep_its_sessions_in_is_named(corpus, weights_file, tmp_path):
    """A local Ray keeps its sessions in RAY_TMPDIR (else TMPDIR, else /tmp): one that cannot be made (here under
    a file; a read-only container's /tmp alike) is named with what to set, not the logs that could not be
    written there (the message sent the user to /tmp/ray/session_latest/logs whatever RAY_TMPDIR said)."""
    pytest.importorskip("ray.data")
    (tmp_path / "a-file").write_text("")
    result = run("encode", corpus, "-r", "-o", tmp_path / "out", "--engine", "ray", weights=weights_file,
                 env_extra={"RAY_ADDRESS": "", "RAY_TMPDIR": str(tmp_path / "a-file" / "t")})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: Ray did not start on this machine: [Errno 20] Not a directory: '{tmp_path / 'a-file' / 't'}'" \
           f"; it keeps its sessions in {tmp_path / 'a-file' / 't' / 'ray'}: set RAY_TMPDIR to a writable folder, " \
           "or run with --engine local" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.ray
def test_ray_a_file_that_kills_its_actor_fails_alone(corpus, weights_file, tmp_path):
    """Ray Data would try it again forever; here it is tried 3 times, and no other file dies with it."""
    pytest.importorskip("ray.data")
    files = sorted(p for p in corpus.rglob("*") if p.suffix in (".wav", ".flac", ".ogg"))
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, source in zip(["a", "b", "poison", "x"], files, strict=False):
        (folder / f"{name}{source.suffix}").write_bytes(source.read_bytes())
    result = run("encode", folder, "-o", tmp_path / "out", "--jobs", "2", "--engine", "ray", "--manifest",
                 tmp_path / "m.jsonl", weights=weights_file,
                 env_extra={"RAY_ADDRESS": "", **poison_hook(tmp_path / "hooks")})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    rows = {Path(r["input"]).stem: r for r in map(json.loads, (tmp_path / "m.jsonl").read_text().splitlines())}
    assert rows["poison"]["error"] == "its Ray actor died on each of 3 tries (killed, or out of memory)"
    assert [rows[n]["status"] for n in ("a", "b", "x")] == ["done"] * 3
    assert "raylet" not in result.stdout + result.stderr and "Deprecat" not in result.stderr
    assert _tree(tmp_path / "out") == ["a.npz", "b.npz", "x.npz"]


@pytest.mark.ray
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_wrong_weights_stop_the_whole_run_with_one_error(corpus, weights_file, tmp_path, engine):
    """Weights that cannot load would fail every file the same way: one error, no outputs, no summary of N."""
    if engine == "ray":
        pytest.importorskip("ray.data")
    result = run("encode", corpus, "-r", "-o", tmp_path / "out", "--jobs", "2", "--engine", engine,
                 "--codec", "encodec-24khz", "--weights", weights_file, env_extra={"RAY_ADDRESS": ""})
    assert result.returncode == 1 and "error: " in result.stderr and "is not an EnCodec checkpoint" in result.stderr
    assert "failed:" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or _tree(tmp_path / "out") == []


@pytest.mark.ray
def test_ray_decode_in_process_matches_the_local_engine(corpus, weights_file, tmp_path):
    """The library on a Ray instance the caller started (ray.init(num_cpus=2)): decode, Mimi and EnCodec codes."""
    ray = pytest.importorskip("ray")
    from mimi_cli.batch import Settings, Task, run_local
    from mimi_cli.ray_engine import run_ray

    codes = tmp_path / "codes"
    assert run("encode", corpus, "-r", "-o", codes, weights=weights_file).returncode == 0
    inputs = sorted(codes.rglob("*.npz"))
    (tmp_path / "bad.npz").write_text("not a codes file")
    inputs.append(tmp_path / "bad.npz")
    settings = Settings("decode", str(weights_file), threads=1)
    local = run_local([Task(p, tmp_path / "local" / f"{p.stem}.wav") for p in inputs], settings, jobs=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        done = {r.input: r for r in run_ray([Task(p, tmp_path / "ray" / f"{p.stem}.wav") for p in inputs], settings,
                                            actors=2)}  # as each is done: put back in input order
        remote = [done[str(p)] for p in inputs]
    finally:
        ray.shutdown()
    assert [o.status for o in remote] == [o.status for o in local] == ["done"] * 4 + ["failed"]
    assert "not a codes file" in remote[-1].error and remote[-1].error == local[-1].error
    for a, b in zip(local[:4], remote[:4], strict=True):
        assert (a.frames, a.duration_s) == (b.frames, b.duration_s)
        assert Path(a.output).read_bytes() == Path(b.output).read_bytes()


def test_parquet_with_the_local_engine(corpus, weights_file, tmp_path):
    """--parquet without Ray: one row per file, the same codes and metadata as the .npz outputs."""
    pq = pytest.importorskip("pyarrow.parquet")
    out, shards = tmp_path / "codes", tmp_path / "shards"
    result = run("encode", corpus, "-r", "-o", out, "--parquet", shards, weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in shards.iterdir()) == ["part-00000.parquet"]  # no temporary file left
    rows = pq.read_table(shards).to_pylist()
    assert len(rows) == 4
    for row in rows:
        relative = Path(row["input"]).relative_to(corpus).with_suffix(".npz")
        with np.load(out / relative, allow_pickle=False) as npz:
            assert np.array_equal(np.array(row["codes"], np.uint16), npz["codes"][0])
            for key in ("num_samples", "source_sample_rate", "source_channels", "weights_id", "codec"):
                assert row[key] == npz[key].item(), key
    again = run("encode", corpus, "-r", "-o", tmp_path / "other", "--parquet", shards, weights=weights_file)
    assert again.returncode == 1 and "--parquet" in again.stderr and "not empty" in again.stderr
    assert not (tmp_path / "other").exists()


def test_shards_split_the_inputs_by_their_output_names(tmp_path):
    """--shard I/N: run I takes the inputs whose output's path under -o hashes (CRC-32) to I - 1 modulo N; the N
    runs take each input once, and a file added between two runs' listings moves no other file's run."""
    import zlib

    from mimi_cli.batch import Job, plan
    from mimi_cli.pipeline import Settings

    folder = tmp_path / "in"
    for index in range(40):
        (folder / f"spk{index % 3}").mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"spk{index % 3}" / f"utt{index}.wav", np.zeros(10, np.float32), 24000)

    def shard(index: int, count: int = 3) -> list[str]:
        planned = plan(Job(Settings("encode"), str(folder), f"{tmp_path / 'out'}/", recursive=True,
                           shard=(index, count)))
        return [str(Path(t.output).relative_to(tmp_path / "out").with_suffix("")) for t in planned.tasks]

    runs = [shard(index) for index in (1, 2, 3)]
    every = sorted(name for names in runs for name in names)
    assert every == sorted(f"spk{i % 3}/utt{i}" for i in range(40))  # each input once
    for index, names in enumerate(runs):
        assert names and all(zlib.crc32(name.encode()) % 3 == index for name in names)
    sf.write(folder / "spk0" / "late.wav", np.zeros(10, np.float32), 24000)
    later = [shard(index) for index in (1, 2, 3)]
    assert [sorted(set(a) ^ set(b)) for a, b in zip(runs, later, strict=True)].count(["spk0/late"]) == 1
    assert all(set(a) <= set(b) for a, b in zip(runs, later, strict=True))
    note = plan(Job(Settings("encode"), str(folder), f"{tmp_path / 'out'}/", recursive=True, shard=(2, 3))).notes
    assert f"shard 2 of 3: {len(later[1])} of the 41 inputs; the other shards' runs do the rest" in note
    for wrong, error in (((0, 3), ValueError), ((4, 3), ValueError), ("1/3", TypeError), ((1, 0), ValueError)):
        with pytest.raises(error):
            Job(Settings("encode"), str(folder), shard=wrong)
    with pytest.raises(MimiError, match="a round trip takes no shard"):
        plan(Job(Settings("roundtrip"), str(folder), shard=(1, 2)))
    for one in (tmp_path / "x.npz", "-"):  # one output: one part would write it, the others nothing
        with pytest.raises(MimiError, match=f"--shard splits many inputs among several runs, and -o {one} is one"):
            plan(Job(Settings("encode"), str(folder / "spk0" / "utt0.wav"), one, shard=(1, 2)))


def test_shards_runs_share_an_output_and_a_parquet_folder(corpus, weights_file, tmp_path):
    """Two runs, --shard 1/2 and 2/2, into one -o folder and one --parquet folder: every output once, each run's
    Parquet files named for its shard (the other's left in place), the rows of both the corpus's; a run of all
    inputs into that folder is refused, and with -f replaces both shards' files."""
    pq = pytest.importorskip("pyarrow.parquet")
    out, shards = tmp_path / "codes", tmp_path / "shards"
    for index in (1, 2):
        result = run("encode", corpus, "-r", "-o", out, "--parquet", shards, "--shard", f"{index}/2", "--manifest",
                     tmp_path / f"run{index}.jsonl", weights=weights_file)
        assert result.returncode == 0 and f"note: shard {index} of 2: " in result.stderr, result.stderr
    assert sorted(p.name for p in shards.iterdir()) == ["shard-1-of-2-part-00000.parquet",
                                                        "shard-2-of-2-part-00000.parquet"]
    rows = pq.read_table(shards).to_pylist()
    listed = [json.loads(line)["input"] for i in (1, 2)
              for line in (tmp_path / f"run{i}.jsonl").read_text().splitlines()]
    assert sorted(row["input"] for row in rows) == sorted(listed) == sorted(
        str(p) for p in corpus.rglob("*") if p.suffix in (".wav", ".flac", ".ogg"))
    assert len(list(out.rglob("*.npz"))) == 4
    whole = run("encode", corpus, "-r", "-o", tmp_path / "again", "--parquet", shards, weights=weights_file)
    assert whole.returncode == 1 and "folder" in whole.stderr and "not empty" in whole.stderr, whole.stderr
    thirds = run("encode", corpus, "-r", "-o", tmp_path / "again", "--parquet", shards, "--shard", "1/3")
    assert thirds.returncode == 1 and f"folder {shards} is not empty (of more than the other shards' files)" in \
        thirds.stderr, thirds.stderr
    redone = run("encode", corpus, "-r", "-o", tmp_path / "again", "--parquet", shards, "-f", "-q",
                 weights=weights_file)
    assert redone.returncode == 0 and sorted(p.name for p in shards.iterdir()) == ["part-00000.parquet"]
    wrong = run("encode", corpus, "--shard", "3/2")
    assert wrong.returncode == 2 and "'3/2' is not I/N with 1 ≤ I ≤ N" in wrong.stderr, wrong.stderr


def test_a_resumed_run_keeps_every_parquet_row(corpus, weights_file, tmp_path):
    """--skip-existing with --parquet: the shards were rewritten with only the rows encoded this time (4 → 1,
    the earlier rows lost). Now a skipped input's row is read back from its existing output."""
    pq = pytest.importorskip("pyarrow.parquet")
    out, shards = tmp_path / "codes", tmp_path / "shards"
    assert run("encode", corpus, "-r", "-o", out, "--parquet", shards, weights=weights_file).returncode == 0
    first = sorted(pq.read_table(shards).to_pylist(), key=lambda row: row["input"])
    removed = next(out.rglob("*.npz"))
    removed.unlink()
    result = run("encode", corpus, "-r", "-o", out, "--parquet", shards, "--skip-existing", weights=weights_file)
    assert result.returncode == 0 and "1 encoded" in result.stderr and "3 skipped" in result.stderr, result.stderr
    again = sorted(pq.read_table(shards).to_pylist(), key=lambda row: row["input"])
    assert again == first and len(again) == 4


def test_outputs_given_as_uris_are_checked_before_any_work(corpus, weights_file, tmp_path):
    """--parquet with a URI: a scheme pyarrow does not know failed with a traceback after every file was encoded,
    and file:///FOLDER replaced an earlier run's shards without -f. Now a URI is checked as a folder is, before
    any work; file:// is this machine's folder, written through the one output writer. --manifest s3://… was
    written, unchecked, to a local file s3:/…; now a manifest takes a path (or file://) only."""
    pytest.importorskip("pyarrow.parquet")
    store = run("encode", corpus, "-r", "-o", "codes", "--manifest", "s3://bucket/run.jsonl", weights=weights_file,
                cwd=tmp_path)
    assert store.returncode == 1 and "--manifest s3://bucket/run.jsonl is a URL" in store.stderr, store.stderr
    assert list(tmp_path.iterdir()) == []
    local = run("encode", corpus, "-r", "-o", "codes", "--manifest", f"file://{tmp_path}/run.jsonl",
                weights=weights_file, cwd=tmp_path)
    assert local.returncode == 0 and len((tmp_path / "run.jsonl").read_text().splitlines()) == 4, local.stderr
    bogus = run("encode", corpus, "-r", "-o", tmp_path / "a", "--parquet", "no://bucket/codes", weights=weights_file)
    assert bogus.returncode == 1 and "Traceback" not in bogus.stderr, bogus.stderr
    assert bogus.stderr.strip().splitlines()[-1].startswith("error: --parquet: cannot use no://bucket/codes: ")
    assert not (tmp_path / "a").exists()  # refused before any work
    earlier = tmp_path / "earlier run"
    earlier.mkdir()
    (earlier / "part-00000.parquet").write_bytes(b"an earlier run's shard")
    uri = "file://" + str(earlier).replace(" ", "%20")
    again = run("encode", corpus, "-r", "-o", tmp_path / "b", "--parquet", uri, weights=weights_file)
    assert again.returncode == 1 and "not empty" in again.stderr and "-f/--force" in again.stderr, again.stderr
    assert (earlier / "part-00000.parquet").read_bytes() == b"an earlier run's shard" and not (tmp_path / "b").exists()
    other = run("encode", corpus, "-r", "--parquet", "file://elsewhere/codes", weights=weights_file)
    assert other.returncode == 1 and "names another machine" in other.stderr
    fresh = tmp_path / "new shards"
    done = run("encode", corpus, "-r", "--parquet", "file://" + str(fresh).replace(" ", "%20"), weights=weights_file)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in fresh.iterdir()] == ["part-00000.parquet"]


def test_urls_where_paths_are_read_or_written(corpus, weights_file, tmp_path):
    """-o s3://bucket/codes/ wrote the codes into a local folder "s3:" (a Path has one slash), as if uploaded;
    an https:// input or weights "did not exist". Now a URL is said to be one, before any work."""
    out = run("encode", corpus, "-r", "-o", "s3://bucket/codes/", weights=weights_file, cwd=tmp_path)
    assert out.returncode == 1 and "-o s3://bucket/codes/ is a URL" in out.stderr and "--parquet" in out.stderr
    assert list(tmp_path.iterdir()) == []
    given = run("encode", "https://example.com/speech.wav", "-o", "x.npz", weights=weights_file, cwd=tmp_path)
    assert given.returncode == 1 and "is a URL" in given.stderr and "download it first" in given.stderr
    weights = run("encode", corpus, "-r", "-o", "codes/", "--weights", "https://example.com/model.safetensors",
                  weights=weights_file, cwd=tmp_path)
    assert weights.returncode == 1 and ("weights https://example.com/model.safetensors (from --weights) is a URL of "
                                        "no Hugging Face model repository: download the file first") \
        in weights.stderr, weights.stderr
    # file:// URIs are paths, as inputs, -o and lines of a list; a line that is another URL fails alone
    wav = sorted(corpus.rglob("*.wav"))[0]
    uri = run("encode", wav.as_uri(), "-o", (tmp_path / "uri.npz").as_uri(), weights=weights_file, cwd=tmp_path)
    assert uri.returncode == 0 and (tmp_path / "uri.npz").exists(), uri.stderr
    (tmp_path / "list.txt").write_text(f"https://example.com/a.wav\n{wav.as_uri()}\n"
                                       f"{json.dumps({'audio_filepath': 's3://bucket/b.wav'})}\nfile://host/c.wav\n")
    listed = run("encode", "--inputs-from", tmp_path / "list.txt", "-o", tmp_path / "listed", weights=weights_file)
    assert listed.returncode == 1 and "1 encoded" in listed.stderr, listed.stderr
    assert (tmp_path / "listed" / f"{wav.stem}.npz").exists()  # an absolute path's output: by its name
    for line, given in ((1, "https://example.com/a.wav"), (3, "s3://bucket/b.wav")):
        assert (f"list.txt:{line}: {given} is a URL, and mimi reads files on this machine or a mounted file system: "
                "download it first") in listed.stderr
    assert "list.txt:4: file://host/c.wav names another machine (host); give a path on this one" in listed.stderr
    (tmp_path / "s3:").mkdir()  # a local folder of that name is a path
    assert run("encode", corpus, "-r", "-o", "s3://bucket/codes/", weights=weights_file, cwd=tmp_path).returncode == 0
    assert len(list((tmp_path / "s3:" / "bucket" / "codes").rglob("*.npz"))) == 4


def test_remote_parquet_folder(tmp_path, monkeypatch):
    """A store's folder (pyarrow's file systems: s3://, gs://, …): refused when it is a file or holds an earlier
    run's objects without -f; shards written through its file system, an earlier run's beyond the last removed;
    the store failing mid-run is one line naming it."""
    pq = pytest.importorskip("pyarrow.parquet")
    fs = pytest.importorskip("pyarrow.fs")
    from mimi_cli import batch
    from mimi_cli.errors import OutputExistsError

    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(MimiError, match="is not a folder"):
        batch.remote_folder(f"file://{tmp_path}/file", False)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "part-00000.parquet").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="not empty"):
        batch.remote_folder(f"file://{tmp_path}/used", False)
    store = fs.SubTreeFileSystem(str(tmp_path), fs.LocalFileSystem())  # a store standing in for s3://
    monkeypatch.setattr(batch, "remote_folder", lambda uri, replace_ok: (store, "used"))
    for stale in (1, 2):
        (tmp_path / "used" / f"part-{stale:05d}.parquet").write_bytes(b"old")
    results = [_result(i, np.random.default_rng(i)) for i in range(2)]
    shards = batch.ParquetShards("s3://bucket/used", [batch.Task(Path(r.input), Path(r.output)) for r in results],
                                 True, False)
    for result in results:
        shards.add(result)
    shards.close(complete=True)
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["part-00000.parquet"]
    assert pq.read_table(tmp_path / "used" / "part-00000.parquet")["input"].to_pylist() == ["in/0.wav", "in/1.wav"]
    class FullStore:  # the store fails halfway through a shard
        @staticmethod
        def write_table(table, where, filesystem):
            with filesystem.open_output_stream(where) as stream:
                stream.write(b"PAR1 half a shard")
            raise OSError("quota exceeded")

    shards = batch.ParquetShards("s3://bucket/used", [batch.Task(Path("in/0.wav"), Path("out/0.npz"))], True, False)
    shards.pq = FullStore
    shards.add(results[0])
    with pytest.raises(MimiError, match=r"^--parquet: cannot write part-00000\.parquet to s3://bucket/used: quota"):
        shards.close(complete=True)
    assert list((tmp_path / "used").iterdir()) == []
    monkeypatch.setattr(batch, "remote_folder", lambda uri, replace_ok: (store, "file/inside"))  # under a file
    shards = batch.ParquetShards("s3://bucket/broken", [batch.Task(Path("in/0.wav"), Path("out/0.npz"))], True, False)
    shards.add(results[0])
    with pytest.raises(MimiError, match=r"^--parquet: cannot write part-00000\.parquet to s3://bucket/broken: "):
        shards.close(complete=True)


def _result(index: int, rng) -> object:
    from mimi_cli.codes import CodesFile
    from mimi_cli.models import codec_spec
    from mimi_cli.pipeline import FileResult

    codes = CodesFile.from_codes(rng.integers(0, 2048, (8, 3 + index)), codec_spec("mimi").config(),
                                 (3 + index) * 1920, 16000, 1, "sha256:0123456789abcdef")
    return FileResult(f"in/{index}.wav", f"out/{index}.npz", "done", codes=codes, carried={"text": f"t{index}"})


def test_parquet_shards_are_written_as_they_fill(tmp_path, monkeypatch):
    """Shards written as they fill (memory stays flat; an interrupted run keeps them), rows in task order
    whatever order workers finish in, what is buffered written at the end even when interrupted, an earlier
    and longer run's shards removed; codes built from NumPy equal to Arrow's own conversion of Python lists."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from mimi_cli import batch
    from mimi_cli.sources import Item

    monkeypatch.setattr(batch, "PARQUET_ROWS_PER_SHARD", 2)
    rng = np.random.default_rng(0)
    results = [_result(i, rng) for i in range(5)]
    item = Item("span", "in/x.wav", extra=json.dumps({"text": "", "speaker": 1}))
    tasks = [batch.Task(Path(r.input), Path(r.output), item=item) for r in results]
    folder = tmp_path / "shards"
    folder.mkdir()
    for stale in range(6):  # an earlier run's shards
        (folder / f"part-{stale:05d}.parquet").write_bytes(b"old")
    (folder / "notes.txt").write_text("kept")
    shards = batch.ParquetShards(str(folder), tasks, True, False)

    def new() -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.read_bytes() != b"old")

    shards.add(results[1])  # before the first: waits
    assert new() == ["notes.txt"]
    shards.add(results[0])
    assert new() == ["notes.txt", "part-00000.parquet"]
    shards.add(results[2])
    shards.add(results[4])  # the fourth never ends: the run is interrupted
    shards.close(complete=False)  # the rows of the third and fifth still written; the old shards 2 to 5 removed
    assert new() == sorted(p.name for p in folder.iterdir()) == ["notes.txt", "part-00000.parquet",
                                                                 "part-00001.parquet"]
    table = pa.concat_tables([pq.read_table(path) for path in sorted(folder.glob("part-*.parquet"))])
    assert table.column_names[-2:] == ["speaker", "text"] and table["speaker"].null_count == 4
    assert table["text"].to_pylist() == ["t0", "t1", "t2", "t4"]
    done = [results[i] for i in (0, 1, 2, 4)]
    want = pa.array([r.codes.codes[0].tolist() for r in done], pa.list_(pa.list_(pa.uint16())))
    assert table["codes"].combine_chunks().equals(want)
    split = batch._nested_lists(pa, [r.codes.codes for r in results], 3)
    assert split.equals(pa.array([r.codes.codes.tolist() for r in results], pa.list_(pa.list_(pa.list_(pa.uint16())))))


def test_planning_waits_for_a_cloud_store_no_more_than_seconds(monkeypatch):
    """Offline or without credentials, Google Cloud Storage's client retried for 15 minutes before the plan's
    check of --parquet gs://… said anything: planning asks it to give up after PLANNING_RETRY_SECONDS (a
    limit the URI sets already is kept), and the run's own writes keep the store's default."""
    pytest.importorskip("pyarrow")
    from pyarrow import fs

    from mimi_cli import batch

    asked = []

    def from_uri(uri):
        asked.append(uri)
        return fs.LocalFileSystem(), "/nonexistent-mimi-folder"

    monkeypatch.setattr(fs, "FileSystem", type("FileSystem", (), {"from_uri": staticmethod(from_uri)}))
    for uri, planning in (("gs://bucket/codes", True), ("gs://bucket/codes?retry_limit_seconds=60", True),
                          ("gcs://bucket/codes?project_id=p", True), ("s3://bucket/codes", True),
                          ("gs://bucket/codes", False)):
        batch.remote_folder(uri, False, planning=planning)
    assert asked == [f"gs://bucket/codes?retry_limit_seconds={batch.PLANNING_RETRY_SECONDS}",
                     "gs://bucket/codes?retry_limit_seconds=60",
                     f"gcs://bucket/codes?project_id=p&retry_limit_seconds={batch.PLANNING_RETRY_SECONDS}",
                     "s3://bucket/codes", "gs://bucket/codes"]
