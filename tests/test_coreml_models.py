"""Real Core ML models run by the interpreter, against independent references (docs/coreml.md).

- Silero VAD v6 (.mlmodelc) against the ONNX model of silero-vad 6.0.0 run by ONNX Runtime: the
  probabilities are golden (tests/golden/coreml/silero_vad_v6.npz, made by tests/references/silero_onnx.py)
  and recomputed live when onnxruntime and silero-vad are installed.
- The Whisper log-mel package against scipy.signal.stft and the program's own mel filterbank.
- The coremltools-made packages (compressed linear layers) against the dense weights coremltools
  itself reconstructs.
"""

import importlib.util
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
from threadpoolctl import threadpool_limits

from conftest import SHARED, run
from mimi_cli.audio import read_audio, to_mono
from mimi_cli.core.threads import usable_cores
from mimi_cli.coreml import load_program
from mimi_cli.coreml.run import run_stream

FIXTURES = SHARED / "coreml-fixtures"
SILERO = FIXTURES / "silero-vad-v6-mlmodelc"
LOGMEL = FIXTURES / "whisper-logmel-8s-mlpackage"
CLIPS = sorted((SHARED / "audio").glob("*.wav"))
GOLDEN = Path(__file__).parent / "golden" / "coreml" / "silero_vad_v6.npz"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir() or not CLIPS, reason="../shared is not present")

# Silero: the Core ML copy stores fp16 weights, the ONNX model fp32; measured on both clips the
# probabilities differ by at most 0.039 and 0.0025 on average (docs/coreml.md).
SILERO_MAX, SILERO_MEAN = 0.06, 0.005


def speech_16k(clip: Path) -> np.ndarray:
    return to_mono(read_audio(clip), 16000)


def silero_probabilities(precision: str, clip: Path) -> np.ndarray:
    program = load_program(SILERO, precision=precision)
    result = run_stream(program, "audio_input", speech_16k(clip), hop=512)
    return result.outputs["vad_output"].reshape(-1)


@needs_fixtures
@pytest.mark.parametrize("precision", ["program", "fp32"])
def test_silero_vad_matches_onnx_runtime_golden(precision):
    golden = np.load(GOLDEN)
    for clip in CLIPS:
        expected = golden[clip.stem]
        got = silero_probabilities(precision, clip)
        assert got.shape == expected.shape
        difference = np.abs(got - expected)
        assert difference.max() < SILERO_MAX and difference.mean() < SILERO_MEAN, (clip.name, difference.max())
        assert np.mean((got > 0.5) == (expected > 0.5)) >= 0.97  # the same speech decisions
        assert expected.min() < 0.1 and expected.max() > 0.9  # the clips hold both speech and silence


@needs_fixtures
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("silero_vad") is None,
                    reason="onnxruntime and silero-vad==6.0.0 are not installed (the golden file covers this)")
def test_silero_golden_is_what_onnx_runtime_gives(tmp_path):
    script = Path(__file__).parent / "references" / "silero_onnx.py"
    subprocess.run([sys.executable, str(script), str(SHARED / "audio"), str(tmp_path / "live.npz")], check=True,
                   capture_output=True)
    live, golden = np.load(tmp_path / "live.npz"), np.load(GOLDEN)
    for key in golden.files:
        np.testing.assert_allclose(live[key], golden[key], atol=1e-6)


def logmel_reference(audio: np.ndarray, mel_filters: np.ndarray) -> np.ndarray:
    """What the program describes, written independently: normalise, reflect-pad 200, |STFT|² with a
    periodic Hann window of 400 and hop 160 (scipy), mel projection, log10 floored at max - 8, (x + 4) / 4."""
    x = audio.astype(np.float64)
    x = (x - x.mean()) / (x.std() + 1e-7)
    x = np.pad(x, 200, mode="reflect")
    window = scipy.signal.get_window("hann", 400)
    _, _, spectrum = scipy.signal.stft(x, window=window, nperseg=400, noverlap=240, boundary=None, padded=False,
                                       detrend=False)
    power = np.abs(spectrum[:, :800] * window.sum()) ** 2  # undo scipy's 1/Σwindow scaling
    log_spec = np.log10(np.maximum(mel_filters @ power, 6e-8))
    log_spec = np.maximum(log_spec, log_spec.max() - 8)
    return (log_spec + 4) / 4


