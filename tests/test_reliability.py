"""Nothing clobbered, nothing lost: outputs on real file systems, real signals, real concurrent processes.

Each test here is one thing an adversarial user did to an earlier version (issue
"One safe path from file to file"). File-system tests mount small tmpfs folders
(read-only, or nearly full) and skip, saying why, where the test runs without
the privilege to mount.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SAMPLE_AUDIO, ffmpeg_file, poison_hook, run, sparse_wav, speech_at

from mimi_cli.codes import CodesFile
from mimi_cli.core import threads
from mimi_cli.errors import MimiError, OutputExistsError
from mimi_cli.fileio import atomic_output, cannot_write, check_output, file_ids
from mimi_cli.models.mimi import MimiConfig


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    pcm, rate = speech_at(), 24000
    path = tmp_path_factory.mktemp("clip") / "a.wav"
    sf.write(path, pcm[: 2 * rate], rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def codes(clip, weights_file, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("codes") / "a.npz"
    assert run("encode", clip, "-o", path, weights=weights_file).returncode == 0
    return path


@pytest.fixture(scope="module")
def long_codes(weights_file, tmp_path_factory) -> Path:
    """60 s of codes: long enough that a streaming decode is still writing when a signal arrives."""
    pcm, rate = speech_at(), 24000
    folder = tmp_path_factory.mktemp("long")
    sf.write(folder / "long.wav", np.tile(pcm, 3)[: 60 * rate], rate)
    assert run("encode", folder / "long.wav", "-o", folder / "long.npz", weights=weights_file).returncode == 0
    return folder / "long.npz"


def one_line_error(result, *expected: str, code: int = 1) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".partial" in p.name)


def writing_in(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` holds a file in ``folder`` open: a temporary file it writes, named or not (an
    unnamed one shows as ``folder/#INODE (deleted)``)."""
    links = []
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        with contextlib.suppress(OSError):  # a descriptor closed meanwhile, or the process gone
            links.append(os.readlink(fd))
    return any(link.startswith(f"{folder}/") for link in links)


UNNAMED_FILES = hasattr(os, "O_TMPFILE") and Path("/proc/self/fd").is_dir()


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "1m", read_only: bool = False):
    """A real small file system at ``folder`` (skips without the privilege to mount)."""
    folder.mkdir(exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


# ----------------------------------------------------------------------------- what -o may name


def test_device_fifo_symlink_and_folder_are_never_replaced(clip, weights_file, tmp_path):
    """Refused, each said for what it is; a pipe (a FIFO, or `-o >(program)`) with the way to feed a program."""
    targets = {}
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    targets["a pipe (FIFO)"] = fifo
    link_target = tmp_path / "kept.npz"
    link_target.write_bytes(b"precious")
    (tmp_path / "link.npz").symlink_to(link_target)
    targets["a symbolic link to"] = tmp_path / "link.npz"
    (tmp_path / "folder.npz").mkdir()
    if os.geteuid() == 0:  # a character device that is /dev/null, made here rather than risking the real one
        os.mknod(tmp_path / "null.npz", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets["a device"] = tmp_path / "null.npz"
    for kind, target in targets.items():
        before = os.lstat(target)
        result = run("encode", clip, "-o", target, "-f", weights=weights_file)
        hint = "to feed a program, give - (standard output) and pipe it" if "FIFO" in kind else \
            "to discard the output, give - (standard output) and send it there: -o - > /dev/null" \
            if kind == "a device" else "give a file name"
        one_line_error(result, str(target), kind, "only ever regular files", hint)
        after = os.lstat(target)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino), kind
    assert link_target.read_bytes() == b"precious"
    # a folder as -o is a place to write into, not a thing to replace
    result = run("encode", clip, "-o", tmp_path / "folder.npz", weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "folder.npz" / "a.npz").is_file()
    assert leftovers(tmp_path) == []


def test_an_input_is_never_its_own_output(clip, weights_file, tmp_path):
    source = tmp_path / "a.wav"
    source.write_bytes(clip.read_bytes())
    original = source.read_bytes()
    os.link(source, tmp_path / "hardlink.npz")  # another name for the same file
    cases = [
        ("encode", source, "-o", source, "-f"),
        ("encode", source, "-o", tmp_path / "hardlink.npz", "-f"),
        ("roundtrip", source, "-o", source, "-f"),
        ("roundtrip", source, "--plot", tmp_path / "hardlink.npz", "-f"),
        ("encode", source, "--manifest", source, "-f"),
        ("encode", tmp_path / "in.jsonl", "-o", tmp_path / "out", "--manifest", tmp_path / "in.jsonl", "-f"),
        ("encode", "--inputs-from", tmp_path / "in.jsonl", "-o", tmp_path / "out", "--manifest", tmp_path / "in.jsonl",
         "-f"),
    ]
    listing = json.dumps({"audio_filepath": str(source)}) + "\n"  # the run's manifest over its input manifest
    (tmp_path / "in.jsonl").write_text(listing)
    for args in cases:
        result = run(*args, weights=weights_file)
        assert result.returncode in (1, 2), (args, result.stderr)
        assert "is also an input of this run" in result.stderr or "--plot writes" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert source.read_bytes() == original, args
        assert (tmp_path / "in.jsonl").read_text() == listing, args
    assert leftovers(tmp_path) == []


def test_standard_input_from_a_file_is_never_its_own_output(clip, codes, weights_file, tmp_path):
    """`mimi roundtrip - -o take.wav -f < take.wav` replaced the recording with its round trip, where `mimi
    roundtrip take.wav -o take.wav -f` is refused, and `--inputs-from - --manifest list.jsonl -f < list.jsonl`
    the list with the manifest: the file the shell gives as standard input is an input too."""
    source, listing = tmp_path / "take.wav", tmp_path / "list.jsonl"
    source.write_bytes(clip.read_bytes())
    listing.write_text(json.dumps({"audio_filepath": str(source)}) + "\n")
    shutil.copy(codes, tmp_path / "c.npz")
    os.link(tmp_path / "c.npz", tmp_path / "same.wav")  # another name for the codes file
    cases = [(source, ("roundtrip", "-", "-o", source, "-f")), (source, ("encode", "-", "-o", source, "-f")),
             (tmp_path / "c.npz", ("decode", "-", "-o", tmp_path / "same.wav", "-f")),
             (listing, ("encode", "--inputs-from", "-", "-o", tmp_path / "out", "--manifest", listing, "-f"))]
    for given, args in cases:
        before = given.read_bytes()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MIMI_WEIGHTS": str(weights_file)}
        with open(given, "rb") as stdin:
            result = subprocess.run([sys.executable, "-m", "mimi_cli", *map(str, args)], stdin=stdin,
                                    capture_output=True, text=True, env=env, timeout=300)
        one_line_error(result, "is also an input of this run and would be destroyed")
        assert given.read_bytes() == before, args
    assert leftovers(tmp_path) == []


def test_standard_output_is_never_appended_into_an_input(clip, codes, weights_file, tmp_path):
    """`mimi decode a.npz -o - >> a.npz` appended the audio to the codes it had read (a zip whose directory is
    then not at its end: it no longer opened), `mimi roundtrip take.wav >> take.wav` its report to the audio,
    `mimi inspect-weights w.safetensors >> w.safetensors` a table to the weights, `--manifest -` its lines. Each
    is refused before any work, as `cat a >> a` is."""
    take, weights = tmp_path / "take.wav", tmp_path / "w.safetensors"
    take.write_bytes(clip.read_bytes())
    shutil.copy(codes, tmp_path / "a.npz")
    os.link(weights_file, weights)
    cases = [(tmp_path / "a.npz", ("decode", tmp_path / "a.npz", "-o", "-")), (take, ("encode", take, "-o", "-")),
             (take, ("roundtrip", take)), (take, ("roundtrip", take, "--json")),
             (weights, ("roundtrip", take, "--weights", weights)),
             (tmp_path / "a.npz", ("inspect", tmp_path / "a.npz")), (weights, ("inspect-weights", weights)),
             (take, ("encode", take, "-o", tmp_path / "t.npz", "--manifest", "-"))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MIMI_WEIGHTS": str(weights_file)}
    for target, args in cases:
        before = target.read_bytes()
        with open(target, "ab") as stdout:
            result = subprocess.run([sys.executable, "-m", "mimi_cli", *map(str, args)], stdout=stdout,
                                    stderr=subprocess.PIPE, text=True, env=env, timeout=300)
        result.stdout = ""  # (it went into the file)
        one_line_error(result, "standard output goes into a file that is an input of this run")
        assert target.read_bytes() == before, args
    assert leftovers(tmp_path) == []


def test_the_weights_are_never_an_output(clip, codes, weights_file, tmp_path):
    """A --manifest (any name) given the weights' name, with -f, replaced a 385 MB checkpoint with a line of
    JSON: the weights (--weights, each codec's environment variable, every file of a Core ML folder) are
    inputs of the run too."""
    weights = tmp_path / "w.safetensors"
    os.link(weights_file, weights)  # the fixture's file, under a name a run may (wrongly) replace
    package = tmp_path / "mimi.mlpackage"
    (package / "Data").mkdir(parents=True)
    (package / "Manifest.json").write_text("{}")
    cases = [
        (("encode", clip, "-o", tmp_path / "a.npz", "--weights", weights, "--manifest", weights, "-f"), {}),
        (("decode", codes, "-o", tmp_path / "a.wav", "--manifest", weights, "-f"), {"MIMI_WEIGHTS": str(weights)}),
        (("encode", clip, "-o", tmp_path / "a.npz", "--manifest", weights, "-f"), {"ENCODEC_WEIGHTS": str(weights)}),
        (("roundtrip", clip, "-o", tmp_path / "a.wav", "--weights", tmp_path, "--plot", tmp_path / "w.png", "-f"),
         None),
        (("encode", clip, "-o", tmp_path / "a.npz", "--weights", package, "--manifest", package / "Manifest.json",
          "-f"), {}),
    ]
    (tmp_path / "w.png").write_bytes(b"not a plot: another name for the weights, below")
    for args, env in cases:
        if env is None:  # a folder as --weights: its one .safetensors file, here also named w.png
            (tmp_path / "w.png").unlink()
            os.link(weights_file, tmp_path / "w.png")
        result = run(*args, env_extra=env)
        one_line_error(result, "is also an input of this run")
        assert weights.stat().st_ino == os.stat(weights_file).st_ino, args
        assert (package / "Manifest.json").read_text() == "{}", args
    assert leftovers(tmp_path) == [] and not (tmp_path / "a.npz").exists() and not (tmp_path / "a.wav").exists()


def test_batch_decode_into_the_recordings_folder_warns_before_replacing(clip, codes, weights_file, tmp_path):
    recordings, codes_dir = tmp_path / "recordings", tmp_path / "codes"
    recordings.mkdir()
    codes_dir.mkdir()
    (recordings / "a.wav").write_bytes(clip.read_bytes())
    (codes_dir / "a.npz").write_bytes(codes.read_bytes())
    (codes_dir / "b.npz").write_bytes(codes.read_bytes())
    (recordings / "b.wav").write_bytes(clip.read_bytes())
    result = run("decode", codes_dir, "-o", recordings, weights=weights_file)
    one_line_error(result, "2 output(s) already exist", "not recordings you want to keep")
    assert (recordings / "a.wav").read_bytes() == clip.read_bytes()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux shows the umask in /proc/self/status")
def test_the_umask_is_read_without_being_set(monkeypatch):
    """It was set to 0077 and back to read it: a file another thread of a server made in that instant was
    its owner's alone."""
    from mimi_cli import fileio

    mask = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *_: pytest.fail("the umask was set"))
        assert fileio._umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(mask)


def test_outputs_follow_the_umask(clip, weights_file, tmp_path):
    """As any new file; a umask that takes the owner's write permission (0277: read-only files) too, as `cp`
    makes them: the output was written through a second open of the new file, which that mode refused (for
    anyone but root, who gives up that privilege here to be refused as a user is)."""
    own_rules = [] if os.geteuid() != 0 else ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                                              "--inh-caps=-all"]
    if own_rules and shutil.which("setpriv") is None:
        pytest.skip("root writes files whatever their permissions, and setpriv is not here to drop that")
    for umask, mode in ((0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o277, 0o400)):
        for command in (["encode", str(clip), "-o", str(tmp_path / f"u{umask:o}.npz")],
                        ["decode", str(tmp_path / f"u{umask:o}.npz"), "-o", str(tmp_path / f"u{umask:o}.wav")]):
            env = {k: v for k, v in os.environ.items() if k != "MIMI_WEIGHTS"}
            done = subprocess.run([*own_rules, sys.executable, "-m", "mimi_cli", *command, "--weights",
                                   str(weights_file)], capture_output=True, env=env,
                                  preexec_fn=lambda umask=umask: os.umask(umask))
            assert done.returncode == 0, done.stderr
            assert stat.S_IMODE(Path(command[3]).stat().st_mode) == mode, (oct(umask), command[0])


