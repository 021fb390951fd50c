"""A run: finding the inputs, planning the outputs, and running the per-file path on an engine.

    Job (the command's options)  →  plan()  →  Plan: [Task(input, output, skip)], workers, threads
                                 →  execute()  →  run_local (this process, or N worker processes)
                                                  or ray_engine.run_ray         →  FileResult, as each is done
                                 →  manifest (JSONL), Parquet shards (as they fill): through the one output writer

One file named alone, with no option that only makes sense for many, is a
single task run in this process with every core; anything else is a batch. With
several inputs, outputs mirror the inputs' tree under ``-o DIR``::

    corpus/a.wav           -o codes/   codes/a.npz
    corpus/spk1/b.flac                 codes/spk1/b.npz

Every engine runs :class:`mimi_cli.pipeline.Worker` on each task, so a file's
result (frames, warnings, failure) is the same whichever engine ran it. Workers
use one thread by default, so that N workers share N cores without
oversubscribing them (the output does not depend on it).
"""

from __future__ import annotations

import errno
import functools
import glob
import multiprocessing.context
import os
import re
import sys
import time
import types
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from mimi_cli.audio import AUDIO_SUFFIXES, RAW_SUFFIXES, audio_format
from mimi_cli.codes import JSON_LINES
from mimi_cli.core.threads import usable_cores, usable_threads
from mimi_cli.ecdc import ecdc_model, is_ecdc_path
from mimi_cli.errors import (TASK_LIMIT, MimiError, OutputExistsError, UnnamableOutputError, check_flag, check_integer,
                             check_path, counted, dumps_json, first_line, memory_said, needs_extra, no_thread,
                             os_reason, shell_word, task_limit, usable_memory)
from mimi_cli.fileio import (STDIN, STDOUT, Target, as_written, atomic_output, check_output, check_stdout_apart,
                             check_suffix, either, file_ids, file_kind, fitted, home_expanded, is_folder, is_pipe,
                             is_stdout, local_path, missing, names_folder, output_exists, remove_temporaries,
                             stdout_closed, url)
from mimi_cli.models import BASE_BYTES, CODECS, codec_spec
from mimi_cli.pipeline import FileResult, Report, Settings, Task, Worker, made_otherwise, no_report, skipped
from mimi_cli.plot import PLOT_SUFFIXES
from mimi_cli.sources import Item, arrow_file, is_container, is_table, known_keys, list_items, unread_spans_note
from mimi_cli.weights import resolve_weights, weights_files, weights_id

CODES_SUFFIXES = (".npz", ".npy", ".ecdc")
_FD_NAME = re.compile(r"/(?:dev|proc/(?:self|\d+))/fd/\d+")  # a pipe's name from <(command): /dev/fd/63
RESCALE_STREAM = "--rescale needs the whole output's peak before writing it; leave out --stream or --rescale"
Engine = Literal["local", "ray"]


@dataclass(frozen=True, slots=True)
class Input:
    path: Path
    base: Path  # the folder its output's relative path is taken from
    item: Item | None = None  # an item of a manifest, tar shard or dataset (path is then its name)
    relative: Path | None = None  # an item's output path under -o, without suffix
    unread: tuple[str, ...] = ()  # a manifest line's keys that look like a span's ends (sources.SPAN_LOOKALIKES)


@dataclass(frozen=True)
class Job:
    """Everything a command asked for; :func:`plan` decides what it means."""

    settings: Settings
    inputs: tuple[str, ...]
    output: str | None = None  # a file, a folder (existing, or written with a trailing /), "-", or beside inputs
    recursive: bool = False
    jobs: int = 1
    engine: Engine = "local"
    threads: int | None = None
    skip_existing: bool = False
    manifest: str | None = None
    parquet: str | None = None
    column: str | None = None  # of table inputs: the audio (encode, default "audio") or the codes (decode, "codes")
    manifests: tuple[str, ...] = ()  # --inputs-from: JSONL manifests whatever their names, read while planning
    plot: str | None = None  # roundtrip: its spectrograms' image, or a folder of them (--plot)
    shard: tuple[int, int] | None = None  # (I, N): only the inputs of the I-th of N runs (--shard I/N, see take_shard)
    suffix: str | None = None  # of outputs named in a folder or beside their inputs (--suffix): .npz, .wav by default

    def __post_init__(self):
        """From Python: one name may be given alone and names as paths (a string was taken for a tuple of
        one-letter inputs, a Path failed with an AttributeError); values are checked as the options check them,
        and an empty name is refused as the command line refuses an empty argument (it meant the current folder)."""
        for name in ("inputs", "manifests"):
            given = getattr(self, name)
            given = (given,) if isinstance(given, (str, bytes, os.PathLike)) else given
            object.__setattr__(self, name, tuple(check_path(name, one) for one in given))
        if not self.inputs and not self.manifests:
            raise ValueError("give at least one input (or a list of inputs in manifests)")
        for name in ("output", "manifest", "parquet", "plot"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_path(name, getattr(self, name)))
        if self.column is not None and not isinstance(self.column, str):
            raise TypeError(f"column must be a column's name (a str), got {self.column!r}")
        if self.column == "":
            raise ValueError("column holds an empty name (''); give a column's name")
        for name in ("recursive", "skip_existing"):
            object.__setattr__(self, name, check_flag(name, getattr(self, name)))
        object.__setattr__(self, "jobs", check_integer("jobs", self.jobs, 1))
        if self.threads is not None:
            object.__setattr__(self, "threads", check_integer("threads", self.threads, 1))
        if self.shard is not None:
            if not isinstance(self.shard, tuple) or len(self.shard) != 2:
                raise TypeError(f"shard must be a tuple (I, N), got {self.shard!r}")
            count = check_integer("shard's N", self.shard[1], 1)
            object.__setattr__(self, "shard", (check_integer("shard's I", self.shard[0], 1, count), count))
        if self.suffix is not None:
            object.__setattr__(self, "suffix", check_suffix_option(self.suffix))


@dataclass
class Plan:
    job: Job
    tasks: list[Task]
    settings: Settings  # with the threads each worker uses
    workers: int
    single: bool  # one file, shown as such: one line of result, failure as "error: ..."
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- planning


def plan(job: Job, report: Report = no_report) -> Plan:
    """Resolve inputs and outputs and check every output before any work (see :func:`mimi_cli.fileio.check_output`).
    ``report(stage, done, total)`` says what planning is doing, for a display: a list of a million lines takes
    minutes to plan, and reading back every existing output before a resume a millisecond an output."""
    s = job.settings
    if job.engine not in ("local", "ray"):
        raise MimiError(f"--engine takes local or ray, not {job.engine!r}")
    if job.engine == "ray" and s.stream:
        raise MimiError("--stream works with the local engine only (Ray reads each file whole)")
    if s.rescale and s.stream:
        raise MimiError(RESCALE_STREAM)
    if s.raw_output is not None and not is_stdout(job.output):  # a file's format is its name's (-o x.flac)
        raise MimiError("--raw writes headerless samples to standard output: give -o - (> NAME.pcm makes a file "
                        "of them)")
    if job.parquet is not None and s.kind != "encode":
        raise MimiError("--parquet writes codes, so it goes with `mimi encode`")
    job = _local_paths(job)
    if s.kind == "roundtrip":
        return _plan_roundtrips(job)
    if job.plot is not None:
        raise MimiError("--plot draws a round trip's spectrograms, so it goes with `mimi roundtrip`")
    if STDIN in job.inputs:
        if len(job.inputs) > 1:
            raise MimiError("'-' (standard input) must be the only input")
        if job.output is None:
            raise MimiError("with input from standard input, give -o: a file, or - for standard output")
    if job.manifests.count(STDIN) + job.inputs.count(STDIN) > 1:
        raise MimiError("standard input can be read once: give '-' as an input or to one --inputs-from, not both")
    pipes = [p for p in job.inputs if p != STDIN and is_pipe(Path(p))]
    if pipes and job.output is None:
        folder = "" if _FD_NAME.fullmatch(pipes[0]) else " a folder,"  # a named pipe's name names its output
        raise MimiError(f"{pipes[0]} is a pipe, with no folder to write beside it; give -o: a file,{folder} "
                        "or - for standard output")
    _read_here(job.inputs, job.jobs, job.engine)
    report("Listing inputs", 0, None)
    suffix, beside = (".npz", ".npz") if s.kind == "encode" else (".wav", ".decoded.wav")
    if job.suffix is not None:
        suffix, beside = job.suffix, job.suffix if s.kind == "encode" else f".decoded{job.suffix}"
    found, left_out, one_file = find_inputs(job.inputs, job.manifests, s.kind, job.recursive, job.column,
                                            raw=s.raw is not None)
    items = any(entry.item is not None for entry in found)
    if items and job.output is None and job.parquet is None:
        raise MimiError("the inputs hold items (manifest lines, tar members, dataset rows): give -o DIR for a codes "
                        "file per item, or --parquet OUT for the codes in Parquet shards" if s.kind == "encode" else
                        "the inputs hold rows of codes: give -o DIR for an audio file per row")
    output, output_is_file = _output_target(job.output, one_file, found)
    if output_is_file and job.shard:  # (one part would write it, the others nothing)
        remedy = "drop --shard" if STDIN in job.inputs else "give -o a folder, or drop --shard"
        raise MimiError(f"--shard splits many inputs among several runs, and -o {job.output} is one output: {remedy}")
    if output not in (None, STDOUT) and not output_is_file:
        _named_in_folder(job.inputs, job.output, suffix)
    batch_only = job.jobs > 1 or job.engine == "ray" or job.skip_existing or job.manifest or job.parquet or job.shard
    single = one_file and not batch_only
    if single and found[0].path != Path(STDIN) and (problem := missing(found[0].path)) is not None:
        raise MimiError(f"{found[0].path} {problem}")  # said before its output's problems, as cp says them
    # a manifest's items name audio files; "-", standard input, is the file the shell gave there (< list.jsonl)
    named = [Path(p) for p in (*job.inputs, *job.manifests)]
    inputs = file_ids([*named, *(Path(entry.item.container) if entry.item else entry.path for entry in found),
                       *weights_files(s.weights, CODECS.values())])
    found, shard_note = take_shard(found, job.shard)  # the other parts' inputs are still this run's, never written
    if job.output is None and job.parquet is not None:
        beside = None  # without -o, the codes go to Parquet only, for files as for items
    check_name = functools.partial(_check_codes_name, codec=s.codec) if s.kind == "encode" else _check_audio_name
    _check_suffix_use(job, output_is_file, check_name)
    report("Checking outputs", 0, None)
    tasks = plan_tasks(found, output, suffix, beside, s.replace, job.skip_existing, output_is_file, inputs, s.kind,
                       check_name)
    if job.skip_existing:
        tasks = _resumable(tasks, s, inputs, report)
    for extra, label in ((job.manifest, "--manifest"), (job.parquet, "--parquet")):
        if is_stdout(extra):
            _check_extra_to_stdout(label, tasks, inputs)
        elif extra is not None and "://" not in extra:
            _check_extra_output(extra, label, s.replace or job.skip_existing, inputs, tasks, job.shard)
    if job.parquet is not None and "://" in job.parquet:
        remote_folder(job.parquet, s.replace or job.skip_existing, planning=True, shard=job.shard)
    workers, per_worker, (threads_note, workers_note) = _workers(job.jobs, sum(not t.skip for t in tasks),
                                                                 job.engine, job.threads)
    notes = [note for note in (threads_note, left_out, shard_note, workers_note) if note]
    settings = replace(s, threads=per_worker, keep_codes=job.parquet is not None, skip_existing=job.skip_existing,
                       stdout_suffix=job.suffix if output == STDOUT else None)
    return Plan(job, tasks, settings, workers, single, notes)


