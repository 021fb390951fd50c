"""The BLAS kernels chosen for the CPU before NumPy loads (mimi_cli/blas_kernels.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mimi_cli.blas_kernels import VARIABLE, choose_kernels, cpu_facts, kernels_for, kernels_note

AVX512 = "fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl"


def cpuinfo(vendor: str, family: int, flags: str, processors: int = 2) -> str:
    block = f"processor\t: {{n}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 2\nflags\t\t: {flags}\n"
    return "\n".join(block.format(n=n) for n in range(processors))


def test_cpu_facts_reads_the_first_processor():
    text = cpuinfo("AuthenticAMD", 26, AVX512 + " avx512_bf16") + "\nprocessor\t: 9\nvendor_id\t: Other\n"
    vendor, family, flags = cpu_facts(text)
    assert (vendor, family) == ("AuthenticAMD", 26)
    assert {"avx512f", "avx512vl", "avx512_bf16", "fma"} <= flags
    assert cpu_facts("") == ("", -1, set())
    assert cpu_facts("cpu family\t: unknown\n")[1] == -1


@pytest.mark.parametrize(("vendor", "family", "flags", "expected"), [
    ("AuthenticAMD", 26, AVX512 + " avx512_bf16", "SkylakeX"),  # Zen 5: the kernels OpenBLAS's fix picks
    ("AuthenticAMD", 26, AVX512, "SkylakeX"),
    ("AuthenticAMD", 27, AVX512, "SkylakeX"),  # a later family no OpenBLAS release knows yet
    ("AuthenticAMD", 25, AVX512 + " avx512_bf16", None),  # Zen 4: OpenBLAS knows it
    ("AuthenticAMD", 26, AVX512.replace(" avx512vl", ""), None),  # AVX-512 off (a VM or the OS)
    ("AuthenticAMD", 26, "fpu avx avx2 fma", None),
    ("GenuineIntel", 6, AVX512 + " avx512_bf16", None),  # Intel: OpenBLAS's own detection
])
def test_kernels_for(vendor, family, flags, expected):
    assert kernels_for(vendor, family, set(flags.split())) == expected


def test_choose_kernels_sets_the_variable_only_when_it_can_take_effect(tmp_path: Path):
    zen5 = tmp_path / "cpuinfo"
    zen5.write_text(cpuinfo("AuthenticAMD", 26, AVX512))
    environ: dict = {}
    assert choose_kernels(environ, zen5, loaded={}) == "SkylakeX"
    assert environ == {VARIABLE: "SkylakeX"}
    environ = {VARIABLE: "Haswell"}  # the user's own choice stands
    assert choose_kernels(environ, zen5, loaded={}) is None and environ == {VARIABLE: "Haswell"}
    environ = {}
    assert choose_kernels(environ, zen5, loaded={"numpy": object()}) is None and environ == {}  # too late
    intel = tmp_path / "intel"
    intel.write_text(cpuinfo("GenuineIntel", 6, AVX512))
    assert choose_kernels(environ, intel, loaded={}) is None and environ == {}
    assert choose_kernels(environ, tmp_path / "absent", loaded={}) is None and environ == {}


def test_kernels_note_only_when_older_kernels_run_on_such_a_cpu(tmp_path: Path):
    zen5 = tmp_path / "cpuinfo"
    zen5.write_text(cpuinfo("AuthenticAMD", 26, AVX512))
    note = kernels_note("Haswell", zen5)
    assert note is not None and f"{VARIABLE}=SkylakeX" in note
    assert kernels_note("SkylakeX", zen5) is None
    assert kernels_note(None, zen5) is None
    intel = tmp_path / "intel"
    intel.write_text(cpuinfo("GenuineIntel", 6, AVX512))
    assert kernels_note("Haswell", intel) is None


def test_importing_mimi_cli_first_gives_numpy_those_kernels():
    """On a CPU that needs the choice (else skipped), a fresh process's OpenBLAS runs the chosen kernels."""
    try:
        expected = kernels_for(*cpu_facts(Path("/proc/cpuinfo").read_text(errors="replace")))
    except OSError:
        expected = None
    if expected is None:
        pytest.skip("this CPU keeps OpenBLAS's own choice of kernels")
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    code = ("import mimi_cli, numpy, threadpoolctl; "
            "print([i.get('architecture') for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'])")
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert expected in shown, shown