def test_output_folder_with_trailing_slash_and_stdout(clip, weights_file, tmp_path):
    result = run("encode", clip, "-o", f"{tmp_path / 'new'}/", weights=weights_file)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "new" / "a.npz").is_file() and not (tmp_path / "new").is_file()
    # -o - : the codes file on stdout, byte for byte what -o FILE writes; nothing else there; no file named "-";
    # kept aside until complete under a name of its own (a killed run's leftover there once blocked every -o -)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / ".mimi-stdout.partial").write_bytes(b"a killed run's")
    env = {**{k: v for k, v in os.environ.items() if k != "MIMI_WEIGHTS"}, "TMPDIR": str(tmp_path / "tmp")}
    piped = subprocess.run([sys.executable, "-m", "mimi_cli", "encode", str(clip), "-o", "-", "--weights",
                            str(weights_file)], capture_output=True, env=env, cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == (tmp_path / "new" / "a.npz").read_bytes()
    assert not (tmp_path / "-").exists() and "standard output" in piped.stderr.decode()
    decoded = subprocess.run([sys.executable, "-m", "mimi_cli", "decode", str(tmp_path / "new" / "a.npz"), "-o",
                              "-", "--weights", str(weights_file)], capture_output=True, env=env, cwd=tmp_path)
    assert decoded.returncode == 0, decoded.stderr
    assert decoded.stdout[:4] == b"RIFF" and decoded.stdout[8:12] == b"WAVE"
    assert [p.name for p in (tmp_path / "tmp").iterdir()] == [".mimi-stdout.partial"]
    result = run("encode", clip, clip.with_name("missing.wav"), "-o", "-", weights=weights_file)
    one_line_error(result, "-o - (standard output) takes one input")


@pytest.mark.parametrize("unnamed", [True, False])
def test_a_file_system_that_refuses_modes_still_takes_outputs(tmp_path, monkeypatch, unnamed):
    """FAT, SMB and some FUSE mounts refuse chmod (their modes are the mount's): setting the new file's mode,
    and the output's once complete, must not fail the output."""
    from mimi_cli import fileio

    def refused(*args, **kwargs):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    if not unnamed:
        monkeypatch.setattr(fileio, "_unnamed_file", lambda folder: None)
    monkeypatch.setattr(os, "chmod", refused)
    monkeypatch.setattr(os, "fchmod", refused)
    with atomic_output(tmp_path / "out.npz") as tmp:
        Path(tmp).write_bytes(b"whole")
    assert (tmp_path / "out.npz").read_bytes() == b"whole" and leftovers(tmp_path) == []


def test_an_output_folder_that_became_a_file_is_named(tmp_path):
    """A run's output folder replaced by a file while it ran (`rm -r out; touch out`): each later output failed
    with "cannot write out/a.npz: File exists; choose another output". It names the file in the way now."""
    from mimi_cli.errors import MimiError

    (tmp_path / "out").write_bytes(b"")
    for target in (tmp_path / "out" / "a.npz", tmp_path / "out" / "deeper" / "b.npz"):
        with pytest.raises(MimiError, match=f"cannot write {target}: {tmp_path / 'out'} is a file, not a folder; "
                                            "choose another output"):
            with atomic_output(target) as tmp:
                Path(tmp).write_bytes(b"never")
    assert leftovers(tmp_path) == [] and (tmp_path / "out").read_bytes() == b""
    for create_parents in (False, True):  # found while planning, it is said the same way
        with pytest.raises(MimiError, match=f"{tmp_path / 'out'} is a file, not a folder; choose another output"):
            check_output(tmp_path / "out" / "deeper" / "c.npz", False, create_parents=create_parents)


def test_a_pipe_is_refused_as_a_pipe_whatever_its_name(clip, weights_file, tmp_path):
    """`mimi convert w.safetensors /dev/null` and `mimi run … -o /dev/stdout` said "cannot write weights as a file
    without extension": the suffix was checked before what the name is. Every command says what it is."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    for args in (("encode", clip, "-o", fifo, "-f"), ("decode", clip, "-o", fifo),
                 ("run", tmp_path / "none.mlmodelc", "-o", fifo)):
        one_line_error(run(*args, weights=weights_file), f"{fifo} is a pipe (FIFO); outputs are only ever regular "
                                                         "files: to feed a program, give -", code=1)
    one_line_error(run("convert", weights_file, fifo, "-f"), f"{fifo} is a pipe (FIFO); outputs are only ever "
                   "regular files: give a file name that does not exist", code=1)  # convert writes no '-
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo"]


def test_workers_where_processes_cannot_have_locks_become_this_process(clip, weights_file, tmp_path):
    """A container with a read-only /dev/shm (or a sandbox without POSIX semaphores, as AWS Lambda): `--jobs 2`
    said "error: Read-only file system" and did nothing. The run says why and works in this process."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o ro tmpfs /dev/shm"], capture_output=True,
                           text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot give the run a read-only /dev/shm of its own here (unshare -m and mount need root)")
    (tmp_path / "in").mkdir()
    for name in ("a.wav", "b.wav"):
        (tmp_path / "in" / name).write_bytes(clip.read_bytes())
    command = f"mount -t tmpfs -o ro tmpfs /dev/shm && exec {sys.executable} -m mimi_cli encode in -o out/ --jobs 2"
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == ("note: worker processes cannot run here (multiprocessing's locks: Read-only "
                                           "file system; they need a writable /dev/shm); working in this process "
                                           "instead")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.npz", "b.npz"]


def test_closed_standard_streams_are_named(clip, weights_file, tmp_path):
    """`<&-` and `>&-` leave Python's sys.stdin / sys.stdout None: said as closed (it was a traceback for
    stdout, and "a terminal" for stdin), nothing written. A report or help printed to a closed stdout fails as
    `ls >&-` does (Python's print wrote nothing there, and the command exited 0)."""
    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}
    for fd, args, expected in ((0, ("encode", "-", "-o", "x.npz"), "standard input, which is closed"),
                               (1, ("encode", str(clip), "-o", "-"), "standard output is closed"),
                               (1, ("inspect", str(weights_file)), "standard output is closed; redirect it"),
                               (1, ("inspect", "--json", str(weights_file)), "standard output is closed"),
                               (1, ("--version",), "standard output is closed"),
                               (1, ("decode", "-h"), "standard output is closed")):
        done = subprocess.run([sys.executable, "-m", "mimi_cli", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300, preexec_fn=lambda fd=fd: os.close(fd))
        one_line_error(done, expected)
        assert list(tmp_path.iterdir()) == []
    quiet = subprocess.run([sys.executable, "-m", "mimi_cli", "encode", str(clip), "-o", "x.npz"], env=env,
                           capture_output=True, text=True, cwd=tmp_path, timeout=300, preexec_fn=lambda: os.close(1))
    assert quiet.returncode == 0 and (tmp_path / "x.npz").is_file(), quiet.stderr  # printing nothing there, it runs
    (tmp_path / "x.npz").unlink()
    listed = subprocess.run([sys.executable, "-m", "mimi_cli", "encode", "--inputs-from", "-", "-o", "out/"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                            preexec_fn=lambda: os.close(0))
    assert listed.returncode == 1 and "Traceback" not in listed.stderr
    assert "failed: --inputs-from - reads standard input, which is closed here; pipe the list in" in listed.stderr


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to see what the descriptors hold")
@pytest.mark.parametrize("listed", [False, True])
def test_a_non_blocking_standard_input_is_waited_on(listed, clip, weights_file, tmp_path):
    """Standard input left non-blocking by another program (O_NONBLOCK belongs to the pipe, shared): a read
    that finds nothing yet returns no bytes, and the run took what had come for all of it: the audio cut short,
    "standard input is empty (0 bytes)", or a list that "holds nothing". Now it waits, as a blocking read does.
    The input comes in two parts, the second once the run has read the first (the pipe is empty again)."""
    import fcntl
    import termios

    read, write = os.pipe()
    fcntl.fcntl(read, fcntl.F_SETFL, fcntl.fcntl(read, fcntl.F_GETFL) | os.O_NONBLOCK)
    args = ["--inputs-from", "-", "-o", f"{tmp_path / 'out'}/"] if listed else ["-", "-o", tmp_path / "a.npz"]
    data = f"# the clips\n{clip}\n".encode() if listed else clip.read_bytes()
    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mimi_cli", "encode", *map(str, args)], stdin=read,
                               stderr=subprocess.PIPE, text=True, env=env)
    os.write(write, data[:12])
    unread = bytearray(4)
    while fcntl.ioctl(read, termios.FIONREAD, unread) == 0 and int.from_bytes(unread, sys.byteorder) and \
            process.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)  # its next read found nothing
    os.close(read)
    with contextlib.suppress(BrokenPipeError), open(write, "wb") as pipe:  # (a run that took it for the end)
        pipe.write(data[12:])
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    codes = np.load(tmp_path / "out" / "a.npz" if listed else tmp_path / "a.npz")["codes"]
    assert codes.shape[-1] == 25  # 2 s: all of it


def _wait_until_full(read: int, process: subprocess.Popen) -> None:
    """Until the pipe whose reading end is ``read`` holds half of its 64 KiB (a write takes whole pages, so
    short lines fill it before it holds 64 KiB), or ``process`` ended; then a moment more, in which a writer
    fills it, and one that does not wait loses what it writes."""
    import fcntl
    import termios

    unread, deadline = bytearray(4), time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        fcntl.ioctl(read, termios.FIONREAD, unread)
        if int.from_bytes(unread, sys.byteorder) >= 1 << 15:
            break
        time.sleep(0.01)
    time.sleep(0.3)


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_non_blocking_standard_output_is_waited_on(unbuffered, weights_file):
    """Standard output left non-blocking by another program, read slowly: a report longer than the pipe holds
    (64 KiB) was cut there, and the run ended with exit 0 (what Python's buffered stream held when the pipe was
    full was dropped as it closed). Now every byte is written, as to a blocking pipe."""
    import fcntl

    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETFL, fcntl.fcntl(write, fcntl.F_GETFL) | os.O_NONBLOCK)
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mimi_cli", "inspect", str(weights_file), "--json"],
                               stdout=write, stderr=subprocess.PIPE, text=True, env=env)
    os.close(write)
    _wait_until_full(read, process)  # a slow reader
    with open(read, "rb") as pipe:
        report = json.loads(pipe.read())
    assert process.wait(timeout=300) == 0, process.stderr.read()
    assert len(json.dumps(report)) > 1 << 16 and report["tensors"]


