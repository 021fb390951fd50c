"""Model behaviour on a small config: shapes, causality, batching, loading and input checks."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import SMALL

from mimi_cli.errors import InvalidAudioError, InvalidCodesError, WeightsError
from mimi_cli.models.mimi import Mimi, MimiConfig
from mimi_cli.models.mimi.synthetic import random_state

FRAME = SMALL.frame_size
rng = np.random.default_rng(7)


def audio(num_samples: int, batch: int | None = None) -> np.ndarray:
    shape = (num_samples,) if batch is None else (batch, num_samples)
    return (0.2 * rng.standard_normal(shape)).astype(np.float32)


def test_released_config_facts():
    c = MimiConfig()
    assert (c.frame_size, c.hop_length, c.downsample_stride) == (1920, 960, 2)
    assert c.bitrate(8) == 1100.0 and c.bitrate(32) == 4400.0
    assert len(list(Mimi(c).named_shapes())) == 318


def test_a_config_whose_default_is_not_one_of_its_levels_is_refused():
    """MimiConfig(num_codebooks=6) kept the default 8, and encode without num_codebooks failed in a reshape."""
    from mimi_cli.models.encodec import EncodecConfig

    for config, levels in ((MimiConfig, 6), (EncodecConfig, 4)):
        with pytest.raises(ValueError, match=fr"default_num_codebooks must be in 1..num_codebooks \({levels}\), "
                                             "not 8"):
            config(num_codebooks=levels)
        assert config(num_codebooks=levels, default_num_codebooks=levels).levels(None) == levels
    assert SMALL.levels(None) == 4 and Mimi(SMALL).config.default_num_codebooks == 4


@pytest.mark.parametrize("num_samples,frames", [(1, 1), (FRAME - 1, 1), (FRAME, 1), (FRAME + 1, 2), (5 * FRAME, 5)])
def test_shapes_and_padding(small_model, num_samples, frames):
    codes = small_model.encode(audio(num_samples), num_codebooks=4)
    assert codes.shape == (4, frames) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < SMALL.codebook_size
    assert small_model.decode(codes).shape == (frames * FRAME,)


def test_zero_length_audio_gives_zero_frames(small_model):
    codes = small_model.encode(np.zeros(0, np.float32), num_codebooks=3)
    assert codes.shape == (3, 0)
    assert small_model.decode(codes).shape == (0,)


@pytest.mark.parametrize("rows,num_samples", [(0, 2 * FRAME + 1), (3, 0), (0, 0)])
def test_empty_batches_give_empty_results_of_the_batch_shape(small_model, rows, num_samples):
    """A batch with no rows or no samples: what a batch of the same size would give, without running a layer."""
    frames = -(-num_samples // FRAME)
    codes = small_model.encode(np.zeros((rows, num_samples), np.float32), num_codebooks=3)
    assert codes.shape == (rows, 3, frames) and codes.dtype == np.int64
    assert small_model.encode_latent(np.zeros((rows, num_samples), np.float32)).shape == (rows, SMALL.dimension, frames)
    pcm = small_model.decode(codes)
    assert pcm.shape == (rows, frames * FRAME) and pcm.dtype == np.float32
    if rows:  # a row of real audio in the same call gives the same frame count
        assert small_model.encode(audio(num_samples, 1), 3).shape == (1, 3, frames)


def test_encode_pads_the_tail_with_zeros(small_model):
    x = audio(3 * FRAME + FRAME // 3)
    padded = np.concatenate([x, np.zeros(FRAME - FRAME // 3, np.float32)])
    np.testing.assert_array_equal(small_model.encode(x, 6), small_model.encode(padded, 6))


def test_encoder_is_causal(small_model):
    """Appending audio never changes the codes of frames already complete."""
    x = audio(12 * FRAME)
    whole = small_model.encode_latent(x)
    for cut in (1, 5, 9):
        part = small_model.encode_latent(x[: cut * FRAME])
        np.testing.assert_allclose(part, whole[:, :, :cut], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(small_model.encode(x[: cut * FRAME], 6), small_model.encode(x, 6)[:, :cut])


def test_decoder_is_causal(small_model):
    codes = small_model.encode(audio(10 * FRAME), 6)
    whole = small_model.decode(codes)
    for cut in (1, 4, 7):
        np.testing.assert_allclose(small_model.decode(codes[:, :cut]), whole[: cut * FRAME], rtol=1e-4, atol=1e-5)


def test_attention_window_limits_memory(small_model):
    """Beyond the window, the distant past no longer matters to the transformer."""
    x = np.random.default_rng(1).standard_normal((1, 32, SMALL.context * 4)).astype(np.float32)
    y = small_model.encoder_transformer(x)
    x2 = x.copy()
    x2[:, :, :10] += np.random.default_rng(2).standard_normal((1, 32, 10)).astype(np.float32)  # only steps 0..9
    y2 = small_model.encoder_transformer(x2)
    assert not np.allclose(y[:, :, 10], y2[:, :, 10])
    # the receptive field grows by (context - 1) per layer
    reach = 10 + SMALL.num_layers * (SMALL.context - 1)
    np.testing.assert_array_equal(y[:, :, reach:], y2[:, :, reach:])


def test_batch_equals_one_by_one(small_model):
    x = audio(4 * FRAME, batch=3)
    batch_codes = small_model.encode(x, 6)
    assert batch_codes.shape == (3, 6, 4)
    for i in range(3):
        np.testing.assert_array_equal(batch_codes[i], small_model.encode(x[i], 6))
    decoded = small_model.decode(batch_codes)
    assert decoded.shape == (3, 4 * FRAME)
    np.testing.assert_allclose(decoded[1], small_model.decode(batch_codes[1]), rtol=1e-5, atol=1e-6)


def test_fewer_codebooks_are_a_prefix(small_model):
    x = audio(6 * FRAME)
    np.testing.assert_array_equal(small_model.encode(x, 2), small_model.encode(x, 6)[:2])


# ----------------------------------------------------------------------------- loading


def test_every_weight_problem_is_listed_at_once():
    state = random_state(SMALL)
    del state["encoder.model.0.conv.conv.bias"]
    del state["quantizer.rvq_rest.vq.layers.2._codebook.embedding_sum"]
    state["encoder.model.99.conv.conv.weight"] = np.zeros(3, np.float32)
    state["downsample.conv.conv.conv.weight"] = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(WeightsError) as info:
        Mimi.from_state_dict(state, SMALL)
    message = str(info.value)
    for expected in ("2 missing", "encoder.model.0.conv.conv.bias", "layers.2._codebook.embedding_sum",
                     "1 unexpected", "encoder.model.99", "1 wrong shape", "downsample.conv.conv.conv.weight (1, 2, 3)"):
        assert expected in message


def test_from_file_accepts_moshi_state_dict_names(tmp_path, small_model):
    from safetensors.numpy import save_file

    state = random_state(SMALL)
    renamed = {k.replace("self_attn.in_proj_weight", "self_attn.in_projs.0.weight")
                .replace("self_attn.out_proj.weight", "self_attn.out_projs.0.weight"): v for k, v in state.items()}
    assert renamed.keys() != state.keys()
    save_file(renamed, str(tmp_path / "moshi.safetensors"))
    model = Mimi.from_file(tmp_path / "moshi.safetensors", SMALL)
    x = audio(3 * FRAME)
    np.testing.assert_array_equal(model.encode(x, 6), small_model.encode(x, 6))


def test_from_pretrained_finds_weights_as_the_command_line_does(tmp_path, weights_file, full_model, monkeypatch):
    """``Mimi.from_pretrained()``: ``$MIMI_WEIGHTS``, else the path (a file or the folder holding it) given;
    the same model as from the file; with neither, offline and nothing cached, one WeightsError saying so."""
    x = audio(3 * FRAME)
    monkeypatch.setenv("MIMI_WEIGHTS", str(weights_file))
    assert Mimi.from_pretrained().source == weights_file
    for given in (weights_file, weights_file.parent):
        model = Mimi.from_pretrained(given)
        assert model.source == weights_file
        np.testing.assert_array_equal(model.encode(x), full_model.encode(x))
    monkeypatch.delenv("MIMI_WEIGHTS")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsError, match="no Mimi weights: .* is not in the Hugging Face cache and HF_HUB_OFFLINE is "
                                           r"set; give Mimi.from_pretrained\(\) a path or set MIMI_WEIGHTS"):
        Mimi.from_pretrained()  # the Python caller's words, not the command line's "--weights"
    with pytest.raises(WeightsError, match=r"nowhere.safetensors \(from Mimi.from_pretrained\(\)\) does not exist"):
        Mimi.from_pretrained(tmp_path / "nowhere.safetensors")
    monkeypatch.chdir(tmp_path)  # from_file("") read the working folder as a Core ML model
    with pytest.raises(WeightsError, match=r"^the weights path given to Mimi.from_file\(\) is empty; give a file's"):
        Mimi.from_file("")
    # an int reached the resolver ("weights file 3 ... does not exist"); bytes were shown as "b'...'"
    for load in (Mimi.from_file, Mimi.from_pretrained):
        with pytest.raises(TypeError, match=rf"^Mimi.{load.__name__}\(\) takes a path \(str or Path\), got 3$"):
            load(3)
        assert load(os.fsencode(weights_file)).source == weights_file


def test_codebooks_are_computed_from_sum_and_usage(small_model):
    book = small_model.quantizer.acoustic.codebooks[0]
    expected = book.params["embedding_sum"] / np.maximum(book.params["cluster_usage"], np.float32(1e-5))[:, None]
    np.testing.assert_array_equal(book.embedding, expected)


# ----------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("pcm,match", [
    (np.zeros(100, np.int16), r"floating point in \[-1, 1\], got int16; convert integer PCM first"),
    (np.zeros(100, np.complex64), r"floating point in \[-1, 1\], got complex64$"),  # no hint about integers
    (np.zeros((1, 1, 100), np.float32), r"shape \[T\] or \[B, T\], got \[1, 1, 100\]; for moshi's \[B, 1, T\] give"),
    (np.zeros((2, 3, 100), np.float32), r"got \[2, 3, 100\]$"),
    (np.array([0.1, np.nan], np.float32), "NaN"),
    (np.array([0.1, np.inf], np.float32), "NaN or Inf"),
])
def test_bad_audio_is_refused(small_model, pcm, match):
    with pytest.raises(InvalidAudioError, match=match):
        small_model.encode(pcm, num_codebooks=2)


def test_samples_by_channels_is_refused_not_encoded_as_thousands_of_clips(small_model):
    """An array as soundfile reads a file, [samples, channels], given where [B, T] goes, was encoded as one clip of
    a channel's few samples per row: ~1 MB a row, so 24,000 samples of mono ran the process out of memory. The
    layout is named and what to give instead; short batches and one row per channel still encode."""
    pcm = audio(3 * FRAME)
    for wrong in (pcm[:, None], np.stack([pcm, pcm], axis=1)):
        for call in (small_model.encode, small_model.encode_channels):
            with pytest.raises(InvalidAudioError, match=rf"\[{3 * FRAME}, {wrong.shape[1]}\]: .* give pcm\[:, 0\]"):
                call(wrong, 2)
        np.testing.assert_array_equal(small_model.encode(wrong.T, 2)[0], small_model.encode(pcm, 2))
    few = audio(FRAME)[:40].reshape(4, 10)  # a batch of 4 clips of 10 samples: more samples than rows
    assert small_model.encode(few, 2).shape == (4, 2, 1)


def test_a_batch_call_larger_than_memory_is_refused_before_allocating(small_model, monkeypatch):
    """Decoding 10⁷ frames at once grew past this machine's 24 GB and the kernel killed the process. A batch
    call whose peak memory (the registry's figures) would not fit is refused first: here on inputs that take
    no memory (broadcast views), which any copy or pass over the values would make take terabytes."""
    from mimi_cli import errors
    from mimi_cli.errors import MimiError
    from mimi_cli.models import codec_spec

    endless_codes = np.broadcast_to(np.int64(1), (2, SMALL.num_codebooks, 10**9))
    with pytest.raises(MimiError, match=r"decoding 2 rows of [\d,.]+ min of audio at once would need about "
                                        r"[\d,]+ GB, more than this machine.s [\d.]+ GB; give fewer rows at a time, "
                                        "or stream them"):
        small_model.decode(endless_codes)
    with pytest.raises(MimiError, match=r"encoding 1 row of [\d,.]+ min .* stream it: model.stream_encoder\(\)"):
        small_model.encode(np.broadcast_to(np.float32(0), (10**11,)))
    # the limit is the registry's estimate against 90 % of the memory: just above it passes, just below not
    pcm = audio(2 * FRAME, batch=3)
    needed = codec_spec(SMALL.name).batch_bytes(3, 2 * FRAME / SMALL.sample_rate)
    monkeypatch.setattr(errors, "usable_memory", lambda: needed / 0.9 * 1.001)
    assert small_model.encode(pcm, 2).shape == (3, 2, 2)
    monkeypatch.setattr(errors, "usable_memory", lambda: needed / 0.9 * 0.999)
    with pytest.raises(MimiError, match="encoding 3 rows of 0.004 s of audio at once"):
        small_model.encode(pcm, 2)


@pytest.mark.parametrize("levels, error", [(SMALL.num_codebooks + 1, ValueError), (0, ValueError), (-1, ValueError),
                                           (1.5, TypeError), (True, TypeError), ("2", TypeError)])
def test_codebook_count_is_checked(small_model, levels, error):
    """0 is refused, not taken for "the default" (None is the default)."""
    for start in (lambda: small_model.encode(audio(FRAME), num_codebooks=levels),
                  lambda: small_model.stream_encoder(num_codebooks=levels)):
        with pytest.raises(error, match="num_codebooks must be"):
            start()
    assert small_model.encode(audio(FRAME), num_codebooks=np.int64(1)).shape[0] == 1


@pytest.mark.parametrize("codes,match", [
    (np.full((2, 3), 64), "codes must be in 0..63"),
    (np.full((2, 3), -1), "codes must be in"),
    (np.zeros((7, 3), np.int64), "7 levels"),
    (np.zeros((2, 3), np.float32), "integers"),
    (np.zeros(3, np.int64), "shape"),
])
def test_bad_codes_are_refused(small_model, codes, match):
    with pytest.raises(InvalidCodesError, match=match):
        small_model.decode(codes)


def test_chunked_seanet_equals_one_pass(small_model):
    """Batch mode runs the SEANets in chunks with carried state; the result is the one-pass result."""
    from mimi_cli.core.stream import run_chunks

    x = audio(13 * FRAME)[None, None]
    one_pass = small_model.encoder(x)
    for chunk in (FRAME, 3 * FRAME, 100 * FRAME):
        np.testing.assert_allclose(run_chunks(small_model.encoder.streaming(), x, chunk), one_pass,
                                   rtol=1e-5, atol=1e-6)
    z = np.random.default_rng(3).standard_normal((1, SMALL.dimension, 9)).astype(np.float32)
    np.testing.assert_allclose(run_chunks(small_model.decoder.streaming(), z, 2), small_model.decoder(z),
                               rtol=1e-5, atol=1e-6)
