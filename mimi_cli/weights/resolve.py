"""Finding the weights to use, and naming them.

Weights are looked for in this order: an explicit path (``--weights``), the
codec's environment variable (``MIMI_WEIGHTS``, ``ENCODEC_WEIGHTS``), then the
released checkpoint on the Hugging Face Hub through huggingface_hub's cache.

A name given that is no file here but reads as a Hub repository is fetched from it
(through the same cache)::

    kyutai/mimi                              the repo's model.safetensors (the released
                                             repo: its released file)
    kyutai/moshiko-pytorch-bf16/FILE         FILE of the repo (sub-folders allowed)
    hf://kyutai/mimi@REV/FILE                huggingface_hub's URL of the same, at a revision
    https://huggingface.co/kyutai/mimi/blob/REV/FILE    the file's page (or resolve/: its
                                             download link), as a browser shows it
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mimi_cli.errors import WeightsError, os_reason
from mimi_cli.fileio import STDIN, home_expanded, local_path, missing, url


def resolve_weights(explicit: str | os.PathLike | None, spec, given_by: str = "--weights") -> Path:
    """The weights file to use: explicit path > the codec's environment variable > the Hub's cached release.

    ``spec`` is the codec's registry entry (:class:`mimi_cli.models.CodecSpec`): its ``weights_env``,
    ``hub_repo``, ``hub_file`` and ``config().display_name``. ``given_by``: how the caller's user gives the
    explicit path, as errors name it (the command line's ``--weights``; from Python, an argument).
    """
    env = spec.weights_env
    if explicit is not None and not str(explicit):
        raise WeightsError(f"the weights path given to {given_by} is empty; give a file's path or a Hugging Face repo")
    for candidate, origin in ((explicit, given_by), (os.environ.get(env) or None, f"${env}")):
        if candidate is not None:
            return locate(str(candidate), spec, f" (from {origin})")
    return _download(spec.hub_repo, spec.hub_file, None, f"no {spec.config().display_name} weights: ",
                     f"give {given_by} a path or set {env}, or go online once to fetch it")


def weights_files(explicit: str | os.PathLike | None, specs) -> list[Path]:
    """The files here that a run may read weights from, whatever its codec of ``specs`` (the registry's
    entries), and without fetching anything: ``--weights`` and each codec's environment variable, as
    :func:`locate` finds them (a Core ML model folder with every file in it). No output of a run may
    replace one of them (a ``--manifest`` over the weights)."""
    from mimi_cli.errors import MimiError
    from mimi_cli.weights.coreml import is_coreml_folder

    files = []
    for spec in specs:
        for name in (explicit, os.environ.get(spec.weights_env)):
            if not name:
                continue
            try:
                path = home_expanded(local_path(str(name), "weights"))
                if missing(path) is None:  # a local file or folder: nothing is fetched
                    found = _in_folder(path, spec, "") if path.is_dir() else path
                    files += [found, *found.rglob("*")] if is_coreml_folder(found) else [found]
            except (MimiError, OSError):  # no weights there: the run will say so itself
                continue
    return files


def locate(name: str, spec, origin: str = "", fetch: bool = True) -> Path | None:
    """The weights file ``name`` names: a path, or, when no such file exists and the name reads as a Hub
    repository, that repository's file from the Hugging Face cache (fetched once; ``fetch=False``: None, for a
    caller that checks its outputs before a download); ``origin`` says where the name came from, in the error."""
    name = local_path(name, f"weights{origin}")  # file:///data/w.safetensors is /data/w.safetensors
    path = home_expanded(name)
    problem = missing(path)
    if problem is None:
        return _in_folder(path, spec, origin) if path.is_dir() else path
    if name == STDIN:  # read in place, memory-mapped, and more than once
        raise WeightsError(f"weights{origin} are read from a file, not standard input: save them to a file and "
                           "give its name")
    hub = hub_reference(name, spec) if problem.startswith("does not exist") else None
    if hub is None:
        if url(name):  # as given: a path would show "https:/…"
            raise WeightsError(f"weights {name}{origin} is a URL of no Hugging Face model repository: download the "
                               "file first, or give a Hugging Face repo as OWNER/REPO (or its huggingface.co URL)")
        raise WeightsError(f"weights file {path}{origin} {problem}")
    if not fetch:
        return None
    shown = f"weights {name}{origin}: " if url(name) else f"weights file {path}{origin} does not exist here, and "
    return _download(*hub, shown, "give a file's path, or go online once to fetch it")


def _in_folder(folder: Path, spec, origin: str) -> Path:
    """A folder given as weights: a Core ML model as it is, else the weights file of a Hub repository's local
    copy (``hf download kyutai/mimi --local-dir mimi``, a clone, a snapshot in the cache): the codec's released
    file, else ``model.safetensors``, else the folder's only ``.safetensors`` file."""
    from mimi_cli.weights.coreml import is_coreml_folder

    if is_coreml_folder(folder):
        return folder
    for name in dict.fromkeys((spec.hub_file, "model.safetensors")):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
    if len(found) == 1:
        return folder / found[0]
    models = [] if found else sorted(p.name for p in folder.iterdir() if p.is_dir() and is_coreml_folder(p))
    if models:  # a repository of Core ML models (one per part, or per precision): which one is the user's call
        raise WeightsError(f"weights folder {folder}{origin} holds no .safetensors file, and Core ML models in "
                           f"folders of their own ({', '.join(models[:4])}{', …' if len(models) > 4 else ''}); "
                           f"give one's path ({folder / models[0]})")
    holds = (f"{len(found)} .safetensors files ({', '.join(found[:4])}{', …' if len(found) > 4 else ''}), none "
             f"named {spec.hub_file} or model.safetensors" if found else "no .safetensors file and no Core ML model")
    raise WeightsError(f"weights folder {folder}{origin} holds {holds}; give a .safetensors file's path "
                       f"({folder / 'FILE'}), an .mlmodelc or an .mlpackage")