def take_shard(found: list[Input], shard: tuple[int, int] | None) -> tuple[list[Input], str | None]:
    """The inputs of run I of N (``shard``, from 1), with a note saying so: those whose output's name (its path
    under -o, or beside its input) hashes to I - 1 modulo N. The same command run N times (a SLURM array, N
    machines sharing a file system) with I = 1..N does each input once; an input's run depends on its name alone,
    not on the others listed, so a file that appears between two runs' listings is done by one run, not 0 or 2."""
    if shard is None:
        return found, None
    index, count = shard
    mine = [entry for entry in found if zlib.crc32(os.fsencode(_output_name(entry))) % count == index - 1]
    return mine, f"shard {index} of {count}: {len(mine)} of the {counted(len(found), 'input')}" + (
        "; the other shards' runs do the rest" if count > 1 else "")


def _output_name(entry: Input) -> str:
    """What names an input's output, wherever it goes: its path under -o without its suffix (see plan_tasks), the
    same for an audio file and its codes file (encode's shard I and decode's take the same recordings)."""
    if entry.relative is not None:
        return str(entry.relative)
    try:
        return str(entry.path.relative_to(entry.base).with_suffix(""))
    except ValueError:  # an item that could not be listed
        return str(entry.path)


def _plan_roundtrips(job: Job) -> Plan:
    """``mimi roundtrip``: each input measured on the local engine, its decoded audio and spectrograms written
    only where ``output`` and ``plot`` say (see :func:`plan_roundtrips`); the run's other outputs are not its."""
    others = [label for label, given in (("engine='ray'", job.engine == "ray"), ("manifest", job.manifest),
                                         ("parquet", job.parquet), ("skip_existing", job.skip_existing),
                                         ("shard", job.shard)) if given]
    if others:
        raise MimiError(f"a round trip takes no {', '.join(others)}: it measures each input on the local engine and "
                        "writes only the decoded audio (-o) and spectrograms (--plot) asked for")
    found, left_out, one = find_inputs(job.inputs, job.manifests, "encode", job.recursive, job.column,
                                       verb="round-trip", raw=job.settings.raw is not None)
    _check_suffix_use(job, one and job.output is not None and not names_folder(job.output), _check_audio_name)
    tasks, settings, workers, notes = plan_roundtrips(found, job.settings, job.jobs, job.threads, one, job.output,
                                                      job.plot, job.suffix or ".wav")
    return Plan(job, tasks, settings, workers, one, [note for note in (left_out, *notes) if note])


def _workers(jobs: int, pending: int, engine: Engine, threads: int | None) -> tuple[int, int, tuple]:
    """The workers ``jobs`` asks for and this machine allows for ``pending`` tasks, and each one's threads:
    several workers share the cores, one thread each unless ``threads`` says otherwise; with the notes of
    usable_threads and usable_workers (None where there is nothing to say)."""
    threads, threads_note = usable_threads(threads)
    workers, workers_note = usable_workers(jobs, pending, engine)
    per_worker = threads or (1 if workers > 1 or engine == "ray" else usable_cores())
    return workers, per_worker, (threads_note, workers_note)


def find_inputs(names: Iterable[str], manifests: Iterable[str], kind: Literal["encode", "decode"],
                recursive: bool = False, column: str | None = None, verb: str | None = None, raw: bool = False,
                ) -> tuple[list[Input], str | None, bool]:
    """What the inputs ``names`` and the lists ``manifests`` (--inputs-from) stand for: audio files (``kind``
    encode; ``raw``: a folder's are files of headerless samples) or codes files (decode) and the items of
    manifests, shards and datasets; a note of the entries left out of folders and globs (broken links, pipes,
    devices), to be said; and whether it is one file named alone (no folder, glob, list or items: a single task).
    Nothing to find is an error (``verb``: the command's word)."""
    names, manifests, verb = list(names), list(manifests), verb or kind
    suffixes = CODES_SUFFIXES if kind == "decode" else RAW_SUFFIXES if raw else AUDIO_SUFFIXES
    paths = [Path(p) for p in names]
    # a folder of audio (or codes) files; when it holds none, of shards: a dataset's Parquet or Arrow files
    # (a Hugging Face repo's data/), WebDataset tars; decode: the Parquet shards --parquet writes
    left_out: list[Path] = []  # broken links, pipes and devices with an input's name in the folders and globs
    holds_items = is_container if kind == "encode" else is_table  # decode reads rows of codes, no other items
    empty: list[str] = []  # folders and globs that gave nothing, to be said when others did
    found = collect_inputs(paths, recursive, suffixes, containers=holds_items,
                           else_suffixes=(".parquet",) if kind == "decode" else (".parquet", ".arrow", ".tar"),
                           on_skip=left_out.append, on_empty=empty.append)
    found = expand_containers(found, column or ("audio" if kind == "encode" else "codes"), holds_items)
    found += [entry for m in manifests for entry in listed_inputs(home_expanded(m), kind, column)]
    found = from_shared_folder(found)
    if not found:
        given = ", ".join("standard input" if p == STDIN else p for p in (*names, *manifests))
        folders = any(is_folder(p) for p in paths)
        if all(p == STDIN or holds_items(home_expanded(p)) for p in names):
            one = len(names) + len(manifests) == 1
            kinds = ("no lines, no audio members, no rows" if kind == "encode" else
                     "no rows" if names else "no lines")
            raise MimiError(f"{given} {'holds' if one else 'hold'} nothing to {verb} ({kinds})")
        if paths and all(is_glob(p) for p in paths) and not manifests:  # a glob's matches are taken whatever
            raise MimiError(f"no file matches {given}"  # their suffix, so there were none
                            + (f" ({_left_out(left_out)})" if left_out else ""))
        hint = (_json_hint(paths, recursive) if kind == "decode" else "") or _other_command_hint(paths, kind, recursive)
        if folders and not recursive and any(_has_folder(p) for p in paths):
            hint = f"{hint[:-1]}; -r searches sub-folders)" if hint else " (use -r to search sub-folders)"
        raise MimiError(f"no {either(suffixes[:4])}{'…' if len(suffixes) > 4 else ''} files in {given}"
                        + (f" ({_left_out(left_out)})" if left_out else hint))
    items = any(entry.item is not None for entry in found)
    one_file = len(paths) == 1 and not is_folder(paths[0]) and not is_glob(paths[0]) and not items
    notes = [_left_out(left_out)] if left_out else []
    # (`encode spk1/ spk2/` took spk1's files alone, in silence, where spk2's were a level down)
    globs = [name for name in empty if is_glob(Path(name))]
    folders = [name for name in empty if name not in globs]
    if folders:
        notes.append(f"nothing to {verb} in {', '.join(folders)} (no {either(suffixes[:4])}"
                     f"{'…' if len(suffixes) > 4 else ''} files there{'; -r searches sub-folders' * (not recursive)})")
    if globs:
        notes.append(f"no file matches {', '.join(globs)}")
    unread = [entry for entry in found if entry.unread] if kind != "decode" else []  # (decode reads codes whole)
    if unread:
        notes.append(unread_spans_note(str(unread[0].path), len(unread), {key for e in unread for key in e.unread}))
    encoded = next((entry.item for entry in found if entry.item is not None and entry.item.kind in ("tar", "row")),
                   None)
    if raw and encoded is not None:  # (a manifest's lines name files, which --raw reads)
        members = "tar members" if encoded.kind == "tar" else "rows"
        raise MimiError(f"--raw reads files of headerless samples, and the {members} of {encoded.container} hold "
                        "audio files of their own format; run without --raw")
    return found, "; ".join(notes) or None, one_file


