"""Shared fixtures: golden cases, models with realistic random weights, a weights file."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pickle
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mimi_cli.core import codebook_distances
from mimi_cli.models.mimi import Mimi, MimiConfig
from mimi_cli.models.mimi.synthetic import random_state

TESTS = Path(__file__).parent
REPO = TESTS.parent
GOLDEN = TESTS / "golden"
SAMPLE_AUDIO = REPO / "sample_audio"
SHARED = REPO.parent / "shared"

# The tests that signal a command expect it started as from a terminal. A suite started in the background (a
# non-interactive shell's `&` ignores SIGINT, nohup SIGHUP) hands the ignoring on to every command it runs,
# which keeps it, as it should (mimi_cli.signals.install): start them with the usual dispositions instead.
for _signum in (signal.SIGINT, getattr(signal, "SIGHUP", None), signal.SIGTERM):
    if _signum is not None and signal.getsignal(_signum) is signal.SIG_IGN:
        signal.signal(_signum, signal.SIG_DFL)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items):
    """Under pytest-xdist (``-n``, set in pyproject.toml), each test file runs in one worker, so that its
    module-scoped fixtures and caches (a golden stream encoded once, a clip's codes) are made once; and every
    test marked ``ray`` runs in one worker, one after another: ``ray stop --force`` would end another worker's
    Ray, and a Ray already running makes the two-node test skip."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group("ray" if item.get_closest_marker("ray") else item.path.name))


def pytest_xdist_node_collection_finished(node, ids) -> None:
    """Stop a run whose groups would be ignored. pytest 9.2 keeps node ids where pytest-xdist 3.8 can no longer
    add the group to them (pytest-xdist issue #1386), so `--dist loadgroup` spread every file's tests over the
    workers, and the Ray tests over both at once, without a word (the dev extra now installs pytest < 9.2)."""
    grouped = any("@" in nodeid.rsplit("]", 1)[-1] for nodeid in ids)  # "path::test[params]@group"
    if node.config.getoption("dist") == "loadgroup" and ids and not grouped:
        pytest.exit(f"pytest-xdist does not group tests by file with pytest {pytest.__version__} (pytest-xdist "
                    "issue #1386): install pytest<9.2, or run with -n 0", returncode=pytest.ExitCode.USAGE_ERROR)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: a worker per usable core, as many as the memory holds (the suite's largest process, run
    alone, peaked at 3.5 GB: GNU time's maximum resident set size)."""
    from mimi_cli.core.threads import usable_cores
    from mimi_cli.errors import usable_memory

    return max(1, min(usable_cores(), int((usable_memory() or 3.5e9) // 3.5e9)))


# Two pytest-xdist workers on two cores: each computes in-process with one BLAS thread, as `--jobs` gives each
# worker one. Two threads each spun beside the other worker (OpenBLAS waits for its threads busily): a
# 16 s stream stepped frame by frame took 45–60 s where it takes 12.5 s alone (bits are the same at any count:
# test_threads). Commands the tests run choose their own threads.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


@pytest.fixture(scope="session", autouse=True)
def _bytecode_kept(tmp_path_factory) -> None:
    """The suite starts hundreds of commands. With PYTHONDONTWRITEBYTECODE set (the development machine's
    environment sets it), each compiled mimi_cli's modules again: 0.23 s of a 1.2 s `mimi encode` of a short
    clip. The commands keep their bytecode in the run's temporary folder instead (shared by the xdist
    workers), never in the source tree that variable keeps clean."""
    if "PYTHONDONTWRITEBYTECODE" in os.environ and "PYTHONPYCACHEPREFIX" not in os.environ:
        base = tmp_path_factory.getbasetemp()
        os.environ["PYTHONPYCACHEPREFIX"] = str((base.parent if "PYTEST_XDIST_WORKER" in os.environ else base)
                                                / "bytecode")
        del os.environ["PYTHONDONTWRITEBYTECODE"]


# A small config with every structural feature of the real one (2 strides, residual
# blocks, attention window, split RVQ), for fast tests of behaviour rather than parity.
SMALL = MimiConfig(
    frame_rate=24000 / 48, dimension=32, n_filters=4, ratios=(4, 3, 2), num_layers=2, num_heads=4,
    dim_feedforward=64, context=6, codebook_size=64, codebook_dim=8, num_codebooks=6,
    default_num_codebooks=4,
)


@pytest.fixture(scope="session")
def full_state() -> dict[str, np.ndarray]:
    return random_state(MimiConfig(), seed=0)


@pytest.fixture(scope="session")
def full_model(full_state) -> Mimi:
    return Mimi.from_state_dict(full_state)


@pytest.fixture(scope="session")
def small_model() -> Mimi:
    return Mimi.from_state_dict(random_state(SMALL, seed=0), SMALL)


@pytest.fixture(scope="session")
def weights_file(full_state, tmp_path_factory) -> Path:
    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("weights") / "mimi.safetensors"
    save_file(full_state, str(path))
    return path


def golden_input(case) -> np.ndarray:
    pcm = case["pcm"]
    return pcm.astype(np.float32) / 32768 if pcm.dtype == np.int16 else pcm


def run(*args, weights: Path | None = None, env_extra: dict | None = None, cwd: Path | None = None):
    env = {k: v for k, v in os.environ.items() if k != "MIMI_WEIGHTS"}
    env.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env_extra or {})})
    if weights is not None:
        env["MIMI_WEIGHTS"] = str(weights)
    return subprocess.run([sys.executable, "-m", "mimi_cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def run_on_an_endless_pipe(*args, weights: Path | None = None, cwd: Path | None = None,
                           fill: bytes = bytes(1 << 16)) -> tuple[int, str, int]:
    """``cat /dev/zero | mimi ARGS`` (``fill`` again and again, up to 64 MiB): the exit code, standard error and
    how many bytes the run took before it ended."""
    env = {k: v for k, v in os.environ.items() if k != "MIMI_WEIGHTS"}
    env.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200", **({"MIMI_WEIGHTS": str(weights)} if weights else {})})
    process = subprocess.Popen([sys.executable, "-m", "mimi_cli", *map(str, args)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
    sent = 0
    with contextlib.suppress(BrokenPipeError):  # the run ended, its end of the pipe with it
        while sent < 64 << 20:  # the bound of a test: a run that reads it all was copying it all
            process.stdin.write(fill)
            sent += len(fill)
    with contextlib.suppress(BrokenPipeError):
        process.stdin.close()
    stderr = process.stderr.read().decode()
    return process.wait(timeout=300), stderr, sent


# A worker that dies on a file (out of memory, or killed): an audit hook, imported by every process that
# PYTHONPATH reaches, ends a worker (a pool process, with a multiprocessing parent, or a Ray worker; never
# the command itself) as it opens a file whose name has "poison" in it.
_POISON_HOOK = """
import os, sys
def _die_on_poison(event, args):
    worker = (getattr(sys.modules.get("multiprocessing.process"), "_parent_process", None) is not None
              or "default_worker" in (sys.argv[0] if sys.argv else ""))
    if event == "open" and worker and "poison" in str(args[0]):
        os._exit(9)
sys.addaudithook(_die_on_poison)
"""


def poison_hook(folder: Path) -> dict[str, str]:
    """The environment of a run whose workers die on "poison" files (see above)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(_POISON_HOOK)
    return {"PYTHONPATH": str(folder)}


@functools.cache
def speech_at(rate: int = 24000) -> np.ndarray:
    """The sample speech (29 s, recorded at 16 kHz) at ``rate``: read-only float32 ``[N]``.

    Most tests give commands audio at the codecs' 24 kHz, which they read without resampling: the
    `import scipy.signal` resampling needs takes 0.6–0.8 s in every process. The tests of resampling
    ask for 16000."""
    from mimi_cli.audio import resample

    pcm, source_rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32")
    pcm = resample(pcm, source_rate, rate)
    pcm.setflags(write=False)
    return pcm


def ffmpeg_file(path: Path, *tracks: np.ndarray, rate: int, codec: str = "aac") -> None:
    """An FFmpeg container (by ``path``'s suffix) of one ``codec`` stream per track."""
    import av

    with av.open(str(path), "w") as container:
        streams = [container.add_stream(codec, rate=rate, layout="mono") for _ in tracks]
        for stream, pcm in zip(streams, tracks, strict=True):
            for first in [*range(0, len(pcm), 1024), None]:  # None: flush the encoder
                frame = None
                if first is not None:
                    block = pcm[None, first:first + 1024]
                    frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono") if codec == "aac" else \
                        av.AudioFrame.from_ndarray((block * 32767).astype(np.int16), format="s16", layout="mono")
                    frame.sample_rate, frame.pts = rate, first
                for packet in stream.encode(frame):
                    container.mux(packet)


def _speech_clip(folder: Path, rate: int) -> Path:
    path = folder / "speech.wav"
    sf.write(path, speech_at(rate)[: int(2.5 * rate)], rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """2.5 s of speech at 24 kHz, as 16-bit WAV."""
    return _speech_clip(tmp_path_factory.mktemp("clip"), 24000)


@pytest.fixture(scope="module")
def clip_16k(tmp_path_factory) -> Path:
    """The same 2.5 s at the sample's own 16 kHz: encoding it resamples."""
    return _speech_clip(tmp_path_factory.mktemp("clip16k"), 16000)


class _RunsACommand:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_checkpoints(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": _RunsACommand(marker)}, protocol=2)
    plain = tmp_path / "encodec_24khz-d7cc33bc.th"  # the original release's name
    plain.write_bytes(payload)
    disguised = tmp_path / "model.safetensors"  # a pickle under a safetensors name
    disguised.write_bytes(payload)
    zipped = tmp_path / "checkpoint.bin"  # torch.save's zip container
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", payload)
    return marker, [plain, disguised, zipped]


NEAR_TIE = 1e-5  # relative gap between the two distances below which either code is right


def assert_codes_match(model, latent: np.ndarray, ours: np.ndarray, reference: np.ndarray) -> int:
    """Codes equal level by level, or a near-tie under teacher forcing. Returns the number of near-ties.

    Teacher forcing: every level's input is built from the *reference* codes of
    the levels before it, so a flip is judged on its own and not on what it
    cascaded into. A frame whose code flipped at level k may differ at every
    later level; every other code must be equal.
    """
    quantizer = model.quantizer
    semantic = quantizer.semantic.project_in(latent)[0]
    residual = quantizer.acoustic.project_in(latent)[0]
    books = [quantizer.semantic.codebooks[0]] + quantizer.acoustic.codebooks
    flipped_at = np.full(reference.shape[1], reference.shape[0])  # first level that flipped, per frame
    for level in range(reference.shape[0]):
        x = semantic if level == 0 else residual
        book = books[level]
        distances = codebook_distances(x, book.embedding, book.sqnorm)
        forced = distances.argmin(axis=1)
        ref = reference[level].astype(np.int64)
        for frame in np.flatnonzero(forced != ref):
            d_ref, d_ours = distances[frame, ref[frame]], distances[frame, forced[frame]]
            gap = (d_ref - d_ours) / d_ref
            assert gap < NEAR_TIE, f"level {level} frame {frame}: code {forced[frame]} vs reference {ref[frame]}, " \
                                   f"relative distance gap {gap:.2e} is not a near-tie"
            flipped_at[frame] = min(flipped_at[frame], level)
        if level > 0:
            residual = residual - book.embedding[ref]
    levels = np.arange(reference.shape[0])[:, None]
    unaffected = levels < flipped_at[None, :]
    np.testing.assert_array_equal(ours[unaffected], reference[unaffected])
    return int(np.sum(flipped_at < reference.shape[0]))


def codes_arrays(frames: int = 5) -> dict[str, np.ndarray]:
    return {"codes": np.arange(8 * frames, dtype=np.uint16).reshape(1, 8, frames) % 2048,
            "format_version": np.array(1), "sample_rate": np.array(24000), "frame_rate": np.array(12.5),
            "codebook_size": np.array(2048), "num_samples": np.array(frames * 1920 - 7),
            "source_sample_rate": np.array(16000), "source_channels": np.array(1),
            "weights_id": np.array("sha256:0123456789abcdef"), "codec": np.array("mimi")}


def npz_with_codes_header(shape: tuple, descr: str, payload: bytes) -> bytes:
    """A codes file whose codes member's .npy header claims ``shape`` over ``payload`` bytes of data."""
    arrays = codes_arrays()
    del arrays["codes"]
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    member = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key, value in arrays.items():
            item = io.BytesIO()
            np.save(item, value)
            archive.writestr(f"{key}.npy", item.getvalue())
        archive.writestr("codes.npy", member)
    return buffer.getvalue()


def lying_flac(folder: Path) -> Path:
    """A one-second FLAC whose STREAMINFO declares 2³⁶ − 1 samples (47,722 min at 24 kHz): ``lying.flac``."""
    sf.write(folder / "one.flac", np.zeros(24000, np.float32), 24000)
    data = bytearray((folder / "one.flac").read_bytes())
    data[21] |= 0x0F  # STREAMINFO's 36-bit total: its top 4 bits, then 4 bytes (byte 8 of the block on)
    data[22:26] = b"\xff\xff\xff\xff"
    (folder / "lying.flac").write_bytes(bytes(data))
    return folder / "lying.flac"


def libsndfile_reads(data: bytes) -> int:
    """The samples libsndfile gives for ``data``, read in blocks to its end in one pass, as a player reads."""
    from mimi_cli.libsndfile import SoundFile

    read = 0
    with SoundFile(io.BytesIO(data)) as f:
        while block := len(f.read(1 << 16)):
            read += block
    return read


def damaged_mp3s() -> tuple[bytes, tuple[bytes, int]]:
    """A 6 s MP3 file with 300 zeroed bytes where mpg123 (in libsndfile) stops decoding, giving less than 70 % of
    it; and one with 300 zeroed bytes that it skips over, with the samples it then gives."""
    data = io.BytesIO()
    sf.write(data, np.random.default_rng(2).uniform(-0.5, 0.5, 144000).astype(np.float32), 24000, format="MP3")
    data = data.getvalue()
    stops, skips = None, None
    for at in range(len(data) // 8, len(data) * 7 // 8, 97):
        damaged = data[:at] + bytes(300) + data[at + 300 :]
        read = libsndfile_reads(damaged)
        if read < 0.7 * 144000:
            stops = stops or damaged
        elif read < 144000:
            skips = skips or (damaged, read)
        if stops and skips:
            return stops, skips
    raise AssertionError("no damage that makes libsndfile stop, or skip, was found")


def sparse_wav(path: Path, channels: int, rate: int, seconds: float) -> Path:
    """A 16-bit WAV declaring ``seconds`` of ``channels`` at ``rate``, of silence, sparse on the disk."""
    size = int(seconds * rate) * channels * 2
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt
                + b"data" + struct.pack("<I", size))
        f.truncate(f.tell() + size)
    return path
