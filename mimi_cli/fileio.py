"""The one way every output is written: checked first, written aside, then moved into place;
and the one way an input that can only be read once (standard input, a pipe) is read.

Every file the tool writes (codes, audio, manifests, plots, converted weights)
goes through :func:`check_output` before any work and :func:`atomic_output`
at the end::

    check_output(OUT)         refuse, before any compute: a device, FIFO, socket, folder or symbolic
                              link at OUT; OUT being one of the run's inputs (even with -f); an
                              existing OUT without -f; a folder that is missing, read-only or not
                              writable; a name too long for the file system
    atomic_output(OUT)        write an unnamed file in OUT's folder (Linux's O_TMPFILE), or elsewhere
                              .OUT.<random>.partial beside OUT (mode 0600; once complete, 0666 less
                              the umask, as any new file)
                              ├─ any exception or signal → the temporary file is gone, OUT untouched;
                              │  an unnamed one even when the process is killed (SIGKILL)
                              └─ success → its bytes flushed to the disk (fsync), then
                                           without -f: hard-linked to OUT, which fails if OUT appeared
                                           meanwhile (two runs racing: the second says "exists")
                                           with -f: renamed over OUT (a regular file, never an input)

``-`` as an output is standard output: the file is written to a temporary file
first and copied out whole once it is complete, so a failure sends nothing.
Environment failures (permissions, read-only or full file systems, long names,
I/O errors) become one :class:`MimiError` line: ``cannot write OUT: <reason>; <what to do>``.

``-`` as an input is standard input, and a pipe (``<(command)``, a FIFO) is an input too:
:func:`readable` copies either to a temporary file first, as the readers seek.
"""

from __future__ import annotations

import contextlib
import errno
import filecmp
import functools
import hashlib
import io
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Union
from urllib.parse import unquote, urlsplit

from mimi_cli.errors import DATA_ERRORS, MimiError, OutputExistsError, UnnamableOutputError, os_reason, shell_word

STDOUT = "-"
STDIN = "-"  # the same name given as an input
Target = Union[Path, str]  # a file, or STDOUT

_ADVICE = {
    errno.EACCES: "check the folder's permissions or choose another output",
    errno.EPERM: "check the folder's permissions or choose another output",
    errno.EROFS: "choose an output on a writable file system",
    errno.ENOSPC: "free some space or choose an output on another disk",
    errno.EDQUOT: "free some space or choose another disk",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.EIO: "the device reported an I/O error: check the disk",
    errno.EFBIG: "it is larger than this shell's file size limit (ulimit -f) or the file system's largest file",
    errno.ENOENT: "create the folder first or choose another output",
    errno.ENOTDIR: "a part of the path is not a folder: choose another output",
}


def home_expanded(path: str | os.PathLike) -> Path:
    """``path`` with a leading ``~`` or ``~user`` made that home folder; as written when there is no such
    user or home (Path.expanduser raises there; the path then does not exist, and is said so)."""
    return Path(os.path.expanduser(path))


def url(text: str) -> bool:
    """``s3://bucket/x``, ``https://host/x`` (or as a Path has them, ``s3:/bucket/x``), where no such local
    path exists: mimi reads and writes this machine's files, and would otherwise make a folder ``s3:``."""
    scheme = text.split("/", 1)[0]
    return len(scheme) > 2 and scheme.endswith(":") and "/" in text and scheme[0].isalpha() \
        and all(c.isalnum() or c in "+.-" for c in scheme[:-1]) and not os.path.lexists(scheme)


def local_path(uri: str | None, label: str) -> str | None:
    """``file:///data/codes`` → ``/data/codes``; anything else as it is."""
    if uri is None or not uri.startswith("file://"):
        return uri
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise MimiError(f"{label}: {uri} names another machine ({parts.netloc}); give a path on this one")
    return unquote(parts.path, errors="surrogateescape")


def as_written(given: str | None) -> str | None:
    """A path as the user wrote it, kept a path: ``./-`` (the Unix way to name a file called "-") as
    ``$PWD/./-``, where a Path would make it ``-``, standard input or output."""
    if given is None or given == STDIN or Path(given) != Path(STDIN):
        return given
    return os.path.join(os.getcwd(), given)


def is_stdout(target: Target) -> bool:
    return isinstance(target, str) and target == STDOUT


def as_target(path: Target) -> Target:
    """An output named from Python: "-" (standard output) stays a str, any other name, str or bytes, is a Path
    (the writers take a str for standard output alone: CodesFile.save("a.npz") raised an AttributeError)."""
    return path if is_stdout(path) or isinstance(path, Path) else Path(os.fsdecode(path))


def output_exists(target: Target | None) -> bool:
    """A file output is there: a finished one, since outputs appear whole (see :func:`atomic_output`)."""
    return target is not None and not is_stdout(target) and os.path.lexists(target)


