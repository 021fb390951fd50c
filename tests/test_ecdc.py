"""EnCodec's own file (.ecdc): the bytes Meta's encodec writes, read and written; its other forms refused.

The golden file (scripts/make_ecdc_golden.py) holds what encodec 0.1.1 wrote for one clip of
tests/golden/encodec.npz on our random EnCodec weights (seed 0), at 1.5, 6 and 24 kbps, the codes its
model made, and the audio its ``decompress`` gave back at 6 kbps.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import GOLDEN, run
from safetensors.numpy import save_file

from mimi_cli.codes import CodesFile, load_codes
from mimi_cli.errors import InvalidCodesError, MimiError
from mimi_cli.models.encodec.synthetic import random_state, released_file_state
from mimi_cli.models.synthetic import state_fingerprint

ENCODEC = "encodec-24khz"


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN / "encodec_ecdc.npz", allow_pickle=False) as npz:
        return dict(npz)


@pytest.fixture(scope="module")
def clip(golden, tmp_path_factory):
    """The clip encodec compressed, as a 24 kHz 16-bit WAV (read back as the same floats)."""
    with np.load(GOLDEN / "encodec.npz", allow_pickle=False) as npz:
        pcm = npz[f"{golden['case']}.pcm"]
    path = tmp_path_factory.mktemp("ecdc") / "clip.wav"
    sf.write(path, pcm, 24000, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    state = random_state(seed=0)
    path = tmp_path_factory.mktemp("encodec") / "model.safetensors"
    save_file(released_file_state(state), str(path))
    return path, state


def _file(golden, bandwidth: float, tmp_path) -> object:
    path = tmp_path / f"golden_{bandwidth:g}.ecdc"
    path.write_bytes(golden[f"ecdc_{bandwidth:g}"].tobytes())
    return path


def test_the_golden_file_is_of_our_weights_and_agrees_with_transformers(golden, weights):
    """encodec's model and transformers' give the same codes on the same weights (tests/golden/encodec.npz)."""
    assert str(golden["weights_fingerprint"]) == state_fingerprint(weights[1])
    with np.load(GOLDEN / "encodec.npz", allow_pickle=False) as npz:
        for bandwidth in golden["bandwidths"]:
            np.testing.assert_array_equal(golden[f"codes_{bandwidth:g}"],
                                          npz[f"{golden['case']}.codes_{bandwidth:g}"])


@pytest.mark.parametrize("bandwidth", [1.5, 6.0, 24.0])
def test_encodecs_files_are_read_and_written_byte_for_byte(golden, bandwidth, tmp_path):
    """2 levels (20 bits a frame: codes across byte boundaries), 8 and 32."""
    path = _file(golden, bandwidth, tmp_path)
    codes = load_codes(path)
    expected = golden[f"codes_{bandwidth:g}"]
    assert codes.codec == ENCODEC and codes.channels == 1 and codes.weights_id == ""
    np.testing.assert_array_equal(codes.codes[0], expected)
    with np.load(GOLDEN / "encodec.npz") as npz:
        assert codes.num_samples == len(npz[f"{golden['case']}.pcm"]) == 97 * 320 + 123
    codes.save(tmp_path / "again.ecdc")
    assert (tmp_path / "again.ecdc").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("bandwidth", [1.5, 24.0])
def test_mimi_encode_writes_what_encodec_writes(golden, clip, weights, bandwidth, tmp_path):
    out = tmp_path / "clip.ecdc"
    result = run("encode", clip, "--codec", ENCODEC, "-b", f"{bandwidth:g}", "-o", out, "--weights", weights[0])
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == golden[f"ecdc_{bandwidth:g}"].tobytes()


def test_mimi_decode_gives_encodecs_audio(golden, weights, tmp_path):
    """From a file, from standard input and from a folder, with no --codec: the file names its model."""
    path = _file(golden, 6.0, tmp_path)
    expected = np.clip(golden["audio_6"], -1, 1)
    env = {"ENCODEC_WEIGHTS": str(weights[0])}
    result = run("decode", path, "-o", tmp_path / "file.wav", env_extra=env)
    assert result.returncode == 0, result.stderr
    with open(path, "rb") as f:
        piped = subprocess.run([sys.executable, "-m", "mimi_cli", "decode", "-", "-o", str(tmp_path / "pipe.wav")],
                               stdin=f, capture_output=True, text=True, env={**os.environ, **env})
    assert piped.returncode == 0, piped.stderr
    folder = tmp_path / "folder"
    folder.mkdir()
    path.rename(folder / "g.ecdc")
    result = run("decode", folder, "-o", tmp_path / "decoded", env_extra=env)
    assert result.returncode == 0, result.stderr
    for wav in (tmp_path / "file.wav", tmp_path / "pipe.wav", tmp_path / "decoded" / "g.wav"):
        audio, rate = sf.read(wav, dtype="float32")
        assert rate == 24000 and audio.shape == expected.shape
        assert np.max(np.abs(audio - expected)) < 2 / 32768


def _ecdc(header: dict | bytes, payload: bytes = b"", version: int = 0, length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("!4sBI", b"ECDC", version, len(text) if length is None else length) + text + payload


GOOD = {"m": "encodec_24khz", "al": 640, "nc": 2, "lm": False}  # 2 frames of 2 levels: 40 bits, 5 bytes


@pytest.mark.parametrize("data,expected", [
    (_ecdc(GOOD, bytes(5)), None),
    (_ecdc({**GOOD, "lm": True}, bytes(5)), "compressed with EnCodec's language model (encodec --lm), which mimi-cli "
                                            "does not have; decompress it with `encodec`"),
    (_ecdc({**GOOD, "m": "encodec_48khz"}, bytes(5)), "compressed with EnCodec's model 'encodec_48khz', which "
                                                      "mimi-cli does not run (it reads .ecdc files of encodec_24khz"),
    (_ecdc(GOOD, bytes(5), version=1), "an .ecdc file of version 1, where EnCodec writes version 0"),
    (_ecdc(GOOD, bytes(5), length=0xFFFFFFF0), "its .ecdc header declares 4,294,967,280 bytes, more than the file "
                                               "holds or an .ecdc header needs (4,096); the file is damaged"),
    (_ecdc(GOOD, bytes(4)), "its header says 2 frames of 2 codes (5 bytes), and the file is cut short"),
    (_ecdc(GOOD, bytes(6)), "and the file has 1 more bytes: it is damaged"),
    (_ecdc({**GOOD, "nc": 33}, bytes(5)), "its header says 33 codebooks; EnCodec 24 kHz has 1 to 32"),
    (_ecdc({**GOOD, "al": 0}), "its header says 0 samples"),
    (_ecdc({**GOOD, "al": 10**15}), "its header says 1000000000000000 samples"),
    (_ecdc({**GOOD, "al": 640.0}, bytes(5)), "its .ecdc header's al is 640.0, not int"),
    (_ecdc({**GOOD, "lm": 0}, bytes(5)), "its .ecdc header's lm is 0, not bool"),
    (_ecdc({"m": "encodec_24khz"}), "its .ecdc header lacks al, nc, lm"),
    (_ecdc(b"[1, 2]"), "its .ecdc header is list JSON, not an object"),
    (_ecdc(b'{"m": 1, "m": 2}'), "its .ecdc header is not JSON (it names 'm' twice)"),
    (_ecdc(b"\xff{}"), "its .ecdc header is not JSON ("),
    (b"ECDC\x00\x00", "an .ecdc file cut short in its first 9 bytes"),
])
def test_other_ecdc_files_are_one_line_each(data, expected, tmp_path):
    path = tmp_path / "x.ecdc"
    path.write_bytes(data)
    if expected is None:
        codes = load_codes(path)
        assert codes.codes.shape == (1, 2, 2) and not codes.codes.any()
        return
    with pytest.raises(InvalidCodesError) as caught:
        load_codes(path)
    assert str(caught.value).startswith(f"{path}: ") and expected in str(caught.value), str(caught.value)


def test_only_a_codec_and_a_layout_encodec_has_are_written_as_ecdc(clip, weights, tmp_path):
    """Mimi's codes, or EnCodec's of two channels, refused before any work or file."""
    result = run("encode", clip, "-o", tmp_path / "m.ecdc", weights=weights[0])
    assert result.returncode == 1 and not (tmp_path / "m.ecdc").exists()
    assert result.stderr == ("error: .ecdc is EnCodec's own format, and mimi codes have no place in it: write .npz "
                             "(or .npy), or encode with --codec encodec-24khz\n")
    two = tmp_path / "two.wav"
    sf.write(two, np.zeros((2400, 2), np.float32), 24000)
    result = run("encode", two, "--channels", "split", "--codec", ENCODEC, "-o", tmp_path / "s.ecdc",
                 "--weights", tmp_path / "unused.safetensors")  # refused before the weights are looked for
    assert result.returncode == 1 and result.stderr == (
        "error: .ecdc holds one code stream, and these codes have 2 (--channels split): write .npz, or encode the "
        "channels mixed\n")
    two.unlink()
    stereo = CodesFile.from_codes(np.zeros((2, 8, 3), np.uint16), _config(), 960, 24000, 2, "")
    with pytest.raises(MimiError, match=r"^.ecdc holds one code stream, and these codes have 2"):
        stereo.save(tmp_path / "s.ecdc")
    assert list(tmp_path.iterdir()) == []
    buffer = io.BytesIO()
    from mimi_cli.ecdc import write_ecdc

    write_ecdc(buffer, ENCODEC, np.full((2, 3), 1023, np.uint16), 960)  # 6 codes of ten 1-bits: 60 bits, 4 0-bits
    assert buffer.getvalue().endswith(b"\xff" * 7 + b"\x0f")


def _config():
    from mimi_cli.models import codec_spec

    return codec_spec(ENCODEC).config()
