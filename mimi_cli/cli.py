"""The ``mimi`` command: a thin layer of options and messages over the library."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from mimi_cli import __version__
from mimi_cli.errors import (MimiError, WeightsError, counted, no_room_to_load, no_thread, os_reason, out_of_memory,
                             shell_word, task_limit, unnamable, working_folder_gone)
from mimi_cli.models import CODECS, DEFAULT_CODEC

app = typer.Typer(
    name="mimi",
    help="Kyutai's Mimi neural audio codec in NumPy: audio ↔ discrete codes, no PyTorch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _table_out() -> Console:
    """Standard output for a wide table: a pipe or file gets full lines (rich would otherwise fit the table to
    80 columns and cut its names short)."""
    return out if out.is_terminal else Console(width=250, highlight=False, soft_wrap=True)


def _consoles() -> tuple[Console, Console]:
    """Standard error's and standard output's."""
    return Console(stderr=True, soft_wrap=True, highlight=False), Console(soft_wrap=True, highlight=False)


err, out = _consoles()
MIN_COLUMNS = 20  # fewer, and rich's tables have no room for a letter


def _usable_width() -> None:
    """Drop a width no one can read: with ``COLUMNS=0`` rich printed nothing at all, errors included, and typer's
    help nothing; with a few columns, tables of empty cells; typer's ``TERMINAL_WIDTH=abc`` was a traceback.
    Without them the terminal's own width is used, else 80 (here, and in worker processes)."""
    global err, out
    given = {name: os.environ.get(name) for name in ("COLUMNS", "TERMINAL_WIDTH")}
    unusable = [name for name, value in given.items()
                if value is not None and not (value.isdigit() and int(value) >= MIN_COLUMNS)]
    for name in unusable:
        del os.environ[name]
    if unusable:  # rich reads COLUMNS when a console is made
        err, out = _consoles()


# Shared options; their limits come from the model's config. Every path is taken with readable=False:
# Click's own check refused a whole run, as a usage error, for one input it could not read; the
# library says why each file cannot be read, and a batch goes on with the others. Inputs are taken as
# written (str): a Path makes ./- into -, standard input, where it names a file called "-".
WeightsOption = Annotated[Optional[str], typer.Option(
    "--weights", metavar="PATH|REPO",
    help="The codec's weights. Mimi: .safetensors (original, moshi or Hugging Face naming), .mlmodelc or "
         ".mlpackage; EnCodec: .safetensors (Hugging Face or original naming); a folder holding them (a "
         "repo's local copy); or a Hugging Face repo, OWNER/REPO (its model.safetensors) or OWNER/REPO/FILE, "
         "fetched through its cache. Default: "
         "$MIMI_WEIGHTS / $ENCODEC_WEIGHTS, else the released file via the Hugging Face cache.",
    show_default=False)]
ThreadsOption = Annotated[Optional[int], typer.Option(
    "--threads", min=1, help="Threads for one file's work (the output is the same at any count). "
                             "Default: every core this process may use (its CPU affinity and quota).",
    show_default=False)]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings and errors.")]
StreamOption = Annotated[bool, typer.Option(
    "--stream", help="Work block by block in flat memory (for long files). Mimi: the codes of moshi's "
                     "streaming mode, which differ from batch mode past 10 s; EnCodec: the batch codes.")]
CodebooksOption = Annotated[Optional[int], typer.Option(
    "--codebooks", "-n", min=1, show_default=False,
    help="Codebooks (levels) to keep. Mimi: 1 semantic + n-1 acoustic, up to 32, default 8 (1.1 kbps). "
         "EnCodec: up to 32, default 8 (6 kbps).")]
