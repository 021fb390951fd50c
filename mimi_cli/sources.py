"""Where an input's audio lives when it is not a whole file of its own.

    manifest.jsonl   {"audio_filepath": "a.wav", "offset": 1.5, "duration": 2.0, "text": ...}   a span of a file
    shard-000.tar    WebDataset: 0001.flac, 0001.json, 0002.flac ...                           a member of a tar
    shar/            lhotse Shar: cuts.000000.jsonl.gz beside recording.000000.tar             a member of a tar
    data/train/      a Kaldi data folder: wav.scp, and segments, text, utt2spk if there        a span of a file
    dataset/         a Hugging Face `save_to_disk` folder (*.arrow) or Parquet files with an
                     audio column ({"bytes", "path"} structs, or paths)                        a row of a table

Each becomes an :class:`Item` of a :class:`~mimi_cli.pipeline.Task`. Planning lists the items
(reading tar headers and table metadata only); a worker opens one item's audio at a time with
:func:`open_item`, giving the same block-reading interface as a file (``samplerate``,
``channels``, ``frames``, ``read``, ``tell``), so every engine and ``--stream`` work on items
unchanged. A line, member or row that cannot be read fails that item alone, in one line.
Keys other than the audio (a manifest's ``text``, a shard's ``.json``/``.txt`` members, a
table's scalar columns) are carried to the run's manifest and Parquet rows.
"""

from __future__ import annotations

import bisect
import bz2
import contextlib
import csv
import gzip
import io
import json
import lzma
import math
import os
import posixpath
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from mimi_cli.arrow_ipc import declared_bytes
from mimi_cli.audio import BlockReader
from mimi_cli.errors import (InvalidAudioError, InvalidCodesError, MimiError, counted, first_line, gigabytes,
                             loads_json, memory_said, needs_extra, os_reason, usable_memory)
from mimi_cli.fileio import (STDIN, check_stdin, file_kind, head_holds, holds, home_expanded, local_path, native,
                             standard_input, text_kind, url)
from mimi_cli.parquet_footer import column_values

MANIFEST_PATH_KEYS = ("audio_filepath", "path", "file_name")  # NeMo; lists; a Hugging Face audiofolder's metadata
# Other tools' names for a span's ends (WhisperX's segments, GigaSpeech's begin_time …), where NeMo's are offset and
# duration: a line that gives these alone is read whole, their keys carried, and the run says so once.
SPAN_LOOKALIKES = ("start", "end", "begin", "stop", "start_time", "end_time", "begin_time")
MAX_MEMBER_BYTES = 2 << 30  # an audio member or cell read into memory at once
MAX_CARRIED_BYTES = 64 << 10  # a shard's text/JSON member carried along
TEXT_SUFFIXES = (".json", ".txt", ".cls", ".id")  # WebDataset members carried as keys


@dataclass(frozen=True, slots=True)
class Item:
    """One input's audio inside something larger."""

    kind: Literal["span", "tar", "row", "invalid"]
    container: str  # the audio file (span), the tar shard, or the table file
    key: str = ""  # tar member name, or the row number in the table file
    column: str = ""  # a table's audio column
    offset: float = 0.0  # span: seconds into the file
    duration: float | None = None  # span: seconds, or to the end
    extra: str = "{}"  # carried keys, as JSON (kept a string so tasks stay hashable and picklable)
    error: str = ""  # invalid: why this line or row cannot be an input

    @property
    def carried(self) -> dict:
        return json.loads(self.extra)


@dataclass(frozen=True, slots=True)
class Entry:
    """A listed item: what to show for it, the item, and the relative path of its output."""

    name: str
    item: Item
    relative: Path
    unread: tuple[str, ...] = ()  # the SPAN_LOOKALIKES keys of a line that gives no offset or duration


def _invalid(name: str, problem: str, relative: str) -> Entry:
    return Entry(name, Item("invalid", name, error=problem), Path(relative))


# ----------------------------------------------------------------------------- listing


# NeMo names its JSON-lines manifests .json; lhotse writes .jsonl.gz (read through gzip); Common Voice's lists are
# .tsv, an audiofolder's metadata .csv (a header row naming the columns)
DELIMITERS = {".csv": ",", ".tsv": "\t"}
MANIFEST_NAMES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", *DELIMITERS, *(f"{s}.gz" for s in DELIMITERS))
COMPRESSED_TARS = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


def is_container(path: Path) -> bool:
    """A manifest, a tar shard, a dataset folder / Parquet file, a lhotse Shar folder or a Kaldi data folder:
    inputs that hold many items."""
    suffix = path.suffix.lower()
    return (suffix in (".tar", ".parquet", ".arrow") or path.name.lower().endswith((*MANIFEST_NAMES, *COMPRESSED_TARS))
            or folder_kind(path) is not None)


DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")  # what save_to_disk writes in its folder


def folder_kind(path: Path) -> Literal["shar", "kaldi", "dataset"] | None:
    """What a folder of items is: lhotse Shar (cuts shards beside the recording tars that hold their audio), a
    Kaldi data folder (a ``wav.scp``), a Hugging Face ``save_to_disk`` dataset; None for any other folder, or a
    file, or a folder whose files cannot be looked at (no search permission: it is said when it is listed)."""
    try:
        if not path.is_dir():
            return None
        if _shar_shards(path):
            return "shar"
        if (path / "wav.scp").is_file():
            return "kaldi"
        return "dataset" if any((path / name).exists() for name in DATASET_FILES) else None
    except OSError:
        return None


def is_table(path: Path) -> bool:
    """A container of rows (Parquet, Arrow, a dataset folder): what decode reads codes from, too."""
    return path.suffix.lower() in (".parquet", ".arrow") or folder_kind(path) == "dataset"


def list_items(path: Path, audio_column: str = "audio", manifest: bool = False) -> list[Entry]:
    """The items in a manifest (any name with ``manifest``), a tar shard or a dataset; a container that
    cannot be listed is one invalid entry saying why."""
    suffix = path.suffix.lower()
    try:
        if manifest or path.name.lower().endswith(MANIFEST_NAMES):
            return list_manifest(path)
        if suffix == ".tar":
            return list_tar(path)
        kind = folder_kind(path)
        if kind == "shar":
            return list_shar(path)
        if kind == "kaldi":
            return list_kaldi(path)
        if path.name.lower().endswith(COMPRESSED_TARS):  # each member is read on its own, by any worker
            raise MimiError(f"{path} is a compressed tar shard, whose members cannot be reached one by one without "
                            "decompressing all before them each time: decompress it first (e.g. gunzip -k) and "
                            "give the .tar")
        return list_table(path, audio_column)
    except MimiError as exc:
        return [_invalid(str(path), str(exc), path.stem)]


