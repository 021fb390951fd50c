"""Streaming: equal to moshi's streaming mode, independent of chunking, equal to batch in the first 10 s."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import GOLDEN, SMALL, golden_input, assert_codes_match

from mimi_cli.errors import InvalidAudioError, InvalidCodesError

STREAM_CASES = ["stream_1", "stream_7", "stream_200", "stream_400"]
FRAME = 1920


@functools.cache
def load(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as npz:
        return dict(npz)


def streaming_latent(model, pcm: np.ndarray, frames_per_step: int) -> np.ndarray:
    """The 12.5 Hz latent as the stream encoder computes it, from the model's public stream pieces."""
    stream = model.encoder_stream()  # SEANet, transformer (2 steps per call, as moshi), downsample
    step = frames_per_step * FRAME
    pieces = [stream.step(pcm[None, None, i : i + step]) for i in range(0, len(pcm), step)]
    return np.concatenate(pieces, axis=2)


@functools.cache
def stream_codes(model, name: str) -> tuple[np.ndarray, np.ndarray]:
    # frame by frame like the reference, except the longest case, which uses 8-frame steps
    frames_per_step = 8 if name == "stream_400" else 1
    pcm = golden_input(load(name))
    encoder = model.stream_encoder(num_codebooks=32, frames_per_step=frames_per_step)
    codes = np.concatenate([encoder.push(pcm), encoder.flush()], axis=1)
    return codes, streaming_latent(model, pcm, frames_per_step)


@pytest.mark.parametrize("name", STREAM_CASES)
def test_stream_codes_match_reference_streaming(full_model, name):
    case = load(name)
    codes, latent = stream_codes(full_model, name)
    assert codes.shape == case["codes32"].shape
    assert_codes_match(full_model, latent, codes, case["codes32"])
    if "latent" in case:
        assert np.linalg.norm(latent[0] - case["latent"]) <= 1e-5 * np.linalg.norm(case["latent"])


@pytest.mark.parametrize("name", STREAM_CASES)
def test_stream_decode_matches_reference_streaming(full_model, name):
    case = load(name)
    decoder = full_model.stream_decoder(frames_per_step=8 if name == "stream_400" else 1)
    codes = case["codes32"].astype(np.int64)
    audio = np.concatenate([decoder.push(codes[:, i : i + 1]) for i in range(codes.shape[1])] + [decoder.flush()])
    reference = case["audio32"]
    assert audio.shape == reference.shape
    assert np.linalg.norm(audio - reference) <= 1e-4 * np.linalg.norm(reference)


def test_reference_streaming_differs_from_batch_only_past_10s(full_model):
    """The 249-key quirk: streaming = batch up to frame 125, then they may part (and here they do)."""
    case = load("stream_200")
    batch = full_model.encode(golden_input(case), 32)
    differs = np.flatnonzero((batch != case["codes32"]).any(axis=0))
    assert differs.size > 0 and differs.min() >= 125
    stream_latent = stream_codes(full_model, "stream_200")[1]
    batch_latent = full_model.encode_latent(golden_input(case))
    early = slice(0, 125)
    np.testing.assert_allclose(stream_latent[:, :, early], batch_latent[:, :, early], rtol=1e-4, atol=2e-5)


# ----------------------------------------------------------------------------- chunking


@pytest.fixture(scope="module")
def speech_7(full_model) -> tuple[np.ndarray, np.ndarray]:
    pcm = golden_input(load("stream_7"))[: 6 * FRAME + 1234]  # ends mid-frame
    encoder = full_model.stream_encoder(num_codebooks=8)
    return pcm, np.concatenate([encoder.push(pcm), encoder.flush()], axis=1)


def push_in_chunks(stream, data: np.ndarray, sizes) -> np.ndarray:
    """Push ``data`` cut along its last (time) axis into pieces of ``sizes``, then flush."""
    bounds = np.cumsum(sizes)
    pieces = np.split(data, bounds[bounds < data.shape[-1]], axis=-1)
    return np.concatenate([stream.push(piece) for piece in pieces] + [stream.flush()], axis=-1)


@pytest.mark.parametrize("sizes", [[1] * 20000, [1000] * 20, [4801] * 5, "random"], ids=["1", "1000", "4801", "random"])
def test_chunking_never_changes_the_codes(full_model, speech_7, sizes):
    pcm, whole = speech_7
    if sizes == "random":
        sizes = np.random.default_rng(3).integers(1, 5000, 100).tolist()
    codes = push_in_chunks(full_model.stream_encoder(num_codebooks=8), pcm, sizes)
    np.testing.assert_array_equal(codes, whole)  # bit for bit, not just close


