"""Mimi checkpoints in their three naming schemes, recognised and converted to the model's own.

- **original**: the released ``tokenizer-…-checkpoint125.safetensors`` (318 tensors), the model's
  own names (``encoder.model.0.conv.conv.weight``, ``…self_attn.in_proj_weight``);
- **moshi**: moshi's ``state_dict()``, which names two attention tensors ``in_projs.0.weight`` and
  ``out_projs.0.weight``;
- **hf**: Hugging Face transformers' ``kyutai/mimi`` (350 tensors): shorter module names, and the
  fused ``in_proj_weight`` split into ``q_proj``/``k_proj``/``v_proj`` with q and k rows reordered per
  head, from interleaved RoPE pairs to HF's rotate-half convention::

      one head, original rows:  q0 q1 | q2 q3 | q4 q5 | ...   (pairs rotate together)
      one head, HF rows:        q0 q2 q4 ... | q1 q3 q5 ...   (first halves, then second halves)

Core ML conversions flatten names (``encoder_model_0_conv_conv_weight_to_fp16``); those are
matched back to any of the three schemes.
"""

from __future__ import annotations


import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from mimi_cli.errors import WeightsError
from mimi_cli.models.codec import Checkpoint, Recognised
from mimi_cli.models.mimi.config import MimiConfig

ORIGINAL, MOSHI, HF = "original", "moshi", "hf"
LAYOUT_NAMES = {ORIGINAL: "Mimi original", MOSHI: "Mimi moshi-state-dict", HF: "Mimi Hugging Face"}

_MOSHI_RENAMES = (("self_attn.in_proj_weight", "self_attn.in_projs.0.weight"),
                  ("self_attn.out_proj.weight", "self_attn.out_projs.0.weight"))

# transformers' convert_mimi_checkpoint_to_pytorch.py, applied in this order as substring replacements.
_HF_RULES = (
    ("conv.conv.conv", "conv"), ("convtr.convtr.convtr", "conv"), ("conv.conv", "conv"), ("convtr.convtr", "conv"),
    ("quantizer.rvq_first.vq", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_first", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_rest.vq", "quantizer.acoustic_residual_vector_quantizer"),
    ("quantizer.rvq_rest", "quantizer.acoustic_residual_vector_quantizer"),
    ("_codebook", "codebook"), ("_initialized", "initialized"), ("embedding_sum", "embed_sum"),
    ("encoder.model", "encoder.layers"), ("decoder.model", "decoder.layers"),
    ("encoder_transformer.transformer", "encoder_transformer"),
    ("decoder_transformer.transformer", "decoder_transformer"),
    ("linear1", "mlp.fc1"), ("linear2", "mlp.fc2"), ("self_attn.out_proj", "self_attn.o_proj"),
    ("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"),
    ("layer_scale_1", "self_attn_layer_scale"), ("layer_scale_2", "mlp_layer_scale"),
)
# transformers ≥ 5.2x nests the modules in memory; the flat names are the on-disk ones.
_HF_NESTED = (("encoder.encoder_seanet.", "encoder."), ("encoder.encoder_transformer.", "encoder_transformer."),
              ("encoder.downsample.", "downsample."), ("decoder.upsample.", "upsample."),
              ("decoder.decoder_transformer.", "decoder_transformer."), ("decoder.decoder_seanet.", "decoder."))
_HF_LAYER_RENAMES = {"mlp.fc1": "linear1", "mlp.fc2": "linear2", "self_attn.o_proj": "self_attn.out_proj",
                     "input_layernorm": "norm1", "post_attention_layernorm": "norm2",
                     "self_attn_layer_scale": "layer_scale_1", "mlp_layer_scale": "layer_scale_2"}
_QKV = ("q_proj", "k_proj", "v_proj")


# ----------------------------------------------------------------------------- detection


def detect_layout(names: Iterable[str]) -> str | None:
    """ORIGINAL, MOSHI or HF when the names are a Mimi checkpoint's, else None."""
    names = list(names)
    if any(".semantic_residual_vector_quantizer." in n for n in names):
        return HF
    if any(n.startswith("quantizer.rvq_first.") for n in names):
        return MOSHI if any(n.endswith(_MOSHI_RENAMES[0][1]) for n in names) else ORIGINAL
    return None


# ----------------------------------------------------------------------------- any layout → original