def list_manifest(path: Path) -> list[Entry]:
    """NeMo-style JSONL: one object per line with ``audio_filepath`` (or ``path``), optional ``offset`` and
    ``duration`` in seconds; other keys are carried. A lhotse cut or recording (see :func:`_from_lhotse`) is
    read as such a line. A line that is not JSON (no ``{`` or ``[`` first) is a path alone, so a plain list
    of files works too (``find … |``, one per line or ``-print0``'s NUL-separated). A file that is one JSON
    array of such objects (or of paths) is read the same way, its items numbered from 1 as lines are. A ``.csv``
    or ``.tsv`` list (``.gz`` too) is rows under a first row naming the columns (see :func:`_rows`).
    Relative paths start at the manifest (at the working folder for standard input, ``-``, or a pipe, read
    once here; for lhotse's, which lhotse opens as they are written, at the working folder too)."""
    text, base = _manifest_text(path)
    delimiter = DELIMITERS.get(Path(path.name.lower().removesuffix(".gz")).suffix)
    clips = base / "clips" if delimiter and os.path.isdir(base / "clips") else None  # Common Voice's files
    entries = []
    for number, name, record, problem in (_rows(text, str(path), delimiter) if delimiter else
                                          _records(text, str(path), base)):
        lhotse = problem is None and ("recording" in record or "sources" in record
                                      or record.get("type") in (*LHOTSE_READ, "MixedCut", "PaddingCut"))
        if lhotse:
            record, problem = _from_lhotse(record, name)
        if problem is None:
            entry, problem = _manifest_entry(record, name, number, Path.cwd() if lhotse else
                                             _row_base(record, base, clips) if clips else base)
        entries.append(_invalid(name, problem, f"line-{number:06d}") if problem else entry)
    return entries


LHOTSE_READ = ("MonoCut", "MultiCut", "Recording")  # lhotse's kinds of record that can name one file


def _from_lhotse(record: dict, name: str) -> tuple[dict | None, str | None]:
    """A lhotse cut (``{"id", "start", "duration", "channel", "recording": {…}, "supervisions": […]}``) or
    recording (``{"id", "sources": [{"type": "file", "channels": [0], "source": PATH}], …}``) as a NeMo
    line: its file, ``offset`` (the cut's start), ``duration``; every other key of the cut carried. Only
    what names one file, whole or in part, can be read as it means: a cut of some of a recording's
    channels, a recording kept in several files (one a channel), a URL or a command as the source, and
    mixed or padding cuts each fail alone, saying which."""
    cut = "sources" not in record
    recording = record.get("recording") if cut else record
    kind = record.get("type", "MonoCut" if cut else "Recording")
    sources = recording.get("sources") if isinstance(recording, dict) else None
    if kind not in LHOTSE_READ:
        return None, f"{name} is a lhotse {kind}, which mimi does not read: only cuts of one recording " \
                     "(MonoCut, MultiCut) and recordings"
    if not isinstance(sources, list) or not sources:
        return None, f"{name}: its lhotse recording names no sources (a list of files)"
    transforms = recording.get("transforms")
    if transforms:  # lhotse's speed perturbation, resampling, volume…: the file's audio is not what it means
        named = [t.get("name", "?") if isinstance(t, dict) else "?" for t in transforms] \
            if isinstance(transforms, list) else ["?"]
        return None, f"{name}: its lhotse recording is transformed on loading ({', '.join(map(str, named))}), " \
                     "which mimi does not do; encode the recording without them"
    if len(sources) > 1:
        return None, f"{name}: its lhotse recording is kept in {len(sources)} files (a channel each?), which " \
                     "mimi does not join; give one file per recording"
    source = sources[0] if isinstance(sources[0], dict) else {}
    if source.get("type") == "shar":
        return None, f"{name} is a lhotse Shar cut, whose audio is in the recording tar beside its cuts file: " \
                     "give their folder"
    if source.get("type") != "file" or not isinstance(source.get("source"), str):
        return None, f"{name}: its lhotse source is of type {source.get('type')!r}, and mimi reads files " \
                     "(type 'file') only"
    channels, given = source.get("channels"), record.get("channel") if cut else None
    chosen = [given] if type(given) is int else given
    for what, value in (("cut's channel", chosen), ("source's channels", channels)):
        if value is not None and not (isinstance(value, list) and all(type(c) is int for c in value)):
            return None, f"{name}: its lhotse {what} must be a channel number or a list of them, not {value!r}"[:300]
    if chosen is not None and channels is not None and set(chosen) != set(channels):
        return None, f"{name}: its lhotse cut takes channel(s) {chosen} of the {len(channels)} in " \
                     f"{source['source']}; mimi encodes every channel (mixed, or each with --channels split)"
    converted = {k: v for k, v in record.items() if k not in ("recording", "sources", "start", "channel", "type")}
    converted["audio_filepath"] = source["source"]
    if cut:
        converted["offset"] = record.get("start", 0.0)
    else:  # a whole recording: its duration is what it measured, not a span to cut
        converted.pop("duration", None)
    return converted, None


def _records(text: str, shown: str, base: Path | None = None):
    """``(number, name, record, problem)`` for each non-blank line of a manifest, or item of a JSON array. A line
    of a list of lines whose first character past white space is ``#`` is a comment, as in rsync's
    ``--files-from``, unless it names a file (relative to ``base``: ``ls``'s ``#take1#.wav``)."""
    array = _json_array(text)
    if array is not None:
        _check_listing(len(array), shown)
        for number, record in enumerate(array, 1):
            name = f"{shown}:{number}"
            if isinstance(record, str):
                record = {"audio_filepath": record}
            kind = None if isinstance(record, dict) else _JSON_TYPES.get(type(record), "value")
            yield number, name, record, kind and f"{name} is a JSON {kind}, not an object or a path"
        return
    lines, comments = (text.split("\0"), False) if "\0" in text else (text.splitlines(), True)  # -print0's: none
    for number, line in enumerate(lines, 1):
        if not line.strip() or comments and line.lstrip().startswith("#") and not (
                base is not None and os.path.lexists(base / line.strip())):
            continue
        name = f"{shown}:{number}"
        try:
            record = loads_json(line)
            kind = None if isinstance(record, dict) else _JSON_TYPES[type(record)]
            yield number, name, record, kind and f"{name} is a JSON {kind}, not an object"
        except ValueError as exc:
            if line.lstrip()[:1] in ("{", "["):  # meant as JSON
                yield number, name, None, f"{name} is not JSON ({exc})"
            else:  # a path alone: the input is that file, not a line of a list (a URL's line is named as one)
                path = line.strip()
                yield number, name if url(path) else path, {"audio_filepath": path}, None


