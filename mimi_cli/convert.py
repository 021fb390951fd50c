"""Rewrite a Mimi checkpoint in another naming scheme and/or float format: ``mimi convert``."""

from __future__ import annotations

from pathlib import Path

from mimi_cli import __version__
from mimi_cli.errors import MimiError, WeightsError
from mimi_cli.fileio import check_output, file_ids
from mimi_cli.models import codec_spec, other_codecs_weights
from mimi_cli.models.mimi import Mimi, checkpoint
from mimi_cli.models.mimi.config import MimiConfig
from mimi_cli.weights import open_weights
from mimi_cli.weights.safetensors import write_safetensors

DTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}
# Stored dtypes (safetensors and Core ML spellings) that a conversion keeps when no --dtype is given.
_KEPT = {"F32": "F32", "fp32": "F32", "F16": "F16", "fp16": "F16", "BF16": "BF16", "bf16": "BF16"}


def source_dtype(path: str | Path) -> str:
    """The float format to write by default: the source's own when all its tensors share one, else F32."""
    stored = {_KEPT.get(entry.dtype, "F32") for entry in open_weights(path).tensors.values()}
    return stored.pop() if len(stored) == 1 else "F32"


def convert_checkpoint(source: str | Path, destination: str | Path, naming: str = checkpoint.ORIGINAL,
                       dtype: str | None = None, replace: bool = False,
                       create_parents: bool = False) -> tuple[str, str, int]:
    """Write ``source`` (any container and naming) as a safetensors file in ``naming`` and ``dtype``.

    ``destination`` is checked first as every output is (:func:`mimi_cli.fileio.check_output`): ``replace``
    replaces a regular file, never the source itself (``convert_checkpoint(w, w, dtype="bf16", replace=True)``
    rounded the source in place); ``create_parents`` makes its folder. The tensors must form a complete Mimi
    checkpoint (checked before writing); the write is atomic. Returns ``(source layout, written dtype, tensor
    count)``.
    """
    if naming not in checkpoint.LAYOUT_NAMES:
        raise MimiError(f"unknown naming {naming!r}; choose one of {', '.join(checkpoint.LAYOUT_NAMES)}")
    if dtype is not None and dtype not in DTYPES:  # it raised a KeyError after reading the whole source
        raise MimiError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    source, destination = Path(source), Path(destination)
    sources = file_ids([source, *(source.rglob("*") if source.is_dir() else [])])  # a Core ML model's files
    check_output(destination, replace, sources, create_parents=create_parents, to_stdout=False)
    config = MimiConfig()
    try:
        loaded = Mimi.read_checkpoint(source, config)
    except WeightsError as exc:
        other = other_codecs_weights(source, codec_spec("mimi"))
        raise WeightsError(f"{exc}{other}, and convert rewrites Mimi's only" if other else str(exc)) from None
    problems = Mimi(config).check_state(loaded.state)
    if problems:
        raise MimiError(f"{source} is not a complete Mimi checkpoint: " + "; ".join(problems))
    written_dtype = DTYPES[dtype] if dtype else source_dtype(source)
    tensors = checkpoint.from_original(loaded.state, naming, config.num_heads)
    write_safetensors(destination, tensors, written_dtype,
                      {"format": "pt", "naming": naming, "converted_by": f"mimi-cli {__version__}"}, replace)
    return loaded.layout, written_dtype, len(tensors)
