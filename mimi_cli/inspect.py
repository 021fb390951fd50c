"""What is inside a weight file, and is it sound: the library side of ``mimi inspect``.

Names, dtypes and shapes come from the headers alone; statistics (``stats=True``)
read each tensor once. Findings: errors (NaN/Inf, unreadable tensors, a Mimi
checkpoint that would not load) and warnings (see ``mimi_cli.weights.validate``).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mimi_cli.errors import MimiError
from mimi_cli.fileio import missing
from mimi_cli.models.encodec import checkpoint as encodec_checkpoint
from mimi_cli.models.mimi import checkpoint
from mimi_cli.models.mimi.config import MimiConfig
from mimi_cli.weights import TensorEntry, WeightFile, open_weights
from mimi_cli.weights.validate import Findings, TensorStats, check, full_stats


@dataclass
class TensorReport:
    name: str
    dtype: str
    shape: list[int]
    params: int
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    nonfinite: int | None = None
    encoding: str = ""


@dataclass
class WeightsReport:
    path: str
    format: str
    container: str = ""
    details: dict = field(default_factory=dict)
    tensors: list[TensorReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The documented JSON object (``mimi inspect --json``)."""
        tensors = [{k: None if isinstance(v, float) and not math.isfinite(v) else v
                    for k, v in asdict(t).items() if k != "encoding" or v} for t in self.tensors]
        return {"path": self.path, "format": self.format, "container": self.container, "details": self.details,
                "tensors": tensors, "warnings": self.warnings, "errors": self.errors}


def inspect_weights(path: str | Path, pattern: str | None = None, stats: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> WeightsReport:
    """Report on the weights at ``path``; a file that cannot be opened at all is one error in the report.

    ``progress(parameters read, parameters in all)`` is called after each tensor's statistics.
    """
    try:
        source = open_weights(path)
    except MimiError as exc:
        if missing(Path(path)):
            raise
        return WeightsReport(str(path), "unreadable", errors=[str(exc)])
    report = WeightsReport(str(path), describe_format(source), source.container, source.details)
    findings = Findings()
    selected = [e for e in source.tensors.values() if pattern is None or fnmatch.fnmatchcase(e.name, pattern)]
    total, done = sum(e.params for e in selected), 0
    for entry in selected:
        tensor = TensorReport(entry.name, entry.dtype, list(entry.shape), entry.params, encoding=entry.encoding)
        if stats:
            findings.extend(_measure(entry, tensor))
            done += entry.params
            if progress is not None:
                progress(done, total)
        report.tensors.append(tensor)
    if not source.tensors:
        findings.errors.append("no tensors could be read: the file is empty or holds no model weights")
    findings.extend(_mimi_findings(source))
    findings.extend(_encodec_findings(source))
    report.warnings, report.errors = findings.warnings, findings.errors
    return report


def describe_format(source: WeightFile) -> str:
    """e.g. "Mimi Hugging Face", "EnCodec 24 kHz original", "Core ML ML Program 1.0 (ios15)", "unknown"."""
    layout = _mimi_layout(source)
    if not source.container.startswith("Core ML"):
        if layout:
            return checkpoint.LAYOUT_NAMES[layout]
        encodec_layout = encodec_checkpoint.detect_layout(source.tensors)
        return f"EnCodec 24 kHz {encodec_checkpoint.LAYOUT_NAMES[encodec_layout]}" if encodec_layout else "unknown"
    if "Neural Network" in source.container:
        kind = "Core ML Neural Network"
    elif "program version" in source.details:
        kind = f"Core ML ML Program {source.details['program version']} ({source.details.get('opset', '?')})"
    else:
        kind = source.container
    return f"{kind}, {checkpoint.LAYOUT_NAMES[layout]} names" if layout else kind


def total_params(report: WeightsReport) -> int:
    return sum(t.params for t in report.tensors)


def _measure(entry: TensorEntry, tensor: TensorReport) -> Findings:
    try:
        values = entry.load()
    except MimiError as exc:
        return Findings(errors=[str(exc)])
    stats: TensorStats = full_stats(values)
    tensor.min, tensor.max, tensor.mean, tensor.std, tensor.nonfinite = (stats.min, stats.max, stats.mean,
                                                                         stats.std, stats.nonfinite)
    return check(entry.name, stats, values.size)


def _mimi_names(source: WeightFile) -> dict[str, str]:
    """Source tensor name → checkpoint name, for the tensors that carry a Mimi name."""
    if source.container.startswith("Core ML"):
        return checkpoint.coreml_names(source.tensors, MimiConfig())
    return {name: name for name in source.tensors}


def _mimi_layout(source: WeightFile) -> str | None:
    return checkpoint.detect_layout(_mimi_names(source).values())


def _mimi_findings(source: WeightFile) -> Findings:
    """For a Mimi checkpoint: would it load into the released model? (From names and shapes only.)"""
    names = _mimi_names(source)
    layout = checkpoint.detect_layout(names.values())
    if layout is None:
        return Findings()
    from mimi_cli.models.mimi import Mimi

    config = MimiConfig()
    # Zero-strided placeholders: the renaming and re-fusing need shapes, not values.
    placeholders = {name: np.broadcast_to(np.float32(0), source.tensors[variable].shape)
                    for variable, name in names.items()}
    problems = Mimi(config).check_state(checkpoint.to_original(placeholders, layout, config.num_heads))
    return Findings(errors=[f"does not load as the released Mimi model: {p}" for p in problems])


def _encodec_findings(source: WeightFile) -> Findings:
    """For an EnCodec checkpoint: would it load into the released 24 kHz model? (From names and shapes only.)"""
    layout = encodec_checkpoint.detect_layout(source.tensors)
    if layout is None or source.container.startswith("Core ML"):
        return Findings()
    from mimi_cli.models.encodec import Encodec

    shapes = encodec_checkpoint.folded_shapes({name: e.shape for name, e in source.tensors.items()}, layout)
    placeholders = {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}
    problems = Encodec().check_state(placeholders)
    return Findings(errors=[f"does not load as the released EnCodec 24 kHz model: {p}" for p in problems])