def test_stream_with_tail_equals_batch_in_the_first_10s(full_model, speech_7):
    pcm, streamed = speech_7
    np.testing.assert_array_equal(streamed, full_model.encode(pcm, 8))


def test_decoder_chunking_never_changes_the_audio(full_model, speech_7):
    _, codes = speech_7
    whole = full_model.stream_decoder().push(codes)
    for sizes in ([1] * 7, [3, 1, 3], [2, 5]):
        np.testing.assert_array_equal(push_in_chunks(full_model.stream_decoder(), codes, sizes), whole)
    np.testing.assert_allclose(whole, full_model.decode(codes), rtol=1e-5, atol=1e-6)


def test_larger_steps_change_only_rounding(full_model, speech_7):
    pcm, frame_by_frame = speech_7
    encoder = full_model.stream_encoder(num_codebooks=8, frames_per_step=3)
    np.testing.assert_array_equal(np.concatenate([encoder.push(pcm), encoder.flush()], axis=1), frame_by_frame)


def test_flush_and_reset_start_a_new_stream(full_model, speech_7):
    pcm, whole = speech_7
    encoder = full_model.stream_encoder(num_codebooks=8)
    encoder.push(golden_input(load("stream_1")))  # a different stream, abandoned
    encoder.reset()
    assert encoder.push(pcm[:10]).shape == (8, 0)
    np.testing.assert_array_equal(np.concatenate([encoder.push(pcm[10:]), encoder.flush()], axis=1), whole)
    # after flush the encoder is fresh again
    np.testing.assert_array_equal(np.concatenate([encoder.push(pcm), encoder.flush()], axis=1), whole)
    assert encoder.flush().shape == (8, 0)


# ----------------------------------------------------------------------------- batches of streams


def test_streams_advance_together_in_a_batch(small_model):
    rng = np.random.default_rng(5)
    pcm = (0.2 * rng.standard_normal((3, 10 * SMALL.frame_size + 7))).astype(np.float32)
    together = small_model.stream_encoder(batch_size=3, num_codebooks=4)
    codes = push_in_chunks(together, pcm, [333] * 100)
    assert codes.shape == (3, 4, 11)
    for i in range(3):
        alone = small_model.stream_encoder(num_codebooks=4)
        np.testing.assert_array_equal(codes[i], np.concatenate([alone.push(pcm[i]), alone.flush()], axis=1))
    decoder = small_model.stream_decoder(batch_size=3)
    audio = decoder.push(codes)
    assert audio.shape == (3, 11 * SMALL.frame_size)
    np.testing.assert_allclose(audio[2], small_model.stream_decoder().push(codes[2]), rtol=1e-5, atol=1e-6)


def test_more_streams_than_memory_holds_are_refused_before_they_are_built(small_model, monkeypatch):
    """stream_encoder(batch_size=10**9) built its groups of streams one by one for hours; now the batch's
    state (the registry's bytes per stream) must fit the machine's memory, checked first."""
    from mimi_cli import errors
    from mimi_cli.models import codec_spec

    each = codec_spec("mimi").stream_bytes
    monkeypatch.setattr(errors, "usable_memory", lambda: int(3.5 * each))  # room for 3 streams
    for make in (small_model.stream_encoder, small_model.stream_decoder, small_model.stream_duplex):
        with pytest.raises(ValueError, match=f"^4 streams would hold about .* GB \\({each / 1e6:.0f} MB each\\), "
                                             "more than this machine's .* GB: at most 3 streams here$"):
            make(batch_size=4)
        make(batch_size=3)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="1,000,000,000 streams would hold"):
        small_model.stream_duplex(batch_size=10**9)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"batch_size": 0}, ValueError, "^batch_size must be at least 1, got 0$"),
    ({"batch_size": 2.5}, TypeError, "^batch_size must be an integer, got 2.5$"),
    ({"batch_size": True}, TypeError, "^batch_size must be an integer, got True$"),
    ({"frames_per_step": -1}, ValueError, "^frames_per_step must be at least 1, got -1$"),
    ({"frames_per_step": "2"}, TypeError, "^frames_per_step must be an integer, got '2'$"),
])
def test_stream_sizes_are_checked_by_name(small_model, kwargs, error, match):
    """batch_size=2.5 raised Python's own "'float' object cannot be interpreted as an integer", which named
    neither argument; each is now checked as num_codebooks is."""
    for make in (small_model.stream_encoder, small_model.stream_decoder, small_model.stream_duplex):
        with pytest.raises(error, match=match):
            make(**kwargs)
    assert small_model.stream_decoder(batch_size=np.int64(2), frames_per_step=np.int32(3)).push(
        np.zeros((2, 3, 3), np.int64)).shape == (2, 3 * SMALL.frame_size)


