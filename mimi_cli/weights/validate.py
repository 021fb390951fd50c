"""Soundness checks for weight tensors, shared by loading and ``mimi inspect``.

- error: NaN or ±Inf values (a model cannot run on them; loading refuses);
- warnings: unusual magnitudes (max |w| above ``LARGE_MAGNITUDE``), an all-zero tensor, a constant
  tensor — legal, but the mark of a broken export or an uninitialised layer.

Loading only needs the minimum and maximum of each tensor: both propagate NaN, and any
infinity is one of them, so two reductions find every non-finite value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mimi_cli.errors import WeightsError

LARGE_MAGNITUDE = 1e4


@dataclass
class TensorStats:
    min: float | None  # None for an empty tensor, which has no range
    max: float | None
    mean: float | None = None  # over finite values; None when only min/max were computed
    std: float | None = None
    nonfinite: int = 0


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def extend(self, other: Findings) -> None:
        self.errors += other.errors
        self.warnings += other.warnings


def range_stats(values: np.ndarray) -> TensorStats:
    """Minimum, maximum and non-finite count, in two passes when all values are finite."""
    if values.size == 0:
        return TensorStats(None, None)
    low, high = float(values.min()), float(values.max())
    if np.isfinite(low) and np.isfinite(high):
        return TensorStats(low, high)
    finite = np.isfinite(values)
    count = int(values.size - np.count_nonzero(finite))
    kept = values[finite]
    return TensorStats(float(kept.min()) if kept.size else float("nan"),
                       float(kept.max()) if kept.size else float("nan"), nonfinite=count)


def full_stats(values: np.ndarray) -> TensorStats:
    """Range plus mean and standard deviation (float64 accumulation, finite values only)."""
    stats = range_stats(values)
    kept = values if stats.nonfinite == 0 else values[np.isfinite(values)]
    if kept.size:
        stats.mean = float(np.mean(kept, dtype=np.float64))
        stats.std = float(np.std(kept, dtype=np.float64))
    return stats


def check(name: str, stats: TensorStats, size: int) -> Findings:
    """The findings for one tensor from its statistics."""
    found = Findings()
    if stats.nonfinite:
        found.errors.append(f"{name}: {stats.nonfinite} of {size} values are NaN or Inf")
        return found
    if size == 0:
        return found
    magnitude = max(abs(stats.min), abs(stats.max))
    if magnitude > LARGE_MAGNITUDE:
        found.warnings.append(f"{name}: max |w| = {magnitude:.3g}, unusually large")
    if size > 1 and stats.min == stats.max:
        what = "all zeros" if stats.max == 0 else f"constant ({stats.max:.6g} everywhere)"
        found.warnings.append(f"{name}: {what}")
    return found


def check_tensors(tensors: dict[str, np.ndarray]) -> Findings:
    """Findings for tensors already in memory (the load path)."""
    found = Findings()
    for name, values in tensors.items():
        found.extend(check(name, range_stats(values), values.size))
    return found


def warnings_or_refuse(path, tensors: dict[str, np.ndarray]) -> list[str]:
    """The warnings for tensors about to be loaded; a WeightsError naming the first problems if any is an error."""
    findings = check_tensors(tensors)
    if findings.errors:
        more = len(findings.errors) - 5
        shown = "; ".join(findings.errors[:5]) + (f"; and {more} more" if more > 0 else "")
        raise WeightsError(f"refusing {path}: {shown}")
    return findings.warnings