def to_original(tensors: Mapping[str, np.ndarray], layout: str, num_heads: int) -> dict[str, np.ndarray]:
    """The tensors renamed (and, from HF, re-fused) to the original naming; other names pass through."""
    if layout == ORIGINAL:
        return dict(tensors)
    if layout == MOSHI:
        return {_rename(name, {new: old for old, new in _MOSHI_RENAMES}): value for name, value in tensors.items()}
    state: dict[str, np.ndarray] = {}
    projections: dict[str, dict[str, np.ndarray]] = {}
    names = [_unnest(name) for name in tensors]
    for name, value in zip(names, tensors.values(), strict=True):
        match = re.fullmatch(r"(.*\.layers\.\d+)\.self_attn\.([qkv]_proj)\.weight", name)
        if match:
            projections.setdefault(match[1], {})[match[2]] = value
        else:
            state[_original_from_hf(name, names)] = value
    for layer, parts in projections.items():
        original_layer = _original_from_hf(layer, names)
        if set(parts) != set(_QKV):
            raise WeightsError(f"{layer} has {', '.join(sorted(parts))} but needs q_proj, k_proj and v_proj")
        q, k = (_rotate_half_to_interleaved(parts[p], num_heads) for p in ("q_proj", "k_proj"))
        state[f"{original_layer}.self_attn.in_proj_weight"] = np.concatenate([q, k, parts["v_proj"]])
    return state


def _rename(name: str, renames: Mapping[str, str]) -> str:
    for suffix, replacement in renames.items():
        if name.endswith(suffix):
            return name[: -len(suffix)] + replacement
    return name


def _unnest(name: str) -> str:
    for nested, flat in _HF_NESTED:
        if name.startswith(nested):
            return flat + name[len(nested):]
    return name


def _original_from_hf(name: str, names: list[str]) -> str:
    """One HF name (or layer prefix) in the original naming."""
    seanet = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(block\.\d+\.)?conv(\..*)?", name)
    if seanet:
        part, index, block, rest = seanet[1], int(seanet[2]), seanet[3] or "", seanet[4] or ""
        # HF names a decoder convtr `conv` too; in SEANet every transposed conv is followed by a residual block.
        transposed = part == "decoder" and not block and any(n.startswith(f"decoder.layers.{index + 1}.block.")
                                                             for n in names)
        kind = "convtr.convtr" if transposed else "conv.conv"
        return f"{part}.model.{index}.{block}{kind}{rest}"
    if name.startswith("downsample.conv."):
        return "downsample.conv.conv.conv." + name[len("downsample.conv."):]
    if name.startswith("upsample.conv."):
        return "upsample.convtr.convtr.convtr." + name[len("upsample.conv."):]
    layer = re.fullmatch(r"(encoder|decoder)_transformer\.layers\.(\d+)(\..*)?", name)
    if layer:
        rest = layer[3] or ""
        for hf, original in _HF_LAYER_RENAMES.items():
            if rest.startswith("." + hf + "."):
                rest = "." + original + rest[len(hf) + 1:]
                break
        return f"{layer[1]}_transformer.transformer.layers.{layer[2]}{rest}"
    quantizer = re.fullmatch(r"quantizer\.(semantic|acoustic)_residual_vector_quantizer\.(.*)", name)
    if quantizer:
        part = "rvq_first" if quantizer[1] == "semantic" else "rvq_rest"
        rest = quantizer[2]
        codebook = re.fullmatch(r"layers\.(\d+)\.codebook\.(initialized|cluster_usage|embed_sum)", rest)
        if codebook:
            field = {"initialized": "_initialized", "embed_sum": "embedding_sum"}.get(codebook[2], codebook[2])
            return f"quantizer.{part}.vq.layers.{codebook[1]}._codebook.{field}"
        return f"quantizer.{part}.{rest}"
    return name


# ----------------------------------------------------------------------------- original → any layout


def hf_name(original: str) -> str:
    for old, new in _HF_RULES:
        original = original.replace(old, new)
    return original


def from_original(state: Mapping[str, np.ndarray], layout: str, num_heads: int) -> dict[str, np.ndarray]:
    """The original-named tensors in another naming scheme."""
    if layout == ORIGINAL:
        return dict(state)
    if layout == MOSHI:
        return {_rename(name, dict(_MOSHI_RENAMES)): value for name, value in state.items()}
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if name.endswith(".self_attn.in_proj_weight"):
            prefix = hf_name(name[: -len("in_proj_weight")])
            q, k, v = np.split(value, 3)
            out[prefix + "q_proj.weight"] = _interleaved_to_rotate_half(q, num_heads)
            out[prefix + "k_proj.weight"] = _interleaved_to_rotate_half(k, num_heads)
            out[prefix + "v_proj.weight"] = v
        else:
            out[hf_name(name)] = value
    return out