def cannot_write(path: Target, exc: OSError | str) -> MimiError:
    """The one-line error for an output that the environment refused."""
    if isinstance(exc, str):
        return MimiError(f"cannot write {_shown(path)}: {exc}")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and not is_stdout(path):  # a folder of the path is a file
        blocking = next((part for part in reversed(Path(path).parents) if part.exists() and not part.is_dir()), None)
        if blocking is not None:
            return MimiError(f"cannot write {path}: {blocking} is a file, not a folder; choose another output")
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if is_stdout(path):  # what failed is the staging copy (see atomic_output), not where stdout goes
        advice = f"it is kept in {tempfile.tempdir} until complete: set TMPDIR to a writable folder with space"
    else:
        advice = _ADVICE.get(exc.errno, "choose another output")
    return MimiError(f"cannot write {_shown(path)}: {reason}; {advice}")


def _shown(path: Target) -> str:
    return "standard output" if is_stdout(path) else str(path)


def temporary_folder(what: str) -> str:
    """The folder for ``what``'s temporary file (TMPDIR, else /tmp, /var/tmp, /usr/tmp, the working folder:
    the first one that takes a file), or a one-line error where none does (a read-only container)."""
    try:
        return tempfile.gettempdir()
    except OSError:  # FileNotFoundError: "No usable temporary directory found in [...]"
        raise MimiError("no folder for temporary files can be written (TMPDIR, /tmp, /var/tmp, /usr/tmp, the "
                        f"working folder), and {what} needs one: set TMPDIR to a writable folder with space") from None


def missing(path: Path) -> str | None:
    """Why ``path`` cannot be opened, in words ("does not exist", "cannot be reached: Too many levels of
    symbolic links", "cannot be read: Permission denied"), or None when it can be."""
    try:
        os.stat(path)
    except FileNotFoundError:
        name = str(path)  # "error:   does not exist" named a file " ": a name that starts or ends in space is quoted
        quoted = f" (the name, quoted: {shell_word(name)})" if name != name.strip() else ""
        return ("is a broken symbolic link" if os.path.islink(path) else "does not exist") + quoted
    except OSError as exc:
        return f"cannot be reached: {os_reason(exc)}"
    except ValueError:  # a NUL byte in the name
        return "is not a valid file name"
    return None


