"""Finding the weights to use, and naming them.

Weights are looked for in this order: an explicit path (``--weights``), the
codec's environment variable (``MIMI_WEIGHTS``, ``ENCODEC_WEIGHTS``), then the
released checkpoint on the Hugging Face Hub through huggingface_hub's cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mimi_cli.errors import WeightsError


def resolve_weights(explicit: str | os.PathLike | None, spec) -> Path:
    """The weights file to use: explicit path > the codec's environment variable > the Hub's cached release.

    ``spec`` is the codec's registry entry (:class:`mimi_cli.models.CodecSpec`): its ``weights_env``,
    ``hub_repo``, ``hub_file`` and ``config().display_name``.
    """
    env = spec.weights_env
    for candidate, origin in ((explicit, "--weights"), (os.environ.get(env) or None, f"${env}")):
        if candidate is not None:
            path = Path(candidate).expanduser()
            if not path.exists():
                raise WeightsError(f"weights file {path} (from {origin}) does not exist")
            return path
    return _download_released(spec.hub_repo, spec.hub_file, env, spec.config().display_name)


def _download_released(repo: str, filename: str, env: str, codec: str) -> Path:
    """The released file from the Hugging Face cache, downloading it (once) if it is not there."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import logging as hub_logging

    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except Exception:  # not cached: download below
        pass
    def missing(reason: str) -> WeightsError:
        return WeightsError(f"no {codec} weights: {filename} is not in the Hugging Face cache and {reason}; pass "
                            f"--weights PATH or set {env}, or go online once to fetch it from {repo}")

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise missing("HF_HUB_OFFLINE is set")
    unreachable = _unreachable(constants.ENDPOINT)
    if unreachable:  # huggingface_hub would retry for ~25 s before saying the same
        raise missing(f"{constants.ENDPOINT} cannot be reached ({unreachable})")
    hub_logging.set_verbosity_error()  # its retry warnings would break our one-line errors
    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as exc:  # hub errors: all mean "no weights here"
        raise missing(f"could not be downloaded ({type(exc).__name__})") from None


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

    For a model folder (Core ML), every file's relative path and bytes, in sorted order.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 22), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]
