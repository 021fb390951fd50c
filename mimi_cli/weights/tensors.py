"""The one view of every weight container: named tensors, known from headers, read when asked."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mimi_cli.errors import DATA_ERRORS, MimiError, WeightsError, malformed


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # as stored: "F32", "BF16", "fp16", "int4" ...
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray] = field(repr=False)  # the values as float32 (exact for every stored type)
    encoding: str = ""  # how a compressed Core ML tensor is stored, e.g. "constexpr_lut_to_dense(uint4)"

    def __post_init__(self):  # every reader's lazy load answers bad bytes with WeightsError, like its opening
        load, name = self.load, self.name

        def guarded() -> np.ndarray:
            try:
                return load()
            except MimiError:
                raise
            except DATA_ERRORS as exc:
                raise malformed(WeightsError, f"tensor {name}", exc) from None

        object.__setattr__(self, "load", guarded)

    @property
    def params(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class WeightFile:
    path: Path
    container: str  # "safetensors", "Core ML ML Program (.mlmodelc)", ...
    tensors: dict[str, TensorEntry]
    details: dict[str, object] = field(default_factory=dict)  # container facts: versions, op histogram ...

    def read_all(self) -> dict[str, np.ndarray]:
        return {name: entry.load() for name, entry in self.tensors.items()}
