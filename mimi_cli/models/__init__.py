"""Codec models built on :mod:`mimi_cli.core`, and the registry that names them.

A codec is registered here by name (the ``--codec`` option and the codes file's
``codec`` field) with where its weights come from; the modules are imported only
when used, so that the CLI's defaults and ``--help`` need no NumPy.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from mimi_cli.errors import MimiError

# Peak memory of a batch call (encode or decode at once; docs/performance.md, "Memory"): what a process holds
# whatever it runs (the interpreter, NumPy, SciPy, the codec's buffers), then each CodecSpec's figures per row
# and per second of audio. The weights are not counted: they are mapped from their file, pages the kernel drops
# and reads again (their resident 0.4 GB is not needed: a 9 s encode ran in a 200 MB control group, a 29 s round
# trip in 384 MB).
BASE_BYTES = 0.3e9


@dataclass(frozen=True)
class CodecSpec:
    """A codec and what it can do: everything outside ``models/`` asks this, never the codec's name.

    The package exports the model class (a :class:`mimi_cli.models.codec.Codec`) and the config
    class (a :class:`mimi_cli.models.config.CodecConfig`); its ``synthetic`` module has
    ``random_state()``, realistic random weights of the released size (for ``mimi bench``).
    """

    name: str
    package: str
    model_class: str
    config_class: str
    hub_repo: str  # the released weights on the Hugging Face Hub
    hub_file: str
    weights_env: str  # environment variable naming a weights file
    batch_bytes_per_second: float  # peak memory growth per second of audio in batch mode (docs/performance.md)
    batch_row_bytes: float = 40e6  # what each row of a batch holds besides: its own SEANet chunk, this much
    batch_row_seconds: float = 2.5  # from rows of this length on (a shorter row holds its share)
    streaming: bool = False  # the model has stream_encoder() / stream_decoder(): --stream
    stream_codes_differ: bool = False  # --stream's codes may differ from batch mode's (Mimi past 10 s)
    stream_bytes: float = 0.0  # memory of one stream of a duplex once its window is full (docs/performance.md)
    step_stream_bytes: float = 0.0  # of one encoder or decoder stream of the CLI's --stream (16 frames a step)
    bench_parts: tuple[str, ...] = ("model",)  # what `mimi bench` measures: kernels, model, stream
    ecdc_model: str | None = None  # the model's name in Meta's `encodec` .ecdc files, for a codec they can hold
    family: str = ""  # what other tools call the codec's kind (codec-bpe's codec_type), beside its rate and codebooks

    def config(self):
        return getattr(importlib.import_module(self.package), self.config_class)()

    def model(self):
        return getattr(importlib.import_module(self.package), self.model_class)

    def inspect(self, source):
        """Does ``source`` (a WeightFile) hold this codec's checkpoint, and would it load? (Names and shapes.)"""
        return self.model().inspect_checkpoint(source)

    def batch_bytes(self, rows: int, row_seconds: float) -> float:
        """Peak memory of encoding or decoding ``rows`` clips of ``row_seconds`` each in one batch call."""
        row = self.batch_row_bytes * min(row_seconds / self.batch_row_seconds, 1.0)
        return BASE_BYTES + rows * (row + self.batch_bytes_per_second * row_seconds)

    def random_state(self) -> dict:
        return importlib.import_module(f"{self.package}.synthetic").random_state()


MIMI = CodecSpec("mimi", "mimi_cli.models.mimi", "Mimi", "MimiConfig",
                 "kyutai/moshiko-pytorch-bf16", "tokenizer-e351c8d8-checkpoint125.safetensors", "MIMI_WEIGHTS",
                 batch_bytes_per_second=1e6, streaming=True, stream_codes_differ=True, stream_bytes=28e6,
                 step_stream_bytes=40e6,
                 bench_parts=("kernels", "model", "stream"), family="mimi")
ENCODEC_24KHZ = CodecSpec("encodec-24khz", "mimi_cli.models.encodec", "Encodec", "EncodecConfig",
                          "facebook/encodec_24khz", "model.safetensors", "ENCODEC_WEIGHTS",
                          batch_bytes_per_second=2.5e6, batch_row_seconds=1.7, streaming=True, stream_bytes=3e6,
                          step_stream_bytes=6e6,
                          bench_parts=("model", "stream"), ecdc_model="encodec_24khz",
                          family="encodec")
CODECS = {spec.name: spec for spec in (MIMI, ENCODEC_24KHZ)}
DEFAULT_CODEC = MIMI.name


def register(spec: CodecSpec) -> None:
    """Add a codec to the registry (the built-in ones are above; a plug-in or a test adds its own)."""
    CODECS[spec.name] = spec


def recognise(source):
    """The registered codec whose checkpoint ``source`` (a WeightFile) holds, and what its hook found:
    (spec, Recognised), or (None, None)."""
    for spec in CODECS.values():
        found = spec.inspect(source)
        if found is not None:
            return spec, found
    return None, None


def other_codecs_weights(path, spec: CodecSpec) -> str:
    """"; it holds EnCodec 24 kHz weights" when the weights that ``spec``'s codec refused are another codec's."""
    from mimi_cli.weights import open_weights

    try:
        other = recognise(open_weights(path))[0]
    except MimiError:
        return ""
    return f"; it holds {other.config().display_name} weights" if other not in (None, spec) else ""


def codec_spec(name: str) -> CodecSpec:
    """The registered codec called ``name``; a MimiError listing the known ones otherwise."""
    try:
        return CODECS[name]
    except KeyError:
        raise MimiError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}") from None
