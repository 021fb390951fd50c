"""Parity with Kyutai's reference (moshi 0.2.13, batch mode) on realistic random weights.

Golden files come from scripts/make_golden.py. Codes must be identical level by
level; a differing code is accepted only at a genuine near-tie, checked with
teacher forcing (docs/parity.md). Decoded audio must be within 1e-4
relative L2 of the reference's.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import GOLDEN, assert_codes_match, golden_input

from mimi_cli.models.synthetic import state_fingerprint

# Batch cases of moshi; the other golden files (stream_*, hf_*, recurrent) have their own tests.
CASES = sorted(path.stem for path in GOLDEN.glob("*.npz")
               if not path.stem.startswith(("stream_", "hf_", "recurrent", "encodec")))


# Every case has the 32-level decode; the short ones also the 8-level one.
DECODE_CASES = [(name, levels) for name in CASES for levels in (32, 8)
                if f"audio{levels}" in np.load(GOLDEN / f"{name}.npz").files]


def test_golden_files_are_present():
    assert {"one_frame", "odd_length_speech", "speech_4s_tail", "silence", "full_scale_noise",
            "long_speech_20s"} <= set(CASES)


@functools.cache
def load_case(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as npz:
        return dict(npz)


@functools.cache
def our_latent(model, name: str) -> np.ndarray:
    return model.encode_latent(golden_input(load_case(name)))


def test_weights_are_rebuilt_bit_identically(full_state):
    assert state_fingerprint(full_state) == str(load_case(CASES[0])["weights_fingerprint"])


def test_rope_frequencies_match_reference():
    from mimi_cli.core import rope_frequencies

    ours, ref = rope_frequencies(64, 10000.0), load_case(CASES[0])["rope_freqs"]
    assert np.all(np.abs(ours - ref) <= np.spacing(ref))  # within 1 ulp
    assert np.sum(ours == ref) >= 31  # docs/parity.md: torch's exp is 1 ulp off for one of them


@pytest.mark.parametrize("name", CASES)
def test_latent_matches_reference(full_model, name):
    latent, ref = our_latent(full_model, name)[0], load_case(name)["latent"]
    assert latent.shape == ref.shape
    assert np.linalg.norm(latent - ref) <= 1e-5 * np.linalg.norm(ref)
    assert np.abs(latent - ref).max() <= 1e-4


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("levels", [32, 8])
def test_codes_match_reference(full_model, name, levels):
    case = load_case(name)
    reference = case[f"codes{levels}"]
    latent = our_latent(full_model, name)
    ours = full_model.quantizer.encode(latent, levels)[0]
    assert ours.shape == reference.shape == (levels, -(-len(case["pcm"]) // 1920))
    assert_codes_match(full_model, latent, ours, reference)


@pytest.mark.parametrize("name", ["one_frame", "odd_length_speech", "speech_4s_tail"])
def test_public_encode_matches_reference(full_model, name):
    """The public API end to end (padding, default of 8 codebooks, 1-D input)."""
    case = load_case(name)
    codes = full_model.encode(golden_input(case))
    assert codes.shape == case["codes8"].shape
    assert_codes_match(full_model, our_latent(full_model, name), codes, case["codes8"])


@pytest.mark.parametrize("name,levels", DECODE_CASES)
def test_decode_matches_reference(full_model, name, levels):
    case = load_case(name)
    reference = case[f"audio{levels}"]
    audio = full_model.decode(case[f"codes{levels}"].astype(np.int64))
    assert audio.shape == reference.shape
    assert np.linalg.norm(audio - reference) <= 1e-4 * np.linalg.norm(reference)


def test_the_code_checker_rejects_a_wrong_code(full_model):
    case = load_case("odd_length_speech")
    latent = our_latent(full_model, "odd_length_speech")
    wrong = case["codes32"].astype(np.int64).copy()
    wrong[3, 5] = (wrong[3, 5] + 1) % 2048
    with pytest.raises(AssertionError, match="not a near-tie"):
        assert_codes_match(full_model, latent, full_model.quantizer.encode(latent, 32)[0], wrong)


# ----------------------------------------------------------------------------- the weights are realistic


def test_codes_are_diverse_on_20s_of_speech():
    codes = load_case("long_speech_20s")["codes32"][:, :250]  # 20 s
    distinct = [len(np.unique(level)) for level in codes]
    assert min(distinct) >= 30, distinct


def test_decoded_audio_depends_on_the_codes(full_model):
    codes = load_case("speech_4s_tail")["codes32"].astype(np.int64)
    base = full_model.decode(codes)
    assert np.sqrt(np.mean(base**2)) > 0.01  # not silence, not just the bias
    assert np.std(base[1920:]) > 0.5 * np.sqrt(np.mean(base[1920:] ** 2))  # varies, not a DC offset
    for level in (0, 1, 7, 31):
        changed = codes.copy()
        changed[level] = np.roll(changed[level], 7)
        delta = np.linalg.norm(full_model.decode(changed) - base) / np.linalg.norm(base)
        assert delta > 0.01, f"changing level {level} barely changes the audio ({delta:.2e})"
