"""``mimi run``'s library side: feeds from files, one prediction or a stream of windows, an .npz out.

A stream feeds audio to a model window by window and carries its state: an input ``X`` is a
state when the program also returns ``new_X`` (or ``X_out``, ``X_new``, ``next_X``), and each
window's returned value is the next window's input. With a hop shorter than the window, each
window starts with the previous window's last ``window - hop`` samples, zeros before the
start (Silero VAD's 64 samples of context before each 512 new ones)::

    audio            |··········|··········|······
    window 0   [ctx=0][  hop   ]
    window 1          [ctx][  hop   ]
    window 2                    [ctx][  hop   ]     the last window is padded with zeros
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_cli.coreml.ops import MAX_VALUE_BYTES
from mimi_cli.coreml.program import CoreMLProgram, Overflows, Port, ProgramError

STATE_NAMES = ("new_{}", "{}_out", "{}_new", "next_{}")


def parse_assignment(text: str, what: str) -> tuple[str, Path]:
    """``NAME=FILE`` as (name, path)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ProgramError(f"{what} takes NAME=FILE, not {text!r}")
    return name, Path(path)


def named_files(assignments: list[str], stream: str | None = None) -> list[tuple[str, Path]]:
    """``--input NAME=FILE`` options, then the ``--stream NAME=AUDIO``, as (name, path) pairs."""
    return [parse_assignment(text, "--input") for text in assignments] + \
        ([parse_assignment(stream, "--stream")] if stream is not None else [])


def read_feeds(program: CoreMLProgram, assignments: list[str], stream: str | None = None) -> dict[str, np.ndarray]:
    """``--input NAME=FILE.npy`` options as arrays (plain numeric .npy files only), every name checked before
    any file is read (a file may be a pipe, gone once read): a name the program does not take, given twice
    or also as the ``--stream NAME=AUDIO``; standard input given more than once."""
    from mimi_cli.fileio import STDIN, readable
    from mimi_cli.npy import check_npy_head, read_npy

    named = named_files(assignments, stream)
    parsed, streamed = named[:len(assignments)], named[len(assignments):]
    seen: set[str] = set()
    for name, _ in parsed:
        program.input(name)  # says which inputs it has
        if name in seen:
            raise ProgramError(f"--input {name} is given twice")
        seen.add(name)
    for name, _ in streamed:
        program.input(name)
        if name in seen:  # it would replace every window's audio
            raise ProgramError(f"input {name} is the stream, and is given with --input too; give it once")
    if sum(str(path) == STDIN for _, path in named) > 1:
        raise ProgramError("standard input can be read once: give '-' to one --input or --stream")
    feeds = {}
    for name, path in parsed:
        with readable(path, check_npy_head) as source:
            feeds[name] = read_npy(source.path)
    return feeds


def state_pairs(program: CoreMLProgram) -> dict[str, str]:
    """``{state input: the output that carries it to the next window}``, matched by name."""
    outputs = {port.name for port in program.outputs}
    pairs = {}
    for port in program.inputs:
        for pattern in STATE_NAMES:
            if pattern.format(port.name) in outputs:
                pairs[port.name] = pattern.format(port.name)
                break
    return pairs


@dataclass
class StreamResult:
    outputs: dict[str, np.ndarray]  # per-window outputs stacked [windows, ...]; states: their last value
    windows: int
    window: int
    hop: int
    overflows: Overflows  # the ops whose arithmetic overflowed to inf, in any window


def stream_window(port: Port) -> int:
    """The samples a stream input takes per call: its last dimension; the others must be 1."""
    if not port.shape or port.shape[-1] is None or any(d != 1 for d in port.shape[:-1]):
        raise ProgramError(f"input {port} cannot take a stream of audio: it needs a fixed last dimension "
                           "(the window) and 1 everywhere else")
    return port.shape[-1]