def test_a_non_blocking_standard_error_is_waited_on(tmp_path):
    """Standard error the same way: a run's summary of 400 failed files (130 KB) reached a slow reader cut at
    64 KiB, the rest lost."""
    import fcntl

    for i in range(400):
        (tmp_path / f"{'not-audio-' * 12}{i}.wav").write_text("not audio")
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETFL, fcntl.fcntl(write, fcntl.F_GETFL) | os.O_NONBLOCK)
    process = subprocess.Popen([sys.executable, "-m", "mimi_cli", "encode", str(tmp_path), "-o", f"{tmp_path}/out/"],
                               stderr=write, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    os.close(write)
    _wait_until_full(read, process)  # a slow reader
    with open(read, "rb") as pipe:
        said = pipe.read().decode()
    assert process.wait(timeout=300) == 1
    assert len(said) > 1 << 16 and said.count("  failed: ") == 400, said[-300:]


def test_closed_standard_descriptors_are_held_with_dev_null(tmp_path):
    """`<&- >&- 2>&-`: the descriptors are given /dev/null, as GNU tools do. Left closed, the next file opened
    took number 2 (an input, an output being written) and what C code or a worker process wrote to "standard
    error" went into it; and with Python's ``sys.stderr`` None, Ray's driver refused to start (see
    test_batch.py). Standard input and output still count as closed (test above)."""
    report = tmp_path / "report.json"
    script = f"""
import faulthandler, json, os, sys
from mimi_cli import cli
sys.argv = ["mimi", "--version"]
try:
    cli.main()
except SystemExit as exc:
    code = exc.code
fd = os.open(os.devnull, os.O_RDONLY)
faulthandler.enable()  # what Ray's driver does: it needs a standard error
held = [os.readlink(f"/proc/self/fd/{{n}}") for n in range(3)]
with open({str(report)!r}, "w") as f:
    json.dump({{"code": code, "next": fd, "held": held, "inherited": [os.get_inheritable(n) for n in range(3)],
               "stdin": sys.stdin is None}}, f)
"""
    def close_all():
        for fd in range(3):
            os.close(fd)

    done = subprocess.run([sys.executable, "-c", script], timeout=120, preexec_fn=close_all)
    assert done.returncode == 0
    facts = json.loads(report.read_text())
    assert facts["code"] == 1  # --version to a closed standard output fails, as before
    assert facts["next"] > 2 and facts["held"] == [os.devnull] * 3 and facts["inherited"] == [True] * 3
    assert facts["stdin"]  # still closed for '-'


def test_a_standard_error_that_cannot_take_messages_loses_them_not_the_work(clip, weights_file, tmp_path):
    """`2>/dev/full`, or a log on a disk that filled up: the messages are lost, the work is done, and the exit
    code says something was lost (1), as a GNU tool's does; a run with nothing to say exits 0. A batch
    stopped before its first file (its "2 files" line failed), and a single file wrote its output but
    ended in what was left of a traceback."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    (tmp_path / "in").mkdir()
    pcm, rate = sf.read(clip, dtype="float32")
    sf.write(tmp_path / "in" / "a.wav", pcm, rate)
    sf.write(tmp_path / "in" / "b.wav", np.stack([pcm, pcm[::-1]], axis=1), rate)  # a note: downmixed
    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}
    assert run("encode", tmp_path / "in", "-o", tmp_path / "told", weights=weights_file).returncode == 0
    (tmp_path / "single").mkdir(), (tmp_path / "quiet").mkdir()
    with open("/dev/full", "w") as full:
        for args, code in (([tmp_path / "in", "-o", tmp_path / "batch"], 1),
                           ([tmp_path / "in" / "b.wav", "-o", tmp_path / "single" / "b.npz"], 1),
                           ([tmp_path / "in" / "a.wav", "-o", tmp_path / "quiet" / "a.npz", "-q"], 0)):
            done = subprocess.run([sys.executable, "-m", "mimi_cli", "encode", *map(str, args)], stderr=full,
                                  stdout=subprocess.PIPE, env=env, cwd=tmp_path, timeout=300)
            assert done.returncode == code and done.stdout == b"", args
    for name in ("batch/a.npz", "batch/b.npz", "single/b.npz", "quiet/a.npz"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "told" / Path(name).name).read_bytes(), name
    assert leftovers(tmp_path) == []


def test_a_deleted_current_folder_is_said_once(clip, weights_file, tmp_path, monkeypatch):
    """The shell's folder removed under it: each step failed its own way ("No such file or directory" with no
    name for a relative input or for --jobs' workers, "Operation not permitted" for an output, "create the
    folder first" for -o DIR/). Now one line before any work; and the library's reason for the same error."""
    gone = tmp_path / "gone"
    gone.mkdir()
    for args in (("encode", "a.wav"), ("encode", str(clip), "-o", str(tmp_path / "out") + "/", "--jobs", "2"),
                 ("encode", str(clip), "-o", "x.npz")):
        done = subprocess.run(["sh", "-c", 'cd "$1" && rmdir "$1" && shift && exec "$@"', "sh", str(gone),
                               sys.executable, "-m", "mimi_cli", *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"})
        assert one_line_error(done) == "error: the current folder was deleted; cd to a folder that exists", args
        gone.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone"]
    from mimi_cli.errors import os_reason

    monkeypatch.chdir(gone)
    gone.rmdir()
    assert os_reason(FileNotFoundError(errno.ENOENT, "No such file or directory")) == \
        "the current folder was deleted; cd to a folder that exists"
    assert os_reason(FileNotFoundError(errno.ENOENT, "No such file or directory", "/abs")) == \
        "No such file or directory"


def test_a_missing_input_is_said_before_its_outputs_problems(weights_file, tmp_path):
    """`mimi encode nope.wav -o /proc/x.npz` said "cannot write /proc/x.npz": of two mistakes the output's was
    named, and the user fixed it only to meet the other. The input comes first, as `cp` says it."""
    for command, name, output in (("encode", "nope.wav", "out.npz"), ("decode", "nope.npz", "out.wav")):
        result = run(command, tmp_path / name, "-o", f"/proc/mimi-test/{output}", weights=weights_file)
        assert one_line_error(result) == f"error: {tmp_path / name} does not exist"
    # convert said the pipe first; a Hub repo, not downloaded before the output is checked, still comes after it
    os.mkfifo(tmp_path / "fifo.safetensors")
    result = run("convert", tmp_path / "nope.safetensors", tmp_path / "fifo.safetensors")
    assert one_line_error(result) == f"error: weights file {tmp_path / 'nope.safetensors'} does not exist"
    result = run("convert", "someone/mimi", tmp_path / "fifo.safetensors")  # (offline: run sets HF_HUB_OFFLINE)
    assert "fifo.safetensors is a pipe (FIFO)" in one_line_error(result)


def test_long_names_fit_and_too_long_names_fail_first(clip, weights_file, tmp_path):
    fits = tmp_path / ("n" * 250 + ".npz")  # 254 bytes: the temporary name must be shortened to fit beside it
    result = run("encode", clip, "-o", fits, weights=weights_file)
    assert result.returncode == 0 and fits.is_file(), result.stderr
    too_long = tmp_path / ("n" * 300 + ".npz")
    result = run("encode", clip, "-o", too_long, weights=weights_file)
    one_line_error(result, "cannot write", "choose a shorter name")
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == [fits.name]


# ----------------------------------------------------------------------------- two runs, one output


def test_another_users_file_in_a_sticky_folder_is_refused_before_the_work(tmp_path, monkeypatch):
    """`-f` over another user's file in a folder like /tmp (sticky: only a file's owner may replace it) did all
    the work, then failed at the rename with "Operation not permitted; check the folder's permissions" (a
    --manifest there: after every file was done). Refused first, saying why. (The kernel's rule is the premise;
    here this process is made to look like another user, the files' owner being this one.)"""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    theirs = shared / "x.npz"
    theirs.write_bytes(b"theirs")
    check_output(theirs, replace=True)  # its owner may
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(theirs).st_uid + 1)
    with pytest.raises(MimiError, match=re.escape(f"cannot write {theirs}: it is another user's file in a folder "
                                                  "where only a file's owner may replace it (sticky, as /tmp is)")):
        check_output(theirs, replace=True)
    shared.chmod(0o777)  # without the sticky bit, anyone who may write in the folder may replace it
    check_output(theirs, replace=True)


def test_exclusive_create_second_writer_fails_and_first_is_kept(tmp_path):
    """Two writers of one output without -f: the one that finishes second fails and the first file stays."""
    target = tmp_path / "out.npz"
    second = atomic_output(target)
    second_tmp = second.__enter__()  # the second run starts...
    with atomic_output(target) as first_tmp:  # ...and the first one finishes meanwhile
        first_tmp.write_bytes(b"first")
    second_tmp.write_bytes(b"second")
    with pytest.raises(OutputExistsError, match="appeared while this run was working"):
        second.__exit__(None, None, None)
    assert target.read_bytes() == b"first" and leftovers(tmp_path) == []
    with atomic_output(target, replace=True) as tmp:  # -f replaces a regular file
        tmp.write_bytes(b"forced")
    assert target.read_bytes() == b"forced" and stat.S_IMODE(target.stat().st_mode) & 0o600 == 0o600


def test_two_concurrent_runs_one_wins_the_other_says_exists(clip, weights_file, tmp_path):
    """Two runs write one output at once: with other codes (-n 4 and -n 8), one wins and the other says the file
    exists, never replacing it; with the same codes, both are done (the file holds what each would write)."""
    env = {k: v for k, v in os.environ.items() if k != "MIMI_WEIGHTS"}
    out = tmp_path / "same.npz"
    command = [sys.executable, "-m", "mimi_cli", "encode", str(clip), "-o", str(out), "--weights", str(weights_file)]
    processes = [subprocess.Popen([*command, "-n", str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for n in (4, 8)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in results) == [0, 1], results
    loser = next(text for code, text in results if code == 1)
    assert "already exists" in loser or "appeared while this run was working" in loser
    winner = (4, 8)[[code for code, _ in results].index(0)]
    with np.load(out, allow_pickle=False) as npz:  # the winner's file, whole
        assert npz["codes"].shape[:2] == (1, winner)
    assert leftovers(tmp_path) == []
    out.unlink()
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert all(code == 0 for code, _ in results) or any("already exists" in text for _, text in results), results
    with np.load(out, allow_pickle=False) as npz:
        assert npz["codes"].shape[:2] == (1, 8)
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- signals


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_write_leaves_no_partial_file(long_codes, weights_file, tmp_path, signum):
    out = tmp_path / "out.wav"
    command = [sys.executable, "-m", "mimi_cli", "decode", str(long_codes), "--stream", "-o", str(out), "--weights",
               str(weights_file), "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until_writing(process, tmp_path)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, no temporary file


def _wait_until_writing(process: subprocess.Popen, folder: Path) -> None:
    deadline = time.monotonic() + 120
    while not (leftovers(folder) or writing_in(process.pid, folder)) and time.monotonic() < deadline \
            and process.poll() is None:
        time.sleep(0.02)
    assert leftovers(folder) or writing_in(process.pid, folder), "the process never started writing"
    time.sleep(0.3)  # well inside the write


@pytest.mark.skipif(not UNNAMED_FILES, reason="needs Linux's unnamed files (O_TMPFILE) and /proc")
@pytest.mark.parametrize("kind", ["output", "standard input"])
def test_a_process_killed_outright_leaves_nothing_behind(long_codes, weights_file, tmp_path, kind):
    """SIGKILL (the out-of-memory killer, a job scheduler's last word) runs no handler: a temporary file with a
    name stays where it is. The output, and the copy of standard input, are written as unnamed files instead,
    named only once complete."""
    out, spool = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    spool.mkdir()
    arguments = ["decode", str(long_codes), "--stream", "-o", str(out / "out.wav")] if kind == "output" else \
        ["encode", "-", "-o", str(out / "out.npz")]
    process = subprocess.Popen([sys.executable, "-m", "mimi_cli", *arguments, "--weights", str(weights_file)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "TMPDIR": str(spool)})
    if kind == "standard input":
        process.stdin.write(SAMPLE_AUDIO.joinpath("speech_16k_mono.wav").read_bytes()[:500_000])  # and no more yet
        process.stdin.flush()
    _wait_until_writing(process, out if kind == "output" else spool)
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert list(out.iterdir()) == [] and list(spool.iterdir()) == []


_SIGNAL_IN_A_FINALIZER = """
import os, signal, sys, time
from mimi_cli import signals
signals.install(worker={worker})
class Closing:
    def __del__(self):  # as SoundFile's does; Python cannot raise out of a finalizer, it prints and goes on
        os.kill(os.getpid(), {signum})
        time.sleep(0.2)
        print("finalizer done", flush=True)
item = Closing()
del item
try:
    time.sleep(10)
    print("never interrupted")
except KeyboardInterrupt as exc:
    print("interrupted", signals.exit_code(exc))
"""


_SIGNAL_IN_AN_IMPORT = """
import os, signal, sys, time
from mimi_cli import signals
signals.install(worker={worker})
sys.path.insert(0, {folder!r})
try:
    import slow_module
    time.sleep(10)
    print("never interrupted")
except KeyboardInterrupt as exc:
    print("interrupted", signals.exit_code(exc))
"""


@pytest.mark.parametrize("worker", [False, True])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_an_import_is_taken_once_it_is_done(tmp_path, signum, worker):
    """A worker stopped while it imports: the exception, raised in importlib's module-lock callback (a weakref's),
    was printed as "Exception ignored in: <function _get_module_lock.<locals>.cb>" with a traceback under the
    run's one line (one CI run). A signal that lands in an import is taken once the import is done."""
    (tmp_path / "slow_module.py").write_text(f"import os, time\nos.kill(os.getpid(), {int(signum)})\n"
                                             "time.sleep(0.2)\nprint('import done', flush=True)\n")
    code = _SIGNAL_IN_AN_IMPORT.format(worker=worker, folder=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.stdout.startswith("import done\n") and "never interrupted" not in result.stdout, result.stdout
    if worker:
        assert result.returncode == 128 + signum and result.stdout == "import done\n"
    else:
        assert result.stdout.endswith(f"interrupted {128 + signum}\n")


@pytest.mark.parametrize("worker", [False, True])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_finalizer_still_stops_the_process(signum, worker):
    """A signal that lands in a ``__del__`` (a worker's audio file closing as the pool stops it) is taken
    once the finalizer returns: no "Exception ignored" traceback, and the process still stops."""
    code = _SIGNAL_IN_A_FINALIZER.format(worker=worker, signum=int(signum))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.stdout.startswith("finalizer done\n") and "never interrupted" not in result.stdout
    if worker:
        assert result.returncode == 128 + signum and result.stdout == "finalizer done\n"
    else:
        assert result.stdout.endswith(f"interrupted {128 + signum}\n")


_INTERRUPTED_OUTSIDE_A_COMMAND = """
import sys
from mimi_cli import cli, signals
def app(**options):  # as if a signal came while typer set a command up, or unwound after it ended
    raise {exception}
cli.app = app
cli.main()
"""


@pytest.mark.parametrize("exception, code", [("KeyboardInterrupt()", 130),
                                             ("signals.Interrupted(signal.SIGTERM)", 143)])
def test_a_signal_outside_a_commands_own_handling_is_one_line(exception, code):
    """Ctrl-C as a run that had already failed was exiting (freeing a plan of 300,000 items) printed a
    KeyboardInterrupt traceback from typer's frames; now one line and 128 + the signal's number."""
    program = "import signal\n" + _INTERRUPTED_OUTSIDE_A_COMMAND.format(exception=exception)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == code and result.stderr == "error: interrupted\n", result.stderr


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _two_workers_encoding(weights_file: Path, tmp_path: Path, clips: int, ignoring: tuple = ()) -> subprocess.Popen:
    """``mimi encode --jobs 2`` over ``clips`` clips of 8 s, in a process group of its own, started with the
    signals ``ignoring`` ignored (as ``nohup`` starts it)."""
    folder, out = tmp_path / "many", tmp_path / "out"
    folder.mkdir()
    speech, rate = speech_at(), 24000
    for i in range(clips):
        sf.write(folder / f"clip{i}.wav", speech[i * rate : (i + 8) * rate], rate)
    command = [sys.executable, "-m", "mimi_cli", "encode", str(folder), "-o", str(out), "--jobs", "2", "--weights",
               str(weights_file)]
    def ignore() -> None:
        for signum in ignoring:
            signal.signal(signum, signal.SIG_IGN)

    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=ignore)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find worker processes")
@pytest.mark.parametrize("signum, ignoring", [(signal.SIGKILL, ()), (signal.SIGTERM, ()),
                                              (signal.SIGKILL, (signal.SIGTERM, signal.SIGHUP, signal.SIGINT))])
def test_workers_die_with_their_parent(weights_file, tmp_path, signum, ignoring):
    """Even when the run was started ignoring signals (`trap '' TERM`): a worker always takes SIGTERM, which its
    parent and its own watch of the parent stop it with (it outlived a SIGKILLed parent, encoding on)."""
    process = _two_workers_encoding(weights_file, tmp_path, 16, ignoring)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = [pid for pid in _children(process.pid)
                   if "mimi" in (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="ignore")
                   or "multiprocessing" in (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="ignore")]
        time.sleep(0.05)
    assert len(workers) >= 2, "the workers never started"
    time.sleep(2.0)  # they are loading weights or encoding
    assert process.poll() is None, "the run ended before the signal"
    process.send_signal(signum)
    process.communicate(timeout=60)
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "a worker outlived its parent"
    if signum == signal.SIGTERM:
        assert process.returncode == 128 + signum
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see the workers start")
@pytest.mark.parametrize("signum", [getattr(signal, "SIGHUP", signal.SIGINT), signal.SIGINT])
def test_a_signal_to_the_whole_group_ends_the_run_in_one_line(weights_file, tmp_path, signum):
    """A closed terminal (SIGHUP) or Ctrl-C (SIGINT) reaches every process of the group at once: the
    parent, its workers and multiprocessing's resource tracker. The run still ends with its one line."""
    process = _two_workers_encoding(weights_file, tmp_path, 16)
    deadline = time.monotonic() + 120
    while len(_children(process.pid)) < 3 and time.monotonic() < deadline:  # the tracker and two workers
        time.sleep(0.05)
    time.sleep(1.0)  # they are loading weights or encoding
    os.killpg(process.pid, signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, stderr
    assert stderr.splitlines()[1:] == ["error: interrupted; finished outputs are kept, none is half-written: "
                                       "rerun with --skip-existing to resume"], stderr
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not hasattr(signal, "SIGXCPU"), reason="no CPU-time limit signal on this system")
def test_a_soft_cpu_time_limit_is_said_so(weights_file, tmp_path):
    """A soft CPU-time limit (`ulimit -S -t`, a batch system's budget) sends SIGXCPU, which ended the run on the
    spot: no word, as if it had crashed. It now ends as Ctrl-C does, saying which limit it reached; a worker
    reaching its own (each process has one) fails its file saying so, and the run goes on to say what is done."""
    import resource

    speech, rate = speech_at(), 24000
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):  # 60 s each: more CPU time than the limit, with 1 thread or 2
        sf.write(tmp_path / "in" / f"{name}.wav", np.tile(speech, 5)[: 60 * rate], rate)

    def limited(*args):
        return subprocess.run([sys.executable, "-m", "mimi_cli", "encode", *map(str, args)], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "MIMI_WEIGHTS": str(weights_file),
                                                           "HF_HUB_OFFLINE": "1"},
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CPU, (3, resource.RLIM_INFINITY)))

    alone = limited(tmp_path / "in" / "a.wav", "-o", tmp_path / "a.npz")
    one_line_error(alone, "the CPU time limit (ulimit -t) was reached; no output was written",
                   code=128 + signal.SIGXCPU)
    workers = limited(tmp_path / "in", "-o", tmp_path / "out/", "--jobs", "2")
    assert workers.returncode == 1 and "Traceback" not in workers.stderr, workers.stderr
    assert workers.stderr.count("the CPU time limit (ulimit -t) was reached in its worker process") == 2, \
        workers.stderr
    assert sorted(p.name for p in tmp_path.rglob("*") if p.suffix != ".wav") == ["in"]  # nothing written, nothing left


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see the workers start")
def test_a_signal_ignored_at_start_stays_ignored(weights_file, tmp_path):
    """`nohup mimi encode corpus/ … &` ignores SIGHUP so that the run outlives its terminal, and a script's `&`
    ignores SIGINT: the handlers that clean up after a signal replaced that, and the closed terminal ended
    the run (exit 129, nothing kept of the file in hand). Now the run, workers included, carries on."""
    process = _two_workers_encoding(weights_file, tmp_path, 8, ignoring=(signal.SIGHUP, signal.SIGINT))
    deadline = time.monotonic() + 120
    while len(_children(process.pid)) < 3 and time.monotonic() < deadline:  # the tracker and two workers
        time.sleep(0.05)
    time.sleep(1.0)  # they are loading weights or encoding
    assert process.poll() is None, "the run ended before the signals"
    os.killpg(process.pid, signal.SIGHUP)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"clip{i}.npz" for i in range(8))


@pytest.mark.parametrize("names, jobs", [(["a", "b", "c", "poison", "x", "y", "z"], 2),  # (run in name order)
                                         (["poison", "x", "y", "z"], 2), (["a", "poison", "z"], 3),
                                         (["a", "b", "poison"], 2)])
def test_a_file_that_kills_its_worker_fails_alone(weights_file, tmp_path, names, jobs):
    """Its pool goes down with it, and the other files in flight: those run again, and the rest go on."""
    folder, out = tmp_path / "clips", tmp_path / "out"
    folder.mkdir()
    speech, rate = speech_at(), 24000
    for i, name in enumerate(names):
        sf.write(folder / f"{name}.wav", speech[i * rate // 2 : (i + 2) * rate // 2], rate)
    result = run("encode", folder, "-o", f"{out}/", "-j", jobs, "--manifest", tmp_path / "m.jsonl", "--weights",
                 weights_file, env_extra=poison_hook(tmp_path / "hooks"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    rows = {Path(r["input"]).stem: r for r in map(json.loads, (tmp_path / "m.jsonl").read_text().splitlines())}
    assert rows.pop("poison")["error"] == "its worker process died (killed, or out of memory)"
    assert {name: row["status"] for name, row in rows.items()} == {n: "done" for n in names if n != "poison"}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.npz" for n in names if n != "poison")
    assert f"{len(names) - 1} encoded" in result.stderr and "1 failed" in result.stderr
    assert leftovers(tmp_path) == []


_DIES_AFTER_WRITING = """
import os, sys
def _die_once_after_writing(event, args):
    worker = (getattr(sys.modules.get("multiprocessing.process"), "_parent_process", None) is not None
              or "default_worker" in (sys.argv[0] if sys.argv else ""))
    marker = os.path.join(os.path.dirname(__file__), "died")
    if worker and event == "os.link" and str(args[1]).endswith("written.npz") and not os.path.exists(marker):
        open(marker, "w").close()
        source, target, source_folder, target_folder = args  # -1: no folder's descriptor
        os.link(source, target, src_dir_fd=None if source_folder == -1 else source_folder,
                dst_dir_fd=None if target_folder == -1 else target_folder)  # the output is in place...
        os._exit(9)  # ...and its worker dead before reporting it
sys.addaudithook(_die_once_after_writing)
"""


@pytest.mark.ray
@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_worker_that_dies_after_writing_its_output(weights_file, tmp_path, engine):
    """A worker died between writing a file's output and reporting it (its pool broken by another file, as
    CI once saw; out of memory; an actor Ray then retries): the file's next try failed with "appeared while
    this run was working", on the output the first try had written. An output that is this very result,
    byte for byte, now means the file is done; the first try's temporary name is removed."""
    if engine == "ray":
        pytest.importorskip("ray.data")
    folder, out, hooks = tmp_path / "clips", tmp_path / "out", tmp_path / "hooks"
    folder.mkdir()
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_DIES_AFTER_WRITING)
    speech, rate = speech_at(), 24000
    for i, name in enumerate(("a", "written", "z")):
        sf.write(folder / f"{name}.wav", speech[i * rate // 2 : (i + 2) * rate // 2], rate)
    result = run("encode", folder, "-o", f"{out}/", "-j", 2, "--engine", engine, "--manifest", tmp_path / "m.jsonl",
                 weights=weights_file, env_extra={"PYTHONPATH": str(hooks), "RAY_ADDRESS": ""})
    assert (hooks / "died").exists()  # the worker did die, after writing
    assert result.returncode == 0 and "3 encoded" in result.stderr, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done"] * 3
    alone = run("encode", folder / "written.wav", "-o", tmp_path / "alone.npz", weights=weights_file)
    assert alone.returncode == 0
    assert (out / "written.npz").read_bytes() == (tmp_path / "alone.npz").read_bytes()
    assert leftovers(tmp_path) == []


def test_an_output_that_appeared_with_other_bytes_is_left_alone(weights_file, clip, tmp_path):
    """The other side of the rule above: another run's output, which is not this result, is never replaced."""
    from mimi_cli import fileio

    target = tmp_path / "x.npz"
    with pytest.raises(MimiError, match="appeared while this run was working"):
        with fileio.atomic_output(target) as tmp:
            tmp.write_bytes(b"this run's result")
            target.write_bytes(b"another run's result")
    assert target.read_bytes() == b"another run's result" and leftovers(tmp_path) == []
    with fileio.atomic_output(target) as tmp:  # the same bytes: this result, done
        tmp.write_bytes(b"another run's result")
    assert target.read_bytes() == b"another run's result" and leftovers(tmp_path) == []


def test_an_output_compared_again_is_compared_anew(tmp_path):
    """filecmp caches its answers by names and stat signatures, and an unnamed temporary file's name
    (/proc/self/fd/N) comes back for the next output: other bytes of the same size and times were taken for
    "this very result", and the output was never written."""
    from mimi_cli import fileio

    target = tmp_path / "x.npz"
    target.write_bytes(b"this run's result")
    with fileio.atomic_output(target) as tmp:  # the same bytes: done
        tmp.write_bytes(b"this run's result")
        os.utime(tmp, ns=(10**18, 10**18))
    with pytest.raises(OutputExistsError, match="appeared while this run was working"):
        with fileio.atomic_output(target) as tmp:  # other bytes, the same size and times (and name, on Linux)
            tmp.write_bytes(b"another's  result")
            os.utime(tmp, ns=(10**18, 10**18))
    assert target.read_bytes() == b"this run's result" and leftovers(tmp_path) == []


def test_workers_that_die_on_every_file_stop_the_run(weights_file, tmp_path):
    """Workers that cannot run here at all: one round of tries, then the rest are not tried."""
    folder = tmp_path / "clips"
    folder.mkdir()
    speech, rate = speech_at(), 24000
    for i in range(8):
        sf.write(folder / f"poison{i}.wav", speech[:rate], rate)
    result = run("encode", folder, "-o", f"{tmp_path / 'out'}/", "-j", 2, "--manifest", tmp_path / "m.jsonl",
                 "--weights", weights_file, env_extra=poison_hook(tmp_path / "hooks"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [json.loads(line)["error"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert errors[:3] == ["its worker process died (killed, or out of memory)"] * 3  # the first pool's 2 + 1 queued
    assert all(e.startswith("not tried: the worker process died on every file before it") for e in errors[3:])
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the environment says no


def test_read_only_file_system(clip, codes, weights_file, tmp_path):
    with tmpfs(tmp_path / "ro", read_only=True) as ro:
        result = run("encode", clip, "-o", ro / "a.npz", weights=weights_file)
        one_line_error(result, f"cannot write {ro / 'a.npz'}", "Read-only file system", "writable")
        result = run("decode", codes, "-o", ro / "a.wav", weights=weights_file)
        one_line_error(result, "Read-only file system")
        # a manifest that cannot be written is found before the run: nothing is encoded
        result = run("encode", clip, "-o", tmp_path / "out.npz", "--manifest", ro / "m.jsonl", weights=weights_file)
        one_line_error(result, "--manifest", "Read-only file system")
        assert not (tmp_path / "out.npz").exists()
        result = run("convert", weights_file, ro / "w.safetensors", weights=weights_file)
        one_line_error(result, "Read-only file system")


def test_disk_full_after_the_work_is_one_line_and_leaves_nothing(clip, codes, long_codes, weights_file, tmp_path):
    with tmpfs(tmp_path / "small", size="64k") as small:
        for args in (("decode", codes, "-o", small / "a.wav"),  # 2 s at 24 kHz is 96 kB of WAV
                     ("decode", long_codes, "--stream", "-o", small / "b.flac"),
                     ("roundtrip", clip, "-o", small / "c.wav")):
            result = run(*args, weights=weights_file)
            one_line_error(result, "cannot write", "No space left on device", "free some space")
            assert sorted(p.name for p in small.iterdir()) == [], args
    # in a batch, a write failure is that file's failure in the summary; the others are written
    with tmpfs(tmp_path / "medium", size="256k") as small:
        result = run("decode", codes, long_codes, "-o", small, "--manifest", tmp_path / "m.jsonl",
                     weights=weights_file)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "failed:" in result.stderr and "No space left on device" in result.stderr
        rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
        assert [row["status"] for row in rows] == ["done", "failed"]
        assert leftovers(small) == [] and sorted(p.name for p in small.iterdir()) == ["a.wav"]


@pytest.mark.parametrize("replace", [False, True])
def test_an_output_is_on_the_disk_before_it_takes_its_name(tmp_path, monkeypatch, replace):
    """Linked or renamed into place straight from the page cache, an output could be empty or short after a
    crash (power, the kernel, a stopped VM), and with -f the old file gone with it. Its bytes are flushed
    (fsync) before it takes its name, and the folder's new name after."""
    from mimi_cli import fileio

    events = []

    def recorded(name, call):
        def record(*args, **kwargs):
            if name == "fsync":
                events.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(args[0]).st_mode) else "file"))
            else:
                events.append((name,))
            return call(*args, **kwargs)
        return record

    for name in ("fsync", "link", "replace", "rename"):
        monkeypatch.setattr(os, name, recorded(name, getattr(os, name)))
    out = tmp_path / "a.bin"
    if replace:
        out.write_bytes(b"old")
    with fileio.atomic_output(out, replace) as tmp:
        Path(tmp).write_bytes(b"new" * 1000)
    assert out.read_bytes() == b"new" * 1000
    named = [i for i, event in enumerate(events) if event[0] in ("link", "replace", "rename")]
    assert named and events[named[0] - 1] == ("fsync", "file"), events  # the bytes, then the name
    assert events[-1] == ("fsync", "folder"), events


_FLUSH_REFUSED = """
import errno, os, stat
_fsync = os.fsync
_refused = getattr(errno, os.environ.get("FLUSH_REFUSED", "EDQUOT"))
def fsync(fd):  # a file system that finds only as it flushes that there is no room (NFS, a quota), or cannot
    if stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(_refused, os.strerror(_refused))
    return _fsync(fd)
os.fsync = fsync
"""


def test_a_disk_that_refuses_the_flush_leaves_no_output_and_the_old_one(clip, weights_file, tmp_path):
    """Where the space runs out only as the bytes are flushed (NFS, quotas, delayed allocation), the error was
    lost and a short file named. It is said in one line, nothing is named, and with -f the old file stays. A file
    system that cannot flush at all (EINVAL) is written to as before."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_FLUSH_REFUSED)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "out"
    out.mkdir()
    result = run("encode", clip, "-o", out / "a.npz", weights=weights_file, env_extra=env)
    one_line_error(result, f"cannot write {out / 'a.npz'}", "Disk quota exceeded", "free some space")
    assert list(out.iterdir()) == []
    (out / "a.npz").write_bytes(b"the old codes")
    result = run("encode", clip, "-o", out / "a.npz", "-f", weights=weights_file, env_extra=env)
    one_line_error(result, "Disk quota exceeded")
    assert [p.name for p in out.iterdir()] == ["a.npz"] and (out / "a.npz").read_bytes() == b"the old codes"
    # a file system that cannot flush at all (EINVAL: a few FUSE ones) takes the output as any other
    result = run("encode", clip, "-o", out / "a.npz", "-f", weights=weights_file,
                 env_extra={**env, "FLUSH_REFUSED": "EINVAL"})
    assert result.returncode == 0 and (out / "a.npz").read_bytes()[:2] == b"PK", result.stderr

def test_a_parquet_folder_that_fills_up_still_leaves_the_manifest(clip, weights_file, tmp_path):
    """The shards are written as the run ends; when their disk is full the run fails in one line, and the
    manifest (on another disk) still says what was done: the codes files written stay, each listed."""
    pytest.importorskip("pyarrow")
    second = tmp_path / "second.wav"
    second.write_bytes(clip.read_bytes())
    with tmpfs(tmp_path / "small", size="64k") as small:
        with contextlib.suppress(OSError), open(small / "filler", "wb") as filler:
            filler.write(bytes(128 * 1024))  # fills the disk, then fails
        result = run("encode", clip, second, "-o", tmp_path / "codes", "--parquet", small / "pq",
                     "--manifest", tmp_path / "m.jsonl", weights=weights_file)
        one_line_error(result, "cannot write", "part-00000.parquet", "No space left on device")
        assert leftovers(small) == [] and not list((small / "pq").glob("*"))
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(Path(row["input"]).name, row["status"]) for row in rows] == [(clip.name, "done"), ("second.wav", "done")]
    assert all(Path(row["output"]).is_file() for row in rows)


def test_file_size_limit_is_named(codes, weights_file, tmp_path):
    """`ulimit -f`: Python ignores SIGXFSZ, so the write fails with EFBIG, which libsndfile reports as a bare
    "System error"; said as the limit, for audio (libsndfile) as for codes (Python's own writes)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}
    long_audio = tmp_path / "long.wav"
    sf.write(long_audio, np.zeros(24000 * 60, np.float32), 24000)  # 60 s at 32 levels: 50 kB of codes (8: 15 kB)
    for args in (("decode", str(codes), "-o", "out.wav"), ("encode", str(long_audio), "-o", "out.npz", "-n", "32")):
        done = subprocess.run([sys.executable, "-m", "mimi_cli", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300, preexec_fn=limit)
        one_line_error(done, "File too large", "ulimit -f")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["long.wav"]



@pytest.mark.parametrize("version", ["v2", "v1"])
def test_a_control_groups_memory_limit_is_what_sizes_are_checked_against(tmp_path, monkeypatch, version):
    """A container (docker --memory, a Kubernetes limit, systemd's MemoryMax) shows the machine's memory to
    sysconf, and the kernel kills, without a word, a process past its control group's limit: sizes were
    checked against the machine's 24 GB in a container of 0.4 GB. Its group's limit and those above it count,
    the smallest; "no limit" ("max", v1's largest count of pages) does not."""
    from mimi_cli import errors, pipeline
    from mimi_cli.core import cgroups

    monkeypatch.setattr(cgroups, "CGROUPS", tmp_path)
    monkeypatch.setattr(cgroups, "OWN_GROUPS", tmp_path / "self")
    group = tmp_path / ("" if version == "v2" else "memory") / "kubepods" / "pod1"
    group.mkdir(parents=True)
    (tmp_path / "self").write_text("0::/kubepods/pod1\n" if version == "v2" else
                                   "5:memory:/kubepods/pod1\n4:cpu,cpuacct:/kubepods/pod1\n0::/\n")

    def limit(folder, size):
        name, none = ("memory.max", "max") if version == "v2" else ("memory.limit_in_bytes", 0x7FFFFFFFFFFFF000)
        (folder / name).write_text(f"{none if size is None else size}\n")

    machine = errors._machine_memory()
    limit(group, None)
    assert cgroups.memory_limit() is None and errors.usable_memory() == machine
    assert errors.memory_said(machine).startswith("this machine's ")
    limit(group, 2 * machine)  # a limit above the machine's memory
    assert errors.usable_memory() == machine
    limit(group, 800_000_000)
    limit(group.parent, 400_000_000)  # the group above is smaller
    assert cgroups.memory_limit() == errors.usable_memory() == 400_000_000
    with pytest.raises(MimiError, match=r"^30\.0 min of audio would need about [\d.]+ GB in batch mode, more than the "
                                        r"0\.4 GB this process may use \(its control group's limit: a container's "
                                        r"memory\); use --stream, which keeps memory flat$"):
        pipeline.check_batch_memory(30 * 60)
    limit(group.parent, None)
    limit(group, 1_070_000_000)  # 1 GB needed: within the limit, not within its 90 %, which says so
    with pytest.raises(MimiError, match=r"^11\.0 min of audio would need about 1 GB in batch mode, more than 90 % "
                                        r"of the 1\.07 GB this process may use \(its control group's limit: a "
                                        r"container's memory\), the rest left to the system; use --stream"):
        pipeline.check_batch_memory(11 * 60)
    (tmp_path / "self").unlink()  # not Linux's /proc: the machine's
    assert errors.usable_memory() == machine


@contextlib.contextmanager
def memory_control_group(size: int):
    """A real control group of ``size`` bytes of memory (cgroup v1 or v2), for a child to enter as it starts
    (the function yielded, a ``preexec_fn``); skips where this process may not make one (not root)."""
    v1, v2 = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")
    if (v1 / "memory.limit_in_bytes").exists():
        folder, name = v1, "memory.limit_in_bytes"
    elif "memory" in (v2 / "cgroup.subtree_control").read_text() if (v2 / "cgroup.subtree_control").exists() else "":
        folder, name = v2, "memory.max"
    else:
        pytest.skip("no cgroup memory controller here")
    group = folder / f"mimi-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / name).write_text(str(size))
    except OSError as exc:
        with contextlib.suppress(OSError):
            group.rmdir()
        pytest.skip(f"cannot make a control group here: {exc}")
    try:
        yield lambda: (group / "cgroup.procs").write_text(str(os.getpid()))
    finally:
        for _ in range(50):  # a group can be removed once its last process has gone, which takes a moment
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


@pytest.mark.parametrize("command, limit, expected", [
    ("encode", 400 << 20, "more than the 0.42 GB this process may use (its control group's limit: a container's "
     "memory); use --stream"),
    ("roundtrip", 5 << 30, "more than the 5.4 GB this process may use (its control group's limit: a container's "
     "memory); roundtrip works on the whole file"),
])
def test_a_batch_run_past_its_control_groups_memory_is_refused_not_killed(command, limit, expected, weights_file,
                                                                          tmp_path):
    """In a container of 400 MB, `mimi encode` of 30 min in batch mode was checked against the machine's memory,
    began, and was killed by the kernel within a second (exit 137, not a word). It is refused first, in one line
    naming the limit and --stream, and nothing is written. A round trip also holds its scores' arrays (STOI's,
    SI-SDR's: 6.1 GB for 30 min where encoding alone took 1.3 GB), which its check once left out: in a container
    of 5 GB it began, to be killed."""
    with sf.SoundFile(tmp_path / "long.flac", "w", 8000, 1, "PCM_16") as f:
        for _ in range(30):
            f.write(np.zeros(8000 * 60, np.int16))
    refused_in_control_group([command, "long.flac", "-o", "long.npz" if command == "encode" else "long.wav"],
                             limit, weights_file, tmp_path, "30.0 min of audio would need about", expected)


def refused_in_control_group(command: list[str], size: int, weights_file: Path, folder: Path, *expected: str):
    """`mimi COMMAND`, run in ``folder`` inside a real control group of ``size`` bytes, is refused in one line
    holding each of ``expected``, and writes nothing."""
    before = sorted(p.name for p in folder.iterdir())
    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}
    with memory_control_group(size) as enter:
        done = subprocess.run([sys.executable, "-m", "mimi_cli", *command], capture_output=True, text=True, env=env,
                              cwd=folder, timeout=600, preexec_fn=enter)
    one_line_error(done, *expected)
    assert sorted(p.name for p in folder.iterdir()) == before


def zero_codes(path: Path, streams: int, seconds: int) -> Path:
    """A Mimi codes file of ``streams`` code streams of ``seconds``, all codes 0."""
    frames = seconds * 25 // 2
    CodesFile.from_codes(np.zeros((streams, 8, frames), np.uint16), MimiConfig(), frames * 1920, 24000, streams,
                         "").save(path)
    return path


@pytest.mark.parametrize("command, rate, seconds", [
    (["encode", "in.wav", "-o", "out.npz"], 96000, 300),
    (["encode", "in.wav", "-o", "out.npz", "--channels", "split"], 48000, 300),
    (["decode", "in.npz", "-o", "out.wav", "--sample-rate", "48000"], 24000, 300),
    (["roundtrip", "in.wav", "-o", "out.wav", "--channels", "split"], 48000, 150),
])
def test_a_batch_check_counts_every_channel_at_its_rate(command, rate, seconds, weights_file, tmp_path):
    """The batch check counted one channel at the codec's rate, as its figure was measured. In a 1 GiB
    container, with 0.6 GB counted, encoding 5 min of 8 channels at 96 kHz or, each channel on its own, at
    48 kHz was killed, as was a round trip of 2.5 min of them; decoding 8 code streams of 5 min to 48 kHz was
    refused only after 95 s of decoding, at the resampling. Each is refused before any work, in one line."""
    if command[0] == "decode":
        zero_codes(tmp_path / "in.npz", 8, seconds)
    else:
        sparse_wav(tmp_path / "in.wav", 8, rate, seconds)
    refused_in_control_group(command, 1 << 30, weights_file, tmp_path, f"{seconds / 60:.1f} min of audio would "
                             "need about ", " GB in batch mode, more than the 1.1 GB this process may use (its "
                             "control group's limit")


@pytest.mark.parametrize("command", [["encode", "in.wav", "-o", "out.npz", "--stream", "--channels", "split"],
                                     ["decode", "in.npz", "-o", "out.wav", "--stream"]])
def test_many_streams_at_once_are_checked_against_the_memory(command, weights_file, tmp_path):
    """--stream holds a state and buffers per code stream, 40 MB each for Mimi (16 channels took 1.25 GB where
    one took 0.67 GB), and nothing counted them: 30 s of 24 channels, split, was killed in a 1 GiB container,
    as was decoding their 24 streams. Refused before any work, in one line."""
    if command[0] == "decode":
        zero_codes(tmp_path / "in.npz", 24, 30)
    else:
        sparse_wav(tmp_path / "in.wav", 24, 24000, 30)
    refused_in_control_group(command, 1 << 30, weights_file, tmp_path, "24 code streams at once in --stream mode "
                             "would hold about 1.3 GB (40 MB each), more than the 1.1 GB this process may use (its "
                             "control group's limit", "run without --stream")


def test_a_small_container_still_takes_short_files(clip, weights_file, tmp_path):
    """The memory check counted the weights' 0.4 GB of mapped pages, which a control group reclaims rather than
    kill for: in a 512 MB container it refused even a 2 s encode, where encoding took less than 200 MB and a
    round trip of 29 s less than 384 MB. Short files are encoded and round-tripped there."""
    env = {**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"}
    with memory_control_group(512 << 20) as enter:
        for command in (["encode", str(clip), "-o", "a.npz"], ["roundtrip", str(clip), "-o", "a.wav"]):
            done = subprocess.run([sys.executable, "-m", "mimi_cli", *command], capture_output=True, text=True,
                                  env=env, cwd=tmp_path, timeout=300, preexec_fn=enter)
            assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "a.wav"]

_REFUSED = """
import errno, mmap, sys
from mimi_cli import batch, cli, pipeline
def refuse(*args, **kwargs):
    raise {raised}
{patched} = refuse
sys.argv = ["mimi", *sys.argv[1:]]
cli.main()
"""


@pytest.mark.parametrize("command, patched, raised, expected", [
    ("encode", "pipeline.encode_file", 'MemoryError("Unable to allocate 9.00 GiB for an array")',
     "out of memory (Unable to allocate 9.00 GiB for an array); free some memory or raise the limit (ulimit -v), "
     "or use --stream (memory stays flat) and fewer --jobs"),
    ("encode --stream", "pipeline.encode_file", 'MemoryError("Unable to allocate 9.00 GiB for an array")',
     "out of memory (Unable to allocate 9.00 GiB for an array); free some memory or raise the limit (ulimit -v), "
     "or use fewer --jobs"),  # not "use --stream", given already
    ("roundtrip", "pipeline.roundtrip_file", 'MemoryError("Unable to allocate 9.00 GiB for an array")',
     "out of memory (Unable to allocate 9.00 GiB for an array); free some memory or raise the limit (ulimit -v)"),
    ("encode", "batch.execute", 'OSError(errno.EMFILE, "Too many open files")',
     "Too many open files; raise the limit on open files (ulimit -n), or with --jobs use fewer"),
    ("encode", "mmap.mmap", 'OSError(errno.ENOMEM, "Cannot allocate memory")',
     "Cannot allocate memory; free some memory or raise the limit (ulimit -v)"),
    ("encode", "pipeline.encode_file", 'ImportError("_dfitpack.so: failed to map segment from shared object", '
     'name="scipy.interpolate._dfitpack")',  # a compiled library refused its memory (ulimit -v): a traceback before
     "out of memory (no room to load scipy.interpolate._dfitpack); free some memory or raise the limit (ulimit -v)"),
])
def test_system_limits_are_one_line(command, patched, raised, expected, clip, weights_file, tmp_path):
    """A refused allocation (a full machine, `ulimit -v`) that no size check foresaw, or too many open files
    (`ulimit -n`, a pool's pipes): one line saying so and what to do, not a traceback (roundtrip) or a bare
    "MemoryError: ..." (encode); nothing written. Mapping the weights fails under `ulimit -v` with the system's
    words only ("Cannot allocate memory"): what to do is said there too."""
    script = _REFUSED.format(patched=patched, raised=raised)
    done = subprocess.run([sys.executable, "-c", script, *command.split(), str(clip), "-o",
                           str(tmp_path / ("x.wav" if command == "roundtrip" else "x.npz"))],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"})
    one_line_error(done, expected)
    assert list(tmp_path.iterdir()) == []


_UNLOADABLE = """
import sys
class Refuse:  # an import of the module, or of one of its own, fails as the system made it fail
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == {module!r}:
            raise {raised}
sys.meta_path.insert(0, Refuse())
from mimi_cli import cli
sys.argv = ["mimi", *sys.argv[1:]]
cli.main()
"""
_NO_ROOM = 'ImportError("{0}.so: failed to map segment from shared object", name="{0}")'


@pytest.mark.parametrize("args, module, raised, expected", [
    ("roundtrip {clip} --plot p.png", "matplotlib", _NO_ROOM.format("matplotlib._path"),
     "out of memory (no room to load matplotlib._path); free some memory or raise the limit (ulimit -v)"),
    ("encode {clip} --parquet pq", "pyarrow", _NO_ROOM.format("pyarrow.lib"),
     "out of memory (no room to load pyarrow.lib)"),
    ("encode {clip} --parquet pq", "pyarrow",
     'ImportError("libarrow.so.2300: cannot open shared object file: No such file or directory", name="pyarrow.lib")',
     "pyarrow is installed but does not load (libarrow.so.2300: cannot open shared object file: No such file or "
     "directory): reinstall it (pip install --force-reinstall pyarrow)"),
    ("encode {clip} --parquet pq", "pyarrow", 'ModuleNotFoundError("No module named \'pyarrow\'", name="pyarrow")',
     '--parquet needs pyarrow: pip install "mimi-cli[parquet]"'),
    ("encode {m4a} -o x.npz", "av", _NO_ROOM.format("av._core"), "out of memory (no room to load av._core)"),
])
def test_an_extra_that_is_installed_but_does_not_load_is_not_said_missing(args, module, raised, expected, clip,
                                                                          weights_file, tmp_path):
    """Under ulimit -v, matplotlib, pyarrow or PyAV can fail to map their compiled part: the run said "--plot
    needs matplotlib: pip install …" for a library that is installed, or took an M4A file for one that is not
    audio. An extra that is not installed is said so; one that does not load, as what it is: memory, or a
    broken install to repair. Nothing is written."""
    m4a = tmp_path / "in" / "a.m4a"
    if module == "av":
        pytest.importorskip("av")
        m4a.parent.mkdir()
        ffmpeg_file(m4a, speech_at()[:24000], rate=24000)
    script = _UNLOADABLE.format(module=module, raised=raised)
    done = subprocess.run([sys.executable, "-c", script, *args.format(clip=clip, m4a=m4a).split()], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"})
    one_line_error(done, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["in"] if module == "av" else [])

# A limit on processes and threads (ulimit -u, a container's pids limit), met wherever a thread or process starts:
# a hook that every process PYTHONPATH reaches imports (the command and its workers) refuses the threads it is
# told of, by name or class, as the system would, or a worker process, as fork would.
_REFUSING_HOOK = """
import errno, os, threading
_refused = tuple(filter(None, os.environ.get("REFUSED_THREADS", "").split(",")))
_start = threading.Thread.start
def _start_unless_refused(self):
    if self.name.startswith(_refused) or type(self).__name__ in _refused:
        raise RuntimeError("can't start new thread")
    return _start(self)
threading.Thread.start = _start_unless_refused
if os.environ.get("REFUSED_PROCESSES"):  # multiprocessing's processes whose code names this
    import multiprocessing.util
    _spawn = multiprocessing.util.spawnv_passfds
    def _spawn_unless_refused(path, args, passfds):
        if any(os.environ["REFUSED_PROCESSES"] in str(arg) for arg in args):
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return _spawn(path, args, passfds)
    multiprocessing.util.spawnv_passfds = _spawn_unless_refused
"""

_LIMIT = ("a limit on this user's processes and threads (ulimit -u, or a container's pids limit) or on memory "
          "(ulimit -v) is reached")


def _refusing(folder: Path, threads: str = "", processes: str = "") -> dict[str, str]:
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(_REFUSING_HOOK)
    return {"PYTHONPATH": str(folder), "REFUSED_THREADS": threads, "REFUSED_PROCESSES": processes}


@pytest.mark.parametrize("refused, jobs, expected", [
    ({"threads": "mimi-stage,mimi-worker"}, 1, "cannot start a thread: "),  # a codec's own threads
    ({"threads": "_ExecutorManagerThread"}, 2, "cannot start the worker processes of --jobs: "),  # the pool's
    ({"threads": "QueueFeederThread"}, 2, "cannot start the worker processes of --jobs: "),  # the pool's queue's
    ({"processes": "spawn_main"}, 2, "cannot start the worker processes of --jobs: "),  # fork's EAGAIN
])
def test_a_limit_on_threads_and_processes_is_one_line(refused, jobs, expected, clip, weights_file, tmp_path):
    """Before: "RuntimeError: can't start new thread", which says nothing of the limit; with --jobs, a traceback
    ("cannot join thread before it is started", as the pool was stopped), or no end at all (the pool's thread
    ended, refused the thread that feeds its queue, and the pool waited for it for ever)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in "abc":
        shutil.copy(clip, folder / f"{name}.wav")
    inputs = [clip, "-o", tmp_path / "out.npz"] if jobs == 1 else [folder, "-o", f"{tmp_path / 'out'}/"]
    done = run("encode", *inputs, "-j", jobs, weights=weights_file, env_extra=_refusing(tmp_path / "hooks", **refused))
    one_line_error(done, expected + _LIMIT, "raise it, or use fewer --threads and --jobs")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.npz").exists()


def test_no_process_for_multiprocessing_works_in_this_process(clip, weights_file, tmp_path):
    """Its first process (the resource tracker, started as a pool is planned) refused: the files are done here,
    as where its locks cannot be had, with a note saying why. Before: "error: Resource temporarily
    unavailable"."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in "ab":
        shutil.copy(clip, folder / f"{name}.wav")
    done = run("encode", folder, "-o", f"{tmp_path / 'out'}/", "-j", 2, weights=weights_file,
               env_extra=_refusing(tmp_path / "hooks", processes="resource_tracker"))
    assert done.returncode == 0, done.stderr
    assert f"note: worker processes cannot run here ({_LIMIT}); working in this process instead" in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.npz", "b.npz"]


def test_a_worker_refused_a_thread_as_it_starts_fails_each_file_in_one_line(clip, weights_file, tmp_path):
    """The thread that watches for its parent's end: before, the pool printed the worker's traceback and broke,
    and every file failed as "its worker process died (killed, or out of memory)"."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in "abc":
        shutil.copy(clip, folder / f"{name}.wav")
    done = run("encode", folder, "-o", f"{tmp_path / 'out'}/", "-j", 2, "--manifest", tmp_path / "m.jsonl",
               weights=weights_file, env_extra=_refusing(tmp_path / "hooks", threads="mimi-parent-watch"))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [row["error"] for row in rows] == [f"cannot start a thread: {_LIMIT}: raise it, or use fewer --threads "
                                              "and --jobs"] * 3
    assert not (tmp_path / "out").exists()


_OPENBLAS_REFUSED = """
import os, signal, sys
class _RefusedAsNumPyLoads:  # what OpenBLAS does as it loads, refused a thread: four lines, then SIGINT to itself
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            if os.environ.get("OPENBLAS_SAYS"):
                os.write(2, b"OpenBLAS blas_thread_init: pthread_create failed for thread 1 of 2: Resource "
                            b"temporarily unavailable\\nOpenBLAS blas_thread_init: RLIMIT_NPROC 2 current, 2 max\\n")
            signal.raise_signal(signal.SIGINT)
sys.meta_path.insert(0, _RefusedAsNumPyLoads())
"""


@pytest.mark.parametrize("openblas_says, expected, code", [
    (True, "cannot start OpenBLAS's threads as NumPy loads: " + _LIMIT + ": raise it, or set OPENBLAS_NUM_THREADS=1 "
           "and use --threads 1", 1),
    (False, "interrupted", 130),  # Ctrl-C in that instant
])
def test_openblas_refused_a_thread_as_numpy_loads_is_one_line(openblas_says, expected, code, clip, tmp_path):
    """Before: OpenBLAS's lines, then a traceback through NumPy's import, exit 130 as if someone had pressed
    Ctrl-C."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_OPENBLAS_REFUSED)
    done = run("encode", clip, "-o", tmp_path / "a.npz",
               env_extra={"PYTHONPATH": str(hooks), "OPENBLAS_SAYS": "1" * openblas_says})
    assert one_line_error(done, code=code) == f"error: {expected}"
    assert "OpenBLAS blas" not in done.stderr and not (tmp_path / "a.npz").exists()


_BLAS_THREADS = """
import json, os, sys
from pathlib import Path
import numpy
from threadpoolctl import threadpool_info
def blas():
    return {Path(i["filepath"]).parent.name: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
numpys = blas()["numpy.libs"]  # as it loaded: a thread per core
from mimi_cli import cli
sys.argv = ["mimi", *sys.argv[1:]]
try:
    cli.main()
except SystemExit as exc:
    assert exc.code == 0, exc.code
print(json.dumps([numpys, blas(), os.environ.get("OPENBLAS_NUM_THREADS")]))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="OpenBLAS starts one thread on one core, told or not")
def test_only_numpys_openblas_starts_a_thread_per_core(clip_16k, weights_file, tmp_path):
    """SciPy's own OpenBLAS (loaded to resample a 16 kHz file) starts one thread, NumPy's as many as the run may
    use, and the environment is put back once the command is done; a --jobs worker's OpenBLAS starts the
    worker's count. Before, SciPy's started a thread per core, each counted against a limit on processes and
    threads."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", _BLAS_THREADS, "encode", str(clip_16k), "-o", str(tmp_path / "a.npz"),
                           "--weights", str(weights_file)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    numpys, libraries, environment = json.loads(done.stdout.splitlines()[-1])
    assert numpys >= 2 and libraries == {"numpy.libs": numpys, "scipy.libs": 1} and environment is None
    from concurrent.futures import ProcessPoolExecutor

    from mimi_cli.batch import _WorkerContext

    before = os.environ.get("OPENBLAS_NUM_THREADS")
    with ProcessPoolExecutor(1, mp_context=_WorkerContext(3)) as pool:
        assert pool.submit(os.getenv, "OPENBLAS_NUM_THREADS").result() == "3"
    assert os.environ.get("OPENBLAS_NUM_THREADS") == before


def test_no_writable_folder_for_temporary_files_is_said_before_any_work(clip, codes, weights_file, tmp_path):
    """A read-only container (no TMPDIR, /tmp, /var/tmp or working folder that takes a file): standard input
    and output pass through a temporary file, and the run says so and how to give it one, in its own words
    (it printed Python's "No usable temporary directory found in [...]"), before any work."""
    script = _REFUSED.format(patched="sys.modules['tempfile'].gettempdir",  # what it raises when no folder will do
                             raised="FileNotFoundError(errno.ENOENT, 'No usable temporary directory found in [...]')")
    for args, needing in ((["encode", clip, "-o", "-"], "writing to standard output"),
                          (["decode", codes, "-o", "-"], "writing to standard output"),
                          (["encode", "-", "-o", tmp_path / "x.npz"], "reading standard input")):
        with open(clip, "rb") as stdin:
            done = subprocess.run([sys.executable, "-c", script, *map(str, args)], stdin=stdin,
                                  capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"})
        assert done.stdout == "", args
        one_line_error(done, "no folder for temporary files can be written", f"and {needing} needs one",
                       "set TMPDIR to a writable folder")
    assert list(tmp_path.iterdir()) == []


def test_standard_output_names_what_is_full(codes, weights_file, tmp_path):
    """-o - is staged in TMPDIR until complete: a full TMPDIR says so (it blamed "the output's disk"), and
    a full disk behind the redirection says to look there; no staging file is left either way."""
    with tmpfs(tmp_path / "small", size="64k") as small:
        result = run("decode", codes, "-o", "-", weights=weights_file, env_extra={"TMPDIR": str(small)})
        one_line_error(result, "cannot write standard output: No space left on device", f"kept in {small}",
                       "set TMPDIR")
        assert sorted(p.name for p in small.iterdir()) == []
    if os.path.exists("/dev/full"):
        import subprocess
        import sys

        with open("/dev/full", "wb") as full:
            done = subprocess.run([sys.executable, "-m", "mimi_cli", "decode", str(codes), "-o", "-"], stdout=full,
                                  stderr=subprocess.PIPE, text=True, timeout=300,
                                  env={**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"})
        done.stdout = ""  # it went to /dev/full
        one_line_error(done, "cannot write to standard output: No space left on device", "where it is redirected")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["inspect", "{weights}"],
                                  ["inspect", "{weights}", "--json"],
                                  ["bench", "--codec", "encodec-24khz", "--only", "model", "--seconds", "1",
                                   "--json"]])
def test_printing_to_a_full_disk_is_one_line(args, weights_file):
    """What a command prints (help, a report, JSON) to a standard output that cannot take it: one line, exit 1
    (each was a traceback from rich's write)."""
    import subprocess
    import sys

    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "mimi_cli", *(a.format(weights=weights_file) for a in args)],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=300,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    done.stdout = ""  # it went to /dev/full
    one_line_error(done, "cannot write to standard output: No space left on device", "where it is redirected")


def test_environment_errors_say_what_to_do():
    """Errors that cannot be produced for real here (root ignores permissions; no failing disk) still read well."""
    import errno

    for code, advice in ((errno.EACCES, "permissions"), (errno.EIO, "check the disk"),
                         (errno.ENOSPC, "free some space"), (errno.EROFS, "writable")):
        message = str(cannot_write(Path("out.wav"), OSError(code, os.strerror(code))))
        assert message.startswith("cannot write out.wav: " + os.strerror(code)) and advice in message


def test_check_output_rules(tmp_path):
    source = tmp_path / "in.wav"
    source.write_bytes(b"x")
    inputs = file_ids([source])
    check_output(tmp_path / "new.npz", replace=False, inputs=inputs)
    with pytest.raises(MimiError, match="is also an input"):
        check_output(source, replace=True, inputs=inputs)
    with pytest.raises(OutputExistsError):
        check_output(source, replace=False)
    with pytest.raises(MimiError, match="does not exist"):
        check_output(tmp_path / "missing" / "x.npz", replace=False)
    check_output(tmp_path / "missing" / "x.npz", replace=False, create_parents=True)  # a batch makes it later


# ----------------------------------------------------------------------------- option values and audio values


def test_non_finite_and_absurd_option_values(clip, weights_file, tmp_path):
    for args in (("encode", clip, "-b", "inf"), ("encode", clip, "-b", "nan"), ("encode", clip, "-b", "1e308"),
                 ("bench", "--seconds", "inf"),
                 ("bench", "--seconds", "nan"), ("bench", "--seconds", "1e9")):
        result = run(*args, weights=weights_file)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (args, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    result = run("encode", clip, "-o", tmp_path / "a.npz", "--threads", "1000", weights=weights_file)
    assert result.returncode == 0, result.stderr
    cores = threads.usable_cores()
    assert f"--threads 1000 is more than the {cores} core{'s' * (cores > 1)} this process may use; using {cores}" \
        in result.stderr


@pytest.mark.parametrize("peak, subtype", [(1e8, "FLOAT"), (1e38, "FLOAT"), (1e300, "DOUBLE")])
def test_audio_far_beyond_full_scale_is_an_error_not_zeros(weights_file, tmp_path, peak, subtype):
    """A 64-bit sample beyond float32's range reads as Inf in float32: it was called "NaN or Inf"."""
    path = tmp_path / "loud.wav"
    pcm = np.sin(np.arange(24000) / 10) * peak
    sf.write(path, pcm, 24000, subtype=subtype)
    result = run("encode", path, "-o", tmp_path / "loud.npz", weights=weights_file)
    one_line_error(result, f"has samples of magnitude {peak:.3g} (first at 0.000 s), far beyond full scale",
                   "rescale")
    assert "RuntimeWarning" not in result.stderr and not (tmp_path / "loud.npz").exists()


def test_audio_well_beyond_full_scale_is_encoded_with_a_warning(weights_file, tmp_path):
    """Float audio 6 dB or more past full scale (a mix without headroom) was encoded without a word; its
    loudest sample is said, and where the first sample beyond 2.0 is. Block by block (--stream) here: the
    batch path reads through the same check (audio._read_block), in one block."""
    pcm = np.sin(np.arange(6 * 24000) / 10).astype(np.float32) * 0.5
    sf.write(tmp_path / "headroom.wav", pcm * 3.8, 24000, subtype="FLOAT")  # peaks at 1.9: no warning
    pcm[30000], pcm[140000] = 3.0, -7.0  # 1.25 s, then the loudest in a later block (of 65536 samples)
    sf.write(tmp_path / "loud.wav", pcm, 24000, subtype="FLOAT")
    result = run("encode", tmp_path / "headroom.wav", tmp_path / "loud.wav", "-o", tmp_path / "codes/", "--manifest",
                 tmp_path / "m.jsonl", "--stream", weights=weights_file)
    warning = f"{tmp_path / 'loud.wav'} peaks at 7, 17 dB above full scale (the first sample beyond 2 is at 1.250 s)"
    assert result.returncode == 0 and result.stderr.count("warning: ") == 1, result.stderr
    assert f"warning: {warning}: the codec is made for audio within [-1, 1]; scale it down" in result.stderr
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [len(row["warnings"]) for row in rows] == [0, 1] and rows[1]["warnings"][0].startswith(warning)
    assert sorted(p.name for p in (tmp_path / "codes").iterdir()) == ["headroom.npz", "loud.npz"]


def test_unwritable_format_and_rate_fail_before_decoding(codes, weights_file, tmp_path):
    """Each refused before any work, nothing left anywhere. Sound Designer II (.sd2) keeps its header in a second
    file that libsndfile names after the (temporary, unnamed) file it writes: it failed after the decoding with
    "libsndfile: System error.", and left an empty "._" in the working folder."""
    for output, rate, expected in (("x.flac", "700000", "cannot write FLAC audio at 700000 Hz"),
                                   ("x.mp3", "7000", "cannot write MP3 audio at 7000 Hz"),
                                   ("x.opus", "44100", "cannot write OPUS audio at 44100 Hz (Opus only supports"),
                                   ("x.sd2", "24000", "cannot write audio as .sd2; use .wav, .flac, .ogg, .opus"),
                                   ("x.raw", "24000", "cannot write audio as .raw; use .wav, .flac, .ogg, .opus")):
        if output.endswith(".mp3") and "MP3" not in sf.available_formats():
            continue
        result = run("decode", codes, "-o", tmp_path / output, "--sample-rate", rate, weights=weights_file,
                     cwd=tmp_path)
        one_line_error(result, expected)
    assert ".aiff, .au, .caf, .w64…" in result.stderr  # the formats the refusal names besides the usual five
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    for name in ("x.wav", "x.aiff", "x.au", "x.caf", "x.w64"):  # written, and the same 16-bit samples as the WAV
        assert run("decode", codes, "-o", tmp_path / name, weights=weights_file).returncode == 0
        np.testing.assert_array_equal(sf.read(tmp_path / name, dtype="int16")[0],
                                      sf.read(tmp_path / "x.wav", dtype="int16")[0])


def test_too_many_channels_for_a_format_is_said_as_such():
    """A 3-channel dialogue's codes decoded to MP3 (2 at most) or 9 channels to FLAC (8) was refused "at 24000 Hz,
    choose another --sample-rate", a rate that was fine; a rate that is not stays the first thing said."""
    from mimi_cli.audio import check_audio_output
    from mimi_cli.errors import InvalidAudioError

    check_audio_output(Path("x.flac"), 24000, 8)
    check_audio_output(Path("x.wav"), 24000, 9)
    refused = [("x.flac", 24000, 9, r"cannot write FLAC audio of 9 channels \(.*\); choose another output format"),
               ("x.mp3", 24000, 3, r"cannot write MP3 audio of 3 channels"),
               ("x.mp3", 7, 3, r"cannot write MP3 audio at 7 Hz .* --sample-rate")]
    for name, rate, channels, expected in refused:
        if name.endswith(".mp3") and "MP3" not in sf.available_formats():
            continue
        with pytest.raises(InvalidAudioError, match=expected):
            check_audio_output(Path(name), rate, channels)


def test_what_an_encoder_cannot_take_is_refused_before_any_work(codes, weights_file, tmp_path):
    """libsndfile opens an Ogg Vorbis file at any rate and channel count, and libvorbis then ends the process on
    the first samples past its limits: `mimi decode --sample-rate 250000 -o x.ogg` died of a segmentation fault,
    after the decoding. FLAC at a rate above 65,535 Hz that is not whole tens of Hz failed after the decoding too,
    in libsndfile's words about "the flac decoder". And some formats hold another rate than they are given,
    without a word: `-o x.xi` wrote 24 kHz audio in a file that says 44,100 Hz (played 1.8× too fast)."""
    import subprocess

    from mimi_cli.audio import check_audio_output
    from mimi_cli.errors import InvalidAudioError

    for name, rate, channels in (("x.ogg", 200_000, 2), ("x.ogg", 24000, 255), ("x.flac", 96000, 1),
                                 ("x.flac", 655_350, 1), ("x.opus", 48000, 2), ("x.opus", 12000, 1),
                                 ("x.htk", 10000, 1)):
        check_audio_output(Path(name), rate, channels)  # what the encoders take passes
    refused = [("x.ogg", 200_001, 1, r"cannot write OGG audio at 200001 Hz \(Vorbis encodes at most 200,000 Hz\)"),
               ("x.oga", 768_000, 1, r"at 768000 Hz \(Vorbis encodes at most 200,000 Hz\); choose another"),
               ("x.ogg", 24000, 256, r"of 256 channels \(Vorbis holds at most 255 channels\)"),
               ("x.flac", 96001, 1, r"at 96001 Hz \(FLAC holds a rate above 65,535 Hz only in whole tens of Hz\)"),
               ("x.xi", 24000, 1, r"cannot write XI audio at 24000 Hz \(the file would say 44100 Hz\)"),
               ("x.wve", 24000, 1, r"\(the file would say 8000 Hz\)"),
               ("x.htk", 24000, 1, r"\(the file would say 24038 Hz\)")]
    for name, rate, channels, expected in refused:
        with pytest.raises(InvalidAudioError, match=expected):
            check_audio_output(Path(name), rate, channels)
    for output, rate in (("x.ogg", "250000"), ("x.flac", "65536"), ("x.xi", "24000")):
        result = run("decode", codes, "-o", tmp_path / output, "--sample-rate", rate, weights=weights_file)
        one_line_error(result, f"cannot write {output[2:].upper()} audio at {rate} Hz")
    # a library user's write is refused too, where it crashed (in a child process, which the crash ended)
    child = ("import numpy as np; from mimi_cli.audio import write_audio; "
             f"write_audio({str(tmp_path / 'y.ogg')!r}, np.zeros(4800, np.float32), 250000)")
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "InvalidAudioError: cannot write" in done.stderr, (done.returncode, done.stderr)
    assert "Vorbis encodes at most 200,000 Hz" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_suffixes_that_are_not_format_names(codes, weights_file, tmp_path):
    """.opus is Opus in Ogg (libsndfile's OGG format with the OPUS subtype: it had no format of that name and was
    refused), .oga Ogg Vorbis, .aif AIFF; each read back as what its name says, as long as the codes say (Opus
    also from a streaming decode, which opens its output its own way)."""
    expected = {"x.opus": ("OGG", "OPUS", False), "y.opus": ("OGG", "OPUS", True), "x.oga": ("OGG", "VORBIS", False),
                "x.aif": ("AIFF", "PCM_16", False)}
    with np.load(codes) as npz:
        seconds = int(npz["num_samples"]) / 24000
    for name, (major, subtype, stream) in expected.items():
        result = run("decode", codes, "-o", tmp_path / name, *(["--stream"] if stream else []), weights=weights_file)
        assert result.returncode == 0, result.stderr
        info = sf.info(tmp_path / name)
        assert (info.format, info.subtype, info.samplerate) == (major, subtype, 24000)
        assert abs(info.duration - seconds) < 0.03, (name, info.duration, seconds)


def test_no_weights_and_no_network_fails_fast(clip, tmp_path):
    """The Hub unreachable (a closed local port): one line within seconds, not ~25 s of retries."""
    env = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    start = time.monotonic()
    result = run("encode", clip, "-o", tmp_path / "a.npz", env_extra=env)
    elapsed = time.monotonic() - start
    one_line_error(result, "no Mimi weights", "cannot be reached", "--weights")
    assert elapsed < 12, f"took {elapsed:.1f} s"


# ----------------------------------------------------------------------------- every engine reports the same


@pytest.mark.ray
def test_batch_and_ray_report_what_single_file_commands_report(codes, weights_file, tmp_path):
    """A weights mismatch (codes from other weights) is a warning in all three; so are clipped samples."""
    from mimi_cli.batch import run_local
    from mimi_cli.pipeline import Settings, Task

    other = tmp_path / "other.npz"
    with np.load(codes, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["weights_id"] = np.array("sha256:0000000000000000")
    np.savez(other, **arrays)
    single = run("decode", other, "-o", tmp_path / "single.wav", weights=weights_file)
    assert single.returncode == 0, single.stderr
    warning = [line for line in single.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "was encoded with weights sha256:0000000000000000" in warning[0]
    batch = run("decode", other, "-o", tmp_path / "batch.wav", "--manifest", tmp_path / "m.jsonl",
                weights=weights_file)
    assert batch.returncode == 0 and warning[0] in batch.stderr, batch.stderr
    row = json.loads((tmp_path / "m.jsonl").read_text())
    assert row["warnings"] == [warning[0].removeprefix("warning: ")]

    settings = Settings("decode", str(weights_file))
    local = run_local([Task(other, tmp_path / "lib.wav")], settings, jobs=1)
    assert local[0].warnings == row["warnings"]
    ray = pytest.importorskip("ray")
    from mimi_cli.ray_engine import run_ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = list(run_ray([Task(other, tmp_path / "ray.wav")], settings, actors=1))
    finally:
        ray.shutdown()
    assert remote[0].warnings == local[0].warnings
    assert (tmp_path / "ray.wav").read_bytes() == (tmp_path / "lib.wav").read_bytes()


def test_a_temporary_file_left_by_a_preempted_finally_is_removed(tmp_path, monkeypatch):
    """A signal's exception that lands between a write's last line and its context manager's exit leaves the
    writer's generator suspended: its ``finally`` would run only when collected, which a worker ending with
    ``os._exit`` never is. (A hidden .partial stayed beside the outputs in one CI run of the test above, and this
    is the window found that leaves one.) Every temporary file is listed while it is written, and removed by the
    worker (or the CLI) before it ends."""
    from mimi_cli import fileio
    from mimi_cli.fileio import atomic_output, remove_temporaries

    monkeypatch.setattr(fileio, "_unnamed_file", lambda folder: None)  # named temporary files (not Linux)
    writing = atomic_output(tmp_path / "out.npz")
    tmp = writing.__enter__()  # and never exited, as when the signal lands there
    tmp.write_bytes(b"half")
    assert leftovers(tmp_path) == [tmp.name]
    remove_temporaries()
    assert leftovers(tmp_path) == [] and not (tmp_path / "out.npz").exists()
    with atomic_output(tmp_path / "kept.npz") as tmp:  # a write that ends well is not touched afterwards
        tmp.write_bytes(b"whole")
    remove_temporaries()
    assert (tmp_path / "kept.npz").read_bytes() == b"whole" and leftovers(tmp_path) == []


def test_a_name_the_system_cannot_encode_is_said_for_what_it_is():
    """errors.unnamable, the net under every library that encodes names itself: a character the locale's
    encoding has no bytes for says to use a UTF-8 locale; bytes that were never in it (a Latin-1 name on a
    UTF-8 system, held with surrogate escapes) say to rename the file, as a locale would not help."""
    import sys

    from mimi_cli.errors import unnamable

    encoding = sys.getfilesystemencoding()
    latin1 = "caf\udce9.wav"
    said = str(unnamable(UnicodeEncodeError(encoding, latin1, 3, 4, "surrogates not allowed")))
    assert f"holds bytes that are not {encoding}" in said and "rename it" in said and "locale" not in said
    if encoding.lower().replace("-", "") != "utf8":  # under a locale that cannot hold é
        said = str(unnamable(UnicodeEncodeError(encoding, "\u00e9.wav", 0, 1, "ordinal not in range")))
        assert "cannot hold; run under a UTF-8 locale" in said
    assert unnamable(UnicodeEncodeError("latin-1" if encoding != "latin-1" else "ascii", "\u6771", 0, 1, "")) is None


def test_a_name_that_is_not_utf8_is_shown_with_its_bytes(tmp_path):
    """A Latin-1 name's é was shown as Python holds it, ``caf\\udce9``; it is shown as its byte now, ``caf\\xe9``,
    as Parquet holds it and as a user can find it (``printf 'caf\\xe9'``); control characters stay escaped."""
    from mimi_cli.errors import printable

    missing = tmp_path / os.fsdecode(b"caf\xe9\x07.npz")
    result = run("decode", missing)
    one_line_error(result, "caf\\xe9\\x07.npz does not exist")
    assert "udce9" not in result.stderr
    assert printable("\ud800 \udc7f \udc80 \udcff") == "\\ud800 \\udc7f \\x80 \\xff"  # only the bytes 0x80–0xff


def test_a_name_that_is_not_utf8_is_read_by_libsndfile_as_any_other(clip, tmp_path):
    """libsndfile was given such a name as a str, which it encodes as UTF-8 and cannot: every such file went
    to FFmpeg (another decoder, so an MP3's samples could differ from the same file's under another name; none
    at all without the ffmpeg extra), and a damaged one was said to be "'utf-8' codec can't encode character
    '\\udcf6'" instead of what is wrong with it."""
    from mimi_cli.audio import LibsndfileAudio, open_audio

    plain, odd = tmp_path / "plain.flac", tmp_path / os.fsdecode(b"br\xf6t.flac")
    sf.write(plain, sf.read(clip)[0], 24000)
    shutil.copyfile(plain, odd)
    readers = [open_audio(path) for path in (plain, odd)]
    assert all(isinstance(r, LibsndfileAudio) for r in readers)
    np.testing.assert_array_equal(*(r.read(r.frames) for r in readers))
    for r in readers:
        r.close()
    cut = plain.read_bytes()[:500]
    (tmp_path / "cut.flac").write_bytes(cut)
    odd.write_bytes(cut)
    said = [one_line_error(run("encode", path), "cannot read") for path in (tmp_path / "cut.flac", odd)]
    assert "codec can't encode" not in said[1] and said[1].split("(", 1)[1] == said[0].split("(", 1)[1], said


def test_a_command_a_message_suggests_can_be_pasted_whatever_the_name(clip, tmp_path):
    """`mimi inspect` of audio suggests `mimi roundtrip NAME`: for a name that is not UTF-8 (or holds a control
    character) the quoted name showed the bytes as text, ``'caf\\xe9.wav'``, which a shell reads as a
    backslash and an x. It is ``$'caf\\xe9.wav'`` now, which bash reads back as the name itself."""
    from mimi_cli.errors import shell_word

    for raw in (b"caf\xe9 it's.wav", b"tab\tand\nline.wav", "東京 it's.wav".encode()):
        odd = tmp_path / os.fsdecode(raw)
        shutil.copyfile(clip, odd)
        said = run("inspect", odd)
        hint = re.search(r"`mimi roundtrip (.+?)` measures", said.stderr + said.stdout)
        assert hint is not None, said.stderr
        word = hint.group(1)
        assert word == shell_word(str(odd)) and "\n" not in word  # one line
        named = subprocess.run(["bash", "-c", f"printf %s {word}"], capture_output=True, check=True).stdout
        assert named == os.fsencode(odd), (word, named)


def test_the_weights_id_computed_beside_the_work_reaches_its_caller(weights_file, tmp_path, monkeypatch):
    """load_model hashes the weights on a thread of its own (pipeline.Background): its value, or its error,
    reaches whoever asks for it, in that caller's thread; with no thread to be had (ulimit -u), at once."""
    import threading

    from mimi_cli.errors import WeightsError
    from mimi_cli.pipeline import Background, load_model
    from mimi_cli.weights import weights_id

    loaded = load_model(weights_file)
    assert loaded.weights_id == weights_id(weights_file) == loaded.weights_id  # asked twice: the same value
    missing = Background(weights_id, tmp_path / "gone.safetensors")
    for _ in range(2):
        with pytest.raises(WeightsError, match="cannot read .*gone.safetensors"):
            missing.result()

    def no_thread(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    assert load_model(weights_file).weights_id == weights_id(weights_file)
