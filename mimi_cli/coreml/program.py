"""A compiled Core ML ML Program, run op by op on NumPy; and its prepared, allocation-free plan.

Loading resolves every argument once: constants (``const`` and the ``constexpr_*`` compression
ops, rebuilt dense by the weight reader) become arrays, everything else a name looked up while
running. An op the interpreter does not know fails at load time, naming it; nothing is guessed.

``predict`` allocates each op's output as it goes. ``prepare`` runs the program once to learn
every value's shape, then gives each value a buffer by liveness::

    step:      conv   relu   conv   relu   ...       values of equal size alternate between
    writes:     A      B      A      B               two buffers (MetalAudio's ping-pong);
    frees:      x      A      B      A               a buffer returns to the pool after its
                                                     value's last reader has run

Both run with inf and nan flowing through, as Core ML lets them. Given an :class:`Overflows`,
either also names the ops whose arithmetic overflowed to inf: a program can turn an inf back
into finite but meaningless numbers (x / inf = 0), which its outputs alone would not show.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimi_cli.coreml.ops import KERNELS, MAX_VALUE_BYTES, VIEWS, Allowance, Call, ProgramError
from mimi_cli.errors import DATA_ERRORS, WeightsError, first_line
from mimi_cli.weights.coreml.mil import Function, Operation, Ref, TensorType, Value

DTYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "bool": np.bool_, "int8": np.int8,
          "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16,
          "uint32": np.uint32, "uint64": np.uint64}


@dataclass(frozen=True)
class Port:
    """A program input or output: its name, MIL dtype and shape (None for a flexible dimension)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype} [{dims}]"

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(d is None or d == s
                                                     for d, s in zip(self.shape, shape, strict=True))


@dataclass(frozen=True)
class Const:
    value: object


@dataclass(frozen=True)
class Var:
    name: str


class Overflows(list):
    """The ops whose arithmetic overflowed to inf in the runs it watched, each named once, first first.

    NumPy raises its overflow flag in a ufunc or a cast that makes an inf of finite numbers (fp16's
    range ends at ±65504); a value that was inf already raises nothing. The runs set ``step`` before
    each op, and NumPy calls this object with each flag it raises (``np.errstate(call=...)``).
    """

    step: Step | None = None

    def __call__(self, kind: str, flag: int) -> None:
        name = f"{self.step.op.op} {self.step.op.name!r}"
        if name not in self:
            self.append(name)


def _errstate(overflows: Overflows | None) -> np.errstate:
    """inf and nan flow through as Core ML lets them; ``overflows`` hears of each overflow."""
    if overflows is None:
        return np.errstate(all="ignore")
    return np.errstate(all="ignore", over="call", call=overflows)


class Step:
    """One op, its arguments resolved to constants or names, and what it keeps between runs."""

    def __init__(self, op: Operation, inputs: dict[str, object], dtypes: list[np.dtype]):
        self.op = op
        self.kernel = KERNELS[op.op]
        self.inputs = inputs
        self.constant_inputs = {key for key, source in inputs.items() if _constant(source)}
        self.outputs = [name for name, _ in op.outputs]
        self.types = [value_type for _, value_type in op.outputs]
        self.dtypes = dtypes
        self.cache: dict[str, object] = {}  # derived from constants, shared by every run

    def resolve(self, source, env: Mapping[str, object]):
        if isinstance(source, Const):
            return source.value
        if isinstance(source, Var):
            return env[source.name]
        return [self.resolve(item, env) for item in source]

    def run(self, env: dict[str, object], buffers: list | None = None, check: bool = True,
            allowance: Allowance | None = None, held: dict | None = None) -> None:
        """Run the op on ``env``, adding its outputs; ``check`` them against the declared types
        (a prepared plan checked them once, when it was made); fresh arrays count against ``allowance``.
        ``buffers`` and ``held``: a prepared plan's, for the outputs and the op's working memory."""
        call = Call(self, env, buffers, allowance, held)
        try:
            result = self.kernel(call)
        except ProgramError:
            raise
        except DATA_ERRORS as exc:  # inputs a hostile or broken program gives an op: its error, one line
            raise call.error(f"cannot run ({type(exc).__name__}: {first_line(exc)})") from None
        results = result if isinstance(result, tuple) else (result,)
        if not check:
            env.update(zip(self.outputs, results, strict=True))
            return
        if len(results) != len(self.outputs):
            raise call.error(f"gave {len(results)} outputs where the program declares {len(self.outputs)}")
        for name, value, value_type, dtype in zip(self.outputs, results, self.types, self.dtypes, strict=True):
            if value.dtype != dtype:
                raise call.error(f"{name} came out {value.dtype}, but the program declares {value_type.dtype}")
            if not Port(name, value_type.dtype, value_type.shape).accepts(value.shape):
                raise call.error(f"{name} came out with shape {list(value.shape)}, but the program declares "
                                 f"{[d if d is not None else '?' for d in value_type.shape]}")
            env[name] = value


