"""EnCodec 24 kHz: parity with transformers' EncodecModel, checkpoint forms, padding, pickles refused."""

from __future__ import annotations


import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import GOLDEN, malicious_checkpoints
from mimi_cli.errors import WeightsError
from mimi_cli.models.encodec import Encodec, EncodecConfig
from mimi_cli.models.encodec.checkpoint import fold_weight_norm
from mimi_cli.models.encodec.model import reflect_pad
from mimi_cli.models.encodec.synthetic import random_state, released_file_state, weight_norm_state
from mimi_cli.models.synthetic import state_fingerprint

CONFIG = EncodecConfig()
CASES = ("speech_4s", "speech_odd", "tiny", "noise_loud")


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return random_state(CONFIG, seed=0)


@pytest.fixture(scope="module")
def released_file(state, tmp_path_factory):
    """Our random weights stored as facebook/encodec_24khz stores its own (weight-norm pairs, training buffers)."""
    path = tmp_path_factory.mktemp("encodec") / "model.safetensors"
    save_file(released_file_state(state), str(path))
    return path


@pytest.fixture(scope="module")
def model(released_file) -> Encodec:
    return Encodec.from_file(released_file)


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN / "encodec.npz", allow_pickle=False) as npz:
        return dict(npz)


def test_golden_weights_are_ours(state, golden):
    assert str(golden["weights_fingerprint"]) == state_fingerprint(state)