def _rows(text: str, shown: str, delimiter: str):
    """``(number, name, record, problem)`` for each row of a CSV or TSV list whose first row names its columns
    (Common Voice's ``train.tsv``: ``path``, ``sentence`` …; an audiofolder's ``metadata.csv``: ``file_name`` …),
    its values strings but ``offset`` and ``duration``, numbers. A TSV is read as Common Voice writes it: no
    quoting, a tab never inside a value."""
    kind, quoting = ("TSV", csv.QUOTE_NONE) if delimiter == "\t" else ("CSV", csv.QUOTE_MINIMAL)
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(rows, None)
        if header is not None and not set(MANIFEST_PATH_KEYS) & set(header):
            raise MimiError(f"{shown}: its first row names no column of paths ({', '.join(MANIFEST_PATH_KEYS)}), "
                            f"but {', '.join(map(repr, header[:8]))[:300]}")
        for values in rows if header is not None else ():
            number, name = rows.line_num, f"{shown}:{rows.line_num}"
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                counted = f"{len(values)} value" + "s" * (len(values) != 1)
                yield number, name, None, f"{name} has {counted}, and its first row names {len(header)}"
                continue
            record = dict(zip(header, values, strict=True))
            for key in ("offset", "duration"):
                if record.get(key, "").strip() == "":
                    record.pop(key, None)
                else:
                    with contextlib.suppress(ValueError):
                        record[key] = float(record[key])
            yield number, name, record, None
    except csv.Error as exc:
        raise MimiError(f"cannot read {shown} as {kind} (line {rows.line_num}: {exc})") from None


def _row_base(record: dict, base: Path, clips: Path) -> Path:
    """Where a CSV or TSV row's relative path starts: the list's folder, or, for a file not there, the ``clips``
    folder beside the list, where Common Voice keeps the files its ``train.tsv`` names (by name alone; a missing
    one is then said to be missing there)."""
    path = next((record[k] for k in MANIFEST_PATH_KEYS if isinstance(record.get(k), str)), "")
    return clips if path and not os.path.isabs(path) and not os.path.lexists(base / path) else base


def _json_array(text: str) -> list | None:
    """The items of a manifest that is one JSON array (``[{…}, {…}]``), else None (JSON lines, a list of paths)."""
    if not text.lstrip().startswith("["):
        return None
    try:
        whole = loads_json(text)
    except ValueError:
        return None
    return whole if isinstance(whole, list) else None


def _manifest_entry(record: dict, name: str, number: int, base: Path) -> tuple[Entry | None, str | None]:
    """A manifest record as an input, or what is wrong with it."""
    key = next((k for k in MANIFEST_PATH_KEYS if isinstance(record.get(k), str)), None)
    audio = None if key is None else record[key]
    offset, duration = record.get("offset", 0.0), record.get("duration")
    bad_duration = duration is not None and not (_seconds(duration) and duration > 0)
    given = next((k for k in MANIFEST_PATH_KEYS if record.get(k) is not None), None)  # there, but not a string
    problem = (f"{name}: {given} must be a file's path (a string), not a JSON "
               f"{_JSON_TYPES.get(type(record[given]), 'value')}" if audio is None and given else
               f"{name} has no audio_filepath (or path, or file_name)" if audio is None else
               _nul_problem(name, key) if "\0" in audio else
               f"{name}: its {key} is empty" if not audio else
               f"{name}: offset must be a number of seconds from 0 to {MAX_SECONDS:,.0f}" if not _seconds(offset)
               else f"{name}: duration must be a number of seconds above 0, at most {MAX_SECONDS:,.0f}"
               if bad_duration else None)
    if problem:
        return None, problem
    written = audio
    try:
        audio = local_path(audio, name)  # file:///data/a.wav is /data/a.wav
    except MimiError as exc:
        return None, str(exc)
    if url(audio):
        return None, f"{name}: {audio} is a URL, and mimi reads files on this machine or a mounted file system: " \
                     "download it first"
    if Path(audio).name in ("", ".", ".."):
        return None, f"{name if name == written else f'{name}: {written}'} names a folder, not a file"
    expanded = home_expanded(audio)
    audio_path = expanded if expanded.is_absolute() else base / expanded
    own = {"manifest_line": number, "audio_filepath": audio, "offset": offset, "duration": duration}
    carried = {**own, **{k: v for k, v in record.items() if k not in (*MANIFEST_PATH_KEYS, *own)}}
    # mirrored under -o: a relative path as written, without ".."; an absolute one whole for now (the run
    # takes it from the folder all its absolute paths share: batch.from_shared_folder)
    relative = Path("/" + os.path.normpath(expanded).lstrip("/")) if expanded.is_absolute() else \
        Path(*[p for p in expanded.parts if p != ".."])  # (normpath keeps POSIX's "//" at the start)
    relative = relative if relative.stem in (".", "..") else relative.with_suffix("")  # "..wav" stays itself
    if record.get("offset") is not None or duration is not None:  # one file, several spans: one output each
        relative = relative.with_name(f"{relative.name}_{round(offset * 1000)}ms")
    unread = () if "offset" in record or "duration" in record else \
        tuple(key for key in SPAN_LOOKALIKES if key in record and _like_seconds(record[key]))
    return Entry(name, Item("span", str(audio_path), offset=float(offset),
                            duration=None if duration is None else float(duration), extra=json.dumps(carried)),
                 relative, unread), None


def _like_seconds(value) -> bool:
    """A number of seconds, or a CSV's text of one."""
    with contextlib.suppress(ValueError):
        return _seconds(float(value) if isinstance(value, str) else value)
    return False


def unread_spans_note(first: str, lines: int, keys: set[str]) -> str:
    """What to say of ``lines`` lines (the first named ``first``) that give ``keys`` of SPAN_LOOKALIKES and no
    offset or duration: each is read whole."""
    more = f" and {counted(lines - 1, 'more line')}" if lines > 1 else ""
    ordered = [key for key in SPAN_LOOKALIKES if key in keys]
    given = " and ".join(filter(None, (", ".join(ordered[:-1]), ordered[-1])))
    return (f"{first}{more} {'give' if more else 'gives'} {given}, carried along and not read: the whole file "
            "is encoded (a span is offset and duration, in seconds)")


def _check_listing(items: int, shown: str) -> None:
    """Refuse a list of more items (or lines) than this machine can plan (ROW_LISTING_BYTES each, under half
    its memory), before they are split and parsed."""
    memory = usable_memory()
    if memory and items * ROW_LISTING_BYTES > memory // 2:
        raise MimiError(f"{shown} holds {items:,} lines; planning them would take more than half "
                        f"{memory_said(memory)} ({ROW_LISTING_BYTES:,} bytes each): split it into smaller lists")


def _bounded_read(f, shown: str) -> bytes:
    """All of a list, or a refusal once it goes past an eighth of the memory (a pipe whose writer never ends)."""
    memory = usable_memory()
    limit = (memory or 1 << 62) // 8
    data, size = [], 0
    while block := f.read(1 << 20):  # in blocks: read(limit) would allocate the limit, gigabytes, for any list
        size += len(block)
        if size > limit:
            raise MimiError(f"{shown} goes on past {gigabytes(limit)}, an eighth of {memory_said(memory)} (does "
                            "what writes it ever end?): split the list into smaller ones")
        data.append(block)
    return b"".join(data)


_COMPRESSED = ((b"\x1f\x8b", gzip), (b"BZh", bz2), (b"\xfd7zXZ\x00", lzma))  # magic bytes, module