def _constant(source) -> bool:
    return isinstance(source, Const) or (isinstance(source, list) and all(_constant(s) for s in source))


class CoreMLProgram:
    """A runnable ML Program: ``inputs``, ``outputs``, ``predict(feeds)`` and ``prepare(shapes)``.

    ``precision="program"`` keeps every value in the dtype the program declares (fp16 stays fp16
    and overflows past ±65504, as on the Neural Engine); ``precision="fp32"`` holds and computes
    fp16 values in fp32, as the source model did (see docs/coreml.md, "Precision").
    """

    PRECISIONS = ("program", "fp32")

    def __init__(self, path: Path, function: str | None = None, precision: str = "program"):
        from mimi_cli.weights.coreml import read_program
        from mimi_cli.weights.coreml.program import ProgramWeights

        self.path = Path(path)
        if precision not in self.PRECISIONS:
            raise ProgramError(f"precision {precision!r} is not one of {', '.join(self.PRECISIONS)}")
        self.precision = precision
        check_program_folder(self.path)
        program, model_dir, _, details = read_program(self.path)
        if program is None:
            raise ProgramError(f"{self.path} holds a {details.get('model type')} model, not an ML Program; "
                               "only ML Programs can be run")
        names = list(program.functions)
        chosen = function or ("main" if "main" in names else names[0] if len(names) == 1 else None)
        if chosen not in program.functions:
            raise ProgramError(f"{self.path} has functions {', '.join(names) or 'none'}; choose one of them")
        self.function: Function = program.functions[chosen]
        self.opset = self.function.opset
        self._weights = ProgramWeights(program, model_dir)
        self.inputs = [self._port(name, value_type) for name, value_type in self.function.inputs]
        self.constants: dict[str, object] = {}
        self.steps: list[Step] = []
        declared: dict[str, TensorType | None] = {name: t for name, t in self.function.inputs}
        for op in self.function.block.operations:
            self._add(op, declared)
        self.outputs = [self._port(name, declared.get(name)) for name in self.function.block.outputs]
        self.computes_fp16 = any(t.dtype == "fp16" for step in self.steps for t in step.types)
        missing = [p.name for p in self.outputs if p.name not in self.constants and
                   not any(p.name in s.outputs for s in self.steps) and p.name not in self._input_names]
        if missing:
            raise ProgramError(f"{self.path}: the program returns {', '.join(missing)}, which nothing computes")

    @property
    def _input_names(self) -> set[str]:
        return {port.name for port in self.inputs}

    def dtype(self, name: str) -> np.dtype:
        """The NumPy dtype a value the program declares as ``name`` is held in."""
        return np.dtype(np.float32 if name == "fp16" and self.precision == "fp32" else DTYPES[name])

    def _widened(self, value):
        if self.precision == "fp32" and isinstance(value, np.ndarray) and value.dtype == np.float16:
            return value.astype(np.float32)
        return value

    def _port(self, name: str, value_type: TensorType | None) -> Port:
        if value_type is None or value_type.dtype not in DTYPES:
            raise ProgramError(f"{self.path}: {name} is a {getattr(value_type, 'dtype', 'non-tensor')} value; "
                               "only tensors of numbers and booleans can be fed or returned")
        return Port(name, value_type.dtype, value_type.shape)

    # -- loading

    def _add(self, op: Operation, declared: dict[str, TensorType | None]) -> None:
        for name, value_type in op.outputs:
            declared[name] = value_type
        where = f"{op.op} {op.name!r} in {self.path}"
        try:
            if op.op == "const":
                name, value_type = op.outputs[0]
                value = op.attrs.get("val")
                is_text = value_type is not None and value_type.dtype == "string"
                self.constants[name] = (value.data if is_text and value is not None else
                                        self._widened(self._weights.value(name)))
                return
            if op.op.startswith("constexpr_"):
                values = self._weights.constexpr(op)
                for index, (name, _) in enumerate(op.outputs):
                    self.constants[name] = self._widened(values[index] if isinstance(values, tuple) else values)
                return
        except WeightsError as exc:
            raise ProgramError(f"cannot load the constant of {where}: {exc}") from None
        if op.op not in KERNELS:
            raise ProgramError(f"Core ML op {where} is not supported by this interpreter; docs/coreml.md lists "
                               "the supported ops and how to add one")
        for name, value_type in op.outputs:
            if value_type is None or value_type.dtype not in DTYPES:
                raise ProgramError(f"Core ML op {where}: output {name} is not a tensor this interpreter handles")
        inputs = {key: self._source(item, where) for key, item in {**op.attrs, **op.args}.items() if key != "name"}
        self.steps.append(Step(op, inputs, [self.dtype(t.dtype) for _, t in op.outputs]))

    def _source(self, item, where: str):
        if isinstance(item, list):
            return [self._source(part, where) for part in item]
        if isinstance(item, Ref):
            if item.name in self.constants:
                return Const(self.constants[item.name])
            if item.name in self._input_names or any(item.name in s.outputs for s in self.steps):
                return Var(item.name)
            raise ProgramError(f"Core ML op {where} reads {item.name}, which no earlier operation defines")
        if isinstance(item, Value):
            if item.type is not None and item.type.dtype == "string":
                return Const(item.data)
            try:
                return Const(self._widened(self._weights.literal(item, item.type)))
            except WeightsError as exc:
                raise ProgramError(f"Core ML op {where}: {exc}") from None
        raise ProgramError(f"Core ML op {where} has an argument this interpreter cannot read")

    # -- running

    def input(self, name: str) -> Port:
        for port in self.inputs:
            if port.name == name:
                return port
        raise ProgramError(f"{self.path} has no input {name!r}; its inputs are "
                           f"{', '.join(str(p) for p in self.inputs)}")

    def checked_feeds(self, feeds: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Every input present, of an accepted shape, cast to its declared dtype (safely)."""
        if not isinstance(feeds, Mapping):  # a list of arrays raised "unhashable type: 'numpy.ndarray'"
            wanted = ", ".join(f"{port.name!r}: array" for port in self.inputs)
            raise TypeError(f"feeds must map input names to arrays, {{{wanted}}}; got {type(feeds).__name__}")
        unknown = sorted(set(feeds) - self._input_names)
        if unknown:
            raise ProgramError(f"{self.path} has no input {', '.join(map(repr, unknown))}; its inputs are "
                               f"{', '.join(str(p) for p in self.inputs)}")
        missing = [port for port in self.inputs if port.name not in feeds]
        if missing:  # all of them at once: a program with state inputs needs several
            names, options = ", ".join(map(str, missing)), " ".join(f"--input {p.name}=FILE.npy" for p in missing)
            raise ProgramError(f"input {names} is missing; give it (mimi run: {options})" if len(missing) == 1 else
                               f"inputs {names} are missing; give them (mimi run: {options})")
        arrays = {}
        for port in self.inputs:
            value = np.asarray(feeds[port.name])
            if not port.accepts(value.shape):
                raise ProgramError(f"input {port.name} has shape {list(value.shape)}; the program takes {port}")
            dtype = self.dtype(port.dtype)
            if not np.can_cast(value.dtype, dtype, casting="same_kind"):
                raise ProgramError(f"input {port.name} holds {value.dtype} values; the program takes {port.dtype}")
            with np.errstate(over="ignore"):  # values beyond an fp16 input's range become inf, as in Core ML
                arrays[port.name] = np.ascontiguousarray(value, dtype=dtype)
        return arrays

    def predict(self, feeds: Mapping[str, object], overflows: Overflows | None = None) -> dict[str, np.ndarray]:
        """Run the program once: ``{output name: array}``; ``overflows`` names the ops that overflowed."""
        env: dict[str, object] = dict(self.checked_feeds(feeds))
        allowance = Allowance()
        with _errstate(overflows):
            for step in self.steps:
                if overflows is not None:
                    overflows.step = step
                step.run(env, allowance=allowance)
        return {port.name: np.asarray(self.constants.get(port.name, env.get(port.name))) for port in self.outputs}

    def prepare(self, shapes: Mapping[str, tuple[int, ...]] | None = None) -> PreparedPlan:
        """A plan for inputs of these shapes (default: the declared ones, which must then be fixed)."""
        return PreparedPlan(self, shapes or {})


class PreparedPlan:
    """The program with every shape resolved and every value assigned a reusable buffer.

    ``run(feeds)`` copies the inputs into the plan's own buffers, runs each op into its assigned
    buffer and returns the output buffers themselves: they are overwritten by the next run, so
    copy what you keep. So a plan serves one thread at a time (a run while another thread's runs
    raises); plans of one program may run in as many threads at once as you like.
    """

    def __init__(self, program: CoreMLProgram, shapes: Mapping[str, tuple[int, ...]]):
        self.program = program
        feeds = {}
        for port in program.inputs:
            shape = tuple(shapes.get(port.name, port.shape))
            if None in shape or not port.accepts(shape):
                raise ProgramError(f"input {port} has flexible dimensions; prepare the plan with its shape, "
                                   f"e.g. prepare({{{port.name!r}: (...)}})")
            nbytes = math.prod(shape) * program.dtype(port.dtype).itemsize
            if nbytes > MAX_VALUE_BYTES:  # a plan holds each input twice, and a stream its state a third time
                raise ProgramError(f"input {port} would take {nbytes / (1 << 30):,.1f} GiB, beyond the "
                                   f"{MAX_VALUE_BYTES >> 30} GiB a value may take here")
            feeds[port.name] = np.zeros(shape, program.dtype(port.dtype))
        env: dict[str, object] = dict(feeds)  # learn every value's shape and dtype from one run
        allowance = Allowance()
        with np.errstate(all="ignore"):
            for step in program.steps:
                step.run(env, allowance=allowance)
        self.inputs = {name: np.zeros_like(value) for name, value in feeds.items()}
        self._assign(env)
        self._running = threading.Lock()

    def _assign(self, env: dict[str, object]) -> None:
        steps, program = self.program.steps, self.program
        end = len(steps)
        root = {name: name for name in env}  # a view op's output lives in its input's buffer
        for step in steps:
            if step.op.op in VIEWS:
                source = step.inputs.get("x")
                for name in step.outputs:
                    root[name] = root.get(source.name, source.name) if isinstance(source, Var) else name
        last_use: dict[str, int] = {}
        for index, step in enumerate(steps):
            for source in _vars(list(step.inputs.values())):
                last_use[root[source]] = index
        for port in program.outputs:
            last_use[root.get(port.name, port.name)] = end  # returned: never reused
        pinned = {root.get(port.name, port.name) for port in program.outputs}
        free: list[np.ndarray] = []
        self.buffers: list[list[np.ndarray | None]] = []
        self.values = self.value_bytes = 0
        held: dict[str, np.ndarray] = {}
        pool: list[np.ndarray] = []
        for index, step in enumerate(steps):
            slots: list[np.ndarray | None] = []
            for name in step.outputs:
                value = env[name]
                if step.op.op in VIEWS and root[name] != name:
                    slots.append(None)
                    continue
                self.values += 1
                self.value_bytes += value.nbytes
                buffer = None if name in pinned else _take(free, value.dtype, value.size)
                if buffer is None:
                    buffer = np.empty(value.size, value.dtype)
                    pool.append(buffer)
                held[name] = buffer
                slots.append(buffer[:value.size].reshape(value.shape))
            self.buffers.append(slots)
            for name in list(held):
                if last_use.get(name, index) <= index and name not in pinned:
                    free.append(held.pop(name))
        self.buffer_count = len(pool)
        self.buffer_bytes = sum(b.nbytes for b in pool)
        self.scratch = [dict() for _ in steps]

    def report(self) -> dict[str, int]:
        """How many values the program computes and how few buffers hold them."""
        scratch = sum(a.nbytes for held in self.scratch for a in held.values() if isinstance(a, np.ndarray))
        return {"values": self.values, "value_bytes": self.value_bytes, "buffers": self.buffer_count,
                "buffer_bytes": self.buffer_bytes, "scratch_bytes": scratch}

    def run(self, feeds: Mapping[str, object], overflows: Overflows | None = None) -> dict[str, np.ndarray]:
        if not self._running.acquire(blocking=False):
            raise ProgramError("this plan is running in another thread, into the buffers it returns: prepare a "
                               "plan for each thread")
        try:
            return self._run(feeds, overflows)
        finally:
            self._running.release()

    def _run(self, feeds: Mapping[str, object], overflows: Overflows | None) -> dict[str, np.ndarray]:
        program = self.program
        if not isinstance(feeds, Mapping) or feeds.keys() != self.inputs.keys():
            program.checked_feeds(feeds)  # says what is wrong, missing or unknown
        for name, buffer in self.inputs.items():
            value = np.asarray(feeds[name])
            if value.shape != buffer.shape:
                raise ProgramError(f"input {name} has shape {list(value.shape)}; this plan was prepared for "
                                   f"{list(buffer.shape)}")
            if not np.can_cast(value.dtype, buffer.dtype, casting="same_kind"):
                raise ProgramError(f"input {name} holds {value.dtype} values; the program takes {buffer.dtype}")
            with np.errstate(over="ignore"):  # as in checked_feeds
                np.copyto(buffer, value, casting="same_kind")
        env: dict[str, object] = dict(self.inputs)
        with _errstate(overflows):
            for step, buffers, scratch in zip(program.steps, self.buffers, self.scratch, strict=True):
                if overflows is not None:
                    overflows.step = step
                step.run(env, buffers, check=False, held=scratch)  # the plan's own: plans may run at once
        return {port.name: program.constants.get(port.name, env.get(port.name)) for port in program.outputs}


def _vars(sources: list) -> list[str]:
    names = []
    for source in sources:
        if isinstance(source, Var):
            names.append(source.name)
        elif isinstance(source, list):
            names.extend(_vars(source))
    return names


def _take(free: list[np.ndarray], dtype: np.dtype, size: int) -> np.ndarray | None:
    """The smallest free buffer of ``dtype`` holding at least ``size`` values, removed from ``free``."""
    fits = [i for i, b in enumerate(free) if b.dtype == dtype and b.size >= size]
    if not fits:
        return None
    return free.pop(min(fits, key=lambda i: free[i].size))


def check_program_folder(path: Path) -> None:
    """Refuse a path that is no ML Program folder, reading nothing: before the command walks it (its files are
    the run's inputs, which no output may be), as ``mimi run /`` would walk the whole file system."""
    if not path.exists():
        raise ProgramError(f"{path} does not exist")
    if not path.is_dir() or not ((path / "model.mil").is_file() or (path / "Manifest.json").is_file()):
        raise ProgramError(f"{path} is not a Core ML ML Program; give an .mlmodelc folder with a model.mil "
                           "or an .mlpackage (older Neural Network models are not run)")


def load_program(path: Path | str, function: str | None = None, precision: str = "program") -> CoreMLProgram:
    """Load an ``.mlmodelc`` or ``.mlpackage`` ML Program for :meth:`CoreMLProgram.predict`."""
    return CoreMLProgram(Path(path), function, precision)


