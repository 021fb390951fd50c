"""``--engine ray``: the same work as :mod:`mimi_cli.batch`, as a Ray Data pipeline that scales to a cluster.

    from_items(tasks)                       one row per file: input, output
    → map(read_*)                           read + downmix + resample (audio) or load (codes); any CPU
    → map(CodecActor, concurrency=N)        actor pool: weights loaded once per actor, 1 BLAS thread each
    → map(write_*)                          per-file .npz / audio, written atomically
    → [write_parquet(dir)]                  optional shards: codes with their metadata

Rows that fail at any stage carry an ``error`` and pass through the later stages
untouched, so one bad file never stops the run. Every function here is the local
engine's (``pipeline``, ``codes``, ``audio``), so the outputs are the same bytes.

Ray is optional: ``pip install "mimi-cli[ray]"``. Without ``RAY_ADDRESS`` a local
Ray instance is started with ``num_cpus`` = the number of actors; with it, the run
joins that cluster (see docs/datasets.md).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

import numpy as np

from mimi_cli.batch import Outcome, Settings, Task
from mimi_cli.errors import MimiError, WeightsError

_PASSED_ON = ("input", "output", "error")


def _failed(row: dict, exc: Exception) -> dict:
    return {"input": row["input"], "output": row["output"], "error": str(exc) or type(exc).__name__}


# ----------------------------------------------------------------------------- stages


def read_audio_row(row: dict, codec: str) -> dict:
    """Read, downmix and resample to the codec's rate."""
    from pathlib import Path

    from mimi_cli.audio import open_audio, read_audio, to_mono
    from mimi_cli.models import codec_spec
    from mimi_cli.pipeline import check_batch_memory

    try:
        with open_audio(Path(row["input"])) as f:
            check_batch_memory(f.frames / f.samplerate, codec)  # on the node that will hold it
        audio = read_audio(Path(row["input"]))
        pcm = to_mono(audio, codec_spec(codec).config().sample_rate)
    except MimiError as exc:
        return _failed(row, exc)
    return {**row, "error": None, "pcm": pcm, "num_samples": len(pcm), "source_sample_rate": audio.sample_rate,
            "source_channels": audio.channels}


def read_codes_row(row: dict) -> dict:
    from pathlib import Path

    from mimi_cli.codes import CodesFile
    from mimi_cli.pipeline import check_batch_memory

    try:
        codes = CodesFile.load(Path(row["input"]))
        check_batch_memory(codes.num_samples / codes.sample_rate, codes.codec)
    except MimiError as exc:
        return _failed(row, exc)
    return {**row, "error": None, **{k: v for k, v in asdict(codes).items() if k != "format_version"}}


class CodecActor:
    """One model per actor (loaded in ``__init__``, i.e. once), one BLAS thread."""

    def __init__(self, settings: Settings):
        from mimi_cli.batch import Worker
        from mimi_cli.core.threads import set_threads

        set_threads(settings.threads)
        self.settings = settings
        self.worker = Worker(settings)  # its model cache; loading errors surface on the first row

    def __call__(self, row: dict) -> dict:
        if row.get("error"):
            return row
        try:
            return self._encode(row) if self.settings.kind == "encode" else self._decode(row)
        except WeightsError as exc:  # would fail every file: the driver stops the run with this message
            return {**_failed(row, exc), "fatal": True}
        except (MimiError, ValueError) as exc:
            return _failed(row, exc)

    def _encode(self, row: dict) -> dict:
        import time

        loaded = self.worker.model(self.settings.codec)
        levels = self.settings.num_codebooks or loaded.model.config.default_num_codebooks
        start = time.perf_counter()
        codes = loaded.model.encode(row.pop("pcm"), levels)
        return {**row, "codes": codes, "weights_id": loaded.weights_id, "model_seconds": time.perf_counter() - start}

    def _decode(self, row: dict) -> dict:
        from mimi_cli.codes import CodesFile
        from mimi_cli.pipeline import decode_codes

        codes = CodesFile(**{k: row[k] for k in CodesFile.__dataclass_fields__ if k in row})
        pcm, seconds = decode_codes(self.worker.model(codes.codec), codes, self.settings.sample_rate)
        return {**row, "pcm": pcm, "model_seconds": seconds}