def _interleaved_to_rotate_half(w: np.ndarray, num_heads: int) -> np.ndarray:
    rows, cols = w.shape
    return w.reshape(num_heads, rows // num_heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _rotate_half_to_interleaved(w: np.ndarray, num_heads: int) -> np.ndarray:
    rows, cols = w.shape
    return w.reshape(num_heads, 2, rows // num_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


# ----------------------------------------------------------------------------- Core ML names


_COREML_SUFFIXES = re.compile(r"(_to_fp16|_to_fp32|_quantized|_palettized|_sparsified|_promoted)+$")


def coreml_names(names: Iterable[str], originals: list[str]) -> dict[str, str]:
    """Core ML variable name → checkpoint name, for the names that flatten a Mimi tensor's name.

    coremltools turns ``encoder.model.0.conv.conv.weight`` into ``encoder_model_0_conv_conv_weight``
    and appends ``_to_fp16`` (and ``_quantized`` … for compressed weights). Flattening loses the
    dots, so names are matched against the flattened names of every known scheme. ``originals`` are
    the model's own (original) checkpoint names.
    """
    known = {name.replace(".", "_"): name
             for layout in (HF, MOSHI, ORIGINAL) for name in layout_names(originals, layout)}
    matched = {}
    for name in names:
        stem = _COREML_SUFFIXES.sub("", name)
        if stem in known:
            matched[name] = known[stem]
    return matched


def layout_names(originals: Iterable[str], layout: str) -> Iterable[str]:
    """The names original-named tensors have in ``layout`` (HF splits each fused attention projection in 3)."""
    for name in originals:
        if layout == HF and name.endswith(".self_attn.in_proj_weight"):
            prefix = hf_name(name[: -len("in_proj_weight")])
            yield from (f"{prefix}{projection}.weight" for projection in _QKV)
        elif layout == HF:
            yield hf_name(name)
        elif layout == MOSHI:
            yield _rename(name, dict(_MOSHI_RENAMES))
        else:
            yield name


# ----------------------------------------------------------------------------- loading


def load_checkpoint(path: str | Path, config: MimiConfig, originals: list[str]) -> Checkpoint:
    """Read a Mimi checkpoint from any container and naming scheme; refuse NaN/Inf values.

    ``originals``: the model's checkpoint names (to recognise Core ML's flattened ones).
    """
    from mimi_cli.weights import open_weights
    from mimi_cli.weights.validate import warnings_or_refuse

    source = open_weights(path)
    if source.container.startswith("Core ML"):
        matched = coreml_names(source.tensors, originals)
        if not matched:
            raise WeightsError(f"{path} holds no Mimi tensors (none of its {len(source.tensors)} tensor names "
                               "flattens a Mimi checkpoint name); it is not a Mimi model")
        tensors = {name: source.tensors[variable].load() for variable, name in matched.items()}
    else:
        tensors = source.read_all()
    layout = detect_layout(tensors)
    if layout is None:
        raise WeightsError(f"{path} is not a Mimi checkpoint: its tensor names follow none of the original, "
                           "moshi or Hugging Face namings (no quantizer.rvq_first or "
                           "semantic_residual_vector_quantizer tensors)")
    warnings = warnings_or_refuse(path, tensors)
    return Checkpoint(to_original(tensors, layout, config.num_heads), layout, source.container, warnings)


def inspect_checkpoint(source, model_class) -> Recognised | None:
    """For ``mimi inspect``: a WeightFile holding Mimi tensors (any naming, Core ML-flattened included),
    and whether it would load into the released model, from names and shapes alone."""
    config = MimiConfig()
    model = model_class(config)
    names = (coreml_names(source.tensors, [name for name, _ in model.named_shapes()])
             if source.container.startswith("Core ML") else {name: name for name in source.tensors})
    layout = detect_layout(names.values())
    if layout is None:
        return None
    # Zero-strided placeholders: the renaming and re-fusing need shapes, not values.
    placeholders = {name: np.broadcast_to(np.float32(0), source.tensors[variable].shape)
                    for variable, name in names.items()}
    problems = model.check_state(to_original(placeholders, layout, config.num_heads))
    return Recognised(LAYOUT_NAMES[layout], problems)
