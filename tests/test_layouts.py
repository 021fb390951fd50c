"""Mimi checkpoints in every naming and container load the same model; bad values are refused.

The Hugging Face layout is checked against transformers itself (golden file from
scripts/make_hf_golden.py: transformers 5.23 loaded our converted weights and its
codes are compared with ours), and its row reordering against a plain loop.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import GOLDEN, SMALL, assert_codes_match
from coreml_builder import write_mlmodelc
from safetensors.numpy import save_file

from mimi_cli.errors import WeightsError
from mimi_cli.models.mimi import Mimi, checkpoint
from mimi_cli.models.mimi.synthetic import random_state
from mimi_cli.models.synthetic import state_fingerprint
from mimi_cli.weights.safetensors import write_safetensors


@functools.cache
def small_state() -> dict[str, np.ndarray]:
    return random_state(SMALL, seed=0)


def small_pcm(seconds: float = 2.0) -> np.ndarray:
    return (0.3 * np.random.default_rng(5).standard_normal(int(seconds * SMALL.sample_rate))).astype(np.float32)


def test_released_layout_sizes(full_state):
    assert len(full_state) == 318
    hf = checkpoint.from_original(full_state, checkpoint.HF, 8)
    assert len(hf) == 350
    assert {"encoder.layers.0.conv.weight", "decoder.layers.2.conv.weight", "downsample.conv.weight",
            "upsample.conv.weight", "encoder_transformer.layers.0.self_attn.q_proj.weight",
            "decoder_transformer.layers.7.mlp.fc2.weight", "encoder_transformer.layers.3.input_layernorm.bias",
            "encoder_transformer.layers.0.self_attn_layer_scale.scale",
            "quantizer.semantic_residual_vector_quantizer.input_proj.weight",
            "quantizer.acoustic_residual_vector_quantizer.layers.30.codebook.embed_sum"} <= set(hf)


@pytest.mark.parametrize("layout", [checkpoint.ORIGINAL, checkpoint.MOSHI, checkpoint.HF])
def test_every_layout_is_detected_and_converts_back_bit_identically(layout):
    state = small_state()
    renamed = checkpoint.from_original(state, layout, SMALL.num_heads)
    assert checkpoint.detect_layout(renamed) == layout
    back = checkpoint.to_original(renamed, layout, SMALL.num_heads)
    assert back.keys() == state.keys()
    for name, value in state.items():
        assert back[name].tobytes() == value.tobytes(), name


def test_hf_rows_are_rotate_half_per_head():
    """Within each head, HF rows are the original even rows, then the odd rows (docs/weights.md, naming schemes)."""
    heads, head_dim, width = 4, 8, 5
    w = np.arange(heads * head_dim * width, dtype=np.float32).reshape(heads * head_dim, width)
    in_proj = np.concatenate([w, w + 1000, w + 2000])
    hf = checkpoint.from_original({"x.layers.0.self_attn.in_proj_weight": in_proj}, checkpoint.HF, heads)
    q = hf["x.layers.0.self_attn.q_proj.weight"]
    for h in range(heads):
        for r in range(head_dim):
            source = 2 * r if r < head_dim // 2 else 2 * (r - head_dim // 2) + 1
            np.testing.assert_array_equal(q[h * head_dim + r], w[h * head_dim + source])
    np.testing.assert_array_equal(hf["x.layers.0.self_attn.v_proj.weight"], w + 2000)


def test_transformers_nested_names_are_understood():
    hf = checkpoint.from_original(small_state(), checkpoint.HF, SMALL.num_heads)
    nested = {}
    for name, value in hf.items():
        for prefix, inner in (("encoder.", "encoder.encoder_seanet."), ("decoder.", "decoder.decoder_seanet."),
                              ("encoder_transformer.", "encoder.encoder_transformer."),
                              ("downsample.", "encoder.downsample."), ("upsample.", "decoder.upsample."),
                              ("decoder_transformer.", "decoder.decoder_transformer.")):
            if name.startswith(prefix):
                name = inner + name[len(prefix):]
                break
        nested[name] = value
    back = checkpoint.to_original(nested, checkpoint.HF, SMALL.num_heads)
    assert back.keys() == small_state().keys()


@pytest.mark.parametrize("layout", [checkpoint.ORIGINAL, checkpoint.MOSHI, checkpoint.HF])
@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_files_in_every_layout_give_the_same_codes(tmp_path, layout, dtype):
    state = small_state()
    if dtype == "BF16":  # make the values exactly representable, so every file holds the same numbers
        state = {k: (v.view(np.uint32) & 0xFFFF0000).view(np.float32) for k, v in state.items()}
    path = tmp_path / "w.safetensors"
    write_safetensors(path, checkpoint.from_original(state, layout, SMALL.num_heads), dtype)
    model = Mimi.from_file(path, SMALL)
    reference = Mimi.from_state_dict(state, SMALL)
    pcm = small_pcm()
    np.testing.assert_array_equal(model.encode(pcm, 6), reference.encode(pcm, 6))
    assert state_fingerprint(dict(model.named_parameters())) == state_fingerprint(dict(reference.named_parameters()))


@pytest.mark.parametrize("layout", [checkpoint.ORIGINAL, checkpoint.HF])
def test_core_ml_model_with_mimi_names_loads(tmp_path, layout):
    """coremltools flattens names (dots → underscores) and appends _to_fp16: both are mapped back."""
    state = small_state()
    renamed = checkpoint.from_original(state, layout, SMALL.num_heads)
    fp32 = write_mlmodelc(tmp_path / "fp32.mlmodelc", {n.replace(".", "_"): v for n, v in renamed.items()})
    np.testing.assert_array_equal(Mimi.from_file(fp32, SMALL).encode(small_pcm(), 6),
                                  Mimi.from_state_dict(state, SMALL).encode(small_pcm(), 6))
    fp16 = write_mlmodelc(tmp_path / "fp16.mlmodelc", {n.replace(".", "_") + "_to_fp16": v.astype(np.float16)
                                                       for n, v in renamed.items()}, dialect="1.0")
    loaded = dict(Mimi.from_file(fp16, SMALL).named_parameters())
    for name, value in state.items():
        np.testing.assert_array_equal(loaded[name], value.astype(np.float16).astype(np.float32))


def test_core_ml_model_without_mimi_tensors(tmp_path):
    model = write_mlmodelc(tmp_path / "other.mlmodelc", {"stft_basis_to_fp16": np.ones(16, np.float16)})
    with pytest.raises(WeightsError, match="holds no Mimi tensors"):
        Mimi.from_file(model, SMALL)


def test_core_ml_model_missing_some_mimi_tensors(tmp_path):
    state = dict(small_state())
    del state["downsample.conv.conv.conv.weight"]
    model = write_mlmodelc(tmp_path / "partial.mlmodelc", {n.replace(".", "_"): v for n, v in state.items()})
    with pytest.raises(WeightsError, match="1 missing: downsample.conv.conv.conv.weight"):
        Mimi.from_file(model, SMALL)


def test_non_finite_weights_are_refused_naming_the_tensors(tmp_path):
    state = dict(small_state())
    broken = state["encoder_transformer.transformer.layers.1.linear1.weight"].copy()
    broken[3, 4], broken[5, 6] = np.nan, np.inf
    state["encoder_transformer.transformer.layers.1.linear1.weight"] = broken
    save_file(state, str(tmp_path / "nan.safetensors"))
    with pytest.raises(WeightsError, match=r"linear1.weight: 2 of \d+ values are NaN or Inf"):
        Mimi.from_file(tmp_path / "nan.safetensors", SMALL)


def test_unusual_values_are_warnings(tmp_path):
    state = dict(small_state())
    state["decoder.model.0.conv.conv.bias"] = np.zeros_like(state["decoder.model.0.conv.conv.bias"])
    state["encoder.model.0.conv.conv.weight"] = state["encoder.model.0.conv.conv.weight"] * 1e5
    save_file(state, str(tmp_path / "odd.safetensors"))
    warnings = Mimi.from_file(tmp_path / "odd.safetensors", SMALL).warnings
    assert any("decoder.model.0.conv.conv.bias: all zeros" in w for w in warnings)
    assert any("encoder.model.0.conv.conv.weight: max |w|" in w for w in warnings)


def test_non_mimi_safetensors_is_refused(tmp_path):
    save_file({"model.layers.0.weight": np.ones((2, 2), np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="not a Mimi checkpoint"):
        Mimi.from_file(tmp_path / "other.safetensors", SMALL)


@pytest.mark.parametrize("head", [b"PK\x03\x04rest", b"\x80\x02}q\x00(X\x05"])
def test_pytorch_pickles_are_refused_unread(tmp_path, head):
    path = tmp_path / "model.bin"
    path.write_bytes(head + b"\0" * 64)
    with pytest.raises(WeightsError, match="PyTorch pickle"):
        Mimi.from_file(path, SMALL)


@pytest.mark.skipif(not (GOLDEN / "hf_speech_16s.npz").exists(), reason="transformers golden file missing")
def test_hf_file_matches_transformers(tmp_path, full_state):
    """transformers 5.23 ran on our HF-layout conversion; a file in that layout gives its codes and audio."""
    with np.load(GOLDEN / "hf_speech_16s.npz", allow_pickle=False) as npz:
        case = dict(npz)
    assert str(case["weights_fingerprint"]) == state_fingerprint(full_state)
    path = tmp_path / "hf.safetensors"
    write_safetensors(path, checkpoint.from_original(full_state, checkpoint.HF, 8))
    model = Mimi.from_file(path)
    pcm = case["pcm"].astype(np.float32) / 32768
    latent = model.encode_latent(pcm)
    codes = model.quantizer.encode(latent, 32)[0]
    assert codes.shape == case["codes32"].shape == (32, 200)
    assert_codes_match(model, latent, codes, case["codes32"])
    audio = model.decode(case["codes32"].astype(np.int64))
    assert np.linalg.norm(audio - case["audio32"]) <= 1e-4 * np.linalg.norm(case["audio32"])