def run_stream(program: CoreMLProgram, name: str, audio: np.ndarray, hop: int | None = None,
               feeds: Mapping[str, np.ndarray] | None = None) -> StreamResult:
    """Feed mono ``audio [T]`` to input ``name`` window by window through one prepared plan."""
    port = program.input(name)
    window = stream_window(port)
    hop = window if hop is None else hop
    if not 0 < hop <= window:
        raise ProgramError(f"--hop must be between 1 and the window of {window} samples, not {hop}")
    pairs = state_pairs(program)
    fixed = dict(feeds or {})
    if name in fixed:  # it would replace every window's audio
        raise ProgramError(f"input {name} is the stream, and is given with --input too; give it once")
    for other in program.inputs:
        if other.name != name and other.name not in fixed and other.name not in pairs:
            raise ProgramError(f"input {other} is neither the stream nor a state (no output named new_"
                               f"{other.name}); give it with --input {other.name}=FILE.npy")
    context = window - hop
    windows = max(1, math.ceil(len(audio) / hop))
    padded = np.zeros(context + windows * hop, np.float32)
    padded[context:context + len(audio)] = audio
    plan = program.prepare()
    state = {key: np.asarray(fixed.pop(key)) if key in fixed else np.zeros(program.input(key).shape,
                                                                             program.dtype(program.input(key).dtype))
             for key in pairs}
    carried = set(pairs.values())
    stacked: dict[str, np.ndarray] = {}
    overflows = Overflows()
    for index in range(windows):
        chunk = padded[index * hop:index * hop + window].reshape(port.shape)
        results = plan.run({name: chunk, **fixed, **state}, overflows)
        for key, output in pairs.items():
            state[key] = results[output]
        if not stacked:
            stacked = stacks(results, windows, carried, hop, window)
        for output, array in stacked.items():
            array[index] = results[output]
    stacked.update({output: np.array(state[key]) for key, output in pairs.items()})
    return StreamResult(stacked, windows, window, hop, overflows)


def stacks(results: Mapping[str, np.ndarray], windows: int, carried: set[str], hop: int,
           window: int) -> dict[str, np.ndarray]:
    """An empty ``[windows, ...]`` array per output that is not a state, refused before allocating when
    together they would be larger than one value may be (a long input, or a program whose every
    window returns a lot: an empty array of many GiB would be granted, then fill the memory)."""
    per_window = {output: value for output, value in results.items() if output not in carried}
    total = windows * sum(value.nbytes for value in per_window.values())
    if total > MAX_VALUE_BYTES:
        longer_hop = f", or a --hop longer than {hop} (up to the window, {window})" if hop < window else ""
        raise ProgramError(f"the outputs of {windows:,} windows would take {total / (1 << 30):,.1f} GiB, beyond the "
                           f"{MAX_VALUE_BYTES >> 30} GiB kept here; give a shorter input{longer_hop}")
    return {output: np.empty((windows, *value.shape), value.dtype) for output, value in per_window.items()}


def save_outputs(path, outputs: Mapping[str, np.ndarray], replace: bool) -> None:
    """Every output as a member ``NAME.npy`` of one .npz, as ``np.savez`` writes them, written atomically
    (``-``: standard output). Not through ``np.savez(f, **outputs)``: an output named ``file`` or
    ``allow_pickle`` (a program names its outputs) would be taken for that function's own arguments."""
    import zipfile

    from mimi_cli.fileio import atomic_output

    with atomic_output(path, replace) as tmp, zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
        for name, value in outputs.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)


def overflow_note(program: CoreMLProgram, outputs: Mapping[str, np.ndarray],
                  feeds: Mapping[str, np.ndarray] = {},  # noqa: B006 (read only)
                  overflows: Sequence[str] = ()) -> str | None:
    """Why outputs hold inf or nan, or may be wrong though finite, when it can be told: an input that holds
    inf or nan, or values beyond the range of the dtype the program holds it in; or arithmetic that overflowed
    (``overflows``, the ops that did, first first), in fp16 where fp32 would not have."""
    non_finite = [name for name, value in outputs.items() if value.dtype.kind == "f" and not np.isfinite(value).all()]
    if non_finite:
        said = f"{', '.join(non_finite)} {'holds' if len(non_finite) == 1 else 'hold'} inf or nan"
    elif overflows:  # an inf made finite again downstream (x / inf = 0): numbers, but not the program's
        said = "the outputs are finite, but may be wrong"
    else:
        said = None
    for port in program.inputs:
        value = np.asarray(feeds.get(port.name, 0.0))
        held = program.dtype(port.dtype)
        if value.dtype.kind != "f" or held.kind != "f":
            continue
        if said and not np.isfinite(value).all():
            return f"{said}: input {port.name} does"
        if np.abs(value).max(initial=0) > np.finfo(held).max:
            wider = "; --precision fp32 holds it in fp32" if held == np.float16 else ""
            return (f"{said or 'the outputs may be wrong'}: input {port.name} holds values beyond {port.dtype}'s "
                    f"range (±{np.finfo(held).max:.5g}), which become inf; scale it{wider}")
    if said is None:
        return None
    first = f" ({overflows[0]} overflowed first)" if overflows else ""
    if program.precision == "program" and program.computes_fp16:
        return (f"{said}: this program computes in fp16, whose range ends at ±65504{first}; --precision fp32 "
                "computes it in fp32")
    return f"{said}: its arithmetic overflowed to inf{first}; scale the inputs" if overflows else None
