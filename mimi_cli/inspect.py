"""What is inside a weight file, and is it sound; what a codes file holds: the library side of ``mimi inspect``.

Names, dtypes and shapes come from the headers alone; statistics (``stats=True``)
read each tensor once. Findings: errors (NaN/Inf, unreadable tensors, a Mimi
checkpoint that would not load) and warnings (see ``mimi_cli.weights.validate``).
A codes file (:func:`inspect_codes`): its codec, shape and length, how it was made, and how
each level uses its codebook.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from mimi_cli.errors import MimiError, WeightsError, shell_word
from mimi_cli.fileio import STDIN, holds, is_pipe, missing, readable
from mimi_cli.models import recognise
from mimi_cli.weights import TensorEntry, WeightFile, open_weights
from mimi_cli.weights.validate import Findings, TensorStats, check, full_stats


@dataclass
class TensorReport:
    name: str
    dtype: str
    shape: list[int]
    params: int
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    nonfinite: int | None = None
    encoding: str = ""


@dataclass
class WeightsReport:
    path: str
    format: str
    container: str = ""
    details: dict = field(default_factory=dict)
    tensors: list[TensorReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The documented JSON object (``mimi inspect --json``)."""
        tensors = [{k: None if isinstance(v, float) and not math.isfinite(v) else v
                    for k, v in asdict(t).items() if k != "encoding" or v} for t in self.tensors]
        return {"path": self.path, "format": self.format, "container": self.container, "details": self.details,
                "tensors": tensors, "warnings": self.warnings, "errors": self.errors}