def _has_folder(path: Path) -> bool:
    """Whether the folder ``path`` holds a folder that is not hidden (which -r would search)."""
    with suppress(OSError), os.scandir(path) as entries:
        return any(e.is_dir() and not e.name.startswith(".") for e in entries)
    return False


def _first_in(paths: list[Path], recursive: bool, pattern: str,
              wanted: Callable[[Path], bool]) -> tuple[Path, Path] | None:
    """The first entry matching ``pattern`` that is ``wanted``, in the folders among ``paths`` (and below them,
    ``recursive``), with its folder; None if there is none (or the folders cannot be read)."""
    for folder in filter(is_folder, paths):
        with suppress(OSError):
            found = next(filter(wanted, (folder.rglob if recursive else folder.glob)(pattern)), None)
            if found is not None:
                return folder, found
    return None


def _other_command_hint(paths: list[Path], kind: Literal["encode", "decode"], recursive: bool) -> str:
    """Where the folders named hold the other command's files (`mimi encode codes/`): which command takes them."""
    suffixes, command = (CODES_SUFFIXES, "decode") if kind == "encode" else (AUDIO_SUFFIXES, "encode")
    found = _first_in(paths, recursive, "*", lambda p: p.suffix.lower() in suffixes and not p.name.startswith(".")
                      and p.is_file())
    return "" if found is None else f" (it holds {found[1].suffix.lower()} files, which `mimi {command}` takes)"


def _json_hint(paths: list[Path], recursive: bool) -> str:
    """For decode, where the folders named hold .json or .jsonl files: JSON arrays of codes (and JSON lines of
    frames) are read when named, not taken from a folder (where JSON is more often metadata: a codec_info.json,
    a manifest)."""
    from mimi_cli.codes import CODEC_INFO

    for suffix in (".json", JSON_LINES):
        found = _first_in(paths, recursive, f"*{suffix}", lambda p: p.name != CODEC_INFO)
        if found is not None:
            folder, json_file = found
            pattern = shell_word(str(Path(folder, "**" if recursive else "", f"*{suffix}")))
            return (f" (JSON arrays of codes, such as {json_file.name}, are read when named, not found in folders: "
                    f"give them, or a quoted glob: {pattern})")
    return ""


def _left_out(paths: list[Path], shown: int = 3) -> str:
    """"left out 2 entries that are not files: a.wav (a broken symbolic link), b.wav (a pipe (FIFO))"."""
    named = ", ".join(f"{p} ({_unlisted(p)})" for p in paths[:shown])
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    what = "entry that is not a file" if len(paths) == 1 else "entries that are not files"
    return f"left out {len(paths)} {what}: {named}{more}"


def check_suffix_option(suffix: str) -> str:
    """--suffix as given (``flac`` or ``.flac``) as a suffix: ``.flac``; refused where it is not one."""
    if not isinstance(suffix, str):
        raise TypeError(f"suffix must be a str such as '.flac', got {suffix!r}")
    suffix = suffix if suffix.startswith(".") else f".{suffix}"
    if len(suffix) < 2 or suffix.count(".") > 1 or any(c in suffix for c in "/\\\0") or suffix != suffix.strip():
        raise ValueError(f"--suffix takes a file suffix such as .flac (or flac), not {suffix!r}")
    return suffix


def _check_suffix_use(job: Job, names_one_file: bool, check_name: Callable[[Path], None]) -> None:
    """--suffix names outputs in a folder or beside their inputs: refused where -o names the output itself
    (``-o x.wav``, ``-o -``), where no file is written (encode's --parquet alone, roundtrip without -o), and where
    ``check_name`` (the command's check of -o FILE) refuses it, once: each output would have failed with its work
    done."""
    if job.suffix is None:
        return
    try:
        check_name(Path(f"NAME{job.suffix}"))
    except MimiError as exc:
        raise MimiError(f"--suffix {job.suffix}: {exc}") from None
    if job.output == STDOUT and job.settings.kind == "encode":
        return  # the format of standard output's codes, which has no name to say it (--suffix .jsonl)
    if job.output == STDOUT or names_one_file:
        shown = "standard output" if job.output == STDOUT else "the output itself"
        raise MimiError(f"--suffix {job.suffix} names outputs written in a folder or beside their inputs, and "
                        f"-o {job.output} names {shown}: drop --suffix, or give -o a folder")
    if job.output is None and job.settings.kind == "roundtrip":
        raise MimiError(f"--suffix {job.suffix} names the decoded audio written with -o DIR: give -o, or drop "
                        "--suffix")
    if job.output is None and job.parquet is not None:
        raise MimiError(f"--suffix {job.suffix} names codes files, and --parquet without -o writes none: give -o "
                        "DIR, or drop --suffix")


def _check_audio_name(output: Path) -> None:
    """``-o FILE`` of decode or roundtrip names audio of a format soundfile writes (see audio_format)."""
    audio_format(output, folder_hint=True)


def _check_codes_name(output: Path, codec: str) -> None:
    """``-o FILE`` of encode names a codes file: .npz, .npy for the codes alone, or .ecdc for a codec that
    EnCodec's own format holds (as decode's names audio)."""
    suffix = output.suffix.lower()
    if suffix in AUDIO_SUFFIXES:
        raise MimiError(f"{output} is an audio file's name, and encode writes codes: give a .npz name (or .npy for "
                        "the codes alone)")
    check_suffix(output, "codes", (*CODES_SUFFIXES, JSON_LINES), folder_hint=True)
    if is_ecdc_path(output):
        ecdc_model(codec)


def usable_workers(jobs: int, pending: int, engine: Engine) -> tuple[int, str | None]:
    """``--jobs``, no more than the files to do, nor than the memory holds: each local worker holds its own
    libraries and buffers (BASE_BYTES; the weights' mapped pages are shared), so a thousand would be granted
    memory lazily and then be killed as they fill it. More workers than cores are allowed (a worker may wait on a
    slow disk), and said: they only take turns. Ray's actors spread over a cluster: its scheduler places them."""
    workers = min(jobs, max(1, pending))
    if engine == "ray":
        return workers, None
    if workers > 1:
        unable = _no_process_locks()
        if unable:
            return 1, f"worker processes cannot run here ({unable}); working in this process instead"
    memory = usable_memory()
    fit = max(1, int(0.9 * memory // BASE_BYTES))
    if memory and workers > fit:
        return fit, (f"--jobs {jobs} is more workers than {memory_said(memory)} can hold "
                     f"(about {BASE_BYTES / 1e9:.1f} GB a worker); using {fit}")
    cores = usable_cores()
    if workers > cores:  # 30 workers on 2 cores took 48 s where 2 took 14 s (30 files of 7 s)
        return workers, (f"--jobs {jobs} is more workers than the {counted(cores, 'core')} this process may use: "
                         f"they take turns, each loading the weights; --jobs {cores} is as fast or faster")
    return workers, None


def _no_process_locks() -> str | None:
    """Why a pool of worker processes cannot be made here, if so: its queues' locks are POSIX semaphores, which
    a container with a read-only or missing /dev/shm, or a sandbox without them (AWS Lambda), refuses; or the
    system refuses multiprocessing's first process, its resource tracker (ulimit -u)."""
    from mimi_cli import signals

    try:
        signals.start_resource_tracker()  # the lock would start it otherwise, not deaf to SIGHUP (see there)
    except BlockingIOError as exc:
        if exc.errno != errno.EAGAIN:
            raise
        return TASK_LIMIT
    try:
        multiprocessing.get_context("spawn").Lock()
    except OSError as exc:
        return f"multiprocessing's locks: {exc.strerror or exc}; they need a writable /dev/shm"
    return None


def is_glob(path: Path) -> bool:
    """A quoted glob ('data/**/*.flac'): a pattern that is no file's name."""
    return not os.path.lexists(path) and glob.has_magic(str(path))


def _read_here(inputs: Iterable[str], jobs: int, engine: str = "local") -> None:
    """Standard input and pipes (``<(command)``) can be read by this process alone: refused with workers (one
    spawned with --jobs read /dev/null there, or the file this shell gave the parent)."""
    if jobs <= 1 and engine != "ray":
        return
    drop = "drop --jobs" + " and --engine ray" * (engine == "ray")
    for name in inputs:
        if name == STDIN:
            raise MimiError(f"'-' (standard input) is read in this process; {drop}")
        if is_pipe(Path(name)):
            raise MimiError(f"{name} is a pipe, which only this process can read; {drop}")


def _named_in_folder(inputs: Iterable[str], output: str, suffix: str, label: str = "-o",
                     to_stdout: bool = True) -> None:
    """Refused: standard input or a pipe ``<(command)`` names (``/dev/fd/63``) given an output folder (``label``),
    where its output would be named ``-.npz`` or ``63.npz``; ``to_stdout``: that output may go to standard output."""
    nameless = next((p for p in inputs if p == STDIN or _FD_NAME.fullmatch(p)), None)
    if nameless is not None:
        shown = "standard input" if nameless == STDIN else f"{nameless} (a pipe, as <(command) names it)"
        raise MimiError(f"{shown} has no name of its own to give its output in the folder {output}: give {label} "
                        f"a file's name ({Path(output, 'NAME' + suffix)})" + ", or - for standard output" * to_stdout)


def _output_target(output: str | None, one_file: bool, found: list[Input],
                   label: str = "-o") -> tuple[Target | None, bool]:
    """``-o`` (or ``label``) as (where, names one file?): a folder (existing, or written with a trailing slash), a
    file, or "-". A new name with a codes or audio file's suffix is never made a folder (``-o codes.npy`` for a
    folder of inputs made a folder named ``codes.npy`` of ``.npz`` files)."""
    if output is None:
        return None, False
    if output == STDOUT:
        if len(found) != 1:
            raise MimiError(f"{label} - (standard output) takes one input")
        return STDOUT, True
    path = home_expanded(output)
    if names_folder(output):
        return path, False
    if one_file:
        return path, True
    if path.exists() or path.suffix.lower() in (*CODES_SUFFIXES, JSON_LINES, *AUDIO_SUFFIXES, *PLOT_SUFFIXES):
        several = ("the inputs hold items (lines, members, rows), for which" if any(e.item for e in found)
                   else "with several inputs" if len(found) > 1
                   else "for a folder, a glob or a list of inputs (even of one file)")
        mkdir = "" if path.exists() else f" (end it with / for a folder of that name: {label} {output}/)"
        raise MimiError(f"{label} {output} looks like a file; {several} {label} names a folder{mkdir}")
    return path, False


def collect_inputs(items: Iterable[str | Path], recursive: bool, suffixes: tuple[str, ...],
                   containers: Callable[[Path], bool] | None = None, else_suffixes: tuple[str, ...] = (),
                   on_skip: Callable[[Path], None] | None = None,
                   on_empty: Callable[[str], None] | None = None) -> list[Input]:
    """Files named directly (whatever their suffix), files with ``suffixes`` in folders (all levels with
    ``recursive``; in a folder with none, files with ``else_suffixes``) and glob matches (``**`` descends). A
    name that matches nothing is kept, to fail as missing. A folder ``containers`` says holds items (a dataset
    folder: :func:`mimi_cli.sources.is_container`, or for decode :func:`~mimi_cli.sources.is_table`) is one
    input, not searched, whether named or met in a walk. ``on_skip`` is called with each entry
    a folder or glob holds under such a name that is not a regular file (a broken link, a pipe, a device):
    it is left out, as a folder walk must not block on a pipe, but the caller should say so; ``on_empty`` with
    each folder or glob that gives nothing."""
    found: list[Input] = []
    for item in map(str, items):
        before = len(found)
        path = home_expanded(item)
        if is_folder(path) and (refused := _unsearchable(path)) is not None:  # before asking if it is a dataset
            found += _unlisted_folders([refused])
        elif is_folder(path) and not (containers and containers(path)):
            listed, unreadable = _walk(path, recursive)
            found += _unlisted_folders(unreadable)
            named = [p for p in listed if p.suffix.lower() in suffixes]
            if not named:  # shards; and, in a tree, dataset folders whole (their files are not items of their own)
                inner = _container_folders(path, listed, containers) if containers and recursive else []
                found += [Input(folder, path) for folder in inner]
                named = [p for p in listed if p.suffix.lower() in else_suffixes
                         and not any(folder in p.parents for folder in inner)]
            found += [Input(p, path) for p in _regular(named, on_skip)]
        elif not os.path.lexists(path) and glob.has_magic(item):
            base = Path(_glob_root(item))
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True))
            found += _unlisted_folders(_passed_over(os.path.expanduser(item)))
            found += [Input(p, base) for p in _regular([p for p in matches if not is_folder(p)], on_skip)]
        else:
            found.append(Input(path, path.parent))
        if len(found) == before and on_empty is not None:
            on_empty(item)
    unique, seen = [], set()
    for entry in found:  # the same file named twice (a folder and a glob) is done once
        key = os.path.realpath(entry.path)  # Path.resolve raises RuntimeError on a loop of links
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique


