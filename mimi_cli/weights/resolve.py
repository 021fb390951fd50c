"""Finding the weights to use, and naming them.

Weights are looked for in this order: an explicit path (``--weights``), the
``MIMI_WEIGHTS`` environment variable, then the released checkpoint on the
Hugging Face Hub through huggingface_hub's cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mimi_cli.errors import WeightsError

RELEASED_REPO = "kyutai/moshiko-pytorch-bf16"
RELEASED_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
WEIGHTS_ENV = "MIMI_WEIGHTS"

def resolve_weights(explicit: str | os.PathLike | None = None) -> Path:
    """The weights file to use: explicit path > $MIMI_WEIGHTS > the Hub's cached release."""
    for candidate, origin in ((explicit, "--weights"), (os.environ.get(WEIGHTS_ENV) or None, f"${WEIGHTS_ENV}")):
        if candidate is not None:
            path = Path(candidate).expanduser()
            if not path.exists():
                raise WeightsError(f"weights file {path} (from {origin}) does not exist")
            return path
    return _download_released()


def _download_released() -> Path:
    """The released file from the Hugging Face cache, downloading it (once) if it is not there."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import logging as hub_logging

    try:
        return Path(hf_hub_download(RELEASED_REPO, RELEASED_FILE, local_files_only=True))
    except Exception:  # not cached: download below
        pass
    hub_logging.set_verbosity_error()  # its retry warnings would break our one-line errors
    try:
        return Path(hf_hub_download(RELEASED_REPO, RELEASED_FILE))
    except Exception as exc:  # offline, hub errors: all mean "no weights here"
        raise WeightsError(
            f"no Mimi weights: {RELEASED_FILE} is not in the Hugging Face cache and could not be downloaded "
            f"({type(exc).__name__}); pass --weights PATH or set {WEIGHTS_ENV}, or go online once to fetch it "
            f"from {RELEASED_REPO}"
        ) from None


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
