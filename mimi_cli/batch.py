"""Many files at once: finding the inputs, planning the outputs, and running the work in processes.

    inputs (files, globs, folders)  →  collect_inputs  →  [Input(path, base)]
                                    →  plan_tasks      →  [Task(input, output, skip)]
                                    →  run_local / ray_engine.run_ray  →  [Outcome]  →  manifest (JSONL)

With several inputs, outputs mirror the inputs' tree under ``-o DIR``::

    corpus/a.wav           -o codes/   codes/a.npz
    corpus/spk1/b.flac                 codes/spk1/b.npz

Each file is read, encoded (or decoded) and written atomically on its own: a
failing file becomes a "failed" :class:`Outcome` and the others go on. Weights are
loaded once per worker process (:class:`Worker`), which uses one BLAS thread by
default, so that N workers share N cores without oversubscribing them.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mimi_cli.errors import MimiError, WeightsError
from mimi_cli.fileio import atomic_output

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf", ".w64")
CODES_SUFFIXES = (".npz",)


@dataclass(frozen=True)
class Input:
    path: Path
    base: Path  # the folder its output's relative path is taken from


@dataclass(frozen=True)
class Task:
    input: Path
    output: Path
    skip: bool = False  # the output exists and --skip-existing was given


@dataclass
class Outcome:
    """One line of the manifest."""

    input: str
    output: str
    status: str  # "done", "skipped" or "failed"
    duration_s: float | None = None  # audio seconds (of the input when encoding, of the output when decoding)
    frames: int | None = None
    error: str | None = None
    model_seconds: float = field(default=0.0, repr=False)  # time in the model (not in the manifest)

    def manifest_line(self) -> str:
        row = {k: v for k, v in asdict(self).items() if k != "model_seconds"}
        return json.dumps(row, ensure_ascii=False)


# ----------------------------------------------------------------------------- inputs and outputs


def collect_inputs(items: Iterable[str | Path], recursive: bool, suffixes: tuple[str, ...]) -> list[Input]:
    """Files named directly (whatever their suffix), files with ``suffixes`` in folders (all levels with
    ``recursive``) and glob matches (``**`` descends). A name that matches nothing is kept, to fail as missing."""
    found: list[Input] = []
    for item in map(str, items):
        path = Path(item).expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in suffixes
                           and not p.name.startswith("."))
            found += [Input(p, path) for p in files]
        elif not path.exists() and glob.has_magic(item):
            base = Path(_glob_root(item))
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(item), recursive=True))
            found += [Input(p, base) for p in matches if p.is_file()]
        else:
            found.append(Input(path, path.parent))
    unique, seen = [], set()
    for entry in found:  # the same file named twice (a folder and a glob) is done once
        key = entry.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique


def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard: ``data/*/x.wav`` → ``data``."""
    parts = Path(os.path.expanduser(pattern)).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return str(Path(*fixed)) if fixed else "."


def plan_tasks(inputs: list[Input], output: Path | None, suffix: str, beside_suffix: str,
               force: bool, skip_existing: bool, output_is_file: bool = False) -> list[Task]:
    """Outputs mirrored under ``output`` (a folder), or beside each input; ``output`` itself for
    one input with ``output_is_file``.

    Refuses, before any work, two inputs that would write the same output and outputs
    that exist already (unless ``force`` or ``skip_existing``).
    """
    tasks, owners = [], {}
    for entry in inputs:
        if output is not None and output_is_file:
            target = output
        elif output is not None:
            target = output / entry.path.relative_to(entry.base).with_suffix(suffix)
        else:
            target = entry.path.with_name(entry.path.stem + beside_suffix)
        if target in owners:
            raise MimiError(f"{owners[target]} and {entry.path} would both write {target}; rename one of them")
        owners[target] = entry.path
        tasks.append(Task(entry.path, target, skip=skip_existing and target.exists()))
    existing = [t.output for t in tasks if not t.skip and t.output.exists()]
    if existing and not force:
        raise MimiError(f"{len(existing)} output(s) already exist, e.g. {existing[0]}; pass --skip-existing to "
                        "resume an interrupted run, or -f/--force to overwrite")
    return tasks


def write_manifest(path: Path, outcomes: list[Outcome]) -> None:
    """One JSON object per input, in input order, written atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for outcome in outcomes:
            f.write(outcome.manifest_line() + "\n")


# ----------------------------------------------------------------------------- the work on one file


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs; plain values, so it crosses process (and Ray) boundaries."""

    kind: str  # "encode" or "decode"
    weights: str | None = None
    codec: str = "mimi"  # encode; decode takes the codec from each codes file
    num_codebooks: int | None = None
    stream: bool = False
    sample_rate: int | None = None  # decode: output rate (default: the codec's)
    threads: int = 1