def _unsearchable(folder: Path) -> OSError | None:
    """Why the files of ``folder`` cannot be listed or looked at (no read or no search permission), if so."""
    try:
        with os.scandir(folder):
            pass
        os.stat(os.path.join(folder, "."))  # through the folder: its search (x) permission
    except OSError as exc:
        exc.filename = str(folder)
        return exc
    return None


def _walk(folder: Path, recursive: bool) -> tuple[list[Path], list[OSError]]:
    """What ``folder`` holds that is not a folder (with ``recursive``, every folder below it too, not through
    links to folders), but names starting with "." (files and folders, as ``**`` leaves them out: a Mac's
    ``._a.wav``, ``.ipynb_checkpoints``, ``.Trash``); and the errors of the folders that could not be listed
    (pathlib's glob left a folder without read permission out in silence, its files never done)."""
    listed: list[Path] = []
    unreadable: list[OSError] = []
    for top, folders, names in os.walk(folder, onerror=unreadable.append):
        listed += [Path(top, name) for name in names if not name.startswith(".")]
        folders[:] = [name for name in folders if not name.startswith(".")]
        if not recursive:
            break
    return sorted(listed), unreadable


def _passed_over(pattern: str) -> list[OSError]:
    """The folders a glob could not look into, which Python's glob (like a shell's) passes over in silence: for
    ``corpus/*/*.wav``, each ``corpus/X`` that cannot be listed; for ``corpus/*/a.wav``, each that cannot be
    searched; below a ``**``, every folder a walk cannot list. Each error names its folder."""
    head, tail = os.path.split(pattern)
    if not tail:  # "corpus/*/": the folders themselves
        return _passed_over(head) if glob.has_magic(head) else []
    errors = _passed_over(head) if glob.has_magic(head) else []
    folders = [f for f in (glob.glob(head, recursive=True) if glob.has_magic(head) else [head or "."])
               if os.path.isdir(f)]
    for folder in folders:
        try:
            if tail == "**":
                for _, below, _ in os.walk(folder, onerror=errors.append):
                    below[:] = [name for name in below if not name.startswith(".")]  # as glob leaves them out
            elif glob.has_magic(tail):
                with os.scandir(folder) as listing:
                    next(listing, None)
            else:
                os.lstat(os.path.join(folder, tail))
        except FileNotFoundError:  # nothing of that name: no match, nothing passed over
            pass
        except OSError as exc:
            exc.filename = folder  # the folder, not the name looked for in it
            errors.append(exc)
    return errors


def _unlisted_folders(errors: list[OSError]) -> list[Input]:
    """A folder that could not be listed fails as an input of its own, saying why (it has no output): a run that
    left a speaker's recordings out must not end as if it had done them all (``find`` and ``cp -r`` say so,
    and exit 1)."""
    return [Input(Path(exc.filename), Path(exc.filename).parent,
                  Item("invalid", str(exc.filename), error=f"cannot list the folder {exc.filename}: "
                                                           f"{os_reason(exc)}; what it holds is left out"))
            for exc in errors]


def _container_folders(root: Path, files: list[Path], containers: Callable[[Path], bool]) -> list[Path]:
    """The folders below ``root`` holding ``files`` that ``containers`` says are inputs of many items themselves
    (a ``save_to_disk`` dataset, lhotse Shar, Kaldi data), the outermost: a walk takes each whole, as when it is
    named (its ``cache-*.arrow`` files, its tars, are not items of their own)."""
    found: list[Path] = []
    for folder in sorted({p.parent for p in files} - {root}, key=lambda f: len(f.parts)):
        if not any(outer in folder.parents for outer in found) and containers(folder):
            found.append(folder)
    return sorted(found)


def _regular(paths: list[Path], on_skip: Callable[[Path], None] | None) -> list[Path]:
    """The regular files of ``paths`` (links to them included); ``on_skip`` is told of the others."""
    kept = []
    for p in paths:
        try:
            regular = p.is_file()
        except OSError:  # a folder without search permission hides what its files are: each fails alone, saying so
            regular = True
        if regular:
            kept.append(p)
        elif on_skip is not None:
            on_skip(p)
    return kept


def _unlisted(path: Path) -> str:
    """What a left-out entry is, in words: "a broken symbolic link", "a pipe (FIFO)", …"""
    problem = missing(path)
    if problem is not None:
        return problem.removeprefix("is ")
    with suppress(OSError):
        return file_kind(os.stat(path).st_mode) or "not a regular file"
    return "not a regular file"


def expand_containers(found: list[Input], column: str, expands: Callable[[Path], bool] = is_container) -> list[Input]:
    """Manifests, tar shards and datasets (those ``expands`` says) replaced by their items (each with its
    output's relative path); ``column``: a table's audio, or codes."""
    expanded = []
    for entry in found:
        if entry.item is not None or not expands(entry.path):  # an item already (a folder that cannot be listed)
            expanded.append(entry)
            continue
        # one found in a folder or glob keeps its place in the tree under -o (corpus/a/x.tar → DIR/a/x/KEY)
        within = entry.path.parent.relative_to(entry.base) if entry.relative is None and entry.base in \
            entry.path.parents else Path()
        expanded += [Input(Path(e.name), entry.path.parent, e.item, within / e.relative, e.unread)
                     for e in list_items(entry.path, column)]
    return expanded


def from_shared_folder(found: list[Input]) -> list[Input]:
    """The items lists name by absolute paths, mirrored under -o from the deepest folder those paths share
    (over every list of the run), as relative paths are from their list's folder: ``/data/s1/001.wav`` and
    ``/data/s2/001.wav`` write ``s1/001.npz`` and ``s2/001.npz``; one path, or many in one folder, by name."""
    rooted = {i: str(e.relative) for i, e in enumerate(found) if e.relative is not None and e.relative.is_absolute()}
    if not rooted:
        return found
    # The longest prefix all folders share (each with its "/") is that of the first and last in sorted order;
    # cut back to its last "/", it is their deepest shared folder. (Strings: a million Paths took seconds.)
    folders = [name[: name.rfind("/") + 1] for name in rooted.values()]
    shared = os.path.commonprefix([min(folders), max(folders)])
    cut = shared.rfind("/") + 1
    return [replace(e, relative=Path(rooted[i][cut:])) if i in rooted else e for i, e in enumerate(found)]