def eight_seconds(clip: Path) -> np.ndarray:
    audio = np.zeros(128000, np.float32)
    speech = speech_16k(clip)[:128000]
    audio[:len(speech)] = speech
    return audio


@needs_fixtures
def test_whisper_logmel_matches_scipy_stft():
    from mimi_cli.weights.coreml import open_coreml

    mel = open_coreml(LOGMEL).tensors["mel_filters_to_fp16"].load().astype(np.float64)
    program = load_program(LOGMEL, precision="fp32")
    for clip in CLIPS:
        audio = eight_seconds(clip)
        got = program.predict({"audio": audio})["log_mel"][0]
        difference = np.abs(got - logmel_reference(audio, mel))
        # the program's STFT bases are stored in fp16 (3e-4 from the exact Hann-windowed cosines)
        assert difference.max() < 0.02 and difference.mean() < 5e-4, (clip.name, difference.max())


@needs_fixtures
def test_whisper_logmel_in_strict_fp16_overflows_and_the_cli_says_so(tmp_path):
    """At precision "program" every value is fp16, as the program declares: speech at normal level
    overflows |STFT|² (e.g. 349² > 65504). The interpreter shows that rather than hiding it."""
    audio = eight_seconds(CLIPS[0])
    strict = load_program(LOGMEL).predict({"audio": audio})["log_mel"]
    assert not np.isfinite(strict).all()
    np.save(tmp_path / "audio.npy", audio)
    result = run("run", str(LOGMEL), "--input", f"audio={tmp_path / 'audio.npy'}", "-o", str(tmp_path / "o.npz"))
    assert result.returncode == 0 and "--precision fp32" in result.stderr


@needs_fixtures
def test_compressed_linear_packages_match_coremltools_dense_weights():
    from mimi_cli.weights.coreml import open_coreml

    packages = sorted((FIXTURES / "synthetic-coremltools9").glob("*.mlpackage"))
    x = np.random.default_rng(3).standard_normal((1, 33)).astype(np.float32)
    for package in packages:
        expected_weight = FIXTURES / "synthetic-coremltools9" / "expected" / f"{package.stem}.dense_weight.npy"
        if not expected_weight.exists():
            continue
        weight = np.load(expected_weight).astype(np.float64)
        bias = open_coreml(package).tensors["y_bias_0_to_fp16"].load().astype(np.float64)
        expected = x.astype(np.float16).astype(np.float64) @ weight.T + bias
        got = load_program(package).predict({"x": x})["y"]
        tolerance = np.spacing(np.abs(expected).astype(np.float16)).astype(np.float64)  # one fp16 step
        assert np.all(np.abs(got - expected) <= tolerance), package.name


# -- the prepared plan ---------------------------------------------------------------------------

@needs_fixtures
def test_prepared_plan_is_bit_identical_and_allocates_nothing_large():
    program = load_program(LOGMEL, precision="fp32")
    audio = {"audio": eight_seconds(CLIPS[0])}
    expected = program.predict(audio)["log_mel"]
    plan = program.prepare()
    np.testing.assert_array_equal(plan.run(audio)["log_mel"], expected)

    def peak(function) -> int:
        tracemalloc.start()
        function()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    unprepared = peak(lambda: program.predict(audio))
    steady = peak(lambda: plan.run(audio))
    assert unprepared > 4 << 20  # each op's output and working arrays, MBs
    assert steady < 64 << 10, steady  # small Python objects only
    np.testing.assert_array_equal(plan.run(audio)["log_mel"], expected)
    report = plan.report()
    assert report["buffers"] < report["values"] and report["buffer_bytes"] < report["value_bytes"]


@needs_fixtures
def test_stream_through_plan_equals_window_by_window_predict():
    program = load_program(SILERO)
    audio = speech_16k(CLIPS[1])[:16000]
    streamed = run_stream(program, "audio_input", audio, hop=512)
    padded = np.concatenate([np.zeros(64, np.float32), audio, np.zeros(-len(audio) % 512, np.float32)])
    h = c = np.zeros((1, 128), np.float32)
    for index in range(streamed.windows):
        window = padded[index * 512:index * 512 + 576][None]
        out = program.predict({"audio_input": window, "hidden_state": h, "cell_state": c})
        h, c = out["new_hidden_state"], out["new_cell_state"]
        np.testing.assert_array_equal(streamed.outputs["vad_output"][index], out["vad_output"])
    np.testing.assert_array_equal(streamed.outputs["new_hidden_state"], h)