def inspect_weights(path: str | Path, pattern: str | None = None, stats: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> WeightsReport:
    """Report on the weights at ``path``; a file that cannot be opened at all is one error in the report.

    ``progress(parameters read, parameters in all)`` is called after each tensor's statistics.
    """
    try:
        source = open_weights(path)
    except MimiError as exc:
        if missing(Path(path)):
            raise
        return WeightsReport(str(path), "unreadable", errors=[str(exc)])
    spec, found = recognised = recognise(source)
    report = WeightsReport(str(path), describe_format(source, recognised), source.container, source.details)
    findings = Findings()
    selected = [e for e in source.tensors.values() if pattern is None or fnmatch.fnmatchcase(e.name, pattern)]
    total, done = sum(e.params for e in selected), 0
    for entry in selected:
        tensor = TensorReport(entry.name, entry.dtype, list(entry.shape), entry.params, encoding=entry.encoding)
        if stats:
            findings.extend(_measure(entry, tensor))
            done += entry.params
            if progress is not None:
                progress(done, total)
        report.tensors.append(tensor)
    if not source.tensors:
        findings.errors.append("no tensors could be read: the file is empty or holds no model weights")
    elif not selected:  # `--filter conv`, meant as a part of a name
        example = min(source.tensors)
        findings.warnings.append(f"no tensor name matches {pattern!r} (of {len(source.tensors)}, such as {example!r}); "
                                 f"a glob matches whole names: {'*' + pattern.strip('*') + '*'!r} matches a part")
    if found is not None:
        name = spec.config().display_name
        findings.errors += [f"does not load as the released {name} model: {p}" for p in found.problems]
    report.warnings, report.errors = findings.warnings, findings.errors
    return report


def describe_format(source: WeightFile, recognised=None) -> str:
    """e.g. "Mimi Hugging Face", "EnCodec 24 kHz original", "Core ML ML Program 1.0 (ios15)", "unknown"."""
    found = (recognised or recognise(source))[1]
    if not source.container.startswith("Core ML"):
        return found.label if found else "unknown"
    if "Neural Network" in source.container:
        kind = "Core ML Neural Network"
    elif "program version" in source.details:
        kind = f"Core ML ML Program {source.details['program version']} ({source.details.get('opset', '?')})"
    else:
        kind = source.container
    return f"{kind}, {found.label} names" if found else kind


def total_params(report: WeightsReport) -> int:
    return sum(t.params for t in report.tensors)


def _measure(entry: TensorEntry, tensor: TensorReport) -> Findings:
    try:
        values = entry.load()
    except MimiError as exc:
        return Findings(errors=[str(exc)])
    stats: TensorStats = full_stats(values)
    tensor.min, tensor.max, tensor.mean, tensor.std, tensor.nonfinite = (stats.min, stats.max, stats.mean,
                                                                         stats.std, stats.nonfinite)
    return check(entry.name, stats, values.size)


# -- codes files

CODES_SUFFIXES = (".npz", ".npy", ".ecdc", ".json")  # what `mimi inspect` reads as codes; weights are never these


def is_codes_path(path: str | Path) -> bool:
    """Whether ``mimi inspect`` takes ``path`` for codes: a file with a codes suffix, a table (Parquet, Arrow,
    a dataset folder) of rows of codes, a quoted glob, standard input or a pipe, or a folder of codes files or
    Parquet shards (as ``encode -o`` and ``--parquet`` write them) or of JSON arrays, as decode reads them. A
    folder holding a .safetensors file or a Core ML model is weights."""
    from mimi_cli.batch import CODES_SUFFIXES as FOUND_IN_FOLDERS
    from mimi_cli.batch import is_glob
    from mimi_cli.codes import CODEC_INFO, is_json_codes
    from mimi_cli.sources import is_table
    from mimi_cli.weights.coreml import is_coreml_folder

    if str(path) == STDIN or is_pipe(Path(path)):  # weights are read in place, never from a pipe
        return True
    path = Path(path)
    if is_glob(path):
        return True
    if path.suffix.lower() in CODES_SUFFIXES:
        return path.is_file()
    try:
        if is_table(path):
            return True
        if path.is_file():  # a JSON array under any name (gen.txt), as decode reads it
            return is_json_codes(path)
        if not path.is_dir() or is_coreml_folder(path) or next(path.glob("*.safetensors"), None) is not None:
            return False
        if any(p.suffix.lower() in (*FOUND_IN_FOLDERS, ".parquet") for p in path.rglob("*") if p.is_file()):
            return True
        # JSON arrays alone, for decode's hint; not a model repository (its config.json, its Core ML models)
        top = list(path.iterdir())
        return not any(p.suffix.lower() in (".mlpackage", ".mlmodelc") or p.name == "config.json" for p in top) \
            and any(p.suffix.lower() == ".json" and p.name != CODEC_INFO for p in top)
    except OSError:  # a folder that cannot be looked into: weights' reader says why
        return False


def not_there(name: str) -> str | None:
    """Why ``mimi inspect`` cannot open ``name`` ("take1.wav does not exist") when it is not there and no Hugging
    Face repo could be meant: a folder (a trailing /), audio or codes by its suffix. None otherwise: weights'
    resolver says why, having looked in the Hub's cache too. (It said "weights file take1.wav does not exist".)"""
    from mimi_cli.audio import AUDIO_SUFFIXES
    from mimi_cli.batch import is_glob

    path = Path(name)
    if is_glob(path) or not (name.endswith("/") or path.suffix.lower() in (*AUDIO_SUFFIXES, *CODES_SUFFIXES)):
        return None
    problem = missing(path)
    return f"{name} {problem}" if problem else None


def not_shown(path: str | Path) -> str | None:
    """Why ``mimi inspect`` does not show ``path`` (audio: a file, or a folder of audio files and no weights, one
    with codes too is codes, see is_codes_path; a file named as audio whose first bytes say nothing known, which
    was read as weights; plain text; a tar archive), with what to run instead; None for
    anything else, whose weights reader says what is wrong (a web page, a pickle, a Git LFS pointer)."""
    from mimi_cli.audio import AUDIO_SUFFIXES

    path = Path(path)
    named = False  # as audio, its bytes saying nothing known: encode and roundtrip say why they cannot read it
    try:
        if path.is_dir():
            audio = (next((p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES), None)
                     if next(path.glob("*.safetensors"), None) is None else None)
            kind = f"audio files ({audio.name}, …)" if audio is not None else None
        else:
            kind = holds(path)
            named = kind is None and path.suffix.lower() in AUDIO_SUFFIXES and path.is_file()
            kind = "audio" if named else kind
    except OSError:
        return None
    if not kind or not kind.startswith(("audio", "text", "a tar archive")):
        return None
    said = f"{path} {'is named as audio' if named else f'holds {kind}'}, not weights or codes, which mimi inspect " \
           "shows"
    if kind.startswith("audio"):
        return f"{said}; `mimi roundtrip {shell_word(str(path))}` measures how the codec keeps it, `mimi encode` " \
               "makes its codes"
    if kind.startswith("a tar archive"):
        return f"{said}; `mimi encode` reads a WebDataset shard's audio"
    return f"{said}; give a .safetensors file, a Core ML model or a codes file (.npz, .npy, .ecdc, .json)"


@dataclass
class LevelUsage:
    """How one level (codebook) of a codes file uses its ``codebook_size`` codes, over every stream and frame."""
    level: int
    distinct: int  # codes used at least once
    entropy_bits: float  # of the codes' frequencies: log2(distinct) at most, what a language model must predict
    most_frequent: int
    share: float  # of the most frequent code, 0..1


@dataclass
class CodesReport:
    path: str
    kind: str  # "a codes file of mimi encode", "a bare integer array", "an EnCodec .ecdc file"
    codec: str  # as --codec names it: mimi, encodec-24khz
    display_name: str  # Mimi, EnCodec 24 kHz
    streams: int  # 1, or one per channel (--channels split)
    codebooks: int
    frames: int
    frame_rate: float
    num_samples: int  # at sample_rate: the audio decode gives back
    sample_rate: int
    codebook_size: int
    bitrate_kbps: float
    source_sample_rate: int | None  # None: not recorded (bare arrays, .ecdc)
    source_channels: int | None
    weights_id: str | None
    streamed: bool | None  # by encode --stream; None: not recorded
    levels: list[LevelUsage] = field(default_factory=list)
    rows: int | None = None  # a table's rows, or a folder's codes files (streams, codebooks: the most of any row;
    # frames, samples: their sum; source, weights, streamed: None unless every row says the same)
    left_out: str | None = None  # a folder's entries with a codes file's name that are not files (broken links)
    warnings: list[str] = field(default_factory=list)  # codes taken, maybe wrongly (pipeline.codes_warnings)

    def to_json(self) -> dict:
        """The documented JSON object (``mimi inspect CODES --json``)."""
        return asdict(self)


def inspect_codes(path: str | Path | Sequence[str | Path], codec: str | None = None, column: str = "codes",
                  progress: Callable[[int, int], None] | None = None) -> CodesReport:
    """Report on the codes at ``path`` (anything ``mimi decode`` reads: ``codec`` is a bare array's, see
    :func:`mimi_cli.codes.load_codes`; a folder's files or a table's rows in ``column``), checked as decode checks
    them; several names (a list: what a shell's glob gives) are reported together, as a quoted glob's files are.
    ``progress(files or rows read, in all)`` is called after each of a folder's or table's. Standard input
    (``-``) and a pipe are read once, into a copy, as decode reads them."""
    from mimi_cli.batch import is_glob
    from mimi_cli.codes import check_codes_head, load_codes
    from mimi_cli.ecdc import MAGIC
    from mimi_cli.models import codec_spec
    from mimi_cli.pipeline import codes_warnings
    from mimi_cli.sources import is_table

    if not isinstance(path, (str, Path)):
        names = [str(name) for name in path]
        if not names:
            raise MimiError("no codes named: give a codes file, a folder or table of them, or a glob")
        if len(names) > 1 and STDIN in names:
            raise MimiError("'-' (standard input) must be the only name")
        if len(names) != 1:
            return _inspect_many(names, codec, column, progress or (lambda done, total: None))
        path = names[0]
    if str(path) == STDIN or is_pipe(Path(path)):
        with readable(path, check_codes_head) as source:
            if holds(source.path) == ".safetensors weights":  # said as --weights - or --weights <(cat w) is
                raise WeightsError("weights are read from a file, not standard input: save them to a file and give "
                                   "its name" if str(path) == STDIN else f"weights {path} is a pipe (FIFO), not a "
                                   "file; save them to a file and give its name")
            return replace(inspect_codes(source.path, codec, column, progress), path=source.shown)
    if Path(path).is_dir() or is_table(Path(path)) or is_glob(Path(path)):
        return _inspect_many([str(path)], codec, column, progress or (lambda done, total: None))
    codes = load_codes(Path(path), codec)
    config = codec_spec(codes.codec).config()
    recorded = bool(codes.weights_id)  # a codes file of mimi encode; bare arrays and .ecdc keep no source
    with open(path, "rb") as f:  # told apart by content, as load_codes does: a pipe's copy has no suffix
        ecdc = f.read(len(MAGIC)) == MAGIC
    kind = ("a codes file of mimi encode" if recorded else "an EnCodec .ecdc file" if ecdc else
            "a bare integer array" if codes.bare else "JSON lines of a frame each (a bare array)")  # (axes said)
    return CodesReport(
        str(path), kind, config.name, config.display_name, codes.channels, codes.num_codebooks, codes.num_frames,
        codes.frame_rate, codes.num_samples, codes.sample_rate, codes.codebook_size,
        round(config.bitrate(codes.num_codebooks) / 1000, 3),
        codes.source_sample_rate if recorded else None, codes.source_channels if recorded else None,
        codes.weights_id or None, codes.streamed,
        [_usage(level, found) for level, found in enumerate(_level_counts(codes.codes, codes.codebook_size))],
        warnings=codes_warnings(path, codes))


def _level_counts(codes: np.ndarray, size: int) -> np.ndarray:
    """How often each code appears at each level of ``codes`` [C, K, frames], every stream and frame: [K, size].
    One count over codes offset by level (a table of a million rows made a million calls per level); a long
    file's a level at a time (all its codes as int64 would take four times their own memory)."""
    levels = codes.shape[1]
    if codes.size > 1 << 20:
        return np.stack([np.bincount(codes[:, level].ravel(), minlength=size) for level in range(levels)])
    shifted = codes.astype(np.int64) + (np.arange(levels) * size)[None, :, None]  # (uint16 holds 32 × 2048 barely)
    return np.bincount(shifted.ravel(), minlength=levels * size).reshape(levels, size)


def _inspect_many(names: list[str], codec: str | None, column: str, progress: Callable[[int, int], None],
                  ) -> CodesReport:
    """The codes files of folders (every level below them), globs and files, or tables' rows of codes (a
    ``--parquet`` shard or their folder, a dataset's codes column), as decode finds them: each read and checked as
    decode reads it (one decode would refuse is this report's error), their figures summed or the most of any
    row."""
    from mimi_cli.batch import find_inputs, is_glob
    from mimi_cli.models import codec_spec
    from mimi_cli.pipeline import another_codec, read_codes

    rows, left_out, _ = find_inputs(names, [], "decode", recursive=True, column=column, verb="inspect")
    counts: list[np.ndarray] = []  # per level, over every row that has it
    first, frames, samples, streams, same, assumed = None, 0, 0, 0, {}, True
    for done, entry in enumerate(rows, 1):
        codes = read_codes(entry.path, entry.item, codec)
        if first is None:
            first = (entry.path, codes)
        elif codes.codec != first[1].codec:
            raise MimiError(f"{entry.path} holds {codec_spec(codes.codec).config().display_name} codes, and "
                            f"{first[0]} {codec_spec(first[1].codec).config().display_name} codes: inspect one "
                            "codec's at a time")
        frames, samples, streams = frames + codes.num_frames, samples + codes.num_samples, max(streams, codes.channels)
        assumed &= codes.codec_assumed
        for key in ("source_sample_rate", "source_channels", "weights_id", "streamed"):
            value = getattr(codes, key) if codes.weights_id else None  # recorded by mimi encode alone
            same[key] = value if same.get(key, value) == value else None
        found = _level_counts(codes.codes, codes.codebook_size)
        for level, level_counts in enumerate(found):
            if level < len(counts):
                counts[level] += level_counts
            else:  # the first row with this many levels
                counts.append(level_counts)
        progress(done, len(rows))
    config = codec_spec(first[1].codec).config()  # find_inputs found at least one, or said why not
    plural, tables = "s" * (len(rows) != 1), all(entry.item is not None for entry in rows)
    kind = (f"{len(rows):,} {'row' if tables else 'codes file'}{plural}{' of codes' * tables} from the "
            f"{len(names)} names given" if len(names) > 1 else
            f"a table of {len(rows):,} row{plural} of codes" if tables else
            f"{len(rows):,} codes file{plural} matched" if is_glob(Path(names[0])) else
            f"a folder of {len(rows):,} codes file{plural}")
    shown = ", ".join(names) if len(names) <= 3 else f"{', '.join(names[:2])} … {names[-1]}"
    return CodesReport(
        shown, kind, config.name,
        config.display_name, streams, len(counts), frames, first[1].frame_rate, samples, first[1].sample_rate,
        first[1].codebook_size, round(config.bitrate(len(counts)) / 1000, 3), same["source_sample_rate"],
        same["source_channels"], same["weights_id"] or None, same["streamed"],
        [_usage(level, found) for level, found in enumerate(counts)], rows=len(rows), left_out=left_out,
        warnings=another_codec(shown, config.name, max(int(np.flatnonzero(c).max(initial=0)) for c in counts),
                               sum(int(c.sum()) for c in counts)) if assumed else [])


def _usage(level: int, counts: np.ndarray) -> LevelUsage:
    """A level's use of its codebook, from how often each code appears (``np.bincount``)."""
    total = int(counts.sum())
    p = counts[counts > 0] / total
    top = int(counts.argmax())
    entropy = float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: one code used is 0 bits, not -0
    return LevelUsage(level, int(p.size), round(entropy, 3), top, round(float(counts[top] / total), 4))