# ----------------------------------------------------------------------------- bad pushes


@pytest.mark.parametrize("bad,match", [
    (np.zeros(100, np.int16), "floating point in \\[-1, 1\\], got int16; convert integer PCM first"),
    (np.zeros((2, 100), np.float32), "shape"),
    (np.full(100, np.nan, np.float32), "NaN"),
])
def test_rejected_audio_leaves_the_stream_usable(small_model, bad, match):
    pcm = (0.1 * np.random.default_rng(0).standard_normal(4 * SMALL.frame_size)).astype(np.float32)
    clean = small_model.stream_encoder(num_codebooks=3)
    expected = np.concatenate([clean.push(pcm), clean.flush()], axis=1)
    encoder = small_model.stream_encoder(num_codebooks=3)
    first = encoder.push(pcm[:70])
    with pytest.raises(InvalidAudioError, match=match):
        encoder.push(bad)
    np.testing.assert_array_equal(np.concatenate([first, encoder.push(pcm[70:]), encoder.flush()], axis=1), expected)


@pytest.mark.parametrize("bad,match", [
    (np.full((3, 1), 64), "0..63"),
    (np.zeros((3, 1), np.float32), "integers"),
    (np.zeros((4, 1), np.int64), "decodes 3 codebooks, got 4"),
    (np.zeros((2, 3, 1), np.int64), "shape"),
])
def test_rejected_codes_leave_the_stream_usable(small_model, bad, match):
    codes = np.random.default_rng(1).integers(0, 64, (3, 4))
    expected = small_model.stream_decoder().push(codes)
    decoder = small_model.stream_decoder()
    first = decoder.push(codes[:, :1])
    with pytest.raises(InvalidCodesError, match=match):
        decoder.push(bad)
    np.testing.assert_array_equal(np.concatenate([first, decoder.push(codes[:, 1:])]), expected)


# ----------------------------------------------------------------------------- both directions at once


def test_duplex_matches_reference_streaming(full_model):
    """Encoding the reference's input while decoding the reference's codes, frame by frame, in one
    stream_duplex: the codes are the lone encoder's (themselves moshi's, above), the audio moshi's."""
    case = load("stream_7")
    pcm, codes = golden_input(case), case["codes32"].astype(np.int64)
    duplex = full_model.stream_duplex(num_codebooks=32)
    pieces = [duplex.push(pcm[i * FRAME : (i + 1) * FRAME], codes[:, i : i + 1]) for i in range(codes.shape[1])]
    pieces.append(duplex.flush())
    ours_codes = np.concatenate([p[0] for p in pieces], axis=1)
    ours_audio = np.concatenate([p[1] for p in pieces])
    np.testing.assert_array_equal(ours_codes, stream_codes(full_model, "stream_7")[0])
    reference = case["audio32"]
    assert ours_audio.shape == reference.shape
    assert np.linalg.norm(ours_audio - reference) <= 1e-4 * np.linalg.norm(reference)


def test_duplex_sides_are_a_lone_encoder_and_decoder(small_model):
    """Three streams both ways, pushes of any size, one side at a time or none: every bit as a lone
    encoder and a lone decoder of three streams give."""
    rng = np.random.default_rng(8)
    pcm = (0.2 * rng.standard_normal((3, 9 * SMALL.frame_size + 11))).astype(np.float32)
    codes = rng.integers(0, 64, (3, 4, 7))
    duplex = small_model.stream_duplex(batch_size=3, num_codebooks=4)
    pushes = [(pcm[:, :500], codes[:, :, :2]), (None, codes[:, :, 2:3]), (pcm[:, 500:4000], None), (None, None),
              (pcm[:, 4000:], codes[:, :, 3:])]
    outputs = [duplex.push(a, c) for a, c in pushes] + [duplex.flush()]
    assert outputs[1][0].shape == (3, 4, 0) and outputs[2][1].shape == (3, 0)  # the side given nothing
    ours_codes = np.concatenate([o[0] for o in outputs], axis=-1)
    ours_audio = np.concatenate([o[1] for o in outputs], axis=-1)
    encoder = small_model.stream_encoder(batch_size=3, num_codebooks=4)
    decoder = small_model.stream_decoder(batch_size=3)
    np.testing.assert_array_equal(ours_codes, np.concatenate([encoder.push(pcm), encoder.flush()], axis=-1))
    np.testing.assert_array_equal(ours_audio, np.concatenate([decoder.push(codes), decoder.flush()], axis=-1))
    assert ours_codes.shape == (3, 4, 10) and len(np.unique(ours_codes)) > 20


