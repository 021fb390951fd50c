"""Compiled Neural Network models (pre-ML-Program ``.mlmodelc``): ``model.espresso.net`` + ``.weights``.

``model.espresso.net`` is JSON listing the layers; a layer's ``blob_weights`` /
``blob_biases`` are ids into ``model.espresso.weights``::

    u64 N | N × (u64 blob id, u64 byte size) | blobs, concatenated in table order, unaligned

Shapes come from the layer fields (convolution ``C`` out, ``K`` in, ``Ny`` × ``Nx``
kernel; inner product ``nC`` out, ``nB`` in). Data is float32; inner-product biases
are zero-padded blobs, of which the first ``nC`` values are the bias.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path

import numpy as np

from mimi_cli.errors import WeightsError, loads_json, os_reason
from mimi_cli.weights.coreml.paths import inside
from mimi_cli.weights.tensors import TensorEntry, WeightFile


def _layer_shapes(layer: dict) -> dict[str, tuple[int, ...]]:
    """Expected shapes of a layer's blobs, by role; roles missing here are read flat."""
    kind = layer.get("type")
    if kind == "convolution":
        out, groups = layer.get("C", 0), max(1, layer.get("n_groups", 1))
        return {"weights": (out, layer.get("K", 0) // groups, layer.get("Ny", 1), layer.get("Nx", 1)),
                "biases": (out,)}
    if kind == "inner_product":
        return {"weights": (layer.get("nC", 0), layer.get("nB", 0)), "biases": (layer.get("nC", 0),)}
    return {}


def open_espresso(path: Path) -> WeightFile:
    net_path = path / "model.espresso.net"
    try:
        net = loads_json(net_path.read_text(encoding="utf-8"))
        layers = list(net["layers"])
        if not all(isinstance(layer, dict) for layer in layers):
            raise TypeError("a layer is not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"cannot read Core ML network {net_path}: not plain JSON with layers ({exc}); "
                           "compressed espresso files are not supported") from None
    blobs = _BlobTable(inside(path, net.get("storage", "model.espresso.weights"), "weights"))
    entries = {}
    for layer in layers:
        shapes = _layer_shapes(layer)
        for key, blob_id in layer.items():
            if not key.startswith("blob_") or not isinstance(blob_id, int):
                continue
            role = key[len("blob_"):]
            name = f"{layer.get('name', layer.get('top', '?'))}.{role}"
            entries[name] = blobs.entry(name, blob_id, shapes.get(role))
    details = {"format version": net.get("format_version"), "layers": len(layers),
               "ops": dict(sorted(_histogram(layers).items(), key=lambda kv: -kv[1]))}
    return WeightFile(path, "Core ML Neural Network (.mlmodelc)", entries, details)


def _histogram(layers: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for layer in layers:
        counts[str(layer.get("type"))] = counts.get(str(layer.get("type")), 0) + 1
    return counts


class _BlobTable:
    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = path.stat().st_size
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as exc:
            raise WeightsError(f"cannot read Core ML weights {path}: {os_reason(exc)}") from None
        if size < 8:
            raise self._error(f"file is {size} bytes, too short for its blob table")
        (count,) = struct.unpack_from("<Q", self._map, 0)
        if count > (size - 8) // 16:
            raise self._error(f"blob table of {count} entries does not fit in the {size}-byte file")
        self.blobs: dict[int, tuple[int, int]] = {}  # id → (offset, size)
        offset = 8 + 16 * count
        for i in range(count):
            blob_id, blob_size = struct.unpack_from("<QQ", self._map, 8 + 16 * i)
            if blob_size > size - offset:
                raise self._error(f"blob {blob_id} ({blob_size} bytes) runs past the end of the file")
            self.blobs[blob_id] = (offset, blob_size)
            offset += blob_size

    def _error(self, problem: str) -> WeightsError:
        return WeightsError(f"cannot read Core ML weights {self.path}: {problem}")

    def entry(self, name: str, blob_id: int, shape: tuple[int, ...] | None) -> TensorEntry:
        if blob_id not in self.blobs:
            raise self._error(f"layer tensor {name} refers to blob {blob_id}, which is not in the file")
        offset, size = self.blobs[blob_id]
        if (shape is None or not all(isinstance(d, int) and d > 0 for d in shape)
                or 4 * math.prod(shape) > size):
            shape = (size // 4,)  # no known shape (or one that does not fit): the float32 values, flat
        count = math.prod(shape)

        def load() -> np.ndarray:
            return np.frombuffer(self._map, "<f4", count, offset).reshape(shape)

        return TensorEntry(name, "fp32", shape, load)
