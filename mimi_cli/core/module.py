"""A minimal parameter tree: modules declare their tensors by checkpoint name and shape.

The declarations are the single source of truth for a model's checkpoint
layout: loading, validation and random-weight generation all walk them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np


class Module:
    """A node with named parameters and named children, like a weight-only ``nn.Module``."""

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._children: dict[str, Module] = {}
        self.params: dict[str, np.ndarray] = {}

    def declare(self, name: str, *shape: int) -> None:
        """Declare parameter ``name`` (may contain dots, e.g. ``conv.conv.weight``)."""
        self._shapes[name] = tuple(shape)

    def add(self, name: str, module: Module) -> Module:
        self._children[name] = module
        return module

    def modules(self) -> Iterator[Module]:
        """This module and every descendant, depth first, in the order they were added."""
        yield self
        for child in self._children.values():
            yield from child.modules()

    def named_shapes(self, prefix: str = "") -> Iterator[tuple[str, tuple[int, ...]]]:
        """Every parameter of the tree as ``(full name, shape)``, in declaration order."""
        for name, shape in self._shapes.items():
            yield prefix + name, shape
        for name, child in self._children.items():
            yield from child.named_shapes(f"{prefix}{name}.")

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        """Every loaded parameter as ``(full name, array)``, in declaration order."""
        for name in self._shapes:
            yield prefix + name, self.params[name]
        for name, child in self._children.items():
            yield from child.named_parameters(f"{prefix}{name}.")

    def load(self, state: Mapping[str, np.ndarray], prefix: str = "") -> None:
        """Take this tree's tensors from ``state`` (already validated) as contiguous float32."""
        for name in self._shapes:
            self.params[name] = np.ascontiguousarray(state[prefix + name], dtype=np.float32)
        for name, child in self._children.items():
            child.load(state, f"{prefix}{name}.")
        self.prepare()

    def prepare(self) -> None:
        """Hook run after loading, to precompute derived arrays (e.g. codebooks)."""