def write_codes_row(row: dict, codec: str) -> dict:
    from pathlib import Path

    from mimi_cli.codes import CodesFile
    from mimi_cli.models import codec_spec

    if row.get("error"):
        return row
    config = codec_spec(codec).config()
    codes = CodesFile.from_codes(row["codes"], config, num_samples=int(row["num_samples"]),
                                 source_sample_rate=int(row["source_sample_rate"]),
                                 source_channels=int(row["source_channels"]), weights_id=str(row["weights_id"]))
    try:
        Path(row["output"]).parent.mkdir(parents=True, exist_ok=True)
        codes.save(Path(row["output"]))
    except OSError as exc:
        return _failed(row, exc)
    return {**row, "codes": codes.codes[0], "frames": codes.num_frames,
            "duration_s": round(codes.num_samples / config.sample_rate, 3)}


def write_audio_row(row: dict, sample_rate: int | None) -> dict:
    from pathlib import Path

    from mimi_cli.audio import write_audio

    if row.get("error"):
        return row
    try:
        Path(row["output"]).parent.mkdir(parents=True, exist_ok=True)
        write_audio(Path(row["output"]), row.pop("pcm"), sample_rate or int(row["sample_rate"]))
    except (MimiError, OSError) as exc:
        return _failed(row, exc)
    return {**row, "frames": int(row["codes"].shape[-1]),
            "duration_s": round(int(row["num_samples"]) / int(row["sample_rate"]), 3)}


# ----------------------------------------------------------------------------- the pipeline


def run_ray(tasks: list[Task], settings: Settings, actors: int, parquet_dir: str | None = None) -> list[Outcome]:
    """Run ``tasks`` on Ray Data with ``actors`` model actors; outcomes in task order."""
    ray = _import_ray()
    for name in ("ray", "ray.data"):  # their INFO lines would drown the summary
        logging.getLogger(name).setLevel(logging.ERROR)
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        # locally: a CPU per actor, plus one for the light read and write tasks
        ray.init(address=address, num_cpus=None if address else actors + 1, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False

    pending = [t for t in tasks if not t.skip]
    outcomes = {str(t.input): Outcome(str(t.input), str(t.output), "skipped") for t in tasks if t.skip}
    if pending:
        rows = [{"input": str(t.input), "output": str(t.output)} for t in pending]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        if settings.kind == "encode":
            ds = ds.map(read_audio_row, fn_kwargs={"codec": settings.codec})
        else:
            ds = ds.map(read_codes_row)
        ds = ds.map(CodecActor, fn_constructor_kwargs={"settings": settings},
                    compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1)
        if settings.kind == "encode":
            ds = ds.map(write_codes_row, fn_kwargs={"codec": settings.codec})
        else:
            ds = ds.map(write_audio_row, fn_kwargs={"sample_rate": settings.sample_rate})
        try:
            ds = ds.materialize()
            if parquet_dir:
                _write_parquet(ds, parquet_dir, settings)
            rows = ds.take_all()
        except Exception as exc:  # Ray wraps what a stage raised; a MimiError inside is the user's message
            raise _as_user_error(exc) from None
        fatal = [row["error"] for row in rows if row.get("fatal")]
        if fatal:
            raise WeightsError(fatal[0])
        for row in rows:
            status = "failed" if row.get("error") else "done"
            outcomes[row["input"]] = Outcome(row["input"], row["output"], status, row.get("duration_s"),
                                             row.get("frames"), row.get("error"), row.get("model_seconds") or 0.0)
    return [outcomes[str(t.input)] for t in tasks]


def _write_parquet(ds, directory: str, settings: Settings) -> None:
    """Shards of the successful rows: codes as a list of levels, with the metadata decode needs."""
    if settings.kind != "encode":
        raise MimiError("--parquet writes codes, so it goes with `mimi encode`")

    def to_record(row: dict) -> dict:
        codes = np.asarray(row["codes"], np.uint16)
        return {"input": row["input"], "output": row["output"], "codec": settings.codec,
                "num_codebooks": codes.shape[0], "frames": codes.shape[1], "num_samples": int(row["num_samples"]),
                "source_sample_rate": int(row["source_sample_rate"]), "weights_id": row["weights_id"],
                "codes": codes.tolist()}

    ds.flat_map(lambda row: [] if row.get("error") else [to_record(row)]).write_parquet(directory)


def _as_user_error(exc: BaseException) -> MimiError:
    """The first MimiError in the chain of causes Ray built around it, or a one-line summary."""
    seen = exc
    while seen is not None:
        if isinstance(seen, MimiError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return MimiError(f"the Ray run failed: {type(exc).__name__}: {first_line}")


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MimiError('--engine ray needs Ray Data: pip install "mimi-cli[ray]"') from None
    return ray
