"""Which of OpenBLAS's kernels NumPy runs: chosen for the CPU before NumPy loads.

OpenBLAS (NumPy's BLAS in its wheels) picks its kernels by the CPU when it loads. Releases
without OpenBLAS's fix for AMD's family 0x1A (Zen 5; OpenMathLib/OpenBLAS#6029, fixed by #6033)
do not know that family and fall back to their AVX2 (Haswell) kernels on a CPU with AVX-512.
Single-precision products then run at about 60 % of the speed of the AVX-512 kernels the fix
selects (one core: 106 against 182 GFLOP/s for ``[128, 512] @ [512, 1024]``; a whole encode or
decode 1.4× faster; docs/performance.md). Until NumPy's wheels carry the fix, importing
``mimi_cli`` makes the fix's choice through ``OPENBLAS_CORETYPE``, the variable OpenBLAS reads
when it loads, if

- the variable is not set already (the user's choice stands),
- NumPy is not loaded yet (afterwards the kernels are chosen; :func:`kernels_note` says so),
- the CPU is AMD family 0x1A or later and its kernel reports AVX-512 F, CD, BW, DQ and VL (the
  instructions OpenBLAS's SkylakeX kernels use; Linux lists them only when it saves the AVX-512
  registers).

The fix picks Cooperlake where the CPU has AVX-512 BF16, else SkylakeX; both run the same
single-precision kernels, and every x86-64 build of OpenBLAS has SkylakeX's, so that is the one asked
for. Every other CPU keeps OpenBLAS's own choice. This module must not import NumPy.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

VARIABLE = "OPENBLAS_CORETYPE"
_AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
_FIRST_UNKNOWN_AMD_FAMILY = 0x1A


def cpu_facts(cpuinfo: str) -> tuple[str, int, set[str]]:
    """(vendor, family, flags) of the first processor in the text of ``/proc/cpuinfo``."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        family = int(fields.get("cpu family", ""))
    except ValueError:
        family = -1
    return fields.get("vendor_id", ""), family, set(fields.get("flags", "").split())


def kernels_for(vendor: str, family: int, flags: set[str]) -> str | None:
    """The OpenBLAS core type to ask for, or None to keep OpenBLAS's own choice."""
    if vendor != "AuthenticAMD" or family < _FIRST_UNKNOWN_AMD_FAMILY or not _AVX512 <= flags:
        return None
    return "SkylakeX"


def _this_cpu(cpuinfo: str | Path) -> str | None:
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:  # not Linux, or no /proc: OpenBLAS's own choice
        return None
    return kernels_for(*cpu_facts(text))


def choose_kernels(environ=os.environ, cpuinfo: str | Path = "/proc/cpuinfo", loaded=sys.modules) -> str | None:
    """Set ``OPENBLAS_CORETYPE`` for this CPU if it needs it and still can take effect; the value set, or None."""
    if VARIABLE in environ or "numpy" in loaded:
        return None
    core = _this_cpu(cpuinfo)
    if core is not None:
        environ[VARIABLE] = core
    return core


def kernels_note(architecture: str | None, cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """A hint when OpenBLAS runs kernels older than this CPU allows (NumPy was loaded before ``mimi_cli``)."""
    core = _this_cpu(cpuinfo)
    if core is None or architecture is None or architecture.lower() not in ("haswell", "zen"):
        return None
    return (f"OpenBLAS runs its {architecture} kernels on a CPU with AVX-512 (NumPy was loaded before mimi_cli): "
            f"set {VARIABLE}={core} before starting Python for faster products")