def _finite(low: float = -float("inf"), high: float = float("inf")) -> Callable[[float | None], float | None]:
    """An option's check: a finite number in ``low..high``. (Click's own range check runs first, and said
    of ``nan`` that it "should be less than or equal to 600".)"""
    import math

    def check(value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        if value is not None and not low <= value <= high:
            raise typer.BadParameter(f"{value:g} is below {low:g}" if value < low else f"{value:g} is above {high:g}")
        return value

    return check


def _rate(lowest: int | None = None) -> Callable[[int | None], int | None]:
    """An option's check of a rate in Hz, at least ``lowest`` (default: the lowest output rate, as
    ``--sample-rate 16``, meant as kHz, wrote 29 s of speech as 466 samples at 16 Hz) and at most what the
    resampler takes."""
    def check(value: int | None) -> int | None:
        if value is None:
            return None
        from mimi_cli.audio import MAX_SAMPLE_RATE, MIN_OUTPUT_RATE  # imported only when a rate is given: NumPy

        low = MIN_OUTPUT_RATE if lowest is None else lowest
        if value < low:
            in_khz = f" (rates are in Hz: {value} kHz is {value * 1000})" if 8 <= value <= 192 else ""
            raise typer.BadParameter(f"{value} is below {low} Hz{in_khz}")
        if value > MAX_SAMPLE_RATE:
            raise typer.BadParameter(f"{value:,} Hz is above the {MAX_SAMPLE_RATE:,} Hz this tool resamples to")
        return value

    return check


BandwidthOption = Annotated[Optional[float], typer.Option(
    "--bandwidth", "-b", show_default=False, metavar="KBPS", callback=_finite(),
    help="Target bitrate in kbps instead of -n, e.g. EnCodec's 1.5, 3, 6, 12 or 24.")]


def _check_codec(name: str | None) -> str | None:
    if name is not None and name not in CODECS:
        raise typer.BadParameter(f"{name!r} is not a codec here; choose one of {', '.join(CODECS)}")
    return name


CodecOption = Annotated[str, typer.Option(
    "--codec", "-c", callback=_check_codec, help=f"The codec: {' or '.join(CODECS)}.")]


def _check_channels(mode: str) -> str:
    from mimi_cli.pipeline import CHANNEL_MODES

    if mode not in CHANNEL_MODES:
        raise typer.BadParameter(f"takes {' or '.join(CHANNEL_MODES)}, not {mode!r}")
    return mode


def _channels_option(split: str):
    return Annotated[str, typer.Option("--channels", callback=_check_channels,
                                       help=f"mix: downmix to mono, one code stream. split: {split}")]


def _shown(text: str) -> str:
    """Text from files and file names, safe to print: control characters (terminal escapes) made visible,
    rich markup escaped."""
    from mimi_cli.errors import printable

    return escape(printable(text))


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {_shown(message)}")
    raise typer.Exit(code)


def _num_codebooks(codec: str, codebooks: int | None, bandwidth: float | None) -> int:
    """Levels to encode from -n or -b (not both), within what the codec has; its default otherwise."""
    from mimi_cli.models import codec_spec

    config = codec_spec(codec).config()
    if codebooks is not None and bandwidth is not None:
        _fail("give either --codebooks or --bandwidth, not both", code=2)
    if bandwidth is not None:
        try:
            return config.codebooks_for_bandwidth(bandwidth)
        except ValueError as exc:
            _fail(f"--bandwidth: {exc}", code=2)
    if codebooks is not None and codebooks > config.num_codebooks:
        _fail(f"--codebooks: {config.display_name} has at most {config.num_codebooks}, not {codebooks}", code=2)
    return codebooks or config.default_num_codebooks


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {_shown(message)}")


class _Messages:
    """Notes and the summary line go to stderr unless --quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def note(self, message: str) -> None:
        if not self.quiet:
            err.print(_shown(message))

    @contextlib.contextmanager
    def reporter(self) -> Iterator:
        """One line for a file's stages: a spinner while loading or computing, a bar once a total is known;
        yields ``report(stage, done_seconds, total_seconds_or_None)`` (a no-op when hidden)."""
        if self.quiet or not err.is_terminal:
            yield lambda stage, done=0.0, total=None: None
            return
        import time

        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

        columns = (SpinnerColumn(), TextColumn("{task.description}…"), BarColumn(), TextColumn("{task.fields[info]}"),
                   TimeRemainingColumn())
        start = time.perf_counter()
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("Starting", total=None, info="")

            def report(stage: str, done: float = 0.0, total: float | None = None) -> None:
                info = (f"{done:.1f}/{total:.1f} s, {_speed(done / max(time.perf_counter() - start, 1e-9))}"
                        if total else "")
                bar.update(task, description=stage, completed=done, total=total, info=info)

            yield report

    @contextlib.contextmanager
    def planning(self, after: float = 0.5) -> Iterator:
        """A spinner while a run is planned (its inputs listed, its outputs checked and, to resume, read back),
        with a count once there is one; shown once planning has taken ``after`` seconds, so a single file's run
        shows none (nor one where no thread can be started: ulimit -u). Yields ``report(stage, done, total)``."""
        if self.quiet or not err.is_terminal:
            yield lambda stage, done=0, total=None: None
            return
        import threading

        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

        bar = Progress(SpinnerColumn(), TextColumn("{task.description}…"), BarColumn(), TextColumn("{task.fields[n]}"),
                       console=err, transient=True)
        task = bar.add_task("Planning", total=None, n="")

        def show() -> None:
            try:
                bar.start()
            except RuntimeError:  # rich's refresh thread cannot start: no display (and no traceback from here)
                pass

        later = threading.Timer(after, show)
        try:
            later.start()
        except RuntimeError:  # "can't start new thread": no display
            later = None
        try:
            yield lambda stage, done=0, total=None: bar.update(task, description=stage, completed=done, total=total,
                                                                n=f"{done:,}/{total:,}" if total else "")
        finally:
            if later is not None:
                later.cancel()
                later.join()  # (one that has fired has started the bar, which stops now)
            bar.stop()

    def status(self, message: str):
        return err.status(message) if err.is_terminal and not self.quiet else contextlib.nullcontext()

    @contextlib.contextmanager
    def progress_count(self, label: str, total: int) -> Iterator:
        """A bar over a number of items; yields a function to call once per item."""
        if self.quiet or not err.is_terminal:
            yield lambda: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err,
                      transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda: bar.advance(task)

    @contextlib.contextmanager
    def progress_fraction(self, label: str) -> Iterator:
        """A percentage bar; yields ``update(done, total)`` (a no-op when hidden)."""
        if self.quiet or not err.is_terminal:
            yield lambda done, total: None
            return
        from rich.progress import BarColumn, Progress, TextColumn

        with Progress(TextColumn(label), BarColumn(), TextColumn("{task.percentage:>3.0f} %"), console=err,
                      transient=True) as bar:
            task = bar.add_task(label, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=max(total, 1))

    @contextlib.contextmanager
    def progress_files(self, total: int) -> Iterator:
        """A bar over files, with the audio seconds done and their speed; yields ``advance(seconds of audio)``."""
        if self.quiet or not err.is_terminal:
            yield lambda seconds: None
            return
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("Files"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[audio]}"),
                   TimeRemainingColumn())
        start, audio = time.perf_counter(), 0.0
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("files", total=total, audio="")

            def advance(seconds: float) -> None:
                nonlocal audio
                audio += seconds
                speed = audio / max(time.perf_counter() - start, 1e-9)
                bar.update(task, advance=1, audio=f"{audio:.1f} s of audio, {_speed(speed)}")

            yield advance

    @contextlib.contextmanager
    def progress(self, label: str, total_seconds: float) -> Iterator:
        """A bar over seconds of audio, with speed; yields the update function (a no-op when hidden)."""
        if self.quiet or not err.is_terminal:
            yield lambda done: None
            return
        import time

        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed:.1f}/{task.total:.1f} s"), TextColumn("{task.fields[speed]}"),
                   TimeRemainingColumn())
        start = time.perf_counter()
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(label, total=total_seconds, speed="")

            def update(done: float) -> None:
                speed = done / max(time.perf_counter() - start, 1e-9)
                bar.update(task, completed=done, speed=_speed(speed))

            yield update


@contextlib.contextmanager
def _user_errors(interrupted: str = "interrupted; no output was written") -> Iterator[None]:
    """Turn library errors into one-line messages and exit codes (128 + the signal's number when interrupted)."""
    try:
        yield
    except MimiError as exc:
        _fail(str(exc))
    except BrokenPipeError:  # standard output's reader went away: the command ends in silence (click, main())
        raise
    except OSError as exc:  # the library says these in its own words; this is the net under it
        _fail(f"{exc.filename + ': ' if exc.filename else ''}{os_reason(exc)}")
    except MemoryError as exc:
        _fail(str(out_of_memory(exc)))
    except (RuntimeError, ImportError) as exc:
        refused = no_thread(exc) or no_room_to_load(exc)
        if refused is None:  # a bug, whose traceback is worth seeing
            raise
        _fail(str(refused))
    except UnicodeEncodeError as exc:
        error = unnamable(exc)
        if error is None:  # not a name's: a bug, whose traceback is worth seeing
            raise
        _fail(str(error))
    except KeyboardInterrupt as exc:
        from mimi_cli.fileio import remove_temporaries
        from mimi_cli.signals import exit_code, reason

        remove_temporaries()  # any a signal left where no finally saw it (see fileio)
        _fail(interrupted.replace("interrupted", reason(exc), 1), code=exit_code(exc))


@contextlib.contextmanager
def _threads(threads: int | None, say: _Messages) -> Iterator[None]:
    """The threads one in-process command uses, capped at the core count."""
    from mimi_cli.core.threads import limit_threads, usable_threads

    threads, note = usable_threads(threads)
    if note:
        say.note(f"note: {note}")
    with limit_threads(threads):
        yield


def _version(value: bool) -> None:
    if value:
        out.print(f"mimi-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Kyutai's Mimi neural audio codec in NumPy: audio ↔ discrete codes, no PyTorch."""


RecursiveOption = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into sub-folders of folder inputs.")]
JobsOption = Annotated[int, typer.Option(
    "--jobs", "-j", min=1, help="Worker processes (or Ray actors); each loads the weights once and uses "
                                "1 thread unless --threads says otherwise.")]
SkipExistingOption = Annotated[bool, typer.Option(
    "--skip-existing", help="Leave inputs whose output exists alone, or appears meanwhile (another run's): "
                             "resumes an interrupted run. Outputs made otherwise (another codec, -n, --channels, "
                             "--stream, weights, --sample-rate or --rescale) stop the run before any work (with -f "
                             "they are made again).")]
ManifestOption = Annotated[Optional[str], typer.Option(
    "--manifest", help="Write one JSON line per input: input, output, status, duration_s, frames, error, warnings "
                       "('-': standard output, once the run is over).",
    show_default=False, metavar="PATH.jsonl")]
EngineOption = Annotated[str, typer.Option(
    "--engine", help="local (processes on this machine) or ray (Ray Data: this machine, or the cluster at "
                     "$RAY_ADDRESS; needs mimi-cli\\[ray]).")]
ParquetOption = Annotated[Optional[str], typer.Option(
    "--parquet", help="Also write Parquet shards of all codes and their metadata to this folder or URI "
                      "(e.g. s3://bucket/codes; needs pyarrow).", show_default=False, metavar="DIR")]


def _check_shard(given: str | None) -> tuple[int, int] | None:
    """--shard I/N as (I, N)."""
    if given is None:
        return None
    parts = given.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or not 1 <= int(parts[0]) <= int(parts[1]):
        raise typer.BadParameter(f"{given!r} is not I/N with 1 ≤ I ≤ N; e.g. 2/4 for the second of 4 runs")
    return int(parts[0]), int(parts[1])


ShardOption = Annotated[Optional[str], typer.Option(
    "--shard", callback=_check_shard, metavar="I/N", show_default=False,
    help="Do the I-th of N parts of the inputs (1 ≤ I ≤ N), chosen by each output's name: the same command run "
         "for I = 1..N (a SLURM array, machines sharing the folders) does each input once. Give each run its "
         "own --manifest; with --parquet, the runs share the folder (shard-I-of-N-part-*.parquet).")]


def _check_suffix(given: str | None) -> str | None:
    """--suffix as a suffix (``flac`` → ``.flac``), or a usage error."""
    from mimi_cli.batch import check_suffix_option

    try:
        return None if given is None else check_suffix_option(given)
    except ValueError as exc:
        raise typer.BadParameter(str(exc).removeprefix("--suffix takes ")) from None


def _suffix_option(help: str) -> object:
    return Annotated[Optional[str], typer.Option("--suffix", callback=_check_suffix, metavar=".EXT",
                                                 show_default=False, help=help)]


def _check_raw(given: str | None) -> str | None:
    from mimi_cli.audio import RawFormat

    if given is not None:
        try:
            RawFormat.parse(given, 1)  # its form; a rate not given is the codec's, which Settings knows
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return given


def _check_raw_output(given: str | None) -> str | None:
    """decode's --raw: an encoding alone, as encode's --raw names them."""
    if given is not None and ":" in given:
        raise typer.BadParameter(f"give the encoding alone ({given.split(':')[0]}): decode's rate is "
                                 "--sample-rate's, its channels the codes'")
    _check_raw(given)
    return None if given is None else given.strip().lower()


RawOption = Annotated[Optional[str], typer.Option(
    "--raw", callback=_check_raw, metavar="ENC[:RATE[:CH]]", show_default=False,
    help="Read the inputs as headerless samples (a file, '-' or a folder's .raw and .pcm files) in this encoding, "
         "as FFmpeg names it (s16le, s24le, s32le, f32le, f64le, their big-endian ...be, u8, s8, mulaw, alaw), at "
         "RATE Hz (the codec's, 24000, when not given) with CH interleaved channels (1 when not given): "
         "s16le:16000 or f32le:48000:2.")]


ForceOption = Annotated[bool, typer.Option(
    "--force", "-f", help="Replace outputs that exist (regular files only; never a file that is an input).")]


def _output_option(help: str) -> object:
    return Annotated[Optional[str], typer.Option("--output", "-o", help=help, show_default=False)]


@app.command()
def encode(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Audio files (WAV, FLAC, OGG, MP3; any rate, any channels), folders of them, quoted globs "
             "('data/**/*.flac'), '-' (standard input), or containers of many: JSONL manifests (.jsonl.gz too), "
             "WebDataset .tar shards, lhotse Shar folders, Kaldi data folders (wav.scp), Hugging Face datasets (a "
             "save_to_disk folder, .arrow or .parquet files).",
        metavar="INPUT", readable=False, show_default=False)] = None,
    output: _output_option("Codes file for one input: .npz, .npy (the codes alone) or, for EnCodec, .ecdc (as Meta's "
                           "encodec writes); '-': standard output. For several, or ending in /, a folder that mirrors "
                           "the inputs' tree. Default: beside each input, with .npz.") = None,
    codec: CodecOption = DEFAULT_CODEC,
    codebooks: CodebooksOption = None,
    bandwidth: BandwidthOption = None,
    stream: StreamOption = False,
    channels: _channels_option("each channel its own code stream (codes [C, K, frames], e.g. one speaker per "
                               "channel); decode writes C channels.") = "mix",
    raw: RawOption = None,
    suffix: _suffix_option("Of the codes files written into a folder or beside their inputs, or to standard "
                           "output (-o -): .npz (the default), .npy (the codes alone), .jsonl (the codes alone as "
                           "JSON lines, a frame each) or, for EnCodec, .ecdc.") = None,
    recursive: RecursiveOption = False,
    jobs: JobsOption = 1,
    engine: EngineOption = "local",
    skip_existing: SkipExistingOption = False,
    shard: ShardOption = None,
    manifest: ManifestOption = None,
    parquet: ParquetOption = None,
    inputs_from: Annotated[Optional[list[str]], typer.Option(
        "--inputs-from", metavar="MANIFEST", readable=False, show_default=False,
        help="A list of inputs, whatever its name ('-': standard input; a pipe too): JSON lines with "
             "audio_filepath (or path, file_name), optional offset and duration in seconds, other keys carried to "
             "--manifest and --parquet (lhotse cuts too); or plain paths, one per line ('#' lines are comments) or "
             "NUL-separated (find -print0); or a .csv or .tsv file whose first row names the columns (Common "
             "Voice's train.tsv, an audiofolder's metadata.csv). Repeatable. A .jsonl, .json, .csv or .tsv file "
             "(.gz too) named as an input is read the same way.")] = None,
    audio_column: Annotated[str, typer.Option(
        "--audio-column", help="The audio column of dataset inputs (Arrow or Parquet): {bytes, path} structs, "
                               "bytes, paths, or decoded {array, sampling_rate} structs.")] = "audio",
    weights: WeightsOption = None,
    threads: ThreadsOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Encode audio into codes (.npz): Mimi by default, or EnCodec with --codec encodec-24khz."""
    from mimi_cli.pipeline import Settings

    settings = Settings("encode", weights, codec, _num_codebooks(codec, codebooks, bandwidth),
                        stream, replace=force, channels=channels, raw=raw)
    if not inputs and not inputs_from:
        _fail("give inputs to encode (files, folders, globs, '-', manifests, shards or datasets)", code=2)
    _run(settings, inputs or [], output, recursive, jobs, engine, threads, skip_existing, manifest, parquet, quiet,
         audio_column, inputs_from or [], shard, suffix)


@app.command()
def decode(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Codes files written by `mimi encode`, integer arrays (.npy) or EnCodec's .ecdc files, Parquet shards "
             "of --parquet or "
             "tables with an integer codes column (one audio file per row, with -o DIR), folders of them, quoted "
             "globs, or '-' (standard input).", metavar="CODES",
        readable=False, show_default=False)] = None,
    output: _output_option("Audio file for one input ('-': WAV to standard output); for several, or ending in /, "
                           "a folder that mirrors the inputs' tree (NAME.wav). Default: beside each input, as "
                           "NAME.decoded.wav.") = None,
    sample_rate: Annotated[Optional[int], typer.Option("--sample-rate", callback=_rate(),
                                                       help="Output rate in Hz. Default: the codec's 24000.",
                                                       show_default=False)] = None,
    codec: Annotated[Optional[str], typer.Option(
        "--codec", "-c", callback=_check_codec, show_default=False,
        help=f"The codec of bare integer arrays (.npy [K, frames] or [C, K, frames], e.g. a language model's "
             f"output). Default: the one a codec_info.json above them names (codec-bpe's), else {DEFAULT_CODEC}; "
             "a codes file (.npz, .ecdc) names its own.")] = None,
    codebooks: Annotated[Optional[int], typer.Option(
        "--codebooks", "-n", min=1, show_default=False,
        help="Decode the first N levels of each file's codes alone, as if encoded with -n N (e.g. 8 of 32: "
             "how a lower bitrate sounds). Default: all of them.")] = None,
    stream: StreamOption = False,
    rescale: Annotated[bool, typer.Option(
        "--rescale", help="Scale audio louder than full scale down to a peak of 0.99 (as encodec's -r), "
                          "rather than clip it; not with --stream.")] = False,
    suffix: _suffix_option("Of the audio written into a folder or beside its codes, which names its format as "
                           "-o FILE's does: .wav (the default), .flac, .ogg, .mp3, ...") = None,
    raw: Annotated[Optional[str], typer.Option(
        "--raw", callback=_check_raw_output, metavar="ENC", show_default=False,
        help="With -o -: write headerless samples in this encoding, as FFmpeg names it (s16le, s24le, s32le, "
             "f32le, f64le, their big-endian ...be, u8, s8, mulaw, alaw), not a WAV: for a player or program "
             "that reads them (pacat, ffmpeg -f s16le -i -). The rate is --sample-rate's, the channels the "
             "codes'.")] = None,
    recursive: RecursiveOption = False,
    jobs: JobsOption = 1,
    engine: EngineOption = "local",
    skip_existing: SkipExistingOption = False,
    shard: ShardOption = None,
    manifest: ManifestOption = None,
    inputs_from: Annotated[Optional[list[str]], typer.Option(
        "--inputs-from", metavar="LIST", readable=False, show_default=False,
        help="A list of codes files (or tables), whatever its name ('-': standard input; a pipe too): plain "
             "paths, one per line or NUL-separated (find -print0), or JSON lines with path. Repeatable. Under -o "
             "the outputs mirror the paths as the list writes them.")] = None,
    codes_column: Annotated[str, typer.Option(
        "--codes-column", help="The codes column of table inputs (Parquet, Arrow): integer lists [K]\\[frames] "
                               "or [C][K]\\[frames] in each row.")] = "codes",
    weights: WeightsOption = None,
    threads: ThreadsOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Decode codes (.npz, .npy, .ecdc) back to audio; each codes file says which codec made it."""
    from mimi_cli.pipeline import Settings

    settings = Settings("decode", weights, codec, codebooks, stream=stream, sample_rate=sample_rate, replace=force,
                        rescale=rescale, raw_output=raw)
    if rescale and stream:
        from mimi_cli.batch import RESCALE_STREAM

        _fail(RESCALE_STREAM, code=2)
    if not inputs and not inputs_from:
        _fail("give codes to decode (codes files, .npy arrays, folders, globs, '-', tables or --inputs-from)", code=2)
    _run(settings, inputs or [], output, recursive, jobs, engine, threads, skip_existing, manifest, None, quiet,
         codes_column, inputs_from or [], shard, suffix)


def _run(settings, inputs, output, recursive, jobs, engine, threads, skip_existing, manifest, parquet, quiet,
         column: str = "audio", inputs_from: list[str] = (), shard: tuple[int, int] | None = None,
         suffix: str | None = None) -> None:
    """Plan and run (the library decides one file or many); show the result; exit 1 if any file failed."""
    import time

    from mimi_cli import batch

    say = _Messages(quiet)
    if engine not in ("local", "ray"):
        _fail(f"--engine takes local or ray, not {engine!r}", code=2)
    if engine == "ray" and settings.stream:
        _fail("--stream works with the local engine only (Ray reads each file whole)", code=2)
    job = batch.Job(settings, tuple(map(str, inputs)), output, recursive, jobs, engine, threads, skip_existing,
                    manifest, parquet, column, tuple(map(str, inputs_from)), shard=shard, suffix=suffix)
    with _user_errors(), say.planning() as report:
        plan = batch.plan(job, report)
    for note in plan.notes:
        say.note(f"note: {note}")
    if plan.single:
        from mimi_cli.fileio import is_stdout

        piped = settings.kind == "decode" and settings.stream and is_stdout(plan.tasks[0].output)  # sent as made
        with _user_errors("interrupted; standard output has the audio decoded until then, cut short" if piped else
                          "interrupted; no output was written"), say.reporter() as report:
            [result] = batch.execute(plan, report=report)
        _show_single(result, say)
        return
    kind = "item" if any(t.item is not None for t in plan.tasks) else "file"  # manifest lines, members, rows
    say.note(f"{counted(len(plan.tasks), kind)}, {sum(t.skip for t in plan.tasks)} already done; "
             f"{counted(plan.workers, 'Ray actor' if engine == 'ray' else 'worker')}")
    start = time.perf_counter()
    with _user_errors("interrupted; finished outputs are kept, none is half-written: rerun with --skip-existing "
                      "to resume"):
        with say.progress_files(len(plan.tasks)) as advance:  # either engine reports each file as it is done
            results = batch.execute(plan, on_result=lambda r: advance(r.duration_s or 0.0))
    _summarise(results, time.perf_counter() - start, settings.kind, say)


def _show_single(result, say: _Messages) -> None:
    """One file's result: its notes and warnings, then one line (or the error)."""
    if result.status == "failed":
        _fail(result.error)
    for note in result.notes:
        say.note(f"note: {note}")
    for warning in result.warnings:
        _warn(warning)
    speed = f"in {result.model_seconds:.2f} s ({_speed(result.duration_s / max(result.model_seconds, 1e-9))})"
    source = "standard input" if result.input == "-" else result.input
    shown = "standard output" if result.output == "-" else result.output
    shape = f"{counted(result.frames, 'frame')} × {counted(result.num_codebooks, 'codebook')}"
    if result.sample_rate is None:  # encoded
        say.note(f"{source}: {result.duration_s:.2f} s → {shape} ({result.bitrate_kbps:.2f} kbps) {speed} → {shown}")
    else:
        say.note(f"{source}: {shape} → {result.duration_s:.2f} s at {result.sample_rate} Hz {speed} → {shown}")


def _summarise(results, elapsed: float, kind: str, say: _Messages) -> None:
    """A batch: one summary line, each warning once (with its file), each failure; exit 1 if any failed."""
    done = [r for r in results if r.status == "done"]
    skipped = sum(r.status == "skipped" for r in results)
    failed = [r for r in results if r.status == "failed"]
    seconds = sum(r.duration_s or 0 for r in done)
    verb = "encoded" if kind == "encode" else "decoded"
    say.note(f"{len(done)} {verb} ({seconds:.1f} s of audio) in {elapsed:.1f} s"
             + (f", {skipped} skipped (output exists)" if skipped else "")
             + (f", {len(failed)} failed:" if failed else ""))
    _say_problems(results)


SAME_WARNINGS_SHOWN = 3  # of one warning about many files (a corpus of arrays without --codec): the rest counted


def _say_problems(results) -> None:
    """Each warning of the files done once (with its file), the same warning about more than a few files counted
    after the first few, then each failure; exit 1 if any file failed."""
    alike: dict[str, list[str]] = {}  # a warning's words without its file's name: its lines
    for r in results:
        for warning in r.warnings if r.status == "done" else ():
            line = warning if warning.startswith("weights:") or r.input in warning else f"{r.input}: {warning}"
            lines = alike.setdefault(line.replace(r.input, "\0"), [])
            if line not in lines:
                lines.append(line)
    for lines in alike.values():
        for line in lines[:SAME_WARNINGS_SHOWN]:
            _warn(line)
        if len(lines) > SAME_WARNINGS_SHOWN:
            more = counted(len(lines) - SAME_WARNINGS_SHOWN, "more file")
            _warn(f"the same for {more} (--manifest lists each file's warnings)")
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        reason = r.error or ""
        err.print(f"  [red]failed:[/] {_shown(reason if r.input in reason else f'{r.input}: {reason}')}")
    if failed:
        raise typer.Exit(1)


@app.command()
def roundtrip(
    inputs: Annotated[Optional[list[str]], typer.Argument(
        help="Audio file to encode and decode ('-': standard input); several, a folder of them (a test set: "
             "testset/, testset/*.wav) or items as encode takes them (manifests, shards, datasets): a row each and "
             "their mean.",
        metavar="INPUT", readable=False, show_default=False)] = None,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", help="Also write the decoded audio to this file; or into this folder (as NAME.wav; with "
                               "several inputs, mirroring their tree as encode's -o does).",
        show_default=False)] = None,
    codec: CodecOption = DEFAULT_CODEC,
    codebooks: CodebooksOption = None,
    bandwidth: BandwidthOption = None,
    channels: _channels_option("each channel encoded, decoded and measured on its own (the metrics are their "
                               "mean; --json has each channel's), -o and --plot with every channel.") = "mix",
    raw: RawOption = None,
    suffix: _suffix_option("Of the decoded audio written into -o's folder, which names its format: .wav (the "
                           "default), .flac, .ogg, ...") = None,
    jobs: JobsOption = 1,
    stream: Annotated[bool, typer.Option(
        "--stream", help="Encode and decode in the codec's streaming mode, as encode --stream and decode --stream "
                         "do (Mimi: moshi's streaming codes, which differ from batch mode past 10 s), and measure "
                         "that; the file is still held in memory whole.")] = False,
    recursive: RecursiveOption = False,
    inputs_from: Annotated[Optional[list[str]], typer.Option(
        "--inputs-from", metavar="MANIFEST", readable=False, show_default=False,
        help="A list of inputs, as for encode (JSON lines with audio_filepath and optional offset and duration, "
             "plain paths, .csv or .tsv). Repeatable.")] = None,
    audio_column: Annotated[str, typer.Option(
        "--audio-column", help="The audio column of dataset inputs (Arrow or Parquet), as for encode.")] = "audio",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    plot: Annotated[Optional[str], typer.Option(
        "--plot", help="Also draw input and output log-mel spectrograms and their difference into this image "
                       "(.png, .svg or .pdf; needs mimi-cli\\[plot]), or into this folder (NAME.png, as -o).",
        show_default=False)] = None,
    weights: WeightsOption = None,
    threads: ThreadsOption = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Encode then decode, and report bitrate, quality and speed."""
    say = _Messages(quiet or as_json)
    settings_codebooks = _num_codebooks(codec, codebooks, bandwidth)
    if not inputs and not inputs_from:
        _fail("give audio to round-trip (files, folders, globs, '-', manifests, shards or datasets)", code=2)
    from mimi_cli.pipeline import Settings, Worker, roundtrip_mean

    settings = Settings("roundtrip", weights, codec, settings_codebooks, stream, replace=force, channels=channels,
                        raw=raw)
    with _user_errors(), say.planning() as report:
        from mimi_cli.batch import Job, execute, plan

        planned = plan(Job(settings, tuple(inputs or ()), output, recursive, jobs, threads=threads,
                           column=audio_column, manifests=tuple(inputs_from or ()), plot=plot, suffix=suffix),
                       report)
    if not planned.single:
        for note in planned.notes:
            say.note(f"note: {note}")
        with _user_errors(), say.progress_files(len(planned.tasks)) as advance:  # a bar over the files, as a batch's
            results = execute(planned, on_result=lambda r: advance(r.duration_s or 0.0))
        return _show_roundtrips(results, roundtrip_mean(results), as_json)
    [task] = planned.tasks
    with _user_errors(), _threads(threads, say), say.reporter() as report:
        result = Worker(settings).run(task, report)
    if result.status == "failed":
        _fail(result.error)
    for note in result.notes:
        say.note(f"note: {note}")
    for warning in result.warnings:
        _warn(warning)
    if as_json:
        out.print_json(json.dumps(result.metrics, allow_nan=False), ensure_ascii=True)
    else:
        _print_metrics(result.metrics)


@app.command()
def bench(
    seconds: Annotated[float, typer.Option("--seconds", callback=_finite(1, 600),
                                           help="Audio length for kernel and model timings (1 to 600).")] = 10.0,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Threads for one run's work "
                                                                 "(at most the core count).")] = 2,
    codec: CodecOption = DEFAULT_CODEC,
    only: Annotated[Optional[str], typer.Option(
        "--only", help="Run one part: kernels, model or stream (EnCodec: model or stream).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Measure speed on this machine: BLAS peak, kernels, whole codec, streaming (no weights needed)."""
    from mimi_cli.models import codec_spec

    parts = codec_spec(codec).bench_parts
    if only is not None and only not in parts:
        _fail(f"--only takes one of {', '.join(parts)} for {codec}, not {only!r}", code=2)
    say = _Messages(quiet=as_json)  # with --json, stderr stays free of status lines too
    with _user_errors(), _threads(threads, say):
        from mimi_cli import bench as b
        from mimi_cli.core.threads import usable_threads
        from mimi_cli.pipeline import check_batch_memory

        threads = usable_threads(threads)[0]
        check_batch_memory(seconds, codec, "give fewer --seconds")
        report: dict = {"codec": codec, "threads": threads, "seconds": seconds}
        with say.status("Building random weights of the released size…"):
            model, load_seconds = b.random_model(codec_spec(codec))
        report["blas"] = b.blas_library()
        with say.status("Measuring the BLAS peak…"):
            report["blas_peak_gflops"] = peak = b.blas_peak()
        if only in (None, "kernels") and "kernels" in parts:
            with say.progress_count("Kernels", 64) as tick:
                report["kernels"] = [r.as_dict() for r in b.kernel_benchmarks(model, 1.0, peak, tick)]
        if only in (None, "model"):
            with say.progress_count("Codec", 4) as tick:
                report["model"] = [r.as_dict() for r in b.model_benchmarks(model, seconds, peak, tick)]
            report["weights_load_seconds"] = load_seconds
            report["peak_rss_mb"] = b.peak_rss_mb()
        if only in (None, "stream") and "stream" in parts:
            with say.status("Streaming, frame by frame…"):
                report["stream"] = [r.as_dict() for r in b.stream_latency(model, frames=150)]
                report["frame_ms"] = 1000 / model.config.frame_rate
            with say.status("Many streams at once…"):
                report["streams"] = [r.as_dict() for duplex in (False, True)
                                     for r in b.many_streams(model, duplex=duplex)]
    if as_json:
        out.print_json(json.dumps(report), ensure_ascii=True)
    else:
        _print_bench(report)


def _print_bench(report: dict) -> None:
    from rich.table import Table

    from mimi_cli.bench import describe_blas

    out.print(f"BLAS: {describe_blas(report['blas'])}")
    out.print(f"BLAS peak (2048² float32 matmul, {report['threads']} threads): "
              f"{report['blas_peak_gflops']:.1f} GFLOP/s")
    if "kernels" in report:
        table = Table(title="Kernels at the codec's shapes (1 s of audio)", title_justify="left")
        for column in ("layer", "shape", "strategy", "time", "GFLOP/s", "% of peak"):
            table.add_column(column, justify="left" if column in ("layer", "shape", "strategy") else "right")
        for r in report["kernels"]:
            table.add_row(r["name"], r["shape"], r["strategy"], f"{r['seconds'] * 1e3:.2f} ms",
                          f"{r['gflops']:.1f}", f"{100 * r['peak_fraction']:.0f} %")
        _table_out().print(table)
    if "model" in report:
        table = Table(title=f"One-shot {report['codec']} on {report['seconds']:g} s of audio", title_justify="left")
        for column in ("run", "time", "real-time factor", "GFLOP/s", "% of peak"):
            table.add_column(column, justify="left" if column == "run" else "right")
        for r in report["model"]:
            table.add_row(r["name"], f"{r['seconds']:.2f} s", f"{r['rtf']:.3f}", f"{r['gflops']:.1f}",
                          f"{100 * r['peak_fraction']:.0f} %")
        _table_out().print(table)
        out.print(f"weights load: {report['weights_load_seconds']:.2f} s; peak memory: {report['peak_rss_mb']:,.0f} MB")
    if "stream" in report:
        title = f"Streaming, per {report['frame_ms']:.3g} ms frame (1 frame per step)"
        table = Table(title=title, title_justify="left")
        for column in ("direction", "p50", "p95", "max"):
            table.add_column(column, justify="left" if column == "direction" else "right")
        for r in report["stream"]:
            table.add_row(r["direction"], f"{r['p50_ms']:.1f} ms", f"{r['p95_ms']:.1f} ms", f"{r['max_ms']:.1f} ms")
        _table_out().print(table)
    if "streams" in report:
        table = Table(title=f"B streams in one call, 1 frame per step ({report['frame_ms']:.3g} ms of audio each)",
                      title_justify="left")
        for column in ("streams", "directions", "step", "encode", "decode", "per stream and frame", "real time"):
            table.add_column(column, justify="left" if column == "directions" else "right")
        for r in report["streams"]:
            table.add_row(str(r["streams"]), "at once" if r["duplex"] else "in turn", _ms(r["step_ms"]),
                          _ms(r["encode_ms"]), _ms(r["decode_ms"]), _ms(r["ms_per_stream_frame"]),
                          "yes" if r["real_time"] else "no")
        _table_out().print(table)
        held = [_streams_held([r for r in report["streams"] if r["duplex"] == duplex]) for duplex in (False, True)]
        out.print(f"concurrent real-time streams (encode + decode) held: {held[0]} encoding then decoding, "
                  f"{held[1]} with both at once (stream_duplex)")


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} ms"


def _streams_held(rows: list[dict]) -> str:
    """The most real-time streams in ``rows`` of one mode, and what bounds that figure."""
    held = max((r["streams"] for r in rows if r["real_time"]), default=0)
    tried = max(r["streams"] for r in rows)
    return f"at least {held}, the most tried" if held == tried else f"{held} ({held + 1} did not keep up)"


def _weights_source(name: str, fetch: bool = True) -> Path | None:
    """A weights argument: a path, or a Hugging Face repo (OWNER/REPO[/FILE]) when no such file exists (with
    ``fetch=False``, None for a repo: a missing file is said, nothing is downloaded)."""
    from mimi_cli.models import codec_spec
    from mimi_cli.weights.resolve import locate

    return locate(name, codec_spec(DEFAULT_CODEC), fetch=fetch)


def inspect_weights(
    name: Annotated[str, typer.Argument(
        metavar="PATH|REPO", show_default=False,
        help="A .safetensors file, a Core ML .mlmodelc / .mlpackage folder, or a Hugging Face repo "
             "(OWNER/REPO or OWNER/REPO/FILE) when no such file exists.")],
    pattern: Annotated[Optional[str], typer.Option(
        "--filter", help="Only tensors whose name matches this glob, e.g. 'decoder.*conv*'.", show_default=False)]
    = None,
    no_stats: Annotated[bool, typer.Option(
        "--no-stats", help="Names, dtypes and shapes from the headers alone, without reading the data.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Show the tensors in a weights file, its format, and whether it is sound.

    Exit code 0 when the file is clean or has only warnings, 2 when it has errors
    (NaN/Inf values, unreadable or malformed data, a Mimi checkpoint that would not load).
    """
    with _user_errors():
        from mimi_cli.inspect import inspect_weights as inspect

        path = _weights_source(name)
        _report_apart(path, *(path.rglob("*") if path.is_dir() else []))  # a Core ML folder's files
        with _Messages(quiet=as_json).progress_fraction("Reading tensors") as update:
            report = inspect(path, pattern, stats=not no_stats, progress=update)
    if as_json:
        out.print_json(json.dumps(report.to_json(), allow_nan=False), ensure_ascii=True)
    elif report.format == "unreadable":  # not opened at all: no report, its one error, as every failure says it
        _fail(report.errors[0], code=2)
    else:
        _print_weights_report(report, not no_stats)
    raise typer.Exit(2 if report.errors else 0)


app.command("inspect-weights")(inspect_weights)


def _report_apart(*inputs: str | Path) -> None:
    """A report (standard output) is never appended into what it reports on (fileio.check_stdout_apart)."""
    from mimi_cli.fileio import check_stdout_apart, file_ids

    check_stdout_apart(file_ids(map(Path, inputs)))


@app.command("inspect")
def inspect_any(
    names: Annotated[list[str], typer.Argument(
        metavar="PATH|REPO", show_default=False,
        help="Weights, as for inspect-weights; or codes (.npz, .npy, .ecdc, JSON; a folder of them, a glob, "
             "or a table of them: Parquet, Arrow, a dataset folder; '-' or a pipe), as decode reads them. "
             "Several names are codes, reported together.")],
    pattern: Annotated[Optional[str], typer.Option(
        "--filter", help="Weights: only tensors whose name matches this glob.", show_default=False)] = None,
    no_stats: Annotated[bool, typer.Option(
        "--no-stats", help="Weights: names, dtypes and shapes from the headers alone.")] = False,
    codec: Annotated[Optional[str], typer.Option(
        "--codec", "-c", callback=_check_codec, show_default=False,
        help="Codes: the codec of a bare integer array, as for decode.")] = None,
    codes_column: Annotated[str, typer.Option(
        "--codes-column", help="Codes: the codes column of a table, as for decode.")] = "codes",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Show what a weights or codes file holds, and whether it is sound.

    Weights: as inspect-weights. Codes (.npz, .npy, .ecdc; a folder's files,
    every level below it, a table's rows of them, or several names together):
    codec, shape, length, how made, each level's use.
    """
    from mimi_cli.inspect import inspect_codes, is_codes_path, not_shown, not_there

    for problem in map(not_there, names):
        if problem is not None:
            _fail(problem)
    if len(names) > 1:  # a shell's glob: codes, reported together as a quoted glob's files are
        for name in names:
            if not is_codes_path(name):
                _fail(f"{name} is not codes: mimi inspect reports several names together as codes, as "
                      "decode reads them; give weights one at a time", code=2)
    name = names[0]
    if not is_codes_path(name):
        if (other := not_shown(name)) is not None:
            _fail(other, code=2)
        if codec is not None:
            _fail("--codec is for codes files (.npz, .npy, .ecdc), not weights", code=2)
        return inspect_weights(name, pattern, no_stats, as_json)
    if pattern is not None or no_stats:
        _fail("--filter and --no-stats are for weights; a codes file is shown whole", code=2)
    with _user_errors():
        _report_apart(*names)
        try:
            with _Messages(quiet=as_json).progress_fraction("Reading codes") as update:
                report = inspect_codes(names, codec, codes_column, update)
        except WeightsError as exc:  # weights piped in: to be given as a file
            _fail(str(exc))
        except MimiError as exc:  # codes decode would refuse: unsound, as inspect-weights says of weights
            _fail(str(exc), code=2)
    if as_json:
        out.print_json(json.dumps(report.to_json(), allow_nan=False), ensure_ascii=True)
    else:
        _print_codes_report(report)


def _print_codes_report(report) -> None:
    from rich.table import Table

    made = "" if report.streamed is None else ", made by encode --stream" if report.streamed else \
        ", made in batch mode"
    out.print(f"[bold]{_shown(report.path)}[/]: {report.display_name} codes, {report.kind}{made}")
    unsaid = "not recorded" if report.rows is None else "not recorded, or not the same in all"
    if report.left_out:
        err.print(f"note: {_shown(report.left_out)}")
    for warning in report.warnings:
        _warn(warning)
    rows = [("code streams", f"{report.streams}" + (" (one per channel)" if report.streams > 1 else "")),
            ("codebooks", f"{report.codebooks} of {report.codebook_size} codes ({report.bitrate_kbps:g} kbps)"),
            ("frames", f"{report.frames} at {report.frame_rate:g} Hz"),
            ("audio", f"{report.num_samples / report.sample_rate:.3f} s ({report.num_samples} samples at "
                      f"{report.sample_rate} Hz)"),
            ("source", unsaid if report.source_sample_rate is None else
             f"{report.source_sample_rate} Hz, {counted(report.source_channels, 'channel')}"),
            ("weights", _shown(report.weights_id or unsaid))]
    for label, value in rows:
        out.print(f"  {label:<13} {value}")
    table = Table(title="each level's use of its codebook (every stream and frame)", title_justify="left")
    for column in ("level", "distinct codes", "entropy", "most frequent (share)"):
        table.add_column(column, justify="right")
    for level in report.levels:
        table.add_row(str(level.level), str(level.distinct), f"{level.entropy_bits:.2f} bits",
                      f"{level.most_frequent} ({level.share:.1%})")
    _table_out().print(table)


def _print_weights_report(report, with_stats: bool) -> None:
    from rich.table import Table

    from mimi_cli.inspect import total_params

    console = _table_out()
    console.print(f"[bold]{_shown(report.path)}[/]: {_shown(report.format)}")
    for key, value in report.details.items():
        if key == "ops":
            value = ", ".join(f"{op} {count}" for op, count in value.items())
        console.print(f"  {key}: {_shown(str(value))}")
    if report.tensors:
        table = Table(show_edge=False, pad_edge=False)
        columns = ["name", "dtype", "shape", "params"] + (["min", "max", "mean", "std", "non-finite"] if with_stats
                                                         else [])
        for column in columns:
            table.add_column(column, justify="left" if column in ("name", "dtype", "shape") else "right",
                             overflow="fold")
        for t in report.tensors:
            row = [_shown(t.name), _shown(t.dtype + (f" ({t.encoding})" if t.encoding else "")),
                   "×".join(map(str, t.shape)) or "scalar", f"{t.params:,}"]
            if with_stats:
                row += [_stat(t.min), _stat(t.max), _stat(t.mean), _stat(t.std),
                        "" if t.nonfinite is None else (f"[red]{t.nonfinite:,}[/]" if t.nonfinite else "0")]
            table.add_row(*row)
        console.print(table)
    shown = len(report.tensors)
    console.print(f"{counted(shown, 'tensor')}, {total_params(report):,} parameters")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {_shown(warning)}")
    for error in report.errors:
        console.print(f"[bold red]error:[/] {_shown(error)}")
    if not report.errors:
        count = len(report.warnings)
        console.print("[green]no errors[/]" + (f", {counted(count, 'warning')}" if count else ""))


def _stat(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


@app.command()
def convert(
    name: Annotated[str, typer.Argument(
        metavar="SOURCE", show_default=False,
        help="Mimi weights: .safetensors (any naming), .mlmodelc or .mlpackage, or a Hugging Face repo "
             "(OWNER/REPO or OWNER/REPO/FILE) when no such file exists.")],
    destination: Annotated[str, typer.Argument(
        metavar="DESTINATION", show_default=False,
        help="The .safetensors file to write; a folder (or a name ending in /) receives SOURCE's name with "
             ".safetensors.")],
    naming: Annotated[str, typer.Option(
        "--naming", help="Tensor names to write: original (Kyutai's release), hf (transformers' kyutai/mimi) "
                         "or moshi (moshi's state_dict).")] = "original",
    dtype: Annotated[Optional[str], typer.Option(
        "--dtype", help="Float format to write: f32, f16 or bf16. Default: the source's, if all its tensors "
                        "share one of these, else f32.", show_default=False)] = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Rewrite Mimi weights as safetensors in another naming and/or float format (e.g. Core ML → safetensors)."""
    from mimi_cli.convert import DTYPES
    from mimi_cli.models.mimi.checkpoint import LAYOUT_NAMES

    if naming not in LAYOUT_NAMES:
        _fail(f"--naming takes one of {', '.join(LAYOUT_NAMES)}, not {naming!r}", code=2)
    if dtype is not None and dtype not in DTYPES:
        _fail(f"--dtype takes one of {', '.join(DTYPES)}, not {dtype!r}", code=2)
    with _user_errors():
        from mimi_cli.convert import convert_checkpoint
        from mimi_cli.fileio import check_suffix, into_folder

        source = _weights_source(name, fetch=False)  # a missing file is said before the destination's problems
        destination, new_folder = into_folder(destination, name, ".safetensors")
        check_suffix(destination, "weights", (".safetensors",), to_stdout=False)  # before a Hub download
        layout, written, count = convert_checkpoint(source or _weights_source(name), destination, naming, dtype,
                                                    force, create_parents=new_folder)
        if not quiet:
            err.print(f"{_shown(name)} ({layout} naming) → {_shown(str(destination))}: {count} tensors, "
                      f"{naming} naming, {written}")


@app.command()
def run(
    model: Annotated[Path, typer.Argument(help="A Core ML ML Program: an .mlmodelc folder or an .mlpackage.",
                                          metavar="MODEL", readable=False, show_default=False)],
    inputs: Annotated[Optional[list[str]], typer.Option(
        "--input", "-i", metavar="NAME=FILE.npy", show_default=False,
        help="An input's value from a .npy file; repeat for each input.")] = None,
    stream: Annotated[Optional[str], typer.Option(
        "--stream", metavar="NAME=AUDIO", show_default=False,
        help="Feed an audio file to input NAME window by window (the input's last dimension), carrying state "
             "inputs X from outputs named new_X; writes every window's outputs.")] = None,
    hop: Annotated[Optional[int], typer.Option(
        "--hop", min=1, show_default=False,
        help="With --stream: new samples per window; the rest of the window repeats the previous samples "
             "(Silero VAD: 512 of a 576-sample window). Default: the whole window.")] = None,
    sample_rate: Annotated[Optional[int], typer.Option(
        "--sample-rate", callback=_rate(lowest=1), show_default=False,
        help="With --stream: resample the audio to this rate first, 1 to 768000 Hz (Silero VAD: 16000). "
             "Default: the file's.")] = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="program: every value in the dtype the program declares (fp16 stays fp16); "
                            "fp32: fp16 values held and computed in fp32.")] = "program",
    function: Annotated[Optional[str], typer.Option(
        "--function", show_default=False,
        help="The function to run in a multi-function program. Default: main.")] = None,
    output: _output_option("An .npz with one member per output ('-': standard output); a folder (or a name "
                           "ending in /) receives MODEL.npz. Default: print a summary of each output.") = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """Run a compiled Core ML program (.mlmodelc, .mlpackage) on NumPy, on any OS."""
    from mimi_cli.coreml.program import CoreMLProgram, Overflows, check_program_folder

    if precision not in CoreMLProgram.PRECISIONS:  # an option's mistake (exit 2), said before the program is read
        _fail(f"--precision takes one of {', '.join(CoreMLProgram.PRECISIONS)}, not {precision!r}", code=2)
    with _user_errors():
        from mimi_cli.coreml import load_program
        from mimi_cli.coreml.run import (named_files, overflow_note, parse_assignment, read_feeds, run_stream,
                                          save_outputs)
        from mimi_cli.fileio import check_output, check_suffix, file_ids, into_folder, readable

        if hop is not None and stream is None or sample_rate is not None and stream is None:
            _fail("--hop and --sample-rate go with --stream NAME=AUDIO", code=2)
        target, new_folder = (output, False) if output in (None, "-") else into_folder(output, model, ".npz")
        if target not in (None, "-"):
            check_suffix(target, "outputs", (".npz",))
        check_program_folder(model)
        if target is not None:  # no output may be one of the run's files: the program's, or an input (any name)
            given = [path for _, path in named_files(inputs or [], stream)]
            check_output(target, force, file_ids([model, *model.rglob("*"), *given]), create_parents=new_folder)
        program = load_program(model, function, precision)
        feeds = read_feeds(program, inputs or [], stream)
        if stream is None:
            overflows = Overflows()
            results = program.predict(feeds, overflows)
            summary = "one call"
        else:
            from mimi_cli.audio import check_audio_head, read_audio, to_mono
            from mimi_cli.pipeline import conversion_notes

            name, audio_path = parse_assignment(stream, "--stream")
            with readable(audio_path, check_audio_head) as source:
                audio = read_audio(source.path)
            rate = sample_rate or audio.sample_rate
            say = _Messages(quiet)
            for note in conversion_notes(audio.channels, audio.sample_rate, rate):  # as encode says them
                say.note(f"note: {note}")
            streamed = run_stream(program, name, to_mono(audio, rate), hop, feeds)
            results, overflows = streamed.outputs, streamed.overflows
            summary = (f"{counted(streamed.windows, 'window')} of {streamed.window} samples, hop {streamed.hop} "
                       f"({streamed.hop / rate * 1000:.1f} ms at {rate} Hz)")
        note = overflow_note(program, results, feeds, overflows)
        if note:
            _warn(note)
        if target is not None:
            save_outputs(target, results, force)
        if target is None or not quiet:  # without -o, the summary is the output
            _print_outputs(str(model), summary, results, target)


def _print_outputs(model: str, summary: str, results: dict, target) -> None:
    """What ran; without -o (``target`` None), a table of the outputs, which is then the command's output."""
    import numpy as np
    from rich.table import Table

    if target is not None:
        where = "standard output" if target == "-" else _shown(str(target))
        err.print(f"{_shown(model)}: {summary}; wrote {', '.join(_shown(n) for n in results)} to {where}")
        return
    view = Table(title=f"{_shown(model)}: {summary}", title_justify="left")
    for column in ("output", "dtype", "shape", "min", "mean", "max"):  # a name wraps, never cut short
        view.add_column(column, justify="left" if column in ("output", "dtype") else "right", overflow="fold")
    for name, value in results.items():  # in place: a float64 copy of a stream's stacked outputs took GiBs
        figures = [f"{float(number):.6g}" for number in (value.min(), value.mean(dtype=np.float64), value.max())] \
            if value.size else ["-"] * 3
        view.add_row(_shown(name), str(value.dtype), str(list(value.shape)), *figures)
    _table_out().print(view)


# A round trip's quality metrics as shown: label, JSON key, format (PESQ and STOI with the metrics extra)
QUALITY = (("SI-SDR", "si_sdr_db", "{:.2f} dB"), ("log-mel distance", "log_mel_distance", "{:.4f}"),
           ("PESQ (wide band)", "pesq_wb", "{:.3f}"), ("STOI", "stoi", "{:.3f}"))


def _print_metrics(metrics: dict) -> None:
    """The round trip's table; with --channels split, the quality metrics' mean and a column for each channel."""
    from rich.table import Table

    channels = metrics.get("per_channel", [])
    channels = channels if len(channels) > 1 else []  # one channel: its figures are the mean's
    mode = " (streaming)" if metrics["streamed"] else ""
    table = Table(title=f"{metrics['codec']} round trip{mode}: {_shown(metrics['input'])}", title_justify="left")
    table.add_column("metric")
    table.add_column(f"mean of {len(channels)} channels" if channels else "value", justify="right")
    for number in range(1, len(channels) + 1):
        table.add_column(f"channel {number}", justify="right")
    quality = [(label, key, shown) for label, key, shown in QUALITY if key in metrics]
    table.add_row("duration", f"{metrics['duration_s']:.2f} s")
    table.add_row("codebooks × frames", f"{metrics['codebooks']} × {metrics['frames']}")
    table.add_row("bitrate", f"{metrics['bitrate_kbps']:.2f} kbps" + (" each" if channels else ""))
    for label, key, shown in quality:
        table.add_row(label, *["undefined" if values[key] is None else shown.format(values[key])
                               for values in (metrics, *channels)])
    table.add_row("encode real-time factor", _rtf(metrics["encode_rtf"]))
    table.add_row("decode real-time factor", _rtf(metrics["decode_rtf"]))
    _table_out().print(table)


def _show_roundtrips(results: list, mean: dict, as_json: bool) -> None:
    """Several round trips: a row each and their mean (JSON: ``files`` and ``mean``); each failure a line; exit
    1 if any file failed."""
    from rich.table import Table

    if as_json:
        rows = [r.metrics if r.status == "done" else {"input": r.input, "error": r.error} for r in results]
        out.print_json(json.dumps({"files": rows, "mean": mean or None}, allow_nan=False), ensure_ascii=True)
    else:
        done = [r.metrics for r in results if r.status == "done"]
        quality = [(label, key, shown) for label, key, shown in QUALITY if key in (mean or {})]
        if mean:
            first = done[0]
            table = Table(title=f"{first['codec']} round trips{' (streaming)' if first['streamed'] else ''}, "
                                f"{counted(first['codebooks'], 'codebook')} ({first['bitrate_kbps']:g} kbps)",
                          title_justify="left")
            table.add_column("input", overflow="fold")  # a name wraps, never cut short
            for column in ("duration", *[label for label, _, _ in quality]):
                table.add_column(column, justify="right")
            for name, values in [*[(_shown(m["input"]), m) for m in done], (f"[bold]mean of {len(done)}[/]", mean)]:
                table.add_row(name, f"{values['duration_s']:.2f} s",
                              *["undefined" if values[key] is None else shown.format(values[key])
                                for _, key, shown in quality])
            _table_out().print(table)
            out.print(f"encode {_rtf(mean['encode_rtf'])}, decode {_rtf(mean['decode_rtf'])}, all files together")
    _say_problems(results)


def _rtf(rtf: float) -> str:
    return f"{rtf:.3f} ({_speed(1 / max(rtf, 1e-9))})"


def _speed(times: float) -> str:
    """``24.5× real time``; below 0.1× (a file of a few samples), two significant digits (``0.012×``), not ``0.0×``."""
    digits = 1 if times >= 0.095 or times <= 0 else 1 - math.floor(math.log10(times))
    return f"{times:.{digits}f}× real time"


def _empty_argument(args: list[str]) -> str | None:
    """What is wrong, if an argument is empty: no path, name or value is (an unset shell variable, most
    often). Taken as a path, '' would be the current folder: ``-o "$OUT"`` wrote beside the input, ``--parquet
    ""`` into the current folder."""
    for i, arg in enumerate(args):
        if arg == "" or (arg.startswith("--") and arg.endswith("=")):
            what = f"{arg} gives an empty value" if arg else \
                f"an empty argument ('') after {args[i - 1]}" if i else "an empty argument ('')"
            return f"{what}; is a shell variable unset? give a path or value"
    return None


def _dashed_file(option: str, args: list[str]) -> str | None:
    """For an ``option`` read from a file's name (``-w`` of ``mimi encode -weird.wav``, unknown; ``-c`` of
    ``-café.wav``, given a bad value): how to name the file, as ``rm -foo`` says it."""
    named = next((arg for arg in args if arg.startswith(option) and os.path.lexists(arg)), None)
    return None if named is None else \
        _shown(f"; to name the file {shell_word(named)}, write {shell_word('./' + named)} or put -- before it")


class _ClosedStdout:
    """Standard output closed by the shell (``>&-``), where Python leaves ``sys.stdout`` None and its ``print`` (and
    rich's, click's) writes nothing: a report or help printed there fails as ``ls >&-`` does, not silently with
    exit 0. A command that prints nothing there runs as usual."""

    closed = True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    def flush(self) -> None:  # Python flushes sys.stdout at exit
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))


class _Diagnostics:
    """Standard error as the commands see it: a message that cannot be written there (``2>/dev/full``, a log
    on a disk that filled up, ``2>&1 | head``) is lost, and the work goes on; the run then ends with exit
    code 1, as a GNU tool's does when its diagnostics failed. Everything else is the real stream's."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.lost = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (OSError, ValueError):  # ValueError: the stream was closed
            self.lost = True
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self.lost = True

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _hold_standard_descriptors() -> None:
    """Descriptors 0, 1 and 2 closed by the shell (``2>&-``) are given /dev/null, as GNU tools do: else the next
    file opened takes the number, and what a C library or a child process writes to "standard error" goes
    into it (an input, an output being written, a worker's pipe). Python, which found them closed at start,
    keeps ``sys.stdin`` and ``sys.stdout`` None, so that ``-`` and ``-o -`` are still refused as closed;
    a closed standard error is simply silent, as asked (Ray, faulthandler, warnings need one)."""
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, mode)  # the lowest free number: fd itself, as 0..fd-1 are open
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # os.open's descriptors are not: a worker process would see it closed
    if sys.stderr is None:
        with contextlib.suppress(OSError):
            sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)


@contextlib.contextmanager
def _output_apart() -> Iterator[None]:
    """Standard output carries the command's output alone. C libraries print on descriptor 1: libsndfile's reader
    of MIDI sample dumps (.sds) prints "Error A : 04" for a damaged block, which went into the codes `-o -`
    wrote (a file NumPy then refused) and into `roundtrip --json`'s JSON. So while the command runs, Python's
    ``sys.stdout`` writes to a descriptor of its own, and descriptor 1 is standard error's, where such words
    belong; both are put back afterwards."""
    given, apart = sys.stdout, _stdout_on_its_own(sys.stdout)
    if apart is None:  # closed (>&-), or a stand-in (a test's): left as it is
        yield
        return
    own = apart.fileno()
    try:
        os.dup2(2, 1)
        sys.stdout = apart
        yield
    finally:
        sys.stdout = given
        with contextlib.suppress(OSError, ValueError):  # a reader gone (| head): what is left goes nowhere
            apart.close()  # (its descriptor stays open: closefd=False)
        os.dup2(own, 1)
        os.close(own)


def _stdout_on_its_own(given) -> io.TextIOWrapper | None:
    """A text stream like ``given`` (the real standard output, descriptor 1) over a duplicate of its descriptor;
    None where there is none to be had."""
    try:
        if given is None or given.fileno() != 1:
            return None
        given.flush()
        own = os.dup(1)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
    return _waiting_stream(own, given)


def _waiting_stream(fd: int, like) -> io.TextIOWrapper:
    """A text stream like ``like`` (its encoding, error handler and buffering: none under ``python -u`` and
    PYTHONUNBUFFERED) over descriptor ``fd``, which it leaves open, and whose writes wait while a non-blocking
    descriptor is full (fileio.WaitingWriter), rather than lose what does not fit."""
    from mimi_cli.fileio import WaitingWriter

    raw = not isinstance(like.buffer, io.BufferedIOBase)
    binary = WaitingWriter(fd)
    return io.TextIOWrapper(binary if raw else io.BufferedWriter(binary), like.encoding, like.errors,
                            line_buffering=like.line_buffering, write_through=raw)


def _stderr_waiting(given):
    """Standard error as a stream that waits while it is full (see _waiting_stream), where it is descriptor 2;
    else ``given`` as it is."""
    try:
        if given.fileno() != 2:
            return given
        given.flush()
        return _waiting_stream(2, given)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return given


def main() -> None:
    _hold_standard_descriptors()
    _usable_width()
    given = sys.stderr
    diagnostics = sys.stderr = _Diagnostics(_stderr_waiting(given))
    try:
        with _output_apart():
            _load_numpy()
            from mimi_cli.core.threads import later_blas_threads

            with later_blas_threads(1, replace=False):
                _command(diagnostics)
    finally:
        diagnostics.flush()
        sys.stderr = given


def _command(diagnostics: _Diagnostics) -> None:
    """The command line's command, run; every way it ends is an exit code (``SystemExit``)."""
    import warnings

    from mimi_cli import signals
    from mimi_cli.core.threads import keep_freed_memory

    signals.install()  # SIGTERM and SIGHUP clean up like Ctrl-C
    if sys.stdout is None:
        sys.stdout = _ClosedStdout()
    with contextlib.suppress(AttributeError, ValueError):  # not a text stream when replaced (above, a test)
        # as Python's stderr does: a character the encoding lacks (an ASCII or Latin-1 locale; "×", "→", a
        # file's name) is written as \u20ac, not a UnicodeEncodeError after the work is done
        sys.stdout.reconfigure(errors="backslashreplace")
    keep_freed_memory()  # the threads of one process stop interrupting each other (core/threads.py)
    # Python's warnings are a library's words to a programmer (NumPy's overflow chatter, Ray's deprecations); a
    # command says its own findings as "warning:" lines. Under PYTHONWARNINGS=error they were tracebacks.
    warnings.simplefilter("ignore")
    # click's own errors (a bad option value, a missing argument, an unknown command), vendored by typer or not
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    empty = _empty_argument(sys.argv[1:])
    if empty:
        err.print(f"[bold red]error:[/] {_shown(empty)}")
        raise SystemExit(2)
    if working_folder_gone():  # refused at once: relative names, outputs, workers would each fail their own way
        err.print("[bold red]error:[/] the current folder was deleted; cd to a folder that exists")
        raise SystemExit(1)
    try:
        code = app(prog_name="mimi", standalone_mode=False)  # so that a usage error comes here, not as a box
    except usage_error as exc:
        message, context = " ".join(exc.format_message().split()), getattr(exc, "ctx", None)
        if message:  # none after the help shown for a bare `mimi`
            hint = f" (see {context.command_path} -h)" if context is not None else ""
            if type(exc).__name__ == "NoSuchOption":
                hint = _dashed_file(exc.option_name, sys.argv[1:]) or hint
            elif type(exc).__name__ == "BadParameter":  # -café.wav: -c given the value afé.wav
                shorts = [o for o in getattr(getattr(exc, "param", None), "opts", ()) if len(o) == 2]
                hint = next(filter(None, (_dashed_file(o, sys.argv[1:]) for o in shorts)), hint)
            err.print(f"[bold red]error:[/] {_shown(message)}{hint}")
        code = exc.exit_code
    except KeyboardInterrupt as exc:  # a signal outside a command's own handling: as it set up, or after it ended
        code = signals.exit_code(exc)
        err.print(f"[bold red]error:[/] {signals.reason(exc)}")
    except BrokenPipeError:  # standard output's reader went away (| head): say nothing (the reader chose to
        code = 1  # stop), as a Unix tool that SIGPIPE ends does, and as click does for a command (exit 1)
        _stdout_to_devnull()
    except OSError as exc:  # the commands' work says its own; what reaches here failed printing (help, a report)
        code = 1
        if exc.filename is not None:
            err.print(f"[bold red]error:[/] {_shown(f'{exc.filename}: {os_reason(exc)}')}")
        elif isinstance(sys.stdout, _ClosedStdout):
            err.print("[bold red]error:[/] standard output is closed; redirect it (> file, | program)")
        else:
            err.print(f"[bold red]error:[/] cannot write to standard output: {_shown(str(exc.strerror or exc))}; "
                      "check where it is redirected")
            _stdout_to_devnull()
    code = code if isinstance(code, int) else 0
    raise SystemExit(1 if diagnostics.lost and code == 0 else code)


def _load_numpy() -> None:
    """Import NumPy, whose OpenBLAS starts a thread per core as it loads. Where the system refuses one (ulimit -u,
    a container's pids limit), OpenBLAS prints four lines and interrupts its own process (SIGINT): a
    KeyboardInterrupt in this import, and a traceback after the four lines. Said in one line instead.

    The codecs use NumPy's BLAS alone. SciPy loads an OpenBLAS of its own (for resampling), and so does each
    child process (PESQ's, Ray's); their threads, a thread per core each, would only count against that limit,
    and would meet it there, where OpenBLAS's SIGINT stops the run as if someone had pressed Ctrl-C. So once
    NumPy's is loaded, every OpenBLAS loaded after it starts one thread (main(): core.threads.later_blas_threads),
    unless the user's environment says otherwise; --jobs workers are told their own count."""
    from mimi_cli.c_stderr import CaughtStderr
    from mimi_cli.signals import exit_code

    said = CaughtStderr()
    try:
        with said.caught():
            import numpy  # noqa: F401
    except KeyboardInterrupt as exc:
        refused = any("pthread_create failed" in line for line in said.lines)
        limit = task_limit("OpenBLAS's threads as NumPy loads", "set OPENBLAS_NUM_THREADS=1 and use --threads 1")
        err.print(f"[bold red]error:[/] {limit if refused else 'interrupted'}")  # else Ctrl-C in that instant
        raise SystemExit(1 if refused else exit_code(exc)) from None
    finally:
        said.close()
    for line in said.lines:  # anything else it said, as it was going
        err.print(line, markup=False, highlight=False)


def _stdout_to_devnull() -> None:
    """What is still buffered for a standard output that failed would fail again at exit, with Python's own
    complaint: let it go nowhere instead."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
