"""A third codec is a config, a few modules and one line in the registry: the CLI then works with it unchanged.

The fake codec (``tests/fakecodec``) is registered here, in this process, and driven through the
real ``mimi`` command (typer's runner): encode, decode, streaming, a batch with a manifest,
inspect and bench. Nothing outside ``models/`` knows it exists.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from conftest import SAMPLE_AUDIO
from fakecodec import Fake
from fakecodec.synthetic import random_state
from safetensors.numpy import save_file
from typer.testing import CliRunner

from mimi_cli.models import CODECS, CodecSpec, register

FAKE = "fake-16khz"


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """The registered fake codec and its weights file; the registry is restored afterwards."""
    spec = CodecSpec(FAKE, "fakecodec", "Fake", "FakeConfig", "nobody/fake", "fake.safetensors", "FAKE_WEIGHTS",
                     batch_bytes_per_second=1e5, streaming=True, bench_parts=("model", "stream"))
    register(spec)
    path = tmp_path_factory.mktemp("fake") / "fake.safetensors"
    save_file(random_state(), str(path))
    yield path
    del CODECS[FAKE]


def mimi(*args) -> tuple[int, str, str]:
    from mimi_cli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    pcm, rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32")
    folder = tmp_path_factory.mktemp("clips")
    sf.write(folder / "a.wav", pcm[: 2 * rate], rate)
    sf.write(folder / "b.wav", pcm[2 * rate : 3 * rate + 77], rate)
    return folder


def test_fake_codec_encode_decode_stream(fake, clips, tmp_path):
    model = Fake.from_file(fake)
    code, _, err = mimi("encode", clips / "a.wav", "--codec", FAKE, "--weights", fake, "-o", tmp_path / "a.npz")
    assert code == 0, err
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:
        assert str(npz["codec"]) == FAKE and npz["codes"].shape == (1, 2, 200)
        pcm, _ = sf.read(clips / "a.wav", dtype="float32")  # 16 kHz: the codec's own rate
        np.testing.assert_array_equal(npz["codes"][0], model.encode(pcm))
        codes = npz["codes"][0]
    code, _, err = mimi("encode", clips / "a.wav", "--codec", FAKE, "--weights", fake, "--stream", "-o",
                        tmp_path / "s.npz")
    assert code == 0, err
    with np.load(tmp_path / "s.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["codes"][0], codes)  # causal, exact context: streaming = batch
    code, _, err = mimi("decode", tmp_path / "a.npz", "--weights", fake, "-o", tmp_path / "a.wav")
    assert code == 0, err
    audio, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    assert rate == 16000 and len(audio) == 32000
    np.testing.assert_allclose(audio, np.clip(model.decode(codes), -1, 1), atol=1 / 32768)


def test_fake_codec_batch_inspect_bench(fake, clips, tmp_path):
    code, _, err = mimi("encode", clips, "--codec", FAKE, "--weights", fake, "-o", tmp_path / "codes",
                        "--manifest", tmp_path / "m.jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done", "done"] and rows[1]["frames"] == 101
    code, _, err = mimi("decode", tmp_path / "codes", "--weights", fake, "-o", tmp_path / "audio/")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == ["a.wav", "b.wav"]

    code, out, err = mimi("inspect", fake, "--json")
    report = json.loads(out)
    assert code == 0 and report["format"] == "Fake naming" and report["errors"] == [], err
    code, out, err = mimi("bench", "--codec", FAKE, "--seconds", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["codec"] == FAKE and report["model"] and report["stream"] and "kernels" not in report
    code, _, err = mimi("bench", "--codec", FAKE, "--only", "kernels")
    assert code == 2 and "--only takes one of model, stream" in err