def _decompressed(data: bytes, shown: str) -> bytes:
    """A list compressed with gzip (``manifest.jsonl.gz``), bzip2 or xz, decompressed, as far as an eighth of
    the memory (a small file can hold a great deal); any other list as it is."""
    module = next((module for magic, module in _COMPRESSED if data.startswith(magic)), None)
    if module is None:
        return data
    try:
        with module.open(io.BytesIO(data)) as f:
            return _bounded_read(f, f"{shown}, decompressed,")
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:  # a damaged or truncated stream
        raise MimiError(f"cannot decompress {shown} ({module.__name__}: {exc or type(exc).__name__}); it is cut "
                        "short or damaged") from None


def _manifest_text(path: Path) -> tuple[str, Path]:
    """A manifest's text and the folder its relative paths start at."""
    stdin = str(path) == STDIN
    shown = "--inputs-from - (standard input)" if stdin else f"manifest {path}"
    try:
        if stdin:
            check_stdin("--inputs-from -", "the list")
            data, base = _bounded_read(standard_input(), shown), Path.cwd()
        else:
            kind = file_kind(os.stat(path).st_mode)
            if kind not in (None, "a pipe (FIFO)"):
                raise MimiError(f"manifest {path} is {kind}, not a file")
            with open(path, "rb") as f:
                data = _bounded_read(f, shown)
            base = path.parent if kind is None else Path.cwd()  # a pipe's folder (/dev/fd) holds no audio
        data = _decompressed(data, shown)
        held = head_holds(data[:264])
        # a binary file's NULs would read as a list of names (find -print0); a list of printable names may
        # start as a format's magic does ("FORMANT/a.wav" as AIFF's FORM)
        if held not in (None, "JSON text") and text_kind(data[:264]) is None:
            named = not stdin and path.name.lower().endswith(MANIFEST_NAMES)  # named as an input, read as a list
            raise MimiError(f"{shown} is {held}, not a list of inputs (paths, JSON lines, CSV or TSV); "
                            + ("rename it: its name says it is a list" if named else
                               "to use it as an input, name it without --inputs-from"))
        _check_listing(max(data.count(b"\n"), data.count(b"\0")), shown)
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16, as Windows PowerShell's `>` writes
            return data.decode("utf-16"), base
        # a byte-order mark (Notepad's UTF-8) dropped; a file name that is not UTF-8 kept as its bytes
        return data.decode("utf-8-sig", errors="surrogateescape"), base
    except (OSError, UnicodeDecodeError) as exc:
        raise MimiError(f"cannot read manifest {'standard input' if stdin else path}: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}
MAX_SECONDS = 1e9  # 31 years: beyond any recording, and small enough to count in samples or milliseconds


def _seconds(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_SECONDS


def list_tar(path: Path) -> list[Entry]:
    """A WebDataset shard: members grouped by key (the name up to the first dot of its last part);
    each audio member is an item, the key's text and JSON members are carried with it."""
    from mimi_cli.audio import AUDIO_SUFFIXES

    try:
        headers = _tar_headers(str(path), _identity(str(path)))
        members = [m for name, m in headers.items() if name == m.name and (m.isfile() or m.islnk() or m.issym())]
        texts: dict[str, dict] = {}
        with tarfile.open(path, mode="r:") as shard:
            for member in members:
                key, suffix = _split_key(member.name)
                target = _link_target(headers, member)
                if suffix.lower() in TEXT_SUFFIXES and target is not None and target.size <= MAX_CARRIED_BYTES:
                    data = shard.extractfile(target).read().decode("utf-8", errors="replace")
                    with_suffix = suffix.lstrip(".")
                    try:
                        texts.setdefault(key, {})[with_suffix] = loads_json(data) if suffix == ".json" else data
                    except ValueError:
                        texts.setdefault(key, {})[with_suffix] = data
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise MimiError(f"cannot read tar shard {path} ({exc}){_holds_else(path, 'a tar archive')}") from None
    audio = []  # (member name, key)
    for member in members:
        key, suffix = _split_key(member.name)
        if suffix.lower() in AUDIO_SUFFIXES:
            audio.append((member.name, key))
    # a sample may hold several audio fields (0001.mic1.flac, 0001.mic2.flac): each output is then named after its
    # member (0001.mic1.flac.npz), as the key alone would name them all
    fields = Counter(key for _, key in audio)
    entries = []
    for name, key in audio:
        carried = {"__key__": key, "__url__": str(path), **texts.get(key, {})}
        relative = Path(path.stem) / _safe(key if fields[key] == 1 else name)
        if "\0" in name:  # a pax header's name may hold one
            entries.append(_invalid(f"{path}#{name}", _nul_problem(f"{path}#{name}", "member name"), str(relative)))
            continue
        if _link_target(headers, headers[name]) is None:
            entries.append(_invalid(f"{path}#{name}", f"{path}#{name} is a link to {headers[name].linkname}, which "
                                    "leads to no file in the shard (links are followed inside it only)",
                                    str(relative)))
            continue
        entries.append(Entry(f"{path}#{name}", Item("tar", str(path), name, extra=json.dumps(carried)), relative))
    return entries


# lhotse Shar (lhotse.shar.SharWriter): each shard is cuts{N}.jsonl[.gz] and, for the cuts' audio, recording{N}.tar
# holding {cut id}.{flac,wav,mp3,opus} (the cut's own audio: its span, its channels) and {cut id}.json (its recording,
# a placeholder); a cut written without audio has {cut id}.nodata. N is a shard's number (".000000"), or nothing.
_SHAR_CUTS = re.compile(r"cuts(.*)\.jsonl(\.gz)?")


def _shar_shards(path: Path) -> list[tuple[Path, Path]]:
    """A folder's (cuts file, recording tar) pairs, matched by shard number; none if it is no Shar folder
    (a cuts manifest beside audio files, say, has no recording tar)."""
    try:  # names only, and only these: asked of every folder an input names, which may hold a million files
        with os.scandir(path) as entries:
            names = {e.name for e in entries if e.name.startswith(("cuts", "recording"))}
    except OSError:
        return []
    pairs = [(path / name, path / f"recording{shard[1]}.tar") for name in sorted(names)
             if (shard := _SHAR_CUTS.fullmatch(name))]
    return pairs if any(tar.name in names for _, tar in pairs) else []


def list_shar(path: Path) -> list[Entry]:
    """A lhotse Shar folder's cuts, each the tar member named by its id (read whole: lhotse wrote the cut's audio
    alone, from its start, of its channels); every key of the cut but its recording is carried, with the tar as
    ``__url__`` and the id as ``__key__``, as a WebDataset shard's are. A cut that lhotse wrote without audio, or
    whose member is missing, fails alone; so does every cut of a shard whose tar cannot be read."""
    from mimi_cli.audio import AUDIO_SUFFIXES

    entries = []
    for cuts, tar in _shar_shards(path):
        try:
            headers = _tar_headers(str(tar), _identity(str(tar)))
        except FileNotFoundError:
            problem = f"{cuts} has no {tar.name} beside it, which would hold its cuts' audio"
            entries.append(_invalid(str(cuts), problem, str(Path(path.name) / cuts.name)))
            continue
        except (OSError, tarfile.TarError, EOFError) as exc:
            entries.append(_invalid(str(tar), f"cannot read Shar shard {tar} ({exc})", str(Path(path.name) / tar.stem)))
            continue
        try:
            text = _manifest_text(cuts)[0]
        except MimiError as exc:
            entries.append(_invalid(str(cuts), str(exc), str(Path(path.name) / cuts.name)))
            continue
        for number, name, record, problem in _records(text, str(cuts)):
            cut_id = record.get("id") if problem is None else None
            if problem is None and (not isinstance(cut_id, str) or not cut_id):
                problem = f"{name}: its lhotse cut has no id (a string), which names its audio in {tar.name}"
            if problem is None and "\0" in cut_id:
                problem = _nul_problem(name, "cut id")
            member = None if problem else next(
                (f"{cut_id}{suffix}" for suffix in AUDIO_SUFFIXES if f"{cut_id}{suffix}" in headers), None)
            if problem is None and member is None:
                problem = (f"{name}: lhotse wrote cut {cut_id} without its audio ({cut_id}.nodata in {tar})"
                           if f"{cut_id}.nodata" in headers else f"{name}: {tar} holds no audio for cut {cut_id}")
            relative = Path(path.name) / (_safe(cut_id) if isinstance(cut_id, str) else f"line-{number:06d}")
            if problem:
                entries.append(_invalid(name, problem, str(relative)))
                continue
            carried = {"__key__": cut_id, "__url__": str(tar),
                       **{k: v for k, v in record.items() if k not in ("recording", "start", "channel", "type")}}
            entries.append(Entry(f"{tar}#{member}", Item("tar", str(tar), member, extra=json.dumps(carried)),
                                 relative))
    return entries


def list_kaldi(path: Path) -> list[Entry]:
    """A Kaldi data folder: ``wav.scp`` (``<recording> <path>`` a line), and, when there, ``segments``
    (``<utterance> <recording> <start> <end>`` in seconds, ``end`` -1 for the recording's end), ``text``
    (``<utterance> <words>``) and ``utt2spk`` (``<utterance> <speaker>``). Each utterance is a span of its
    recording's file (each recording whole, without ``segments``), its words and speaker carried; its output is
    named by its id. Paths start at the working folder, as Kaldi's tools open them. A recording that is a command
    (``… |``) or a place in an archive (``x.ark:123``), a segment of a recording wav.scp lacks, and a line of
    the wrong shape fail alone."""
    scp = path / "wav.scp"
    recordings = {fields[0]: (number, fields[1] if len(fields) > 1 else "") for number, fields in _kaldi_table(scp, 2)}
    words = dict(fields for _, fields in _kaldi_table(path / "text", 2) if len(fields) == 2)
    speakers = dict(fields for _, fields in _kaldi_table(path / "utt2spk", 2) if len(fields) == 2)
    segmented = (path / "segments").is_file()
    utterances = [(f"{path / 'segments'}:{number}", number, fields) for number, fields in
                  _kaldi_table(path / "segments", 4)] if segmented else \
        [(f"{scp}:{number}", number, [rec, rec, "0", "-1"]) for rec, (number, _) in recordings.items()]
    entries = []
    for name, number, fields in utterances:
        relative = str(Path(path.name) / _safe(fields[0]))
        problem = _kaldi_problem(name, fields, recordings, scp)
        if problem:
            entries.append(_invalid(name, problem, relative))
            continue
        utterance, recording, start, end = fields[0], fields[1], float(fields[2]), float(fields[3])
        record = {"audio_filepath": recordings[recording][1], "id": utterance, "recording_id": recording,
                  **({"offset": start} if segmented else {}), **({"duration": end - start} if end != -1 else {}),
                  **({"text": words[utterance]} if utterance in words else {}),
                  **({"speaker": speakers[utterance]} if utterance in speakers else {})}
        entry, problem = _manifest_entry(record, name, number, Path.cwd())
        entries.append(_invalid(name, problem, relative) if problem else Entry(entry.name, entry.item, Path(relative)))
    return entries


def _kaldi_table(path: Path, fields: int) -> list[tuple[int, list[str]]]:
    """A Kaldi table's non-blank lines, numbered, each split in at most ``fields`` fields at whitespace (the last
    keeps its spaces: a transcript, a command); none when the file is not there."""
    if not path.is_file():
        return []
    lines = _manifest_text(path)[0].splitlines()
    return [(number, line.strip().split(None, fields - 1)) for number, line in enumerate(lines, 1) if line.strip()]


def _kaldi_problem(name: str, fields: list[str], recordings: dict[str, tuple[int, str]], scp: Path) -> str | None:
    """What is wrong with a segment (``fields``: utterance, recording, start, end), its recording one of
    ``recordings`` (each: its line in wav.scp, what it names), or None."""
    if len(fields) != 4:
        return f"{name} has {len(fields)} fields; a segment is <utterance> <recording> <start> <end>"
    if "\0" in fields[0]:
        return _nul_problem(name, "utterance id")
    recording = recordings.get(fields[1])
    if recording is None:
        return f"{name} names recording {fields[1]}, which {scp} does not list"
    named, source = f"{name}: its recording {fields[1]} ({scp.name} line {recording[0]})", recording[1]
    if not source:
        return f"{named} names no file"
    if source.endswith("|"):
        return f"{named} is a command ({source[:80]}), which mimi does not run: give the file it reads"
    if re.search(r"\.(ark|scp):\d+$", source):
        return f"{named} is a place in an archive ({source[:80]}), which mimi does not read: give an audio file"
    try:
        start, end = float(fields[2]), float(fields[3])
    except ValueError:
        start = end = math.nan
    if not (_seconds(start) and (end == -1 or _seconds(end) and end > start)):
        return f"{name}: start and end must be seconds, start below end (end -1 for the recording's end)"
    return None


def _nul_problem(name: str, what: str) -> str:
    """Why an item fails whose file, or whose output's name, would hold a NUL character."""
    return f"{name}: its {what} holds a NUL character, which no file name can"


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: ``dir/0001.seg.flac`` → (``dir/0001``, ``.seg.flac``)'s key and the audio suffix."""
    folder, _, base = name.rpartition("/")
    stem, dot, rest = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, "." + rest.rsplit(".", 1)[-1] if dot else ""


def _safe(key: str) -> Path:
    """A member key as a relative path that stays inside the output folder (a NUL, which no file name holds,
    shown as ``\\0``: the item of such a key fails, see _nul_problem)."""
    parts = [p for p in key.replace("\0", "\\0").split("/") if p not in ("", ".", "..")]
    return Path(*parts) if parts else Path("item")


def _table_files(path: Path) -> list[Path]:
    """A file itself; in a folder, the data files each ``save_to_disk`` split's ``state.json`` lists (a
    DatasetDict has one per split), else every .arrow and .parquet file. Not every .arrow file: a dataset
    loaded from disk keeps the caches of its ``map`` and ``filter`` beside its data (``cache-*.arrow``:
    its rows again, or only their indices)."""
    if not path.is_dir():
        return [path]
    states = sorted(path.rglob("state.json"))
    files = ([file for state in states for file in _state_files(state)] if states else
             sorted(path.rglob("*.arrow")) + sorted(path.rglob("*.parquet")))
    if not files:
        raise MimiError(f"{path} holds no .arrow or .parquet files; give a dataset saved with save_to_disk "
                        "or Parquet files")
    return files


def _state_files(state: Path) -> list[Path]:
    """The data files a ``state.json`` lists (``{"_data_files": [{"filename": …}, …]}``): plain names of
    files in its own folder, never a path out of it."""
    try:
        listed = loads_json(state.read_bytes())["_data_files"]
        names = [entry["filename"] for entry in listed]
        if not all(isinstance(name, str) for name in names):
            raise TypeError("a filename that is not text")
    except OSError as exc:
        raise MimiError(f"cannot read {state}: {os_reason(exc)}") from None
    except (ValueError, LookupError, TypeError) as exc:
        raise MimiError(f"{state} is not a dataset's state (no list of _data_files with a filename each: "
                        f"{exc}); save the dataset again with save_to_disk") from None
    for name in names:
        if name in ("", ".", "..") or "/" in name or "\\" in name or not (state.parent / name).is_file():
            raise MimiError(f"{state} lists {name!r}, which is no file in {state.parent}; data files are named "
                            "there, beside it")
    return [state.parent / name for name in names]


ROW_LISTING_BYTES = 2048  # what a run holds for each item it lists and plans (measured: about 1.8 KB)


def list_table(path: Path, audio_column: str) -> list[Entry]:
    """Rows of a Hugging Face dataset (``save_to_disk`` folder of Arrow files) or of Parquet files; their
    ``audio_column`` holds audio, or codes for decode."""
    entries = []
    for file in _table_files(path):
        schema, names, rows = _table_shape(file)
        memory = usable_memory()
        if memory and rows * ROW_LISTING_BYTES > memory // 2:  # before listing a count a small file can declare
            raise MimiError(f"{file} declares {rows:,} rows; listing them would take more than half "
                            f"{memory_said(memory)} ({ROW_LISTING_BYTES:,} bytes each): split it into smaller files")
        if audio_column not in names:
            raise MimiError(f"{file} has no column {audio_column!r} (columns: {', '.join(names)}); name "
                            "the column to read with --audio-column (encode) or --codes-column (decode)")
        carried_columns = [f.name for f in schema if f.name != audio_column and _scalar(f.type)]
        relative_base = Path(path.name) / file.relative_to(path).with_suffix("") if path.is_dir() else Path(file.stem)
        for row in range(rows):
            entries.append(Entry(f"{file}#{row}", Item("row", str(file), str(row), audio_column,
                                                       extra=json.dumps({"__columns__": carried_columns})),
                                 relative_base / f"{row:08d}"))
    return entries


def _scalar(arrow_type) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_string(
        arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_boolean(arrow_type)


@lru_cache(maxsize=8)
def _table_shape(file: Path):
    """A table file's schema, column names and row count, or a one-line error for a damaged file; read once
    per worker (listing, then each row's metadata columns)."""
    pa, pq = _pyarrow()
    try:
        if file.suffix.lower() == ".parquet":
            with arrow_file(file) as f:
                parquet = pq.ParquetFile(f)
            declared, starts = parquet.metadata.num_rows, _row_group_starts(str(file))
            if declared != starts[-1]:  # a footer's count is a number anyone can write: the row groups agree
                raise MimiError(f"{file} declares {declared:,} rows, and its row groups {starts[-1]:,}: the file is "
                                "damaged; write it again")
            schema, rows = parquet.schema_arrow, declared
        else:
            table = _arrow_table(str(file))
            schema, rows = table.schema, table.num_rows
        return schema, schema.names, rows  # the names decoded here: one that is not UTF-8 raises a ValueError
    except (OSError, pa.ArrowException, LookupError, TypeError, ValueError) as exc:
        raise MimiError(f"cannot read {file} as a table ({first_line(exc)}){_holds_else(file, 'a Parquet', 'an Arrow')}"
                        ) from None


def _holds_else(path: Path, *expected: str) -> str:
    """"; it holds audio (WAV)" for a file whose first bytes say it holds something other than ``expected``."""
    kind = holds(path)
    return f"; it holds {kind}" if kind and not kind.startswith(expected) else ""


def _pyarrow():
    with needs_extra('dataset inputs need pyarrow: pip install "mimi-cli[datasets]"', "pyarrow"):
        import pyarrow as pa
        import pyarrow.parquet as pq
    return pa, pq


def arrow_file(path: Path | str, mode: str = "r"):
    """``path`` opened by pyarrow itself, named by its bytes (so that a name that is not UTF-8 opens too: see
    fileio.native). Never a Python file object: pyarrow keeps what it reads from one as buffers of Python
    objects, which its own threads free later and only with the GIL; one freed as the interpreter exits (a table
    a worker kept) ended the process with SIGABRT after its work was done ("terminate called without an active
    exception", apache/arrow#34314)."""
    pa, _ = _pyarrow()
    return pa.OSFile(native(path), mode)


@lru_cache(maxsize=2)
def _arrow_table(file: str):
    """A ``save_to_disk`` Arrow file, memory-mapped (IPC stream or file format): rows read on demand. Mapped by
    pyarrow, named by its bytes (see :func:`arrow_file`)."""
    import pyarrow as pa

    source = pa.memory_map(native(file))
    declared, memory = declared_bytes(source), usable_memory()  # its compressed buffers, once decompressed
    if memory and declared > memory // 2:
        raise MimiError(f"{file} declares {declared / 1e9:,.1f} GB once decompressed, more than half "
                        f"{memory_said(memory)}; write it without compression (as save_to_disk does) or in parts")
    source.seek(0)
    try:
        table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        table = pa.ipc.open_file(source).read_all()
    table.validate()  # each buffer as long as the lengths say (cheap): else rows would be read past their ends
    return table


# What reading a Parquet column holds for each value beside the value itself (its list levels and the decoder's
# buffers; measured with pyarrow 26: 17 bytes a value of a list of int16 or float32, 24 of int64 or float64),
# and the values' own widths by Parquet's physical type (BOOLEAN, INT32, INT64, INT96, FLOAT, DOUBLE; a byte
# array's bytes are in its decompressed size)
READ_BYTES_PER_VALUE = 16
PARQUET_WIDTHS = {0: 1, 1: 4, 2: 8, 3: 12, 4: 4, 5: 8}


@lru_cache(maxsize=2)
def _row_group(file: str, group: int, columns: tuple[str, ...]):
    """Some columns of one Parquet row group, kept while the worker reads its rows one by one.

    Checked before reading, as a compressed file can declare far more than it stores: what the row group's
    columns take once read must fit in memory, by their decompressed size and by their count of values (a
    run of one value, encoded as RLE, is a few bytes however long). Its byte columns (audio, text) are read
    as dictionaries, so that one value every row refers to (say an audio file) is held once, not copied into
    every row.

    Only the row group's own metadata is read: pyarrow's metadata of a column chunk whose statistics do
    not fit its schema ends the process (an uncaught C++ exception), where reading the chunk raises.
    """
    _, pq = _pyarrow()
    with arrow_file(file) as f:
        parquet = pq.ParquetFile(f)
        held = sum(values * (READ_BYTES_PER_VALUE + PARQUET_WIDTHS.get(kind, 8))
                   for name, kind, values in column_values(file)[group] if name in columns)
        declared, memory = max(parquet.metadata.row_group(group).total_byte_size, held), usable_memory()
        if memory and declared > memory // 2:
            raise MimiError(f"{file}: row group {group} takes {declared / 1e9:,.1f} GB once read, by what it "
                            f"declares; more than half {memory_said(memory)}: write it with smaller "
                            "row groups")
        leaves = map(parquet.schema.column, range(len(parquet.schema)))
        as_dictionary = [leaf.path for leaf in leaves
                         if leaf.path.split(".")[0] in columns and leaf.physical_type == "BYTE_ARRAY"]
        table = pq.ParquetFile(f, read_dictionary=as_dictionary).read_row_group(group, columns=list(columns))
    table.validate(full=True)  # every row's offsets at once, which a row's own check then need not repeat
    return table


@lru_cache(maxsize=8)
def _row_group_starts(file: str) -> list[int]:
    _, pq = _pyarrow()
    with arrow_file(file) as f:
        metadata = pq.ParquetFile(f).metadata
    starts = [0]
    for group in range(metadata.num_row_groups):
        starts.append(starts[-1] + metadata.row_group(group).num_rows)
    return starts


def _row(item: Item, columns: tuple[str, ...]) -> dict:
    """The given columns of the item's row (a Parquet row group or an Arrow file read once per worker)."""
    return _as_python(item, _row_table(item, columns)) if columns else {}


def _as_python(item: Item, table) -> dict:
    """A table of one row as a dict of Python values (a damaged file's names or strings may not be UTF-8)."""
    with _damaged_row(item):
        return table.to_pylist()[0]


@contextlib.contextmanager
def _damaged_row(item: Item) -> Iterator[None]:
    """What pyarrow raises on a damaged file (its own errors, and Python's on bytes it decodes), as one line."""
    pa, _ = _pyarrow()
    try:
        yield
    except (pa.ArrowException, OSError, LookupError, TypeError, ValueError) as exc:
        raise MimiError(f"cannot read row {item.key} of {item.container}: the file is damaged ({first_line(exc)})") \
            from None


def _row_table(item: Item, columns: tuple[str, ...]):
    """The item's row as a table of one row, its values checked to lie in their buffers."""
    row = int(item.key)
    with _damaged_row(item):
        if item.container.lower().endswith(".parquet"):
            starts = _row_group_starts(item.container)
            group = bisect.bisect_right(starts, row) - 1  # the group whose first row is the last at or before it
            if not (0 <= group < len(starts) - 1 and starts[group] <= row < starts[group + 1]):  # (counts < 0)
                raise MimiError(f"{item.container} has no row {row}")
            table, row, checked = _row_group(item.container, group, columns), row - starts[group], True
        else:  # memory-mapped, read as its rows are: checked row by row
            table, checked = _arrow_table(item.container).select(list(columns)), False
        table = table.slice(row, 1)
        if table.num_rows != 1:  # a row group that holds fewer rows than its metadata says
            raise MimiError(f"{item.container} has no row {item.key}: the file is damaged")
        if not checked:
            table.validate(full=True)  # this row's offsets, which the cheap check of the whole table does not see
    return table


# What a --parquet shard says of each row's codes, beside them
CODES_METADATA = ("codec", "num_samples", "source_sample_rate", "source_channels", "weights_id", "streamed")


def row_codes(item: Item, name: str, codec: str):
    """The codes of a table's row (its ``item.column`` of nested integer lists; a ``--parquet`` shard's metadata
    columns too), checked as a codes file's are: :meth:`mimi_cli.codes.CodesFile.from_row`."""
    from mimi_cli.codes import CodesFile

    if item.kind == "invalid":
        raise MimiError(item.error)
    names = _table_shape(Path(item.container))[1]
    table = _row_table(item, (item.column, *(c for c in CODES_METADATA if c in names and c != item.column)))
    row = _as_python(item, table.drop_columns([item.column]))
    row["codes"] = _dense(table.column(item.column).combine_chunks(), name)
    return CodesFile.from_row(row, name, codec)


def _dense(cell, name: str):
    """One cell of nested lists (an Arrow list array of length 1) as a NumPy array of its shape, straight from
    Arrow's buffers (a Python int per code would take 36 bytes), or an error for a null or ragged cell."""
    import pyarrow as pa

    shape, values = [], cell
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or \
            pa.types.is_fixed_size_list(values.type):
        if values.null_count:
            raise InvalidCodesError(f"{name}: its codes hold null lists; codes are [K, frames] of integers")
        lengths = set(values.value_lengths().to_numpy(zero_copy_only=False).tolist())
        if len(lengths) > 1:
            raise InvalidCodesError(f"{name}: its codes are lists of unequal lengths; codes are [K, frames]")
        shape.append(lengths.pop() if lengths else 0)
        values = values.flatten()
    if values is cell:
        raise InvalidCodesError(f"{name}: its codes column holds {cell.type}, not nested lists of integers")
    if values.null_count:
        raise InvalidCodesError(f"{name}: its codes hold null values; codes are integers")
    return values.to_numpy(zero_copy_only=False).reshape(shape)


# ----------------------------------------------------------------------------- reading


def open_item(item: Item, name: str, raw=None):
    """A block reader over one item's audio (see the module docstring); raises InvalidAudioError. ``raw``
    (an ``audio.RawFormat``): a manifest line's file holds headerless samples so laid out."""
    from mimi_cli.audio import open_audio

    if item.kind == "invalid":
        raise MimiError(item.error)
    if item.kind == "span":
        return Span(open_audio(Path(item.container), raw), item, name)
    data = _tar_member(item) if item.kind == "tar" else _row_audio(item, name)
    return open_bytes(data, name)


def carried_names(item: Item) -> list[str]:
    """The names of the keys :func:`carried_keys` gives, known without reading a table row."""
    if item.kind == "row":
        return [*item.carried["__columns__"], "__row__", "__file__"]
    return list(item.carried)


def known_keys(item: Item) -> dict:
    """The keys of an item known without reading it (a failed or unreached item's row in the manifest):
    all of a manifest line's or tar member's; a table row's place only (its columns are in the row)."""
    return {"__row__": int(item.key), "__file__": item.container} if item.kind == "row" else item.carried


def carried_keys(item: Item) -> dict:
    """The keys an item carries to the run's outputs (a table row's columns read on demand)."""
    carried = item.carried
    if item.kind == "row":
        carried = _row(item, tuple(carried["__columns__"]))
        carried["__row__"] = int(item.key)
        carried["__file__"] = item.container
    return carried


def _tar_member(item: Item) -> bytes:
    try:
        headers = _tar_headers(item.container, _identity(item.container))
        member = _link_target(headers, headers.get(item.key))
        if member is None:
            raise InvalidAudioError(f"{item.container} no longer holds {item.key}: was it rewritten since it was "
                                    "listed? Run again")
        if member.size > MAX_MEMBER_BYTES:
            raise MimiError(f"{item.container}#{item.key} is {member.size:,} bytes, more than the "
                            f"{MAX_MEMBER_BYTES >> 30} GiB read at once")
        with tarfile.open(item.container, mode="r:") as shard:
            return shard.extractfile(member).read()  # a shard cut short since it was listed: tarfile's ReadError
    except (OSError, tarfile.TarError, EOFError, KeyError) as exc:
        raise InvalidAudioError(f"cannot read {item.container}#{item.key} ({first_line(exc)})") from None


def _identity(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


@lru_cache(maxsize=4)
def _tar_headers(path: str, identity: tuple[int, int, int]) -> dict[str, tarfile.TarInfo]:
    """A shard's headers by member name, and by that name normalised (``./a/../b.wav`` as ``b.wav``), read once
    per worker and file version (``identity``): finding a member by name reads every header before it, which
    made reading all members of a shard quadratic (0.2 s a member in a shard of 10,000). A name given twice
    (``tar -r`` appends a newer copy) is its last copy, as ``tar`` extracts it."""
    with tarfile.open(path, mode="r:") as shard:
        headers = {m.name: m for m in shard.getmembers()}
    for member in list(headers.values()):
        headers.setdefault(posixpath.normpath(member.name), member)
    return headers


def _link_target(headers: dict[str, tarfile.TarInfo], member: tarfile.TarInfo | None) -> tarfile.TarInfo | None:
    """The file a member is, or links to inside the shard (a hard link, or a symbolic one from the member's
    folder, as ``tar -x`` makes them; 8 links at most); None for a link to nothing in the shard (never a path
    outside it), a loop, or a member that is no file (a folder, a device)."""
    for _ in range(8):
        if member is None or member.isfile():
            return member
        if not (member.islnk() or member.issym()):
            return None
        folder = posixpath.dirname(member.name) if member.issym() else ""
        member = headers.get(posixpath.normpath(posixpath.join(folder, member.linkname)))
    return None


def _row_audio(item: Item, name: str) -> bytes:
    value = _row(item, (item.column,))[item.column]
    if isinstance(value, dict) and value.get("array") is not None:  # decoded audio saved as a plain struct
        return _as_wav(value, name)
    if isinstance(value, dict):  # the datasets Audio feature: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:  # a path: absolute, or relative to the table's folder or the working one
        if "\0" in value:
            raise InvalidAudioError(f"{name}: its path holds a NUL character, which no file name can")
        path, beside = Path(value), Path(item.container).parent / value
        if not path.is_absolute() and os.path.lexists(beside):  # lexists: False, not an error, for too long a name
            path = beside
        try:
            st = path.stat()
            kind = file_kind(st.st_mode) or (f"{st.st_size:,} bytes" if st.st_size > MAX_MEMBER_BYTES else None)
            if kind is not None:
                raise InvalidAudioError(f"{name}: {path} is {kind}, not an audio file of at most "
                                        f"{MAX_MEMBER_BYTES >> 30} GiB")
            return path.read_bytes()
        except OSError as exc:
            raise InvalidAudioError(f"{name}: cannot read {path} ({os_reason(exc)})") from None
    raise InvalidAudioError(f"{name}: column {item.column!r} holds no audio bytes or path")


def _as_wav(value: dict, name: str) -> bytes:
    """``{"array": samples, "sampling_rate": rate}`` (what datasets' Audio feature decodes to, saved as a plain
    struct by a ``map``): a float WAV in memory. ``array`` is ``[N]``, or ``[C, N]`` for C channels."""
    import numpy as np
    import soundfile as sf

    from mimi_cli.audio import check_rate

    rate = value.get("sampling_rate")
    if not isinstance(rate, int) or isinstance(rate, bool):
        raise InvalidAudioError(f"{name}: an audio array needs an integer sampling_rate beside it, not {rate!r}")
    check_rate(rate, f"{name} declares")
    try:
        samples = np.asarray(value["array"], dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise InvalidAudioError(f"{name}: its audio array is not numbers of equal length ({exc})") from None
    if samples.ndim not in (1, 2) or samples.size == 0:
        raise InvalidAudioError(f"{name}: its audio array has shape {list(samples.shape)}; give [samples] or "
                                "[channels, samples]")
    # values past float32's range (1e300) kept as they are, for the reader to say so: as float32 they were inf
    wide = np.abs(samples).max() > np.finfo(np.float32).max
    buffer = io.BytesIO()
    sf.write(buffer, samples.T, rate, format="WAV", subtype="DOUBLE" if wide else "FLOAT")
    return buffer.getvalue()


def open_bytes(data: bytes, name: str):
    """Encoded audio held in memory, opened like a file."""
    from mimi_cli.audio import check_header, open_checked

    if not data:
        raise InvalidAudioError(f"{name} is empty (0 bytes)")
    return open_checked(data, check_header(io.BytesIO(data), name), name)


class Span(BlockReader):
    """``offset`` to ``offset + duration`` seconds of an open sound file, read as if it were the whole file."""

    def __init__(self, f, item: Item, name: str):
        self._f, self.samplerate, self.channels = f, f.samplerate, f.channels
        start = round(item.offset * f.samplerate)
        if start >= f.frames:
            f.close()
            raise InvalidAudioError(f"{name}: offset {item.offset} s is past the end of {item.container} "
                                    f"({f.frames / f.samplerate:.3f} s)")
        available = f.frames - start
        self.frames = available if item.duration is None else min(available, round(item.duration * f.samplerate))
        if self.frames == 0:  # a duration shorter than half a sample: the span holds none, wherever it starts
            f.close()
            raise InvalidAudioError(f"{name}: duration {item.duration} s is shorter than one sample at "
                                    f"{f.samplerate} Hz, the rate of {item.container}")
        f.seek(start)
        self._start, self._offset, self._name, self._container = start, item.offset, name, item.container

    def when_empty(self) -> str:
        """What a span that gave no sample means: its file is shorter than the length it declared."""
        return f"{self._name}: offset {self._offset} s is past the end of {self._container}"

    def tell(self) -> int:
        return self._f.tell() - self._start

    def read(self, frames: int = -1, **options):
        left = self.frames - self.tell()
        return self._f.read(left if frames < 0 else min(frames, left), **options)

    @property
    def stderr(self):  # what its file's decoder printed (audio.reader_warnings)
        return getattr(self._f, "stderr", None)

    def close(self) -> None:
        self._f.close()
