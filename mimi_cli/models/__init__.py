"""Codec models built on :mod:`mimi_cli.core`, and the registry that names them.

A codec is registered here by name (the ``--codec`` option and the codes file's
``codec`` field) with where its weights come from; the modules are imported only
when used, so that the CLI's defaults and ``--help`` need no NumPy.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from mimi_cli.errors import MimiError


@dataclass(frozen=True)
class CodecSpec:
    name: str
    package: str  # exports the model class and the config class
    model_class: str
    config_class: str
    hub_repo: str  # the released weights on the Hugging Face Hub
    hub_file: str
    weights_env: str  # environment variable naming a weights file

    def config(self):
        return getattr(importlib.import_module(self.package), self.config_class)()

    def model(self):
        return getattr(importlib.import_module(self.package), self.model_class)


MIMI = CodecSpec("mimi", "mimi_cli.models.mimi", "Mimi", "MimiConfig",
                 "kyutai/moshiko-pytorch-bf16", "tokenizer-e351c8d8-checkpoint125.safetensors", "MIMI_WEIGHTS")
ENCODEC_24KHZ = CodecSpec("encodec-24khz", "mimi_cli.models.encodec", "Encodec", "EncodecConfig",
                          "facebook/encodec_24khz", "model.safetensors", "ENCODEC_WEIGHTS")
CODECS = {spec.name: spec for spec in (MIMI, ENCODEC_24KHZ)}
DEFAULT_CODEC = MIMI.name


def codec_spec(name: str) -> CodecSpec:
    """The registered codec called ``name``; a MimiError listing the known ones otherwise."""
    try:
        return CODECS[name]
    except KeyError:
        raise MimiError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}") from None
