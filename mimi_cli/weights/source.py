"""One view of every weight container: a list of named tensors, read lazily.

``open_weights(path)`` recognises the container from the path alone —
a ``.safetensors`` file, a Core ML ``.mlmodelc`` (ML Program or Neural Network)
or ``.mlpackage`` folder — and returns a :class:`WeightFile` whose entries know
their name, dtype and shape from the headers and read their values only when asked.
"""

from __future__ import annotations

import os
from pathlib import Path

from mimi_cli.errors import DATA_ERRORS, MimiError, WeightsError, malformed, os_reason
from mimi_cli.fileio import file_kind, holds, home_expanded, missing, zip_members
from mimi_cli.weights.tensors import TensorEntry, WeightFile

# PyTorch checkpoints are pickles (a zip of them since torch 1.6): never unpickled, as loading one can run
# arbitrary code; they are refused with a pointer to safetensors.
PICKLE_SUFFIXES = {".pt", ".pth", ".th", ".ckpt", ".pkl"}


def _is_numpy_archive(path: Path) -> bool:
    """A zip whose members are all ``.npy`` arrays (what ``np.savez`` writes), read from its directory only."""
    members = zip_members(path)
    return bool(members) and all(member.filename.endswith(".npy") for member in members)


def _looks_like_pickle(head: bytes) -> bool:
    """A zip archive, or a pickle protocol opcode where a safetensors file has its header length and ``{``."""
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[8:9] != b"{")


def open_weights(path: str | os.PathLike) -> WeightFile:
    """Open any supported weight container; a clear WeightsError for anything else, whatever the bytes."""
    path = home_expanded(path)
    try:
        return _open(path)
    except MimiError:
        raise
    except DATA_ERRORS as exc:  # a reader met a shape of data it does not check for by name
        raise malformed(WeightsError, f"weights {path}", exc) from None


def _open(path: Path) -> WeightFile:
    problem = missing(path)
    if problem:
        raise WeightsError(f"weights {path} {problem}")
    if path.is_dir():
        from mimi_cli.weights.coreml import open_coreml

        return open_coreml(path)
    kind = file_kind(os.stat(path).st_mode)
    if kind is not None:  # read in place (memory-mapped), more than once: a pipe would be gone after the first
        raise WeightsError(f"weights {path} is {kind}, not a file; save them to a file and give its name")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise WeightsError(f"cannot read weights {path}: {os_reason(exc)}") from None
    if head.startswith(b"PK\x03\x04") and _is_numpy_archive(path):
        raise WeightsError(f"{path} is a NumPy .npz archive (a codes file from `mimi encode`?), not weights; "
                           "`mimi inspect` shows what a codes file holds, `mimi decode` decodes it")
    kind = holds(path)
    if kind and kind != ".safetensors weights" and "zip" not in kind and "pickle" not in kind:  # said below
        raise WeightsError(f"{path} holds {kind}, not weights; give a .safetensors file or a Core ML model")
    if path.suffix.lower() in PICKLE_SUFFIXES or _looks_like_pickle(head):
        raise WeightsError(f"{path} looks like a PyTorch pickle, which can run arbitrary code and is never "
                           "loaded; use the .safetensors release of the same weights")
    return _open_safetensors(path)


def _open_safetensors(path: Path) -> WeightFile:
    from mimi_cli.weights.safetensors import SafetensorsFile

    reader = SafetensorsFile(path)
    entries = {name: TensorEntry(name, info.dtype, info.shape, lambda name=name: reader.tensor(name))
               for name, info in reader.infos.items()}
    return WeightFile(path, "safetensors", entries, {"metadata": reader.metadata} if reader.metadata else {})