def is_folder(path: Path) -> bool:
    """``path.is_dir()`` that says False, not raises, for names the system refuses (too long, say)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def names_folder(output: str) -> bool:
    """An output given as a folder, to write into: one that exists, or a name written with a trailing /."""
    return output.endswith(("/", os.sep)) or is_folder(home_expanded(output))


def into_folder(output: str, source: str | os.PathLike, suffix: str) -> tuple[Path, bool]:
    """``-o`` of a command that writes one file: a folder (existing, or written with a trailing /) receives it
    under ``source``'s name with ``suffix``, as ``cp`` puts a file into a folder (``kyutai/mimi`` →
    ``mimi.safetensors``, ``Mimi.mlpackage/`` → ``Mimi.safetensors``). Returns (its path, may its folder be made?)."""
    path = home_expanded(output)
    if not names_folder(output):
        return path, False
    name = Path(os.path.abspath(home_expanded(source))).name or "output"  # ("/" has no name)
    return path / Path(name).with_suffix(suffix).name, not is_folder(path)


def file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISFIFO, "a pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


@dataclass(frozen=True)
class Readable:
    """An input as a file that can be read again and again: ``path`` to read, ``shown`` to name it."""

    path: Path
    shown: str

    def named(self, text: str) -> str:
        """``text`` with the temporary copy's name, if any, replaced by the input's."""
        return text if self.shown == str(self.path) else text.replace(str(self.path), self.shown)


# What a pipe's first bytes must hold before the rest is kept (see readable): plenty for any reader to know a
# format by its header, little enough to hold in memory.
HEAD_BYTES = 1 << 20


@contextlib.contextmanager
def readable(path: Target, head_check: Callable[[bytes, str], None] | None = None,
             read: bytes = b"") -> Iterator[Readable]:
    """``path`` itself; or, for ``-`` (standard input) or a pipe (``<(command)``, a FIFO), a temporary copy.

    Audio readers, NumPy archives and the codes file's checks seek, and a pipe can be read only
    once, front to back: opened twice (a check, then the reader) it lost what the first open
    read. The copy is made in blocks, so memory stays flat whatever the length (``--stream`` then
    works on pipes too), in TMPDIR, and removed afterwards, whatever happens (on Linux it never has a
    name: see :func:`_scratch_file`). Errors raised inside the block
    name the input as given (``standard input``, ``/dev/fd/63``), not the copy.

    A pipe may never end (``cat /dev/urandom |``): its copy would grow until the disk is full. So when more
    than :data:`HEAD_BYTES` come, ``head_check(first bytes, shown name)`` first says whether they can begin
    what the caller reads (raising its one-line error if not). A shorter input is copied whole, and its
    reader says what it is. ``read``: standard input's first bytes, already read (to tell what follows them).
    """
    stdin = str(path) == STDIN
    if not stdin and not is_pipe(Path(path)):
        yield Readable(Path(path), str(path))
        return
    shown = "standard input" if stdin else str(path)
    if stdin:
        check_stdin("'-'", "the data")
    folder = temporary_folder(f"reading {shown}")
    with contextlib.ExitStack() as stack:
        try:
            copy = Readable(stack.enter_context(_scratch_file(folder, f"{INPUT_COPY}{secrets.token_hex(8)}")), shown)
            with open(copy.path, "wb") as f, \
                    (contextlib.nullcontext(standard_input()) if stdin else open(path, "rb")) as source:
                head = read + _read_up_to(source, HEAD_BYTES - len(read))
                if head_check is not None and len(head) == HEAD_BYTES:  # more may follow, without end
                    head_check(head, shown)
                f.write(head)
                shutil.copyfileobj(source, f, 1 << 20)
        except OSError as exc:
            if exc.filename == str(path):
                raise MimiError(f"cannot read {shown}: {os_reason(exc)}") from None
            raise MimiError(f"cannot keep a copy of {shown} in {folder}: {exc.strerror or exc}; set TMPDIR to a "
                            "folder with space") from None
        if copy.path.stat().st_size == 0:
            raise MimiError(f"{shown} is empty (0 bytes)")
        try:
            yield copy
        except MimiError as exc:
            exc.args = (copy.named(str(exc)),)
            raise


def _read_up_to(f, size: int) -> bytes:
    """``size`` bytes of ``f``, fewer only at its end (a pipe's read may return fewer while more are coming)."""
    blocks, count = [], 0
    while count < size and (block := f.read(size - count)):
        blocks.append(block)
        count += len(block)
    return b"".join(blocks)


_SIGNATURES = ((b"RIFF", "audio (WAV)"), (b"fLaC", "audio (FLAC)"), (b"OggS", "audio (Ogg)"), (b"ID3", "audio (MP3)"),
               (b"FORM", "audio (AIFF)"), (b"\x93NUMPY", "a NumPy .npy array"),
               (b"PK\x03\x04", "a zip archive (an .npz codes file?)"), (b"PAR1", "a Parquet table"),
               (b"ARROW1", "an Arrow table"), (b"{", "JSON text"), (b"ECDC", "EnCodec codes (.ecdc)"),
               # what a clone of a Hugging Face or other Git LFS repository holds where git-lfs did not fetch
               (b"version https://git-lfs.github.com/spec/", "a Git LFS pointer (fetch the file: git lfs pull)"))


def safetensors_head(head: bytes) -> bool:
    """A file's first bytes are a .safetensors header: an 8-byte header length (its first byte may be "{" or "[",
    as JSON's first would be), then the JSON header."""
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 27


def holds(path: Path) -> str | None:
    """What a file's first bytes say it holds ("audio (WAV)", "a NumPy .npy array", ".safetensors weights"),
    or None when they say nothing this tool knows: for errors that point a user at the right command."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe or a device: nothing to sniff, nothing to block on
            return None
        with open(path, "rb") as f:
            head = f.read(264)
    except (OSError, ValueError):
        return None
    return head_holds(head)


def head_holds(head: bytes) -> str | None:
    """What data whose first 264 bytes are ``head`` holds: see :func:`holds`."""
    if safetensors_head(head):
        return ".safetensors weights"
    if head.startswith(b"PK\x03\x04") and head[30:30 + int.from_bytes(head[26:28], "little")].endswith(b"/data.pkl"):
        return "a PyTorch file (torch.save's pickle)"  # its first member, named in the first local header
    if head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05":
        return "a Python pickle"
    kind = next((kind for magic, kind in _SIGNATURES if head.startswith(magic)), None)
    if kind is None and head[257:262] == b"ustar":
        kind = "a tar archive (a WebDataset shard?)"
    return kind or text_kind(head)


def text_kind(head: bytes) -> str | None:
    """"a web page (HTML) …" or "text" for a file that begins as text: a page saved where a download was meant
    (Hugging Face's /blob/ link gives the page about a file, /resolve/ the file), a list, notes."""
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):
        return "a web page (HTML; a Hugging Face /blob/ link saves the page, a /resolve/ link the file)"
    for cut in range(4):  # the first bytes may end inside a character of several bytes
        try:
            chars = head[:len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    return "text" if chars.strip() and all(c.isprintable() or c in "\t\n\r\f" for c in chars) else None


def is_pipe(path: Path) -> bool:
    """A FIFO: ``<(command)`` (``/dev/fd/63``), ``/dev/stdin`` on a pipe, a named pipe."""
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def zip_members(path: Path) -> list | None:
    """A zip's directory (``zipfile.ZipInfo`` entries), read without any member; None when it is no readable zip."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.infolist()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, *DATA_ERRORS):
        return None  # NotImplementedError: a member of a zip version zipfile does not know (a damaged directory)


def native(path: Path | str) -> bytes:
    """``path`` as the file system's bytes, for a library that encodes a name itself (libsndfile's soundfile;
    pyarrow, whose files are opened by these bytes: sources.arrow_file). A name that is not UTF-8
    (``caf\\xe9.wav`` from a Latin-1 system), which Python holds with surrogate escapes, cannot be encoded as
    UTF-8; its bytes always open it."""
    return os.fsencode(path)


def file_ids(paths: Iterable[Path]) -> set[tuple[int, int]]:
    """(device, inode) of each existing path (links followed): what makes two names the same file. ``-`` is
    standard input's: a file the shell opened (``< take.wav``) is an input as much as one named."""
    ids = set()
    for path in paths:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # (AttributeError: stdin closed, None)
            st = os.fstat(sys.stdin.fileno()) if str(path) == STDIN else os.stat(path)
            ids.add((st.st_dev, st.st_ino))
    return ids


class _WaitingReader:
    """A binary reader whose ``read`` waits for data. Standard input may be non-blocking: O_NONBLOCK belongs to
    the open pipe or terminal, which this process shares with whoever set it (a program that left its own
    standard input so, a Node.js parent's), and a read that finds nothing yet returns None there, which every
    reader takes for the end: "standard input is empty" while the data was still coming."""

    def __init__(self, f) -> None:
        self._f = f

    def read(self, size: int = -1) -> bytes:
        return self._waited(lambda: self._f.read(size))

    def read1(self, size: int) -> bytes:
        """What has come, at most ``size`` bytes, waiting only until something has; b"" at the end."""
        return self._waited(lambda: self._f.read1(size))

    def readline(self, limit: int) -> bytes:
        """A line with its newline, at most ``limit`` bytes; without one only at the end of the data."""
        parts, size = [], 0
        while size < limit:
            part = self._waited(functools.partial(self._f.readline, limit - size))  # (non-blocking: part, maybe)
            if not part:
                break
            parts.append(part)
            size += len(part)
            if part.endswith(b"\n"):
                break
        return b"".join(parts)

    def _waited(self, call: Callable[[], bytes | None]) -> bytes:
        """What ``call`` reads, once it reads something (None, or BlockingIOError: nothing has come yet)."""
        import select

        while True:
            try:
                data = call()
            except BlockingIOError:
                data = None
            if data is not None:
                return data
            select.select([self._f], [], [])


def standard_input() -> _WaitingReader:
    """Standard input's bytes, as a reader that waits for them (see :class:`_WaitingReader`)."""
    return _WaitingReader(sys.stdin.buffer)


class WaitingWriter(io.RawIOBase):
    """Descriptor ``fd`` (not closed with the stream) as a raw stream whose ``write`` writes all it is given,
    waiting while the descriptor is full. Standard output may be non-blocking, as standard input may (see
    :class:`_WaitingReader`): there a write that finds the pipe full writes part or nothing, Python's buffered
    stream raises BlockingIOError, and what it held was lost as it closed (`inspect --json` to a slow reader
    gave 64 KiB of its JSON, and exit 0)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def write(self, data) -> int:
        import select

        view, done = memoryview(data).cast("B"), 0
        while done < len(view):
            try:
                done += os.write(self._fd, view[done:])
            except BlockingIOError:
                select.select([], [self._fd], [])
        return done


def check_stdin(given: str, what: str) -> None:
    """Standard input can be read: neither closed (``<&-``) nor a terminal, where nothing was piped in, nor
    another device (``< /dev/zero`` never ends: its copy would fill the disk, a list's the memory)."""
    state = "closed" if sys.stdin is None else "a terminal" if sys.stdin.isatty() else None
    if state is None:
        with contextlib.suppress(OSError, ValueError):
            fd = sys.stdin.fileno()  # (0, but for a stand-in)
            mode = os.fstat(fd).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                state = "a device"
                with contextlib.suppress(OSError):
                    state = f"the device {os.readlink(f'/proc/self/fd/{fd}')}"
    if state:
        raise MimiError(f"{given} reads standard input, which is {state} here; pipe {what} in")


def check_suffix(path: Path, what: str, suffixes: tuple[str, ...], folder_hint: bool = False,
                 to_stdout: bool = True) -> None:
    """An output file's name says what it holds: refuse another suffix (an .npz named out.txt misleads the next
    tool, as audio written under a name no audio format has would). ``folder_hint``: -o could name a folder.
    A name that is no file at all (``/dev/null``, a pipe) is refused as such first, as check_output does
    (``to_stdout`` as there)."""
    if str(path) == STDOUT:  # "-" (or "./-", which a Path makes "-": a name without the suffix either way)
        raise MimiError(f"{what} go to a file here, not to standard output ('-'); give a {either(suffixes)} name")
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):  # a folder is a place to write into, for the callers that take one
            _refuse_other_kinds(path, st, to_stdout)
    if path.suffix.lower() not in suffixes:
        folder = ", or end it with / for a folder" if folder_hint and not path.suffix else ""
        raise MimiError(f"cannot write {what} as {path.suffix or 'a file without extension'}; give a "
                        f"{either(suffixes)} name{folder}")


def either(suffixes: tuple[str, ...]) -> str:
    """".npz or .npy"; ".npz, .npy or .ecdc"."""
    return " or ".join(filter(None, (", ".join(suffixes[:-1]), suffixes[-1])))


def stdout_closed() -> bool:
    """Standard output was closed (``>&-``): Python has None there, or cli.main's stand-in, which is closed."""
    return sys.stdout is None or getattr(sys.stdout, "closed", False)


def _refuse_other_kinds(path: Path, st: os.stat_result, to_stdout: bool = True) -> None:
    """Refuse an output that exists and is not a regular file (``st`` is its ``lstat``), saying what it is;
    ``to_stdout``: the command may write to standard output instead (``-``), which feeds a program."""
    kind = file_kind(st.st_mode)
    if kind is None:
        return
    what = f"{kind} to {os.readlink(path)}" if kind == "a symbolic link" else kind
    hint = "give a file name that does not exist or names a regular file"
    with contextlib.suppress(OSError):  # >(program) is /dev/fd/63, a link to a pipe
        if to_stdout and file_kind(os.stat(path).st_mode) in ("a pipe (FIFO)", "a socket"):
            hint = "to feed a program, give - (standard output) and pipe it: | program"
        elif to_stdout and stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat(os.devnull).st_rdev:  # (to time a run)
            hint = "to discard the output, give - (standard output) and send it there: -o - > /dev/null"
    raise MimiError(f"{path} is {what}; outputs are only ever regular files: {hint}")


def check_output(path: Target, replace: bool, inputs: set[tuple[int, int]] = frozenset(),
                 create_parents: bool = False, to_stdout: bool = True, folders: dict | None = None) -> None:
    """Refuse, before any work, an output that cannot or must not be written (see the module docstring).

    ``inputs`` are :func:`file_ids` of the run's inputs; ``replace`` is -f/--force;
    with ``create_parents`` a missing folder is fine if it can be made; ``to_stdout``: the command can write
    to standard output instead (not ``mimi convert``), which a refusal of a pipe then suggests; ``folders``:
    what :func:`_folder_problem` found of each folder, kept by the caller over one plan's outputs (a list of a
    million files in a few folders checked each folder a million times).
    """
    path = as_target(path)
    if is_stdout(path):
        if stdout_closed():
            raise MimiError("standard output is closed; redirect it (> file, | program) or give -o FILE")
        if sys.stdout.isatty():
            raise MimiError("standard output is a terminal; redirect it (> file, | program) or give -o FILE")
        check_stdout_apart(inputs)
        temporary_folder("writing to standard output")  # (where it is kept until complete: see atomic_output)
        return
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise UnnamableOutputError(str(cannot_write(path, exc)), os_reason(exc)) from None
        raise cannot_write(path, exc) from None
    except ValueError:  # a NUL byte in the name
        reason = "its name holds a NUL character, which no file name can"
        raise UnnamableOutputError(str(cannot_write(path, reason)), reason) from None
    if st is not None:
        _refuse_other_kinds(path, st, to_stdout)
        if (st.st_dev, st.st_ino) in inputs:
            raise MimiError(f"{path} is also an input of this run and would be destroyed; choose another output")
        if not replace:
            raise OutputExistsError(f"{path} already exists; pass -f/--force to replace it")
        if _someone_elses_in_a_sticky_folder(path, st):
            raise cannot_write(path, "it is another user's file in a folder where only a file's owner may replace "
                                     "it (sticky, as /tmp is); choose another output")
    folders = {} if folders is None else folders
    key = (path.parent, create_parents)
    if key not in folders:
        folders[key] = _folder_problem(path.parent, create_parents)
    problem, limit = folders[key]
    if problem is not None:
        raise cannot_write(path, problem)
    if len(os.fsencode(path.name)) > limit:
        raise cannot_write(path, f"the name is {len(os.fsencode(path.name))} bytes long, and this file system "
                                 f"allows {limit}; choose a shorter name")


def check_stdout_apart(inputs: set[tuple[int, int]]) -> None:
    """Refuse, before any work, a standard output redirected into one of the run's inputs (``inputs``: their
    :func:`file_ids`): `mimi decode a.npz -o - >> a.npz` appended the audio to the codes it read, which then
    no longer opened, and a report appended to weights spoils them alike (as ``cat a >> a`` is refused)."""
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or a stand-in (a test's)
        return
    if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in inputs:
        raise MimiError("standard output goes into a file that is an input of this run, which the output would "
                        "spoil; redirect it to another file")


def _folder_problem(folder: Path, create_parents: bool) -> tuple[str | OSError | None, int]:
    """Why no file can be written in ``folder`` (or in the folders to be made, with ``create_parents``), or
    None; and the longest file name its file system allows."""
    existing = _nearest_existing(folder)
    problem = (f"folder {folder} does not exist; create it first or choose another output"
               if existing != folder and not create_parents else
               f"{existing} is not a folder" if not existing.is_dir() else
               OSError(errno.EROFS, os.strerror(errno.EROFS)) if _read_only(existing) else
               OSError(errno.EACCES, os.strerror(errno.EACCES)) if not os.access(existing, os.W_OK | os.X_OK)
               else None)
    return problem, _name_max(existing)


def _nearest_existing(folder: Path) -> Path:
    """``folder``, or the nearest of its parents that exists (the file system a folder to be made would be on)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _someone_elses_in_a_sticky_folder(path: Path, st: os.stat_result) -> bool:
    """Whether ``-f`` would be refused at the very end (EPERM on the rename): in a folder with the sticky bit, a
    file only its owner, the folder's owner or root may replace."""
    try:
        folder = os.stat(path.parent)
    except OSError:
        return False
    return bool(folder.st_mode & stat.S_ISVTX) and os.geteuid() not in (0, st.st_uid, folder.st_uid)


def fitted(path: Path, base: Path) -> Path:
    """``path`` with each of its parts under ``base`` that is longer than the file system allows shortened to
    fit: its start, ``~``, 12 hex digits of its hash, and (the file's) its suffix. A run's outputs named from
    tar members, manifest lines or long file names fit, rather than a run refused for one of them; the same
    name always gives the same shortened one, so a resumed run finds its outputs."""
    if max(map(len, os.fsencode(path).split(b"/"))) <= 143:  # what every file system allows (eCryptfs: 143)
        return path  # (said of every part, as bytes: quicker than Path.relative_to, once per output of a run)
    parts = path.relative_to(base).parts
    if all(len(os.fsencode(part)) <= 143 for part in parts):  # a long part above base
        return path
    limit = _name_max(_nearest_existing(base))
    return base.joinpath(*(_fit(part, limit, last=i == len(parts) - 1) for i, part in enumerate(parts)))


def _fit(name: str, limit: int, last: bool) -> str:
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    suffix = os.fsencode(Path(name).suffix) if last and len(Path(name).suffix) <= 16 else b""
    tag = b"~" + hashlib.sha256(raw).hexdigest()[:12].encode()
    return os.fsdecode(_cut(raw, limit - len(tag) - len(suffix)) + tag + suffix)


def _cut(raw: bytes, size: int) -> bytes:
    """A file name's first ``size`` bytes, cut on a character's boundary when the name is UTF-8."""
    head = raw[:size]
    try:
        return head.decode("utf-8", "ignore").encode() if raw.decode("utf-8") else head
    except UnicodeDecodeError:
        return head


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def _remove_commit_leftovers(path: Path) -> None:
    """Remove the temporary names of ``path`` that are ``path`` itself (a hard link): a process stopped
    between committing its output and removing the temporary name leaves one. A temporary file that is
    not the output may be another run's work in progress, and is left alone."""
    with contextlib.suppress(OSError):
        output = os.stat(path)
        for entry in os.scandir(path.parent):
            if entry.name.startswith(".") and ".partial" in entry.name and entry.is_file(follow_symlinks=False):
                found = entry.stat(follow_symlinks=False)
                if (found.st_ino, found.st_dev) == (output.st_ino, output.st_dev):
                    os.unlink(entry.path)


def _temporary_name(path: Path) -> str:
    """``.NAME.<random>.partial.SUFFIX``, shortened so that it fits the file system's name limit."""
    token = secrets.token_hex(4)
    suffix = path.suffix if len(path.suffix) <= 16 else ""
    tail = f".{token}.partial{suffix}"
    room = max(8, _name_max(path.parent) - len(os.fsencode(tail)) - 1)
    stem = os.fsdecode(_cut(os.fsencode(path.name), room))  # in the file system's encoding, whatever the locale
    return f".{stem}{tail}"


@contextlib.contextmanager
def atomic_output(path: Target, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; move it to ``path`` only if the block succeeds.

    On any exception, Ctrl-C and the signals :mod:`mimi_cli.signals` turns into
    exceptions included, the temporary file is removed and ``path`` is left as it was.
    The temporary path may have no suffix (``/proc/self/fd/N``): writers name their format.
    """
    path = as_target(path)
    if is_stdout(path):
        # a name of its own: one left by a killed run, another user's or a concurrent run's never blocks this one
        staging = temporary_folder("writing to standard output")
        with _through_temporary(staging, f".mimi-stdout.{secrets.token_hex(8)}.partial") as tmp:
            yield tmp
            _copy_to_stdout(tmp)
        return
    try:  # a batch's mirrored folder is made only now, once the file's work has succeeded
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a folder of the path made a file meanwhile is named (cannot_write)
        raise cannot_write(path, exc) from None
    with _through_temporary(path.parent, _temporary_name(path), path) as tmp:
        yield tmp
        with contextlib.suppress(OSError):  # a file system whose modes are its mount's (FAT, SMB, some FUSE)
            os.chmod(tmp, 0o666 & ~_umask())  # as any new file: written as 0600 (see _scratch_file)
        _on_disk(tmp)
        _commit(tmp, path, replace)
        _name_on_disk(path.parent)


def _on_disk(tmp: Path) -> None:
    """The finished file's bytes on the disk before it takes its name (fsync). Otherwise a crash (power, the
    kernel, a VM stopped) soon after could leave OUT empty or short, with -f in the old file's place; and a
    file system that finds only now that it has no room (NFS, a quota, delayed allocation) would have its
    error lost, and a short file named, where now it is said before OUT exists. A file system that cannot
    flush (EINVAL and the like: a few FUSE and special ones) is passed over, as having nothing more to do."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FLUSH:
            raise
    finally:
        os.close(fd)


_NO_FLUSH = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


def _name_on_disk(folder: Path) -> None:
    """The folder's new name on the disk too (fsync of the folder), where the system allows: a folder this
    process may not read, or a file system that does not sync folders, is passed over (the file is whole)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))  # (Windows has none, nor opens one)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """This process's umask, as Linux shows it (4.7 and later); elsewhere set to read it and put back at once,
    to the stricter 0077 meanwhile: a file another thread makes in that instant is its owner's alone."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


# The temporary files this process is writing. A signal's exception can land where no ``finally`` will
# see it: between a block's last line and its context manager's ``__exit__`` (or in that ``__exit__``,
# before it resumes the generator), the generator then left suspended, its ``finally`` run only when it
# is collected, which a worker that ends with ``os._exit`` never does. remove_temporaries() removes them.
_WRITING: set[Path] = set()


def remove_temporaries() -> None:
    """Remove the temporary files this process is still writing: for a process about to end at once (a worker
    stopped by a signal ends with ``os._exit``), where a ``finally`` pre-empted by the signal would not run."""
    for tmp in list(_WRITING):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _WRITING.clear()


@contextlib.contextmanager
def _through_temporary(folder, name: str, shown: Target = STDOUT) -> Iterator[Path]:
    try:
        with _scratch_file(folder, name) as tmp:
            yield tmp
    except (MimiError, BrokenPipeError):  # BrokenPipeError: standard output's reader went away (_copy_to_stdout)
        raise
    except OSError as exc:
        raise cannot_write(shown, exc) from None


# An unnamed file is written through this folder of the process's own descriptors (see _scratch_file).
_OWN_FILES = "/proc/self/fd"
INPUT_COPY = "mimi-input-"  # the name of a copy of standard input or a pipe, where it has one (see readable)


def is_input_copy(path: Target) -> bool:
    """Whether ``path`` is :func:`readable`'s copy of standard input or a pipe: a file with no folder of its own
    (what stands beside it, or above it, is not the input's)."""
    path = str(path)
    return path.startswith(f"{_OWN_FILES}/") or os.path.basename(path).startswith(INPUT_COPY)


@contextlib.contextmanager
def _scratch_file(folder, name: str) -> Iterator[Path]:
    """A new, empty file in ``folder``, as a path to open and write.

    Where Linux has them (``O_TMPFILE``), the file has no name at all: it is ``/proc/self/fd/N``
    until :func:`_link` gives it one, so a process killed at any moment (SIGKILL, the
    out-of-memory killer) leaves nothing behind. Elsewhere (macOS, file systems without
    them) it is ``folder/name``, removed on the way out, and by :func:`remove_temporaries`
    when a signal pre-empts that. OSError when neither can be made (a full or read-only disk).
    The file is its owner's alone to read and write (0600) whatever the umask: the writers open it again by
    its name, which a umask taking the owner's write permission (0277) refused, and a copy of standard input
    is nobody else's business. An output gets the umask's permissions once complete (atomic_output).
    """
    fd = _unnamed_file(folder)
    if fd is not None:
        try:
            with contextlib.suppress(OSError):  # (refused where modes are the mount's, and moot there)
                os.fchmod(fd, 0o600)
            yield Path(f"{_OWN_FILES}/{fd}")
        finally:
            os.close(fd)  # the file goes with its last descriptor, unless linked into place meanwhile
        return
    with _listed(Path(folder) / name) as tmp:
        created = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with contextlib.suppress(OSError, AttributeError):  # no fchmod on Windows before Python 3.13
                os.fchmod(created, 0o600)
        finally:
            os.close(created)
        yield tmp


@contextlib.contextmanager
def _listed(tmp: Path) -> Iterator[Path]:
    """A temporary name this process makes (random: never another's), listed for remove_temporaries before it
    exists (a signal right after the create still finds it) and removed on the way out (gone already once it
    was moved into place)."""
    _WRITING.add(tmp)
    try:
        yield tmp
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
        _WRITING.discard(tmp)


def _unnamed_file(folder) -> int | None:
    """A descriptor of a new unnamed file in ``folder`` (``O_TMPFILE``), or None where there is none to be had:
    not Linux, no /proc, a kernel or file system without them, or a sandbox where /proc cannot open one
    again. A refusal that any file would meet there (read-only, full, not allowed) is raised."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir(_OWN_FILES):
        return None
    try:
        fd = os.open(folder, flag | os.O_RDWR, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS):  # EISDIR: before Linux 3.11
            return None
        raise
    try:  # the writers open it by its /proc name
        os.close(os.open(f"{_OWN_FILES}/{fd}", os.O_RDONLY))
    except OSError:
        os.close(fd)
        return None
    return fd


def _is_unnamed(tmp: Path) -> bool:
    return str(tmp).startswith(f"{_OWN_FILES}/")


def _link(tmp: Path, path: Path) -> None:
    """Give the finished file ``tmp`` the name ``path``: a hard link, which fails if ``path`` exists."""
    if not _is_unnamed(tmp):
        os.link(tmp, path)
        return
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)  # (O_PATH: a folder without read permission too)
    try:  # with a folder's descriptor os.link calls linkat(AT_SYMLINK_FOLLOW): the file /proc names, not the link
        os.link(tmp, path.name, dst_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)


def _commit(tmp: Path, path: Path, replace: bool) -> None:
    """Move the finished temporary file into place (see the module docstring)."""
    if replace:
        with contextlib.suppress(FileNotFoundError):  # again: something else may be there by now
            kind = file_kind(os.lstat(path).st_mode)
            if kind is not None:
                raise MimiError(f"{path} became {kind} while this run was working; it was left as it is")
        _through_a_name(tmp, path, os.replace) if _is_unnamed(tmp) else os.replace(tmp, path)
        return
    try:
        _link(tmp, path)  # atomic, and fails if path exists: the exclusive create
    except FileExistsError:
        if _already_this(tmp, path):
            return
        raise OutputExistsError(f"{path} appeared while this run was working (another run?); it was left "
                                "as it is: pass -f/--force to replace it") from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # no hard links on this file system (FAT, some network mounts): a plain rename after a last check
        if os.path.lexists(path):
            if _already_this(tmp, path):
                return
            raise OutputExistsError(f"{path} appeared while this run was working; pass -f/--force to replace "
                                    "it") from None
        _through_a_name(tmp, path, os.rename) if _is_unnamed(tmp) else os.rename(tmp, path)


_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK)


def _through_a_name(tmp: Path, path: Path, move) -> None:
    """Move the unnamed file ``tmp`` to ``path`` with ``move`` (os.replace, os.rename), which needs a name to
    move: a temporary one beside ``path``, linked (or copied, where the file system has no hard links).
    A SIGKILL in that instant leaves the name, as it would any temporary name."""
    with _listed(path.parent / _temporary_name(path)) as named:
        try:
            _link(tmp, named)
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            shutil.copyfile(tmp, named)
        move(named, path)


def _already_this(tmp: Path, path: Path) -> bool:
    """Whether the output that appeared is this very result, byte for byte: an earlier try of the same file
    wrote it, and its worker died before reporting it (a pool broken by another file, an actor that Ray
    retries). Then it is done, and the earlier try's temporary name (a hard link of it) is removed."""
    filecmp.clear_cache()  # keyed by names and stat signatures: an unnamed file's /proc name is used again
    try:
        same = os.path.isfile(path) and not os.path.islink(path) and filecmp.cmp(tmp, path, shallow=False)
    except OSError:
        return False
    if same:
        _remove_commit_leftovers(path)
    return same


def _copy_to_stdout(tmp: Path) -> None:
    with open(tmp, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            write_stdout(block)
    write_stdout(b"", flush=True)


def write_stdout(data: bytes, flush: bool = False) -> None:
    """Write all of ``data`` to standard output (see _write_all); a write that fails is one line: where it is
    redirected (a full disk, say). Its reader going away (``| head``) is left to cli.main, which ends in silence
    as a Unix tool does."""
    out = sys.stdout.buffer
    try:
        _write_all(out, memoryview(data))
        if flush:
            out.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise MimiError(f"cannot write to standard output: {os.strerror(exc.errno) if exc.errno else exc}; "
                        "check where it is redirected") from None


def _write_all(out, block: memoryview) -> None:
    """Write all of ``block`` to ``out``. Standard output is a raw file under ``PYTHONUNBUFFERED=1`` or
    ``python -u`` (Docker images set it), whose write may take part of a block and return how much: a reader
    that went away then lost the rest in silence, and the run said it was done (shutil.copyfileobj ignores
    the count). None: a non-blocking descriptor that is full, waited on."""
    import select

    while block:
        written = out.write(block)
        if written is None:
            select.select([], [out], [])
        else:
            block = block[written:]