def listed_inputs(manifest: Path, kind: str, column: str | None) -> list[Input]:
    """The inputs an --inputs-from list names: for encode, each line an item (a span of an audio file); for
    decode, the codes file (or table of codes) each line names, decoded whole. Outputs under -o mirror the
    paths as the list writes them."""
    found, seen = [], set()
    for entry in list_items(manifest, manifest=True):
        item = entry.item
        if kind == "decode" and item.kind == "span":  # a file listed twice is decoded once, as a named one is
            if os.path.realpath(item.container) in seen:
                continue
            seen.add(os.path.realpath(item.container))
        if kind == "encode" or item.kind == "invalid":
            found.append(Input(Path(entry.name), manifest.parent, item, entry.relative, entry.unread))
        elif item.offset or item.duration is not None:
            problem = f"{entry.name}: offset and duration pick part of an audio file; codes are decoded whole"
            found.append(Input(Path(entry.name), manifest.parent, Item("invalid", entry.name, error=problem),
                               entry.relative))
        else:
            found += expand_containers([Input(Path(item.container), manifest.parent, None, entry.relative)],
                                       column or "codes", is_table)
    return found


def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard: ``data/*/x.wav`` → ``data``."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return str(Path(*fixed)) if fixed else "."


def plan_tasks(inputs: list[Input], output: Target | None, suffix: str, beside_suffix: str | None, force: bool,
               skip_existing: bool, output_is_file: bool = False, input_ids: set | None = None,
               kind: str = "encode", check_name: Callable[[Path], object] | None = None) -> list[Task]:
    """Outputs mirrored under ``output`` (a folder), or beside each input; ``output`` itself for
    one input with ``output_is_file``; none without ``output`` for items (manifest lines, tar members,
    rows), or for every input with ``beside_suffix`` None (the codes go to Parquet only).

    Refuses, before any work: two inputs that would write the same output, outputs
    that are not regular files or are inputs of the run (even with ``force``), ``output`` as a file
    whose name ``check_name`` refuses, and outputs that exist already (unless ``force`` or
    ``skip_existing``), in that order: -f would not mend the ones before.
    """
    input_ids = file_ids(e.path for e in inputs) if input_ids is None else input_ids
    tasks, owners, existing, folders = [], {}, [], {}
    for entry in inputs:
        if entry.item is not None and entry.item.kind == "invalid" and entry.relative is None:
            tasks.append(Task(entry.path, None, item=entry.item))  # a folder that could not be listed: no output
            continue
        if output is not None and output_is_file:
            target = output
        elif output is not None and entry.relative is not None:
            target = fitted(output / entry.relative.with_name(entry.relative.name + suffix), output)
        elif output is not None:
            target = fitted(output / entry.path.relative_to(entry.base).with_suffix(suffix), output)
        elif entry.item is not None or beside_suffix is None:
            tasks.append(Task(entry.path, None, item=entry.item))  # codes for Parquet only
            continue
        else:
            target = fitted(entry.path.with_name(entry.path.stem + beside_suffix), entry.path.parent)
        if target in owners:
            raise MimiError(f"{owners[target].path} and {entry.path} would both write {target}; "
                            f"{_apart(owners[target], entry)}")
        owners[target] = entry
        skip = skip_existing and output_exists(target)
        if not skip:
            try:
                check_output(target, force, input_ids, create_parents=not output_is_file, folders=folders)
            except OutputExistsError:
                existing.append(target)
            except UnnamableOutputError as exc:
                if entry.item is None:  # a file's own name, or -o's: the run's refusal
                    raise
                # named by its container (a tar member nested deeper than a path may go): the item fails alone
                size = len(os.fsencode(target))
                problem = f"{entry.path}: its output's path, {size:,} bytes, cannot be made ({exc.reason})"
                tasks.append(Task(entry.path, None, item=Item("invalid", str(entry.path), error=problem)))
                continue
        tasks.append(Task(entry.path, target, skip, entry.item))
    if check_name is not None and output_is_file and output != STDOUT:
        check_name(Path(output))
    if existing:
        if len(tasks) == 1:
            raise OutputExistsError(f"{existing[0]} already exists; pass -f/--force to replace it")
        caution = " (check that they are not recordings you want to keep)" if kind != "encode" else ""
        resume = "--skip-existing to resume an interrupted run, or " if kind != "roundtrip" else ""
        raise OutputExistsError(f"{len(existing)} output(s) already exist, e.g. {existing[0]}; pass {resume}"
                                f"-f/--force to replace them{caution}")
    return tasks


def _resumable(tasks: list[Task], s: Settings, input_ids: set, report: Report = no_report) -> list[Task]:
    """--skip-existing skips an existing output only if this run would write the same kind of output there
    (:func:`mimi_cli.pipeline.made_otherwise`): a run resumed with another codec, -n, --channels or weights
    (or --sample-rate) would otherwise leave a corpus of mixed codes (or audio). With -f the others are done
    again; without, nothing is."""
    run_weights_id = functools.cache(lambda: weights_id(resolve_weights(s.weights, codec_spec(s.codec))))
    resumed, differ, existing = [], [], sum(task.skip for task in tasks)
    for task in tasks:
        if task.skip:
            report("Reading back existing outputs", len(resumed), existing)
        problem = task.skip and made_otherwise(task, s, run_weights_id)
        if problem and (s.replace or _not_regular(task.output)):  # a pipe, device or link: what -f refuses too
            check_output(task.output, True, input_ids)  # a regular file, not an input: the usual -f rules
            task = replace(task, skip=False, redo=True)
        elif problem:
            differ.append((task.output, problem))
        resumed.append(task)
    if differ:
        output, problem = differ[0]
        many = f"{len(differ)} existing outputs differ from what this run writes, e.g. " if len(differ) > 1 else ""
        raise MimiError(f"{many}{output} exists, made otherwise ({problem}): resume with the settings that made "
                        f"it, or add -f to {s.kind} such outputs again")
    return resumed


def _not_regular(path: str) -> bool:
    """Whether the existing output ``path`` is not a regular file (its ``lstat``: a link is one of those)."""
    try:
        return file_kind(os.lstat(path).st_mode) is not None
    except (OSError, ValueError):
        return False


def _apart(first: Input, entry: Input) -> str:
    """What to do about two inputs whose outputs would have one name."""
    if entry.item is None and first.item is None and first.base != entry.base:  # x/a.wav y/a.wav, or x/ y/
        try:  # as the user wrote them (x, y: the working folder), else as absolute paths
            common = os.path.commonpath([first.base, entry.base]) or "."
        except ValueError:  # one absolute, one relative
            common = os.path.commonpath([os.path.abspath(first.base), os.path.abspath(entry.base)])
        return (f"outputs mirror each input from its own folder: give their common folder ({common}) with -r, or "
                "quote a glob ('*/a.wav'), for outputs that keep the folders apart; or rename one of them")
    if entry.item is None:
        return "rename one of them"
    if entry.item.kind == "span" and first.item is not None and first.item.kind == "span":
        if os.path.realpath(first.item.container) == os.path.realpath(entry.item.container):
            return ("the same audio from the same millisecond (a line given twice?): remove the repeat, or split "
                    "the list")
        if first.base != entry.base:  # (relative paths are mirrored from each list's own folder)
            return f"lines of lists in {first.base} and {entry.base}: encode the lists in two runs, with two -o folders"
        return "their audio files' paths differ only in extensions or '..' parts, which outputs drop: rename one"
    if entry.item.kind == "tar" and first.item is not None and first.item.container == entry.item.container:
        return "two members whose names differ only by '/', '.' or '..' parts: rename one of them in the archive"
    return "two containers of the same name: encode them in two runs, with two -o folders"


def _check_extra_to_stdout(label: str, tasks: list[Task], inputs: set) -> None:
    """``--manifest -``: the manifest's lines to standard output (once the run is over, whole, as ``-o -`` writes),
    where nothing else of the run goes, nor into an input (``inputs``: their file_ids); ``--parquet -`` is
    refused: shards fill a folder."""
    if label == "--parquet":
        raise MimiError("--parquet writes shards into a folder or a store (--parquet DIR, s3://bucket/codes), not to "
                        "standard output")
    if any(is_stdout(t.output) for t in tasks):
        raise MimiError("-o - and --manifest - would both write to standard output; give the manifest a file name")
    if stdout_closed():
        raise MimiError("--manifest -: standard output is closed; redirect it (> file, | program) or give a file name")
    check_stdout_apart(inputs)


def _check_extra_output(name: str, label: str, replace_ok: bool, inputs: set, tasks: list[Task],
                        shard: tuple[int, int] | None = None) -> None:
    """A manifest or Parquet folder: writable, not an input, not one of the run's outputs (nor, for a manifest,
    their folder), before any work. A Parquet folder holding files is another run's, unless they are other
    shards' (``shard``: this run's, see parquet_prefix)."""
    path = Path(name)
    written = [Path(t.output) for t in tasks if t.output is not None and not is_stdout(t.output)]
    if path in written:
        raise MimiError(f"{label}: {path} is also an output of this run; choose another name")
    if label == "--manifest" and (name.endswith(("/", os.sep)) or any(path in p.parents for p in written)):
        # (it failed once the work was done, as "appeared while this run was working")
        raise MimiError(f"--manifest {name} names a folder{' the outputs go into' * (not is_folder(path))}; the "
                        f"manifest is one file: give its name ({path / 'manifest.jsonl'})")
    if label == "--parquet":
        if path.exists() and not (path.is_dir() and not path.is_symlink()):
            raise MimiError(f"{label}: {path} exists and is not a folder")
        if path.is_dir() and not replace_ok and _another_runs((f.name for f in path.iterdir()), shard):
            raise OutputExistsError(_parquet_used(name, shard))
        path = path / f"{parquet_prefix(shard)}00000.parquet"
        replace_ok = True
    made = label == "--parquet" or any(path.parent in p.parents for p in written)  # (-o out/ --manifest out/m.jsonl)
    try:
        check_output(path, replace_ok, inputs, create_parents=made)
    except MimiError as exc:
        raise type(exc)(f"{label}: {exc}") from None