WEIGHTS_SUFFIXES = (".safetensors", ".mlmodelc", ".mlpackage", ".bin", ".pt", ".pth", ".ckpt")


def hub_reference(name: str, spec) -> tuple[str, str, str | None] | None:
    """``(repo, file, revision)`` for a name that reads as a Hub repository (``owner/repo`` or
    ``owner/repo/FILE``, or a Hub URL of one: see the module docstring), else None. A repo alone means its
    ``model.safetensors`` (the codec's released file in the released repo)."""
    import re

    name, revision = _hub_url(name) or (name, None)
    parts = name.split("/")
    if len(parts) < 2 or not all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p) for p in parts):
        return None  # an absolute or ./relative path, "..", an empty part, a name the Hub does not allow
    if len(parts) == 2 and Path(parts[1]).suffix.lower() in WEIGHTS_SUFFIXES:
        return None  # folder/file.safetensors: a path mistyped, not a repo
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    return repo, filename or (spec.hub_file if repo == spec.hub_repo else "model.safetensors"), revision


def _hub_url(name: str) -> tuple[str, str | None] | None:
    """``("owner/repo[/FILE]", revision)`` for a Hub URL of a model repository or one of its files, else None:
    ``hf://owner/repo[@REV][/FILE]``, ``https://huggingface.co/owner/repo`` and its ``/blob/REV/FILE``,
    ``/resolve/REV/FILE`` (the download link) and ``/tree/REV`` pages (on $HF_ENDPOINT's host too)."""
    from urllib.parse import unquote, urlsplit

    if name.startswith("hf://"):
        parts = name[len("hf://"):].split("/")
        if parts[0] in ("datasets", "spaces"):  # not a model repository
            return None
        repo_name, _, revision = parts[1].partition("@") if len(parts) > 1 else ("", "", "")
        return "/".join([parts[0], repo_name, *parts[2:]]), unquote(revision) or None
    from huggingface_hub import constants

    address = urlsplit(name)
    if address.scheme not in ("http", "https") or address.hostname not in (
            "huggingface.co", urlsplit(constants.ENDPOINT).hostname):  # a query (?download=true) is the browser's
        return None
    parts = [unquote(p) for p in address.path.strip("/").split("/")]  # a revision may be "refs%2Fpr%2F1"
    if len(parts) == 2:
        return "/".join(parts), None
    if len(parts) == 4 and parts[2] == "tree" or len(parts) > 4 and parts[2] in ("blob", "resolve"):
        return "/".join([*parts[:2], *parts[4:]]), parts[3]
    return None


