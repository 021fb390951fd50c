"""Exceptions whose message is meant for the user: the CLI prints it as one line.

Every message says what is wrong and, where it helps, what to do about it.
"""

import contextlib
import errno
import math
import numbers
import os
from collections.abc import Iterator


class MimiError(Exception):
    """Base class: a problem with the user's input, files or environment, not a bug."""


class InvalidAudioError(MimiError, ValueError):
    """Audio that cannot be read or encoded (unreadable file, wrong dtype or shape, NaN/Inf)."""


class InvalidCodesError(MimiError, ValueError):
    """Codes (in memory or in a codes file) that cannot be decoded."""


class WeightsError(MimiError, ValueError):
    """A weights file that is missing, unreadable or does not match the model."""


class OutputExistsError(MimiError, FileExistsError):
    """An output file exists and overwriting was not asked for."""


class UnnamableOutputError(MimiError):
    """An output whose name the system refuses (a path longer than it takes, a NUL); ``reason`` says which."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def check_integer(name: str, value, low: int, high: int | None = None) -> int:
    """An argument from Python: ``value`` an integer (not a bool) in ``low..high``, else TypeError or ValueError
    naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be at least {low:,}, got {value:,}" if high is None else
                         f"{name} must be in {low:,}..{high:,}, got {value:,}")
    return int(value)


def check_flag(name: str, value) -> bool:
    """An argument from Python: True or False (0 and 1, and NumPy's booleans, pass too), else TypeError naming
    ``name``; a string such as "no" would otherwise be taken as true."""
    numpy_bool = getattr(value, "dtype", None) is not None and value.dtype.kind == "b" and value.ndim == 0
    if not numpy_bool and (not isinstance(value, numbers.Integral) or value not in (0, 1)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_path(name: str, value) -> str:
    """An argument from Python: a path (str, Path, or bytes as the file system gives them), not empty, as a str;
    else TypeError or ValueError naming ``name``. An empty name would be taken for the current folder."""
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or Path), got {value!r}")
    text = os.fsdecode(value)
    if not text:
        raise ValueError(f"{name} holds an empty name (''); give a path")
    return text


