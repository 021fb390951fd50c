"""Run compiled Core ML ML Programs (``.mlmodelc``, ``.mlpackage``) on NumPy, on any OS.

    from mimi_cli.coreml import load_program
    program = load_program("silero-vad.mlmodelc")
    program.inputs, program.outputs            # names, MIL dtypes, shapes
    program.predict({"audio_input": x, ...})   # {output name: array}
    plan = program.prepare()                   # shapes resolved, buffers assigned once
    plan.run({...})                            # no large allocation per call

The program text and weights are read by :mod:`mimi_cli.weights.coreml`; the ops live in
:mod:`mimi_cli.coreml.ops`. docs/coreml.md lists them and how to add one.
"""

from mimi_cli.coreml.ops import KERNELS, ProgramError
from mimi_cli.coreml.program import CoreMLProgram, Port, PreparedPlan, load_program

__all__ = ["KERNELS", "CoreMLProgram", "Port", "PreparedPlan", "ProgramError", "load_program"]