def test_one_duplex_stream_may_drop_the_batch_axis(small_model):
    duplex = small_model.stream_duplex(num_codebooks=2)
    codes, audio = duplex.push(np.zeros(SMALL.frame_size, np.float32), None)
    assert codes.shape == (2, 1) and audio.shape == (0,)


@pytest.mark.parametrize("bad_side", ["codes", "audio"])
def test_a_rejected_duplex_push_moves_neither_side(small_model, bad_side):
    """One side's input is bad: the push raises before the other side takes its (good) input."""
    rng = np.random.default_rng(2)
    pcm = (0.1 * rng.standard_normal((2, 3 * SMALL.frame_size))).astype(np.float32)
    codes = rng.integers(0, 64, (2, 3, 3))
    clean = small_model.stream_duplex(batch_size=2, num_codebooks=3)
    expected = [clean.push(pcm, codes), clean.flush()]
    duplex = small_model.stream_duplex(batch_size=2, num_codebooks=3)
    if bad_side == "codes":
        with pytest.raises(InvalidCodesError, match="0..63"):
            duplex.push(pcm[:, :100], np.full((2, 3, 1), 64))
    else:
        with pytest.raises(InvalidAudioError, match="NaN"):
            duplex.push(np.full((2, 100), np.nan, np.float32), codes[:, :, :1])
    got = [duplex.push(pcm, codes), duplex.flush()]
    for (a_codes, a_audio), (b_codes, b_audio) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a_codes, b_codes)
        np.testing.assert_array_equal(a_audio, b_audio)


@pytest.mark.parametrize("copy_of", ["deepcopy", "pickle"])
def test_a_copied_stream_goes_on_as_the_original_would(small_model, copy_of):
    """To try two continuations of one stream (a language model's candidates), copy it: each goes on as the
    original would have, on its own. A stream's locks (one call at a time) are not its state: a copy gets its
    own, so the copy runs while the original is busy (it could not be copied at all once it held locks)."""
    import copy
    import pickle

    def copied(stream):
        return copy.deepcopy(stream) if copy_of == "deepcopy" else pickle.loads(pickle.dumps(stream))

    rng = np.random.default_rng(9)
    pcm = (0.2 * rng.standard_normal((2, 6 * SMALL.frame_size + 7))).astype(np.float32)
    codes = rng.integers(0, 64, (2, 4, 6))
    for make, first, rest, push in (
            (lambda: small_model.stream_encoder(batch_size=2, num_codebooks=4), pcm[:, :1000], pcm[:, 1000:],
             lambda s, x: s.push(x)),
            (lambda: small_model.stream_decoder(batch_size=2), codes[:, :, :2], codes[:, :, 2:],
             lambda s, x: s.push(x)),
            (lambda: small_model.stream_duplex(batch_size=2, num_codebooks=4), (pcm[:, :1000], codes[:, :, :2]),
             (pcm[:, 1000:], codes[:, :, 2:]), lambda s, x: s.push(*x))):
        original, alone = make(), make()
        push(original, first)
        push(alone, first)
        twin = copied(original)
        for lock in original._turns:  # the original busy in another thread: its copy still runs
            lock.acquire()
        try:
            went_on = _arrays(push(twin, rest), twin.flush())
        finally:
            for lock in original._turns:
                lock.release()
        expected = _arrays(push(alone, rest), alone.flush())
        assert len(went_on) == len(expected) and any(a.size for a in expected)
        for ours, theirs in zip(went_on, expected, strict=True):
            np.testing.assert_array_equal(ours, theirs)
        for ours, theirs in zip(_arrays(push(original, rest)), expected, strict=False):  # the original, untouched
            np.testing.assert_array_equal(ours, theirs)


def _arrays(*results) -> list[np.ndarray]:
    """A stream's results (an array, or a duplex's pair) as one list of arrays."""
    return [a for r in results for a in (r if isinstance(r, tuple) else (r,))]