def check_choice(name: str, value, choices: tuple) -> None:
    """An argument from Python: ``value`` is one of ``choices``, else ValueError naming ``name``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


# What a parser meeting bytes it did not expect can raise from Python itself: data of the wrong
# type or shape, numbers out of range, text that does not decode, nesting past the stack. At a
# reader's boundary these become that reader's own error (see :func:`malformed`). MemoryError is
# not among them on purpose: readers check declared sizes before allocating, and a MemoryError
# that escapes is a reader bug for the fuzz tests to find.
DATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError, OverflowError,
               UnicodeError, EOFError, ArithmeticError)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (another library's, often several lines), at most ``limit``
    characters; "" when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else ""


def malformed(error: type[MimiError], what: str, exc: BaseException) -> MimiError:
    """``error("cannot read WHAT: malformed data (<the Python error>)")``, one line."""
    detail = first_line(exc)
    return error(f"cannot read {what}: malformed data ({type(exc).__name__}{': ' + detail if detail else ''})")


def printable(text: str) -> str:
    """``text`` with control characters (terminal escape sequences, say) shown as ``\\xNN``, and line breaks
    as ``\\n``, not sent raw: a message stays one line whatever a file's name holds. A name's byte that is not
    UTF-8 (Python holds it as a surrogate, U+DC80–U+DCFF) is that byte, ``caf\\xe9.wav``, as Parquet shows it."""
    return "".join(map(_visible, text))


def _visible(c: str) -> str:
    if c.isprintable() or c == "\t":
        return c
    if "\udc80" <= c <= "\udcff":  # a byte of a name, held as a surrogate
        return f"\\x{ord(c) - 0xDC00:02x}"
    return repr(c)[1:-1]


def counted(n: int, noun: str) -> str:
    """``1 codebook``, ``8 codebooks``: a count with its noun, in the plural but for one."""
    return f"{n} {noun}" + "s" * (n != 1)


def shell_word(name: str) -> str:
    """``name`` as one word a shell reads back as that name, for a command a message suggests: quoted as
    :func:`shlex.quote` quotes, or, when the name holds bytes that are not UTF-8 or control characters (which no
    quotes can show on one line), in the ``$'…'`` quoting of bash, zsh and ksh, those bytes as ``\\xNN``:
    ``$'caf\\xe9.wav'``."""
    import shlex

    if all(c.isprintable() for c in name):
        return shlex.quote(name)
    return "$'" + "".join(_ansi_c(c) for c in name) + "'"


def _ansi_c(c: str) -> str:
    """One character of a ``$'…'`` word: itself, or its bytes (a surrogate: the name's byte) as ``\\xNN``."""
    if c in "'\\":
        return "\\" + c
    if c.isprintable():
        return c
    return "".join(f"\\x{b:02x}" for b in os.fsencode(c))


def usable_memory() -> int:
    """The memory this process may use, in bytes, 0 where the system does not say: the machine's, or less where
    its control group sets a limit (a container's, systemd's MemoryMax). What a size declared by a file or a
    program is checked against before allocating: the system grants large arrays lazily, then kills the
    process that fills them, without a word."""
    from mimi_cli.core import cgroups

    machine, limit = _machine_memory(), cgroups.memory_limit()
    return min(machine, limit) if limit else machine


def _machine_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def memory_said(memory: int, figures: int = 2) -> str:
    """``memory`` (from :func:`usable_memory`) as a message names it: "this machine's 24 GB", or "the 2.5 GB
    this process may use (its control group's limit: a container's memory)" where that limit is the smaller."""
    from mimi_cli.core import cgroups

    if memory == cgroups.memory_limit() and memory < _machine_memory():
        return (f"the {gigabytes(memory, figures)} this process may use (its control group's limit: a container's "
                "memory)")
    return f"this machine's {gigabytes(memory, figures)}"


def gigabytes(size: float, figures: int = 2) -> str:
    """``size`` bytes as "24 GB", "2.5 GB" or "0.031 GB": ``figures`` figures below 10 GB, where a container's are."""
    gb = size / 1e9
    return f"{gb:,.0f} GB" if gb >= 10 else f"{gb:.{figures}g} GB"


def refusal_said(needed: float, memory: int) -> tuple[str, str]:
    """What a refusal of :func:`over_memory` says of ``needed`` and of ``memory``: ("about 2.1 GB", "the 0.42 GB
    this process may use (…)"). Where ``needed`` is within the memory but not its 90 %, the share is said and
    three figures given: "about 1.1 GB, more than the 1.1 GB" was said of 1.06 GB in 1.07."""
    if needed <= memory:
        return f"about {gigabytes(needed, 3)}", f"90 % of {memory_said(memory, 3)}, the rest left to the system"
    return f"about {gigabytes(needed)}", memory_said(memory)


def over_memory(needed: float) -> int:
    """The memory this process may use when ``needed`` bytes would take more than 90 % of it (room for the
    system and other programs); 0 when it fits, or where the system does not say."""
    memory = usable_memory()
    return memory if memory and needed > 0.9 * memory else 0


# What the system runs out of, whatever the step (a pool's pipes, a worker's files, a weights file's mapping).
SYSTEM_LIMITS = {
    errno.EMFILE: "raise the limit on open files (ulimit -n), or with --jobs use fewer",
    errno.ENFILE: "the system's table of open files is full: close other programs, or with --jobs use fewer",
    errno.ENOMEM: "free some memory or raise the limit (ulimit -v)",
}


# Why the system would not start a thread or a process (pthread_create's and fork's EAGAIN), whatever the step
# that asked for one: every thread counts.
TASK_LIMIT = ("a limit on this user's processes and threads (ulimit -u, or a container's pids limit) or on memory "
              "(ulimit -v) is reached")  # (a thread's stack is memory too: pthread_create's EAGAIN is either)


def task_limit(what: str, advice: str = "use fewer --threads and --jobs") -> MimiError:
    """``what`` (a thread, a pool's processes) refused by the system, with what to do."""
    return MimiError(f"cannot start {what}: {TASK_LIMIT}: raise it, or {advice}")


def no_thread(exc: BaseException) -> MimiError | None:
    """A thread the system refused to start (Python's RuntimeError "can't start new thread"), as a message that
    says what to do; None for any other error."""
    if isinstance(exc, RuntimeError) and str(exc).startswith("can't start new thread"):
        return task_limit("a thread")
    return None


def os_reason(exc: OSError) -> str:
    """An OSError's reason, for a message: the system's words, and what to do when a limit of the system
    was reached (a memory map refused under ``ulimit -v`` says only "Cannot allocate memory")."""
    if exc.errno == errno.ENOENT and _relative(exc.filename) and working_folder_gone():
        return "the current folder was deleted; cd to a folder that exists"
    reason = exc.strerror or str(exc)
    advice = SYSTEM_LIMITS.get(exc.errno)
    return f"{reason}; {advice}" if advice else reason


def _relative(name: object) -> bool:
    """A name that is looked up from the current folder: relative, or none at all (``os.getcwd`` itself, and
    ``os.path.abspath`` through it, fail with no name)."""
    import os

    return name is None or (isinstance(name, (str, bytes)) and not os.path.isabs(name))


def working_folder_gone() -> bool:
    """The shell's current folder was removed (``rm -r`` from another shell): a relative name finds nothing and
    no file can be made there, ``os.getcwd`` fails, and so does every worker process, which starts in it."""
    import os

    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


def unnamable(exc: UnicodeEncodeError) -> MimiError | None:
    """A name (from a manifest, a tar member, a table) that this system's file names cannot hold: under a locale
    that is not UTF-8 (``LC_ALL=C`` with Python's UTF-8 mode off, Latin-1), Python encodes names in it, and
    ``é`` or ``東`` has no bytes there; or a name whose bytes are not in that encoding, given to a library that
    encodes names itself (fileio.native gives them bytes). None for an encoding error of anything else."""
    import codecs
    import sys

    if codecs.lookup(exc.encoding).name != codecs.lookup(sys.getfilesystemencoding()).name:
        return None
    if any("\udc80" <= c <= "\udcff" for c in exc.object[exc.start:exc.end]):  # bytes that were not UTF-8
        return MimiError(f"the name {exc.object!r} holds bytes that are not {sys.getfilesystemencoding()} (another "
                         "system's names), which a library here cannot take; rename it (e.g. convmv -f latin1 -t utf8)")
    return MimiError(f"the name {exc.object!r} has characters that this system's file names "
                     f"({sys.getfilesystemencoding()}) cannot hold; run under a UTF-8 locale (LANG=C.UTF-8) or "
                     "with PYTHONUTF8=1")


def out_of_memory(exc: MemoryError, more: str = "") -> MimiError:
    """A memory allocation refused by the system (a full machine, or a limit such as ``ulimit -v``);
    ``more`` is advice of the command's own."""
    detail = f" ({first_line(exc)})" if first_line(exc) else ""
    return MimiError(f"out of memory{detail}; free some memory or raise the limit (ulimit -v){more}")


def no_room_to_load(exc: BaseException) -> MimiError | None:
    """A compiled library the system had no memory to load (ImportError "failed to map segment from shared
    object", under ulimit -v), said as the memory it is; None for any other error."""
    if isinstance(exc, ImportError) and "failed to map segment" in str(exc):
        return out_of_memory(MemoryError(f"no room to load {exc.name or 'a library'}"))
    return None


@contextlib.contextmanager
def needs_extra(missing: str, package: str) -> Iterator[None]:
    """Imports of an optional extra inside the block: not installed, a MimiError saying ``missing`` (what needs
    it, and the pip command); installed but not loadable, a MimiError saying so, not that it should be
    installed: no memory to map it (ulimit -v), or a broken install of ``package`` (pip's name)."""
    try:
        yield
    except ModuleNotFoundError:
        raise MimiError(missing) from None
    except ImportError as exc:
        raise unloadable(exc, package) from None


def unloadable(exc: ImportError, package: str) -> MimiError:
    """An installed ``package`` (pip's name) whose import failed with ``exc``: no memory to map it (ulimit -v),
    or a broken install to repair."""
    return no_room_to_load(exc) or MimiError(f"{package} is installed but does not load ({first_line(exc)}): "
                                             f"reinstall it (pip install --force-reinstall {package})")


def loads_json(text: str | bytes, unique_keys: bool = False) -> object:
    """``json.loads``, with a document nested too deeply for Python's parser (``[[[[…``, a RecursionError)
    raised as the ValueError any other malformed document raises. With ``unique_keys``, an object that
    names a key twice is malformed too (Python keeps the last silently; another reader may take the first)."""
    import json

    try:
        return json.loads(text, object_pairs_hook=_unique_keys if unique_keys else None)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def dumps_json(value: object, ensure_ascii: bool = True) -> str:
    """``json.dumps`` that writes standard JSON: NaN and ±Infinity (a float column's missing values), for which
    JSON has no words, are written as null, where Python writes ``NaN``, which jq, JavaScript and most other
    readers refuse; a value JSON has no type for is written as its text."""
    import json

    return json.dumps(_finite(value), ensure_ascii=ensure_ascii, default=str)


def _finite(value: object, depth: int = 0) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth < 100:  # JSON that deep is no metadata anyone reads; json.dumps writes it as it is
        if isinstance(value, dict):
            return {key: _finite(item, depth + 1) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [_finite(item, depth + 1) for item in value]
    return value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    found: dict = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"it names {key!r} twice")
        found[key] = value
    return found