def _download(repo: str, filename: str, revision: str | None, failure: str, advice: str) -> Path:
    """``filename`` of the Hub repository ``repo`` from the Hugging Face cache, downloading it (once) if it is
    not there; when neither works, the error is ``failure`` + what is missing and why + ``advice``."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import logging as hub_logging

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=True))
    except Exception:  # not cached: download below
        pass
    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else None
    unreachable = reason is None and _unreachable(constants.ENDPOINT)
    if unreachable:  # huggingface_hub would retry for ~25 s before saying the same
        reason = f"{constants.ENDPOINT} cannot be reached ({unreachable})"
    if reason is None:
        hub_logging.set_verbosity_error()  # its retry warnings would break our one-line errors
        try:
            return Path(hf_hub_download(repo, filename, revision=revision))
        except Exception as exc:  # hub errors: all mean "no weights here"
            reason = f"could not be downloaded ({type(exc).__name__})"
    at = f" at revision {revision}" if revision else ""
    raise WeightsError(f"{failure}{filename} of {repo}{at} is not in the Hugging Face cache and {reason}; {advice}")


def cached_repository(path: str | os.PathLike) -> Path | None:
    """The Hugging Face cache's folder of the repository whose file ``path`` is (``…/hub/models--kyutai--mimi``),
    or None for a file outside the cache: removing that folder makes the next run download the file anew."""
    from huggingface_hub import constants

    try:
        inside = Path(os.path.abspath(path)).relative_to(os.path.abspath(constants.HF_HUB_CACHE))
    except ValueError:
        return None
    return Path(constants.HF_HUB_CACHE) / inside.parts[0] if len(inside.parts) > 1 else None


def _unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why a TCP connection to ``endpoint`` fails within ``timeout`` seconds (name lookup included), or None."""
    import socket
    import threading
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc.strerror or type(exc).__name__)

    thread = threading.Thread(target=probe, daemon=True)  # name lookup has no timeout of its own
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def weights_id(path: str | os.PathLike) -> str:
    """A short content hash identifying weights: ``sha256:<16 hex digits>``.

    For a model folder (Core ML), every file's relative path and bytes, in sorted order; a symbolic link that
    leads out of the folder counts by its text, never by what it points to (nothing outside a model folder
    is read), and what is no file (a folder, a pipe, a device) not at all.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if not path.is_dir():
        _hash_file(digest, path, path)
        return "sha256:" + digest.hexdigest()[:16]
    root = Path(os.path.realpath(path))
    for file in sorted(path.rglob("*")):
        name = str(file.relative_to(path)).encode("utf-8", "surrogateescape") + b"\0"
        if not Path(os.path.realpath(file)).is_relative_to(root):
            digest.update(name + b"-> " + os.fsencode(os.readlink(file)))
        elif file.is_file():
            digest.update(name)
            _hash_file(digest, file, path)
    return "sha256:" + digest.hexdigest()[:16]


def _hash_file(digest, file: Path, weights: Path) -> None:
    try:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    except OSError as exc:
        what = f"{file.relative_to(weights)} in the model folder {weights}" if file != weights else file
        raise WeightsError(f"cannot read {what}: {os_reason(exc)}") from None