def _local_paths(job: Job) -> Job:
    """``job``'s paths as this run reads and writes them: file:// URIs made paths, ``./-`` a file's path; any
    other URL where mimi reads or writes a file is refused (``-o s3://bucket/codes/`` made a local folder
    ``s3:``). Only --parquet takes a store's URI."""
    dash = as_written
    job = replace(job, parquet=local_path(job.parquet, "--parquet"),
                  manifest=dash(local_path(job.manifest, "--manifest")), output=dash(local_path(job.output, "-o")),
                  plot=dash(local_path(job.plot, "--plot")),
                  inputs=tuple(dash(local_path(i, "input")) for i in job.inputs),
                  manifests=tuple(dash(local_path(m, "--inputs-from")) for m in job.manifests))
    for given, label in ((job.output, "-o"), (job.manifest, "--manifest"), (job.plot, "--plot"),
                         *((i, "input") for i in job.inputs), *((m, "--inputs-from") for m in job.manifests)):
        if given is not None and url(given):
            writes = label in ("-o", "--manifest", "--plot")
            raise MimiError(f"{label} {given} is a URL, and mimi {'writes' if writes else 'reads'} files on this "
                            "machine or a mounted file system: " + (
                                "give a path (--parquet takes a store's URI)" if writes else "download it first"))
    return job


# How long planning waits for a store that does not answer: Google Cloud Storage's client otherwise retries
# for 15 minutes (offline, or with no credentials). The run's own writes keep the store's default patience.
PLANNING_RETRY_SECONDS = 10


def remote_folder(uri: str, replace_ok: bool, planning: bool = False, shard: tuple[int, int] | None = None):
    """pyarrow's file system for a --parquet URI (``s3://bucket/codes``) and the folder's path in it, checked
    as a local folder is, before any work: a scheme pyarrow knows, a store it can reach, not a file, and
    empty unless -f or --skip-existing said to replace what is there."""
    with needs_extra('--parquet needs pyarrow: pip install "mimi-cli[parquet]"', "pyarrow"):
        import pyarrow as pa
        from pyarrow import fs
    checked = uri
    if planning and uri.lower().startswith(("gs://", "gcs://")) and "retry_limit_seconds" not in uri:
        checked = f"{uri}{'&' if '?' in uri else '?'}retry_limit_seconds={PLANNING_RETRY_SECONDS}"
    try:
        filesystem, folder = fs.FileSystem.from_uri(checked)
        kind = filesystem.get_file_info(folder).type
        used = kind == fs.FileType.Directory and filesystem.get_file_info(fs.FileSelector(folder))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise MimiError(f"--parquet: cannot use {uri}: {first_line(exc) or type(exc).__name__}; check the URI "
                        "(s3://BUCKET/FOLDER, gs://…, file:///…), the network and the store's credentials") from None
    if kind not in (fs.FileType.Directory, fs.FileType.NotFound):
        raise MimiError(f"--parquet: {uri} exists and is not a folder")
    if used and not replace_ok and _another_runs((info.base_name for info in used), shard):
        raise OutputExistsError(_parquet_used(uri, shard))
    return filesystem, folder


def _another_runs(names: Iterable[str], shard: tuple[int, int] | None) -> bool:
    """Whether a --parquet folder holding files named ``names`` holds another run's (which -f or --skip-existing
    replace): any file; for --shard I/N, any but the other parts' of N (see parquet_prefix)."""
    def other_part(name: str) -> bool:
        layout = parquet_layout(name)
        return layout is not None and layout[0] is not None and layout[0] != shard and layout[0][1] == shard[1]

    return any(shard is None or not other_part(name) for name in names)


def _parquet_used(folder: str, shard: tuple[int, int] | None) -> str:
    shards = " (of more than the other shards' files)" if shard else ""
    return f"--parquet: folder {folder} is not empty{shards}; choose a new folder or pass -f/--force"


# ----------------------------------------------------------------------------- running


def execute(p: Plan, on_result: Callable[[FileResult], None] = lambda r: None,
            report: Report | None = None) -> list[FileResult]:
    """Run a plan on its engine; results in task order. The manifest is written even when interrupted."""
    if not isinstance(p, Plan):  # execute(job) said "'Job' object has no attribute 'job'"
        raise TypeError(f"execute takes a Plan, as plan(job) makes it, not {type(p).__name__}")
    results: list[FileResult] = []
    start = time.time()
    shards = None if p.job.parquet is None else ParquetShards(
        p.job.parquet, p.tasks, p.settings.replace or p.job.skip_existing, p.settings.channels == "split", p.job.shard)

    def record(result: FileResult) -> None:
        if shards is not None:
            shards.add(result)
            result.codes = None  # in the shard now: memory stays flat
        results.append(result)
        on_result(result)

    complete = False
    try:
        if p.job.engine == "ray":
            from mimi_cli.ray_engine import run_ray

            for result in run_ray(p.tasks, p.settings, p.workers):
                record(result)
        else:
            run_local(p.tasks, p.settings, p.workers, record, report)
        complete = True
    finally:
        try:
            if shards is not None:
                shards.close(complete)
        finally:  # a shard that cannot be written (a full disk) still leaves the manifest of what was done
            if p.job.manifest is not None:
                write_manifest(p.job.manifest if is_stdout(p.job.manifest) else Path(p.job.manifest),
                               _with_not_run(p.tasks, results, start),
                               p.settings.replace or p.job.skip_existing)
    by_task = {r.key: r for r in results}
    return [by_task[t.key] for t in p.tasks]


def _with_not_run(tasks: list[Task], results: list[FileResult], start: float) -> list[FileResult]:
    """Every task gets a row. One without a result was not reached (an interrupt), unless its output
    appeared during the run: then the signal came between writing it and reporting it, and it is done.
    An item's row keeps the keys it carries, failed or not (to redo the failures from the manifest)."""
    done = {r.key: r for r in results}
    rows = []
    for t in tasks:
        row = done.get(t.key)
        if row is None:
            written = (t.output is not None and not is_stdout(t.output) and os.path.isfile(t.output)
                       and os.stat(t.output).st_mtime >= start)
            row = FileResult.of(t, "done" if written else "not run")
        if row.carried is None and t.item is not None:
            row.carried = known_keys(t.item)
        rows.append(row)
    return rows


def write_manifest(path: Target, results: list[FileResult], replace: bool) -> None:
    """One JSON object per input, in input order, written atomically (``-``: to standard output, once whole)."""
    with atomic_output(path, replace) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for result in results:
            f.write(result.manifest_line() + "\n")


def plan_roundtrips(found: list[Input], settings: Settings, jobs: int = 1, threads: int | None = None,
                    one_file: bool = False, output: str | None = None, plot: str | None = None,
                    suffix: str = ".wav") -> tuple[list[Task], Settings, int, list[str]]:
    """Round trips of the files and items ``found``, to run as a batch runs (:func:`run_local`): their tasks, the
    settings with each worker's threads (one each with several workers, unless ``threads`` says otherwise), the
    workers ``jobs`` asks for and this machine allows, notes to show. Each one's decoded audio goes to ``output``
    and its spectrograms to ``plot`` where given: a file for ``one_file``, else a folder that mirrors the inputs
    as encode's -o does (NAME.wav, or NAME``suffix``; NAME.png), checked as a batch's outputs are, before any
    work."""
    if plot is not None and not names_folder(plot) and Path(plot).suffix.lower() not in PLOT_SUFFIXES:
        given = "to standard output" if plot == STDOUT else Path(plot).suffix or "a file without extension"
        raise MimiError(f"--plot writes {either(PLOT_SUFFIXES)}, not {given}")
    _read_here([str(entry.path) for entry in found if entry.item is None], jobs)
    workers, per_worker, notes = _workers(jobs, len(found), "local", threads)
    ids = file_ids([*(entry.path if entry.item is None else Path(entry.item.container) for entry in found),
                    *weights_files(settings.weights, CODECS.values())])  # once
    check_stdout_apart(ids)  # where the report goes
    audio = _roundtrip_outputs(found, one_file, output, "-o", suffix, settings.replace, ids, _check_audio_name)
    plots = _roundtrip_outputs(found, one_file, plot, "--plot", ".png", settings.replace, ids)
    tasks = [Task(entry.path, target, item=entry.item, plot=None if image is None else Path(image), new_folder=True)
             for entry, target, image in zip(found, audio, plots, strict=True)]
    return tasks, replace(settings, threads=per_worker), workers, [note for note in notes if note]


def _roundtrip_outputs(found: list[Input], one_file: bool, output: str | None, label: str, suffix: str,
                       replace_ok: bool, input_ids: set, check_name: Callable | None = None) -> list[Target | None]:
    """Where each round trip writes one kind of output (see plan_roundtrips); ``input_ids``: the inputs' file_ids;
    ``check_name``: see plan_tasks."""
    if output is None:
        return [None] * len(found)
    if output == STDOUT:  # (roundtrip prints its metrics there)
        raise MimiError(f"roundtrip prints its metrics on standard output; give {label} a file name")
    target, is_file = _output_target(output, one_file, found, label)
    if not is_file:
        _named_in_folder([str(entry.path) for entry in found], output, suffix, label, to_stdout=False)
    return [task.output for task in plan_tasks(found, target, suffix, None, replace_ok, False, is_file, input_ids,
                                               kind="roundtrip", check_name=check_name)]


