"""Reading EnCodec checkpoints: two namings, three ways of storing conv weights.

Namings (one tensor, both schemes)::

    Hugging Face (facebook/encodec_24khz)        encoder.layers.1.block.1.conv.weight
    Meta's original release (encodec package)    encoder.model.1.block.1.conv.conv.weight

Conv weights are trained with weight norm, ``w = g · v / ‖v‖`` (norm over all axes
but the first), and saved as ``…parametrizations.weight.original0/1`` (g, v; current
PyTorch), ``…weight_g/weight_v`` (older saves) or already folded as ``…weight``.
All three load; the fold is done once here, in float64.

Meta's original release is a PyTorch pickle (``encodec_24khz-d7cc33bc.th``): it is
refused unread (see ``mimi_cli.weights.source``); the Hugging Face safetensors file
holds the same weights.
"""

from __future__ import annotations


import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from mimi_cli.errors import WeightsError
from mimi_cli.models.codec import Checkpoint, Recognised

HF, ORIGINAL = "hf", "original"
LAYOUT_NAMES = {HF: "Hugging Face", ORIGINAL: "EnCodec original"}

# Quantizer buffers used only in training (k-means state); present in released files, never read.
_TRAINING_BUFFERS = re.compile(r"\.(inited|cluster_size|embed_avg)$")
_WEIGHT_NORM = (("parametrizations.weight.original0", "parametrizations.weight.original1"), ("weight_g", "weight_v"))
# Original → Hugging Face, applied in order.
_RENAMES = (
    (re.compile(r"^(encoder|decoder)\.model\."), r"\1.layers."),
    (re.compile(r"\.conv\.conv\.|\.convtr\.convtr\."), ".conv."),
    (re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\."), r"quantizer.layers.\1.codebook."),
)


def detect_layout(names: Iterable[str]) -> str | None:
    """HF, ORIGINAL, or None when the names are not an EnCodec checkpoint's."""
    names = list(names)
    if any(n.startswith("quantizer.layers.") and ".codebook.embed" in n for n in names) and \
            any(n.startswith("encoder.layers.") for n in names):
        return HF
    if any(n.startswith("quantizer.vq.layers.") and "._codebook.embed" in n for n in names) and \
            any(n.startswith("encoder.model.") for n in names):
        return ORIGINAL
    return None


def to_hf_names(state: Mapping[str, object], layout: str) -> dict[str, object]:
    """Rename to the Hugging Face scheme (the model's) and drop the training-only buffers."""
    renamed = {}
    for name, tensor in state.items():
        if _TRAINING_BUFFERS.search(name):
            continue
        if layout == ORIGINAL:
            for pattern, replacement in _RENAMES:
                name = pattern.sub(replacement, name)
        renamed[name] = tensor
    return renamed


def fold_weight_norm(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replace every (g, v) pair by ``weight = g · v / ‖v‖``; other tensors pass through."""
    folded = dict(state)
    for g_suffix, v_suffix in _WEIGHT_NORM:
        for name in [n for n in state if n.endswith("." + g_suffix)]:
            prefix = name[: -len(g_suffix)]
            if prefix + v_suffix not in state:
                raise WeightsError(f"{name} has no matching {prefix + v_suffix}")
            g = np.asarray(state[name], np.float64)
            v = np.asarray(state[prefix + v_suffix], np.float64)
            norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
            with np.errstate(invalid="ignore", divide="ignore"):  # an all-zero v is reported by validation
                folded[prefix + "weight"] = (g * v / norm).astype(np.float32)
            del folded[name], folded[prefix + v_suffix]
    return folded


def folded_shapes(shapes: Mapping[str, tuple[int, ...]], layout: str) -> dict[str, tuple[int, ...]]:
    """The model's tensor names and shapes a checkpoint would load as, from its header alone."""
    shapes = to_hf_names(shapes, layout)
    folded = dict(shapes)
    for g_suffix, v_suffix in _WEIGHT_NORM:
        for name in [n for n in shapes if n.endswith("." + g_suffix)]:
            prefix = name[: -len(g_suffix)]
            folded.pop(name)
            if prefix + v_suffix in shapes:
                folded[prefix + "weight"] = folded.pop(prefix + v_suffix)
    return folded


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read an EnCodec checkpoint in either naming; refuse NaN/Inf values."""
    from mimi_cli.weights import open_weights
    from mimi_cli.weights.validate import warnings_or_refuse

    source = open_weights(path)
    layout = detect_layout(source.tensors)
    if layout is None:
        raise WeightsError(f"{path} is not an EnCodec checkpoint: its tensor names follow neither the Hugging Face "
                           "(quantizer.layers.N.codebook.embed) nor the original (quantizer.vq.layers.N._codebook"
                           ".embed) naming")
    tensors = {name: entry.load() for name, entry in source.tensors.items() if not _TRAINING_BUFFERS.search(name)}
    warnings = warnings_or_refuse(path, tensors)
    state = fold_weight_norm(to_hf_names(tensors, layout))
    return Checkpoint(state, layout, source.container, warnings)


def inspect_checkpoint(source, model_class) -> Recognised | None:
    """For ``mimi inspect``: a safetensors WeightFile in an EnCodec naming, and whether it would load into
    the released 24 kHz model, from names and shapes alone (weight norm folded as loading would)."""
    layout = detect_layout(source.tensors)
    if layout is None or source.container.startswith("Core ML"):
        return None
    shapes = folded_shapes({name: e.shape for name, e in source.tensors.items()}, layout)
    placeholders = {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}
    return Recognised(f"EnCodec 24 kHz {LAYOUT_NAMES[layout]}", model_class().check_state(placeholders))