class Worker:
    """Loads weights once (per codec met) and processes files one at a time."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._loaded: dict = {}

    def model(self, codec: str):
        """The loaded model for ``codec``; a loading error is kept and raised again, not retried per file."""
        if codec not in self._loaded:
            from mimi_cli.pipeline import load_model

            try:
                self._loaded[codec] = load_model(self.settings.weights, codec)
            except WeightsError as exc:
                self._loaded[codec] = exc
        if isinstance(self._loaded[codec], WeightsError):
            raise self._loaded[codec]
        return self._loaded[codec]

    def run(self, task: Task) -> Outcome:
        """Process one file; every problem with the file is a "failed" outcome. Weights errors propagate:
        they would fail every file the same way."""
        if task.skip:
            return Outcome(str(task.input), str(task.output), "skipped")
        try:
            return self._encode(task) if self.settings.kind == "encode" else self._decode(task)
        except WeightsError:
            raise
        except MimiError as exc:
            return Outcome(str(task.input), str(task.output), "failed", error=str(exc))
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:  # unexpected, but only this file's
            return Outcome(str(task.input), str(task.output), "failed", error=f"{type(exc).__name__}: {exc}")

    def _encode(self, task: Task) -> Outcome:
        from mimi_cli.audio import read_audio
        from mimi_cli.pipeline import check_batch_memory, encode_audio, encode_stream

        s = self.settings
        loaded = self.model(s.codec)
        levels = s.num_codebooks or loaded.model.config.default_num_codebooks
        if s.stream:
            result = encode_stream(loaded, task.input, levels)
        else:
            from mimi_cli.audio import open_audio

            with open_audio(task.input) as f:
                check_batch_memory(f.frames / f.samplerate, s.codec)
            result = encode_audio(loaded, read_audio(task.input), levels)
        task.output.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed input leaves no folder
        result.codes.save(task.output)
        duration = result.codes.num_samples / loaded.model.config.sample_rate
        return Outcome(str(task.input), str(task.output), "done", round(duration, 3), result.codes.num_frames,
                       model_seconds=result.seconds)

    def _decode(self, task: Task) -> Outcome:
        from mimi_cli.audio import audio_format, write_audio
        from mimi_cli.codes import CodesFile
        from mimi_cli.pipeline import check_batch_memory, decode_codes, decode_stream

        s = self.settings
        codes = CodesFile.load(task.input)
        audio_format(task.output)
        loaded = self.model(codes.codec)
        task.output.parent.mkdir(parents=True, exist_ok=True)
        if s.stream:
            seconds, _ = decode_stream(loaded, codes, task.output, s.sample_rate)
        else:
            check_batch_memory(codes.num_samples / codes.sample_rate, codes.codec)
            pcm, seconds = decode_codes(loaded, codes, s.sample_rate)
            write_audio(task.output, pcm, s.sample_rate or codes.sample_rate)
        return Outcome(str(task.input), str(task.output), "done", round(codes.num_samples / codes.sample_rate, 3),
                       codes.num_frames, model_seconds=seconds)


# ----------------------------------------------------------------------------- local processes

_worker: Worker | None = None  # the worker of this process (in a pool)


def _start_worker(settings: Settings) -> None:
    global _worker
    from mimi_cli.core.threads import set_threads

    set_threads(settings.threads)
    _worker = Worker(settings)


def _run_in_worker(task: Task) -> Outcome:
    return _worker.run(task)


def run_local(tasks: list[Task], settings: Settings, jobs: int,
              on_outcome: Callable[[Outcome], None] = lambda outcome: None) -> list[Outcome]:
    """Run ``tasks`` in ``jobs`` worker processes (in this process for 1); outcomes in task order."""
    outcomes: dict[Task, Outcome] = {}
    pending = [t for t in tasks if not t.skip]
    for task in tasks:
        if task.skip:
            outcomes[task] = Outcome(str(task.input), str(task.output), "skipped")
            on_outcome(outcomes[task])
    if jobs <= 1 or len(pending) <= 1:
        from mimi_cli.core.threads import limit_threads

        worker = Worker(settings)
        with limit_threads(settings.threads):
            for task in pending:
                outcomes[task] = worker.run(task)
                on_outcome(outcomes[task])
    else:
        _run_pool(pending, settings, jobs, outcomes, on_outcome)
    return [outcomes[t] for t in tasks]


def _run_pool(pending: list[Task], settings: Settings, jobs: int, outcomes: dict, on_outcome) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: a forked child would inherit BLAS thread pools in an unknown state
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(settings,))
    try:
        futures = {pool.submit(_run_in_worker, task): task for task in pending}
        for future in as_completed(futures):
            task = futures[future]
            try:
                outcomes[task] = future.result()
            except BrokenProcessPool:
                outcomes[task] = Outcome(str(task.input), str(task.output), "failed",
                                         error="its worker process died (killed, or out of memory)")
            on_outcome(outcomes[task])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