def run_local(tasks: list[Task], settings: Settings, jobs: int,
              on_result: Callable[[FileResult], None] = lambda r: None,
              report: Report | None = None) -> list[FileResult]:
    """Run ``tasks`` in ``jobs`` worker processes (in this process for 1); results in task order."""
    results: dict[Task, FileResult] = {}
    pending = [t for t in tasks if not t.skip]
    for task in tasks:
        if task.skip:
            results[task] = skipped(task, settings)
            on_result(results[task])
    if jobs <= 1 or len(pending) <= 1:
        from mimi_cli.core.threads import limit_threads

        worker = Worker(settings)
        with limit_threads(settings.threads):
            for task in pending:
                results[task] = worker.run(task, report)
                on_result(results[task])
    else:
        _run_pool(pending, settings, jobs, results, on_result)
    return [results[t] for t in tasks]


_worker: Worker | None = None  # the worker of this process (in a pool)
_unable: str | None = None  # why it cannot work (a thread the system refused as it started): each file fails so


def _start_worker(settings: Settings) -> None:
    global _worker, _unable
    from mimi_cli import signals
    from mimi_cli.core.threads import keep_freed_memory, set_threads

    try:
        keep_freed_memory()  # a spawned worker starts with glibc's defaults (see cli.main)
        signals.install(worker=True)  # SIGTERM from the parent unwinds like Ctrl-C: no temporary file left
        signals.die_with_parent()  # and if the parent is killed outright, the worker stops too
        set_threads(settings.threads)
        _worker = Worker(settings)
    except SystemExit as exc:  # stopped while starting: quietly (the pool would print a traceback)
        os._exit(exc.code)
    except RuntimeError as exc:  # (the pool would print a traceback, then break: "its worker process died")
        if no_thread(exc) is None:
            raise
        _unable = str(no_thread(exc))


def _run_in_worker(task: Task) -> FileResult:
    from mimi_cli.signals import limit_reached

    if _unable is not None:
        return FileResult.of(task, "failed", error=_unable)
    try:
        return _worker.run(task)
    except SystemExit as exc:  # a signal (signals.install): the file's temporary output is gone already,
        remove_temporaries()  # unless the signal landed where no finally saw it (see fileio)
        if (limit := limit_reached(exc.code)) is not None:  # this worker's own (a CPU-time limit is per process)
            return FileResult.of(task, "failed", error=f"{limit} in its worker process")
        os._exit(exc.code)  # the pool would catch SystemExit as this task's error and wait for the next one


_DIED = "its worker process died (killed, or out of memory)"


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawned worker that does not import its parent's main module, and whose OpenBLAS starts only the
    threads the worker uses.

    multiprocessing runs the parent's script again in every spawned child (as ``__mp_main__``), for functions
    defined there; a worker needs only mimi_cli. From Python, a script without an ``if __name__ ==
    "__main__":`` guard then started the run again in each worker (which multiprocessing stops), and code given
    to ``python -`` had no script to import: every worker died as it started, and every file failed as "its
    worker process died".

    OpenBLAS starts a thread per core as NumPy loads, before a worker can say how many it uses (one, with
    several workers): idle threads, each counted against a limit on processes and threads (ulimit -u), where
    OpenBLAS, refused one, interrupts its own process. The child's environment says the worker's count first
    (core.threads.later_blas_threads); the parent's own is put back at once.
    """

    blas_threads: int | None = None

    def start(self) -> None:
        from mimi_cli.core.threads import later_blas_threads

        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__: nothing to run again
        try:
            with later_blas_threads(self.blas_threads) if self.blas_threads else nullcontext():
                super().start()  # the child's start-up data and environment are taken here, in this thread
        finally:
            sys.modules["__main__"] = main


class _WorkerContext(multiprocessing.context.SpawnContext):
    def __init__(self, blas_threads: int | None):
        super().__init__()
        self.blas_threads = blas_threads

    def Process(self, *args, **kwargs) -> _WorkerProcess:  # noqa: N802 - multiprocessing's name
        process = _WorkerProcess(*args, **kwargs)
        process.blas_threads = self.blas_threads
        return process


def _run_pool(pending: list[Task], settings: Settings, jobs: int, results: dict, on_result) -> None:
    """Run ``pending`` on ``jobs`` worker processes. A worker that dies (killed, out of memory) takes
    its pool down, and with it the files then in flight: each of those runs again alone, in a pool of
    its own, so that only a file that kills its own worker fails; the rest go on in a fresh pool.
    When every file of such a round died, the workers cannot run here at all: the rest are not tried."""
    todo = deque(pending)
    while todo:
        known = len(results)
        for task in _pool_pass(todo, settings, jobs, results, on_result):
            _pool_pass(deque([task]), settings, 1, results, on_result, last_try=True)
        if todo and all(r.error == _DIED for r in list(results.values())[known:]):
            while todo:
                task = todo.popleft()
                results[task] = FileResult.of(task, "failed", error="not tried: the worker process died on every "
                                              "file before it (out of memory? try fewer --jobs)")
                on_result(results[task])


def _pool_pass(todo: deque, settings: Settings, jobs: int, results: dict, on_result,
               last_try: bool = False) -> list[Task]:
    """Take tasks from ``todo`` into one pool until none is left or the pool breaks; then return the
    tasks it lost (on the last try, they fail instead). At most one task more than the workers is in
    flight (the next one waits queued, as the executor would keep it), so a broken pool loses few."""
    from concurrent.futures import ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from mimi_cli import signals

    with _starting_workers():
        signals.start_resource_tracker()
    # spawn, not fork: a forked child would inherit BLAS thread pools in an unknown state
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=_WorkerContext(settings.threads),
                               initializer=_start_worker, initargs=(settings,))
    in_flight: dict = {}  # future → task
    lost: list[Task] = []
    try:
        with _thread_refusals():
            while (todo or in_flight) and not lost:
                while todo and len(in_flight) <= jobs:
                    task = todo.popleft()
                    with _starting_workers():  # the pool starts its thread and its workers as it needs them
                        in_flight[pool.submit(_run_in_worker, task)] = task
                done = _first_done(pool, in_flight)
                if any(isinstance(f.exception(), BrokenProcessPool) for f in done):  # it ends every future in flight
                    wait(in_flight)
                for future in [f for f in in_flight if f.done()]:
                    task = in_flight.pop(future)
                    if not isinstance(future.exception(), BrokenProcessPool):
                        results[task] = future.result()
                    elif last_try:
                        results[task] = FileResult.of(task, "failed", error=_DIED)
                    else:
                        lost.append(task)
                        continue
                    on_result(results[task])
    except BaseException:
        _stop_workers(pool)
        raise
    pool.shutdown()
    return lost


def _first_done(pool, in_flight: dict) -> set:
    """The futures of ``in_flight`` that are done, once one is.

    The pool hands tasks to its workers from a thread of its own, which starts another to feed their queue;
    where the system refuses that one (ulimit -u), the pool's thread ends, and the pool then waits for ever
    with nothing in flight. So the wait looks at that thread every second, and the thread's end is said in
    one line (its traceback, which Python's ``threading.excepthook`` would print, is not: see
    :func:`_thread_refusals`).
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    while True:
        done, _ = wait(in_flight, timeout=1.0, return_when=FIRST_COMPLETED)
        if done:
            return done
        thread = pool._executor_manager_thread  # (the executor has no public handle on it)
        if thread is not None and not thread.is_alive():
            done, _ = wait(in_flight, timeout=0)  # (one done as it ended)
            if done:
                return done
            raise task_limit("the worker processes of --jobs")


@contextmanager
def _thread_refusals() -> Iterator[None]:
    """Inside the block, a thread of this process that ends with Python's "can't start new thread" (the pool's,
    refused one of its own) prints no traceback: the run says so in one line (:func:`_first_done`, or the file's
    failure). Any other thread's exception is printed as before."""
    import threading

    previous = threading.excepthook

    def hook(args) -> None:
        if no_thread(args.exc_value) is None:
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


@contextmanager
def _starting_workers() -> Iterator[None]:
    """A block that starts a pool's processes or threads (its own, its workers, multiprocessing's resource
    tracker): a thread or process the system refuses (ulimit -u) is said as such."""
    try:
        yield
    except (RuntimeError, BlockingIOError) as exc:  # no thread, or fork's EAGAIN
        if no_thread(exc) is None and getattr(exc, "errno", None) != errno.EAGAIN:
            raise
        raise task_limit("the worker processes of --jobs") from None


def _stop_workers(pool) -> None:
    """SIGTERM every worker (each removes its temporary file as it unwinds), wait for them (SIGKILL after
    10 s), then for the pool's own thread: one still closing its pipes as Python exits made Python 3.11's
    exit handler print "Exception ignored … Bad file descriptor" under the run's one-line error."""
    processes = list(getattr(pool, "_processes", {}).values())  # the executor has no public handle on them
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
    with suppress(RuntimeError):  # "cannot join thread before it is started": the system refused it (ulimit -u)
        pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------- Parquet

PARQUET_ROWS_PER_SHARD = 10_000  # a shard stays small (codes are ~200 bytes per second of audio at 8 levels)
PARQUET_CODES_PER_SHARD = 1 << 27  # and so does the memory its rows take (256 MiB of uint16 codes)