# -- the command line ----------------------------------------------------------------------------

@needs_fixtures
def test_mimi_run_writes_what_the_api_computes(tmp_path):
    audio = eight_seconds(CLIPS[0])
    np.save(tmp_path / "audio.npy", audio)
    target = tmp_path / "mel.npz"
    result = run("run", str(LOGMEL), "--precision", "fp32", "-i", f"audio={tmp_path / 'audio.npy'}", "-o", str(target))
    assert result.returncode == 0, result.stderr
    # the command's BLAS threads: every core (this worker computes with one, conftest; OpenBLAS rounds the
    # package's products otherwise on one thread than on two: docs/coreml.md, "Precision")
    with threadpool_limits(usable_cores(), user_api="blas"):
        expected = load_program(LOGMEL, precision="fp32").predict({"audio": audio})["log_mel"]
    np.testing.assert_array_equal(np.load(target)["log_mel"], expected)
    again = run("run", str(LOGMEL), "-i", f"audio={tmp_path / 'audio.npy'}", "-o", str(target))
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    quiet = run("run", str(LOGMEL), "--precision", "fp32", "-i", f"audio={tmp_path / 'audio.npy'}", "-o", str(target),
                "-f", "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""  # -q as in encode and decode
    into = run("run", str(LOGMEL), "-i", f"audio={tmp_path / 'audio.npy'}", "-o", f"{tmp_path / 'out'}/")
    written = tmp_path / "out" / f"{LOGMEL.name.removesuffix('.mlpackage')}.npz"  # a folder receives MODEL.npz
    assert into.returncode == 0 and into.stderr.endswith(f"; wrote log_mel to {written}\n"), into.stderr
    assert np.load(written)["log_mel"].shape == expected.shape


@needs_fixtures
def test_mimi_run_stream_writes_every_window(tmp_path):
    target = tmp_path / "vad.npz"
    result = run("run", str(SILERO), "--stream", f"audio_input={CLIPS[1]}", "--hop", "512", "--sample-rate", "16000",
                 "-o", str(target))
    assert result.returncode == 0, result.stderr
    written = np.load(target)
    expected = silero_probabilities("program", CLIPS[1])
    np.testing.assert_array_equal(written["vad_output"].reshape(-1), expected)
    assert written["new_hidden_state"].shape == (1, 128)
    windows = len(expected)
    assert f"{windows} windows of 576 samples, hop 512 (32.0 ms at 16000 Hz)" in result.stderr
    # without -o, a table of the outputs is the command's output: each name whole, even to a pipe
    shown = run("run", str(SILERO), "--stream", f"audio_input={CLIPS[1]}", "--hop", "512", "--sample-rate", "16000",
                env_extra={"COLUMNS": "80"})  # what rich assumes of a pipe
    rows = {cells[1]: cells[2:-1] for line in shown.stdout.splitlines() if line.startswith("│")
            for cells in [[cell.strip() for cell in line.split("│")]]}
    assert shown.returncode == 0 and set(rows) == {"vad_output", "new_cell_state", "new_hidden_state"}, shown.stdout
    assert rows["vad_output"] == ["float32", f"[{windows}, 1, 1, 1]", *(f"{f(expected):.6g}" for f in (
        np.min, np.mean, np.max))]
    # a clip resampled to 1 Hz is a dozen samples: one window, counted as one
    one = run("run", str(SILERO), "--stream", f"audio_input={CLIPS[1]}", "--sample-rate", "1", "-o", str(target), "-f")
    assert one.returncode == 0 and "1 window of 576 samples" in one.stderr, one.stderr
    assert np.load(target)["vad_output"].shape[0] == 1


@needs_fixtures
@pytest.mark.parametrize("problem, args, message", [
    ("missing input", [], "input audio: fp32 [128000] is missing"),
    ("unknown input", ["-i", "nope={npy}"], "has no input 'nope'"),
    ("wrong shape", ["-i", "audio={small}"], "input audio has shape [5]"),
    ("pickled array", ["-i", "audio={pickled}"], "never unpickled"),
    ("truncated array", ["-i", "audio={cut}"], "cut short"),
    ("not NAME=FILE", ["-i", "audio"], "takes NAME=FILE"),
    ("missing array", ["-i", "audio={gone}"], "gone.npy does not exist"),  # was "cannot read …: No such file …"
    ("hop beyond the window", ["--stream", "audio={wav}", "--hop", "200000"], "--hop must be between 1 and"),
    ("stream into no input", ["--stream", "nope={wav}"], "has no input 'nope'"),
    ("stream given as --input too", ["--stream", "audio={wav}", "-i", "audio={npy}"],  # it replaced every window
     "input audio is the stream, and is given with --input too"),
])
def test_mimi_run_failures_are_one_line(tmp_path, problem, args, message):
    np.save(tmp_path / "npy.npy", np.zeros(128000, np.float32))
    np.save(tmp_path / "small.npy", np.zeros(5, np.float32))
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    data = (tmp_path / "npy.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:len(data) // 2])
    names = {"npy": tmp_path / "npy.npy", "small": tmp_path / "small.npy", "pickled": tmp_path / "pickled.npy",
             "cut": tmp_path / "cut.npy", "wav": CLIPS[0], "gone": tmp_path / "gone.npy"}
    result = run("run", str(LOGMEL), *[a.format(**names) for a in args], "-o", str(tmp_path / "out.npz"))
    assert result.returncode == 1, problem
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out.npz").exists()


def test_mimi_run_on_something_else_is_one_line(tmp_path):
    (tmp_path / "model.mlmodelc").mkdir()
    result = run("run", str(tmp_path / "model.mlmodelc"))
    assert result.returncode == 1 and "is not a Core ML ML Program" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run("run", str(tmp_path / "missing.mlpackage"))  # (it was "is not a Core ML ML Program" too)
    assert result.returncode == 1 and result.stderr == f"error: {tmp_path / 'missing.mlpackage'} does not exist\n"
    # an option's mistake, said as such (exit 2) before the program: it was "precision 'fp8' is not one of ..."
    result = run("run", str(tmp_path / "missing.mlpackage"), "--precision", "fp8")
    assert result.returncode == 2 and result.stderr == "error: --precision takes one of program, fp32, not 'fp8'\n"
    # a rate past what the resampler takes: it was refused after the program and the audio were read (exit 1)
    result = run("run", str(tmp_path / "missing.mlpackage"), "--stream", "audio=a.wav", "--sample-rate", "1000000")
    assert result.returncode == 2 and result.stderr == (
        "error: Invalid value for '--sample-rate': 1,000,000 Hz is above the 768,000 Hz this tool resamples to "
        "(see mimi run -h)\n")


_SCANS = """
import sys
from mimi_cli import cli
sys.addaudithook(lambda event, args: event == "os.scandir" and print("scanned", *args, file=sys.stderr))
sys.argv = ["mimi", *sys.argv[1:]]
cli.main()
"""


def test_mimi_run_reads_no_folder_that_is_not_a_program(tmp_path):
    """With -o, the model's files were listed first (no output may be one of them), walking whatever folder was
    given: `mimi run / -o x.npz` walked the whole file system for 14 s before saying it was no program."""
    tree = tmp_path / "data"
    (tree / "a" / "b").mkdir(parents=True)
    result = subprocess.run([sys.executable, "-c", _SCANS, "run", str(tree), "-o", str(tmp_path / "x.npz")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "is not a Core ML ML Program" in result.stderr
    assert "scanned" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("name, shown", [("out.txt", ".txt"), ("out", "a file without extension")])
def test_mimi_run_writes_its_outputs_under_an_npz_name_only(tmp_path, name, shown):
    (tmp_path / name).write_bytes(b"kept")  # even with -f: an .npz named out.txt would mislead the next tool
    result = run("run", str(tmp_path / "model.mlmodelc"), "-o", str(tmp_path / name), "-f")
    assert result.returncode == 1 and f"cannot write outputs as {shown}; give a .npz name" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert (tmp_path / name).read_bytes() == b"kept"