@pytest.mark.parametrize("case", CASES)
def test_codes_and_audio_match_transformers_at_every_bandwidth(model, golden, case):
    """transformers 5.23 / torch 2.13, 1 thread, on the same file: identical codes, audio within 1e-4 relative L2."""
    pcm = golden[f"{case}.pcm"].astype(np.float32) / 32768
    for bandwidth in golden["bandwidths"]:
        expected_codes = golden[f"{case}.codes_{bandwidth:g}"].astype(np.int64)
        levels = CONFIG.codebooks_for_bandwidth(float(bandwidth))
        assert levels == expected_codes.shape[0]
        codes = model.encode(pcm, levels)
        assert codes.shape == (levels, -(-len(pcm) // CONFIG.hop_length))
        assert np.array_equal(codes, expected_codes), f"{case} at {bandwidth} kbps: {(codes != expected_codes).sum()}"
        expected_audio = golden[f"{case}.audio_{bandwidth:g}"]
        audio = model.decode(codes)
        assert audio.shape == expected_audio.shape
        assert np.linalg.norm(audio - expected_audio) / np.linalg.norm(expected_audio) < 1e-4


def test_random_weights_are_realistic(model, golden):
    """Codes are diverse at every level, more levels mean less error, and the audio depends on the codes."""
    pcm = golden["speech_4s.pcm"].astype(np.float32) / 32768
    codes = model.encode(pcm, 32)
    assert min(len(np.unique(level)) for level in codes) > 150  # of 300 frames
    latent = model.encode_latent(pcm)
    errors = [np.linalg.norm(model.quantizer.decode(codes[None, :k]) - latent) for k in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2]
    few, many = model.decode(codes[:2]), model.decode(codes)
    assert np.linalg.norm(few - many) > 0.3 * np.linalg.norm(many)
    assert 0.01 < many.std() < 1


def test_empty_batches_give_empty_results(model):
    codes = model.encode(np.zeros((0, 24000), np.float32), 8)
    assert codes.shape == (0, 8, 75) and model.decode(codes).shape == (0, 24000)
    assert model.decode(np.zeros((2, 8, 0), np.uint16)).shape == (2, 0)


def test_bandwidths_map_to_codebooks():
    assert [CONFIG.codebooks_for_bandwidth(b) for b in CONFIG.bandwidths] == [2, 4, 8, 16, 32]
    assert CONFIG.codebooks_for_bandwidth(23.9) == 31 and CONFIG.codebooks_for_bandwidth(24.7) == 32
    for bad in (0.5, 25.0, 1e308, float("inf")):
        with pytest.raises(ValueError, match="0.75 to 24 kbps"):
            CONFIG.codebooks_for_bandwidth(bad)


def _reflect_pad_loop(x: np.ndarray, left: int, right: int) -> np.ndarray:
    """transformers' _pad1d written out: zeros appended when too short, reflect (edge excluded), cut back."""
    row = list(x)
    extra = max(0, max(left, right) - len(row) + 1)
    row += [0.0] * extra
    padded = [row[left - i] for i in range(left)] + row + [row[len(row) - 2 - i] for i in range(right)]
    return np.array(padded[: len(padded) - extra])


@pytest.mark.parametrize("length", [1, 2, 3, 6, 7, 40])
@pytest.mark.parametrize("left,right", [(6, 0), (2, 1), (15, 7), (0, 3)])
def test_reflect_pad_matches_the_reference_rule(length, left, right):
    x = np.arange(1, length + 1, dtype=np.float32)
    assert np.array_equal(reflect_pad(x[None, None], left, right)[0, 0], _reflect_pad_loop(x, left, right))


@pytest.mark.parametrize("old_names", [False, True])
def test_weight_norm_pairs_fold_to_the_weights(state, old_names):
    folded = fold_weight_norm(weight_norm_state(state, old_names=old_names))
    assert folded.keys() == state.keys()
    for name, w in state.items():
        np.testing.assert_allclose(folded[name], w, rtol=1e-5, atol=1e-7)


def _original_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Meta's naming (encodec package), written from its module tree, not from our rename rules."""
    out = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if parts[0] == "quantizer":  # quantizer.layers.N.codebook.embed → quantizer.vq.layers.N._codebook.embed
            out[f"quantizer.vq.layers.{parts[2]}._codebook.{parts[4]}"] = tensor
            continue
        parts[1] = "model"
        if "lstm" not in parts:
            conv = parts.index("conv")
            # decoder: conv, LSTM, then (ELU, transposed conv, resnet block) per ratio
            is_transposed = parts[0] == "decoder" and conv == 3 and int(parts[2]) % 3 == 0
            inner = ["convtr", "convtr"] if is_transposed else ["conv", "conv"]
            parts = parts[:conv] + inner + parts[conv + 1:]
        out[".".join(parts)] = tensor
    return out


@pytest.mark.parametrize("form", ["folded", "weight_g/weight_v", "original naming with weight_g/weight_v"])
def test_every_checkpoint_form_loads_the_same_model(state, model, golden, tmp_path, form):
    if form == "folded":
        stored = state
    elif form == "weight_g/weight_v":
        stored = weight_norm_state(state, old_names=True)
    else:
        stored = _original_names(weight_norm_state(state, old_names=True))
    save_file(stored, str(tmp_path / "w.safetensors"))
    other = Encodec.from_file(tmp_path / "w.safetensors")
    pcm = golden["speech_odd.pcm"].astype(np.float32) / 32768
    assert np.array_equal(other.encode(pcm, 32), model.encode(pcm, 32))


def test_incomplete_and_non_finite_checkpoints_are_refused(state, tmp_path):
    partial = dict(state)
    del partial["decoder.layers.1.lstm.weight_hh_l1"]
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(WeightsError, match="1 missing: decoder.layers.1.lstm.weight_hh_l1"):
        Encodec.from_file(tmp_path / "partial.safetensors")
    broken = dict(state)
    broken["encoder.layers.0.conv.bias"] = np.full_like(state["encoder.layers.0.conv.bias"], np.nan)
    save_file(broken, str(tmp_path / "nan.safetensors"))
    with pytest.raises(WeightsError, match="encoder.layers.0.conv.bias"):
        Encodec.from_file(tmp_path / "nan.safetensors")


def test_mimi_file_is_not_an_encodec_checkpoint(weights_file):
    with pytest.raises(WeightsError, match="not an EnCodec checkpoint"):
        Encodec.from_file(weights_file)


def test_malicious_pickle_is_refused_without_running_anything(tmp_path):
    marker, paths = malicious_checkpoints(tmp_path)
    with open(paths[0], "rb") as f:  # the payload is live: loading it with pickle would run the command
        assert b"system" in f.read()
    for path in paths:
        with pytest.raises(WeightsError, match="PyTorch pickle.*never loaded.*safetensors"):
            Encodec.from_file(path)
        assert not marker.exists()


@pytest.mark.parametrize("samples", [30720 + 1, 2 * 30720 + 5, 3 * 30720])
def test_chunked_seanet_equals_one_pass(model, golden, samples):
    """Chunks of 96 frames with carried context give the one-pass result, a last piece of 1 or 5 samples too."""
    from mimi_cli.core.layers import run_layers
    from mimi_cli.core.stream import run_chunks
    from mimi_cli.models.encodec.model import SEANET_CHUNK_FRAMES

    speech = np.tile(golden["speech_4s.pcm"].astype(np.float32) / 32768, 2)[:samples]
    x = model.pad_input(speech[None])
    convs = model.encoder.sequence_index
    one_pass = run_layers(model.encoder.layers[:convs], x)
    chunked = run_chunks(model.encoder.streaming(0, convs), x, SEANET_CHUNK_FRAMES * CONFIG.hop_length)
    assert chunked.shape == one_pass.shape == (1, 512, -(-samples // 320))
    assert np.abs(chunked - one_pass).max() < 1e-5 * np.abs(one_pass).max()
    latent = model.decode_sequence(model.encode_sequence(one_pass))
    head = model.decoder.sequence_index + 1
    one_pass = run_layers(model.decoder.layers[head:], latent)
    chunked = run_chunks(model.decoder.streaming(head), latent, SEANET_CHUNK_FRAMES)
    assert chunked.shape == one_pass.shape
    assert np.abs(chunked - one_pass).max() < 1e-5 * np.abs(one_pass).max()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("frames_per_step", [5, 96])
def test_streaming_equals_batch(model, golden, case, frames_per_step):
    """EnCodec 24 kHz is causal with exact carried context: streamed codes are the batch codes, whatever
    the step and however the input is cut; decoding in any step gives the batch audio."""
    pcm = golden[f"{case}.pcm"].astype(np.float32) / 32768
    batch = model.encode(pcm, 32)
    encoder = model.stream_encoder(num_codebooks=32, frames_per_step=frames_per_step)
    cuts = np.random.default_rng(frames_per_step).integers(0, len(pcm) + 1, size=5)
    pieces = np.split(pcm, np.sort(cuts))  # uneven pieces, some empty
    streamed = np.concatenate([encoder.push(piece) for piece in pieces] + [encoder.flush()], axis=1)
    np.testing.assert_array_equal(streamed, batch)
    decoder = model.stream_decoder(frames_per_step=frames_per_step)
    audio = np.concatenate([decoder.push(batch[:, i : i + 5]) for i in range(0, batch.shape[1], 5)]
                           + [decoder.flush()])
    reference = model.decode(batch)
    assert audio.shape == reference.shape
    assert np.abs(audio - reference).max() <= 1e-5 * max(np.abs(reference).max(), 1e-3)


def test_a_batch_of_clips_is_each_clip_alone(model):
    """Two clips in one batch give each clip's own latent and codes (ELU once returned an uninitialised
    array for the LSTM's transposed output when the batch had 2 rows or more: values near 1e14)."""
    from mimi_cli.bench import speech_like

    pcm = np.stack([speech_like(2.0, seed=1)[:48000], speech_like(2.0, seed=2)[:48000]])
    alone = np.concatenate([model.encode_latent(row[None]) for row in pcm])
    np.testing.assert_allclose(model.encode_latent(pcm), alone, atol=1e-4)
    assert np.array_equal(model.encode(pcm), np.stack([model.encode(row) for row in pcm]))
    codes = model.encode(pcm)
    np.testing.assert_allclose(model.decode(codes), np.stack([model.decode(row) for row in codes]), atol=1e-4)