class ParquetShards:
    """``part-NNNNN.parquet`` shards of the successful rows (``shard-I-of-N-part-NNNNN.parquet`` for --shard
    I/N: see parquet_prefix), each written as soon as it is full, so that
    memory stays flat however long the run and an interrupted run keeps the rows done so far. Rows go
    in the order of the tasks, whatever order workers finish in (a result that comes early waits for
    those before it), so that a run gives the same shards on any engine and any number of workers.

    Codes are nested uint16 lists (``[K, frames]``, ``[C, K, frames]`` when channels are split), with
    the metadata decode needs; the carried keys of every task are columns of every shard (null where a
    row lacks one). A local folder gets each shard through the one output writer; a URI (``s3://…``)
    through pyarrow's file systems. Shards of an earlier run beyond this run's last one are removed
    (the folder was empty, or -f or --skip-existing said to replace it), so no reader mixes two runs.
    """

    def __init__(self, destination: str, tasks: list[Task], replace: bool, split: bool,
                 shard: tuple[int, int] | None = None):
        with needs_extra('--parquet needs pyarrow: pip install "mimi-cli[parquet]"', "pyarrow"):
            import pyarrow as pa
            import pyarrow.parquet as pq
        from mimi_cli.sources import carried_names

        self.pa, self.pq, self.destination, self.replace, self.split = pa, pq, destination, replace, split
        self.prefix, self.shard = parquet_prefix(shard), shard  # a shard's run writes its own files alone
        # a URI's file system, checked by plan(); None for a local folder
        self.store = remote_folder(destination, True) if "://" in destination else None
        fixed = set(_parquet_schema(pa, split).names)
        self.carried = sorted({k for t in tasks if t.item is not None for k in carried_names(t.item)} - fixed)
        self.order = {t.key: i for i, t in enumerate(tasks)}
        self.waiting: dict[int, dict | None] = {}  # results that came before one of an earlier task
        self.next = 0  # the first task whose result has not come
        self.rows: list[dict] = []
        self.codes = 0  # in the rows buffered
        self.written = 0

    def add(self, result: FileResult) -> None:
        """Take any task's result: a done (or a skipped one's existing) row is buffered, in task order; a
        shard is written once it is full."""
        row = None if result.codes is None or result.status not in ("done", "skipped") else \
            _parquet_record(result, self.split)
        self.waiting[self.order[result.key]] = row
        while self.next in self.waiting:
            self._buffer(self.waiting.pop(self.next))
            self.next += 1

    def close(self, complete: bool) -> None:
        """Write what is buffered (an empty shard, for a complete run without rows: the schema), then remove
        an earlier run's shards beyond the last one written."""
        for index in sorted(self.waiting):  # an interrupted run: the rows done after a task that never ended
            self._buffer(self.waiting.pop(index))
        if self.rows or (complete and not self.written):
            self._write()
        if self.written:
            self._remove_stale()

    def _remove_stale(self) -> None:
        """Remove the shards an earlier run left beyond this run's last one, and those of runs split otherwise
        (a run of all inputs, or --shard of another N): with --shard I/N, the other shards' runs' files stay."""
        def stale(name: str) -> bool:
            layout = parquet_layout(name)
            if layout is None:
                return False  # not a shard: left as it is
            if layout[0] == self.shard:
                return layout[1] >= self.written
            return self.shard is None or layout[0] is None or layout[0][1] != self.shard[1]

        if self.store is None:
            for path in Path(self.destination).iterdir():
                if stale(path.name) and path.is_file():
                    path.unlink()
            return
        from pyarrow import fs

        filesystem, folder = self.store
        with self._store_errors("remove an earlier run's shards from"):
            for info in filesystem.get_file_info(fs.FileSelector(folder)):
                if stale(info.base_name) and info.type == fs.FileType.File:
                    filesystem.delete_file(info.path)

    @contextmanager
    def _store_errors(self, action: str):
        """A URI's store failing (network, credentials, quota): one line that names it."""
        try:
            yield
        except (self.pa.ArrowException, OSError) as exc:
            raise MimiError(f"--parquet: cannot {action} {self.destination}: "
                            f"{first_line(exc) or type(exc).__name__}") from None

    def _buffer(self, row: dict | None) -> None:
        if row is not None:
            self.rows.append(row)
            self.codes += row["codes"].size
            if len(self.rows) >= PARQUET_ROWS_PER_SHARD or self.codes >= PARQUET_CODES_PER_SHARD:
                self._write()

    def _write(self) -> None:
        table = _parquet_table(self.pa, self.rows, self.carried, self.split)
        name = f"{self.prefix}{self.written:05d}.parquet"
        if self.store is None:
            Path(self.destination).mkdir(parents=True, exist_ok=True)
            with atomic_output(Path(self.destination) / name, self.replace) as tmp, arrow_file(tmp, "wb") as f:
                self.pq.write_table(table, f)
        else:
            filesystem, folder = self.store
            target = f"{folder.rstrip('/')}/{name}"
            with self._store_errors(f"write {name} to"):
                filesystem.create_dir(folder, recursive=True)
                try:
                    self.pq.write_table(table, target, filesystem=filesystem)
                except BaseException:  # a store failing or a signal mid-shard: no part of a shard left behind
                    with suppress(Exception):
                        filesystem.delete_file(target)
                    raise
        self.rows, self.codes, self.written = [], 0, self.written + 1


def parquet_prefix(shard: tuple[int, int] | None) -> str:
    """What a run's Parquet files' names start with, before their number: ``part-``, or for --shard I/N
    ``shard-I-of-N-part-``, so that the N runs can share one folder."""
    return "part-" if shard is None else f"shard-{shard[0]}-of-{shard[1]}-part-"


def parquet_layout(name: str) -> tuple[tuple[int, int] | None, int] | None:
    """The shard (I, N) or None, and the number, of a Parquet file a run writes (see parquet_prefix); None for a
    name no run writes."""
    found = re.fullmatch(r"(?:shard-(\d+)-of-(\d+)-)?part-(\d{5})\.parquet", name)
    if found is None:
        return None
    return (None if found[1] is None else (int(found[1]), int(found[2]))), int(found[3])


def _parquet_schema(pa, split: bool = False):
    """codes: [K, frames] nested lists, or [C, K, frames] when channels are split."""
    codes = pa.list_(pa.list_(pa.uint16()))
    return pa.schema([("input", pa.string()), ("output", pa.string()), ("codec", pa.string()),
                      ("num_codebooks", pa.int32()), ("frames", pa.int64()), ("num_samples", pa.int64()),
                      ("source_sample_rate", pa.int64()), ("source_channels", pa.int32()), ("channels", pa.int32()),
                      ("weights_id", pa.string()), ("streamed", pa.bool_()),
                      ("codes", pa.list_(codes) if split else codes)])


def _parquet_table(pa, rows: list[dict], carried: list[str], split: bool):
    """The fixed columns with their types; carried columns typed from their values (JSON text when mixed)."""
    base = _parquet_schema(pa, split)
    arrays = [_nested_lists(pa, [row["codes"] for row in rows], 3 if split else 2) if field.name == "codes" else
              pa.array([row[field.name] for row in rows], field.type) for field in base]
    table = pa.Table.from_arrays(arrays, schema=base)
    for key in carried:
        values = [row["__carried__"].get(key) for row in rows]
        try:
            array = pa.array(values)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):  # mixed types; an integer beyond 64 bits
            array = None
        if array is None or _nesting(array.type) > MAX_CARRIED_NESTING:
            array = pa.array([None if v is None else dumps_json(v) for v in values], pa.string())
        table = table.append_column(key, array)
    return table


# Parquet readers refuse schemas nested deeper than 100 levels (pyarrow's default; each list takes two or three):
# a carried value nested deeper than this is written as JSON text, or no one could read the shard back.
MAX_CARRIED_NESTING = 16


def _nesting(arrow_type) -> int:
    """How deep lists and structs nest in ``arrow_type`` (0 for a scalar)."""
    deepest, level = 0, [arrow_type]
    while level:
        deepest, level = deepest + 1, [t.field(i).type for t in level for i in range(t.num_fields)]
    return deepest - 1


def _nested_lists(pa, arrays: list, ndim: int):
    """uint16 arrays of ``ndim`` dimensions as Arrow lists nested ``ndim`` deep, straight from NumPy
    (``tolist`` would make a Python int of every code: about 36 bytes each, for a whole shard at once)::

        [[1, 2, 3], [4, 5, 6]]   values 1 2 3 4 5 6 · inner offsets 0 3 6 · outer offsets 0 2
    """
    import numpy as np

    values = pa.array(np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.uint16))
    for axis in reversed(range(ndim)):  # the innermost lists first: prod(shape[:axis]) lists of shape[axis]
        lengths = [np.full(int(np.prod(a.shape[:axis])), a.shape[axis], np.int64) for a in arrays]
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths) if arrays else [])]).astype(np.int32)
        values = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
    return values


def _parquet_record(result: FileResult, split: bool) -> dict:
    c = result.codes
    carried = {key: _utf8(value) for key, value in (result.carried or {}).items()}
    return {"input": _utf8(result.input), "output": _utf8(result.output), "codec": c.codec,
            "num_codebooks": c.num_codebooks, "frames": c.num_frames, "num_samples": c.num_samples,
            "source_sample_rate": c.source_sample_rate, "source_channels": c.source_channels, "channels": c.channels,
            "weights_id": c.weights_id, "streamed": c.streamed, "codes": c.codes if split else c.codes[0],
            "__carried__": carried}


def _utf8(value):
    """Text Parquet can hold: a file name that is not UTF-8 (its bytes held as surrogates) gets ``\\xNN``
    for those bytes; anything else as it is."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return os.fsencode(value).decode("utf-8", "backslashreplace")
