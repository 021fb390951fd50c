"""Apple Core ML models as weight containers, read on any OS without coremltools.

Three layouts are recognised from the folder's files::

    X.mlmodelc/  model.mil + weights/*.bin         compiled ML Program (text program + blob storage)
                 model.espresso.net/.shape/.weights compiled Neural Network (older models)
                 model0/, model1/ ...               compiled pipeline: each sub-model in turn
    X.mlpackage/ Manifest.json + Data/com.apple.CoreML/model.mlmodel (protobuf) + weights/*.bin

Weights are keyed by the program's variable names (e.g. ``encoder_layers_0_weight_to_fp16``).
No path in a model may lead outside its folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from mimi_cli.errors import WeightsError, loads_json, os_reason
from mimi_cli.weights.coreml.mil import Program
from mimi_cli.weights.coreml.paths import inside
from mimi_cli.weights.tensors import TensorEntry, WeightFile


def is_coreml_folder(path: Path) -> bool:
    """Does the folder hold a Core ML model: an ML Program (compiled or a package), an Espresso network, or
    a pipeline's sub-models?"""
    return any((path / name).is_file() for name in ("Manifest.json", "model.mil", "model.espresso.net")) or bool(
        _submodels(path))


def _submodels(path: Path) -> list[Path]:
    return sorted(p for p in path.glob("model[0-9]*") if p.is_dir())


def open_coreml(path: Path) -> WeightFile:
    """A Core ML model folder as a :class:`WeightFile`; a clear error for any other folder."""
    if (path / "Manifest.json").is_file() or (path / "model.mil").is_file():
        return _open_program(path)
    if (path / "model.espresso.net").is_file():
        from mimi_cli.weights.coreml.espresso import open_espresso

        return open_espresso(path)
    submodels = _submodels(path)
    if submodels:
        return _open_pipeline(path, submodels)
    raise WeightsError(f"{path} is a folder but not a Core ML model (no model.mil, Manifest.json or "
                       "model.espresso.net); give a .safetensors file, an .mlmodelc or an .mlpackage")


def read_program(path: Path) -> tuple[Program | None, Path, str, dict[str, object]]:
    """An ``.mlmodelc`` or ``.mlpackage`` ML Program: ``(program, folder its weight paths start from,
    container description, details)``; the program is None for a package holding another model type."""
    if (path / "Manifest.json").is_file():
        return _read_package(path)
    from mimi_cli.weights.coreml.mil import parse

    mil = path / "model.mil"
    try:
        text = mil.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"cannot read Core ML program {mil}: {exc}") from None
    program = parse(text, str(mil))
    details = {"program version": program.version, **_metadata(path)}
    return program, path, "Core ML ML Program (.mlmodelc)", details


def _open_program(path: Path) -> WeightFile:
    program, model_dir, container, details = read_program(path)
    if program is None:
        return WeightFile(path, f"Core ML package ({details['model type']}, weights not read)", {}, details)
    return _program_file(path, container, program, model_dir, details)


def _read_package(path: Path) -> tuple[Program | None, Path, str, dict[str, object]]:
    from mimi_cli.weights.coreml.proto import read_model

    try:
        manifest = loads_json((path / "Manifest.json").read_text(encoding="utf-8"))
        items = manifest["itemInfoEntries"]
        root = items[manifest["rootModelIdentifier"]]["path"]
        if not isinstance(root, str):
            raise TypeError(f"the root model's path is {type(root).__name__}, not a string")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"cannot read Core ML package {path}: invalid Manifest.json ({exc})") from None
    model_file = inside(path / "Data", root, "model")
    try:
        data = model_file.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read Core ML package {path}: {os_reason(exc)}") from None
    spec_version, kind, program = read_model(data, str(model_file))
    details: dict[str, object] = {"specification version": spec_version, "model type": kind}
    if program is not None:
        details["program version"] = program.version
    return program, model_file.parent, "Core ML ML Program (.mlpackage)", details


def _open_pipeline(path: Path, submodels: list[Path]) -> WeightFile:
    tensors: dict[str, TensorEntry] = {}
    details: dict[str, object] = {"pipeline models": len(submodels)}
    for sub in submodels:
        part = open_coreml(sub)
        tensors.update({f"{sub.name}/{name}": entry for name, entry in part.tensors.items()})
    return WeightFile(path, "Core ML pipeline (.mlmodelc)", tensors, details)


def _program_file(path: Path, container: str, program: Program, model_dir: Path, details: dict) -> WeightFile:
    from mimi_cli.weights.coreml.program import ProgramWeights

    weights = ProgramWeights(program, model_dir)
    opsets = sorted({f.opset for f in program.functions.values()})
    details.update({"functions": ", ".join(f"{f.name}<{f.opset}>" for f in program.functions.values()),
                    "opset": ", ".join(opsets),
                    "ops": dict(Counter(op.op for op in program.operations()).most_common())})
    return WeightFile(path, container, weights.entries(), details)


def _metadata(path: Path) -> dict[str, object]:
    """The facts ``metadata.json`` of a compiled model gives (missing or unreadable: none)."""
    try:
        meta = loads_json((path / "metadata.json").read_text(encoding="utf-8"))[0]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}
    facts = {"specification version": meta.get("specificationVersion"),
             "storage precision": meta.get("storagePrecision"),
             "source": (meta.get("userDefinedMetadata") or {}).get("com.github.apple.coremltools.source")}
    return {key: value for key, value in facts.items() if value}
