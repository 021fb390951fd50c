"""The MIL operations this interpreter runs, one short kernel each, registered by op name.

A kernel receives a :class:`Call` (its inputs by MIL argument name, plus where to write) and
returns its output array, or a tuple for ops with several outputs. Kernels write their results
into ``call.out(i, shape)`` and keep intermediates in ``call.scratch(...)``: in a prepared plan
both are buffers kept between calls, so a steady-state run allocates no large array.

Precision: values keep the dtype the program declares, so an fp16 program stays fp16 between
ops. Inside an op, element-wise arithmetic uses NumPy's fp16 loops (each result computed in fp32
and rounded once) and anything that accumulates (conv, matmul, reductions, normalisation, the
recurrent cells) works in fp32 and rounds once when the result is written. Semantics follow the
op definitions in coremltools (``coremltools/converters/mil/mil/ops/defs``); docs/coreml.md lists
the ops.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
from scipy import special

from mimi_cli.errors import MimiError, gigabytes, memory_said, usable_memory


class ProgramError(MimiError, ValueError):
    """A Core ML program that cannot be run as given (unsupported op, bad input, inconsistent shapes)."""


F32 = np.float32
MAX_VALUE_BYTES = 4 << 30  # one value or scratch array; larger is a broken or hostile program, refused
KERNELS: dict[str, Callable] = {}
VIEWS: set[str] = set()  # ops whose output is a view of their (contiguous) input: no buffer of their own


def kernel(*names: str, view: bool = False):
    def register(function):
        for name in names:
            KERNELS[name] = function
            if view:
                VIEWS.add(name)
        return function
    return register


class Allowance:
    """What one run of a program may allocate in all: the machine's memory.

    Each value is checked against MAX_VALUE_BYTES, but a run keeps its values, so a program of many
    values just under it (a broken or hostile one) would still be granted more than the machine
    has (the system promises memory lazily) and be killed while filling it. Counting every fresh
    array refuses it first, in one line.
    """

    def __init__(self, limit: int | None = None):
        self.limit = usable_memory() if limit is None else limit
        self.taken = 0

    def take(self, nbytes: int, call: Call) -> None:
        self.taken += nbytes
        if self.limit and self.taken > self.limit:
            raise call.error(f"would take the program's values past {gigabytes(self.taken)} in all, more "
                             f"than {memory_said(self.limit)}")


class Call:
    """One op's inputs and outputs for one run (see :mod:`mimi_cli.coreml.program`)."""

    def __init__(self, step, env: dict, buffers: list | None = None, allowance: Allowance | None = None,
                 held: dict | None = None):
        self.step, self.env, self.buffers, self.allowance = step, env, buffers, allowance
        self.held = held  # a prepared plan's working memory for this op (see scratch), kept between its runs

    # -- inputs

    def __getitem__(self, key: str):
        value = self.get(key)
        if value is None:
            raise self.error(f"lacks its required {key!r} input")
        return value

    def get(self, key: str, default=None):
        source = self.step.inputs.get(key)
        if source is None:
            return default
        return self.step.resolve(source, self.env)

    def int(self, key: str, default: int | None = None) -> int:
        value = self.get(key)
        return default if value is None else int(value)

    def ints(self, key: str, default=None) -> list[int] | None:
        value = self.get(key)
        return default if value is None else [int(v) for v in np.ravel(value)]

    def float(self, key: str, default: float) -> float:
        value = self.get(key)
        return default if value is None else float(value)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.get(key)
        return default if value is None else bool(value)

    def text(self, key: str, default: str) -> str:
        value = self.get(key)
        return default if value is None else str(value)

    def f32(self, key: str) -> np.ndarray:
        """An input as fp32: converted once for constants, into a scratch buffer for run-time values."""
        if key in self.step.constant_inputs:
            return self.derived(f"f32:{key}", lambda: np.ascontiguousarray(self[key], dtype=F32), key)
        return as_f32(self, key, self[key])

    # -- outputs and working memory

    def out(self, index: int, shape: tuple[int, ...]) -> np.ndarray:
        shape = self.checked(shape, self.step.dtypes[index])
        if self.buffers is not None and self.buffers[index] is not None:
            buffer = self.buffers[index]
            if buffer.shape != shape:  # a plan's inputs keep their shapes: this shape follows the inputs' values
                raise self.error(f"output {index} has shape {list(shape)} here but {list(buffer.shape)} when the "
                                 "plan was prepared: its shape depends on the inputs' values, which a prepared plan "
                                 "(mimi run --stream) cannot follow; run it call by call (predict, mimi run --input)")
            return buffer
        return np.empty(shape, self.step.dtypes[index])

    def checked(self, shape, dtype) -> tuple[int, ...]:
        """``shape`` as ints, refused before allocating when negative or over MAX_VALUE_BYTES."""
        shape = tuple(int(d) for d in shape)
        if min(shape, default=0) < 0 or math.prod(shape) * np.dtype(dtype).itemsize > MAX_VALUE_BYTES:
            raise self.error(f"would make a {list(shape)} array, beyond the {MAX_VALUE_BYTES >> 30} GiB a value "
                             "may take here")
        if self.allowance is not None:
            self.allowance.take(math.prod(shape) * np.dtype(dtype).itemsize, self)
        return shape

    def scratch(self, key: str, shape: tuple[int, ...], dtype=F32) -> np.ndarray:
        """Working memory private to this op: kept by a prepared plan, fresh otherwise."""
        shape = self.checked(shape, dtype)
        if self.buffers is None:
            return np.empty(shape, dtype)
        held = self.held.get(key)
        if held is None or held.shape != shape or held.dtype != dtype:
            held = self.held[key] = np.empty(shape, dtype)
        return held

    def memo(self, key: str, make: Callable[[], object]):
        """Views and set-up over this op's scratch: made once by a prepared plan, every call otherwise."""
        if self.buffers is None:
            return make()
        if key not in self.held:
            self.held[key] = make()
        return self.held[key]

    def derived(self, key: str, make: Callable[[], object], *inputs: str):
        """Something made from ``inputs`` (a weight in fp32, a transposed layout): made once when they
        are all constants, else every call."""
        if not all(name in self.step.constant_inputs or name not in self.step.inputs for name in inputs):
            return make()
        if key not in self.step.cache:
            self.step.cache[key] = make()
        return self.step.cache[key]

    def error(self, problem: str) -> ProgramError:
        return ProgramError(f"Core ML op {self.step.op.op} {self.step.op.name!r}: {problem}")


def as_f32(call: Call, key: str, x: np.ndarray) -> np.ndarray:
    if x.dtype == F32:
        return x
    buffer = call.scratch(f"f32:{key}", x.shape)
    np.copyto(buffer, x, casting="unsafe")
    return buffer


def write(call: Call, value: np.ndarray, index: int = 0) -> np.ndarray:
    """Copy (and round) an fp32 intermediate into output ``index``."""
    out = call.out(index, value.shape)
    np.copyto(out, value, casting="unsafe")
    return out


def axis_of(axis: int, rank: int, call: Call) -> int:
    if not -rank <= axis < max(rank, 1):
        raise call.error(f"axis {axis} is out of range for rank {rank}")
    return axis % max(rank, 1)


def axes_of(axes, rank: int, call: Call) -> tuple[int, ...]:
    return tuple(sorted(axis_of(int(a), rank, call) for a in axes))


# -- element-wise ------------------------------------------------------------------------------

_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.true_divide, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum, "floor_div": np.floor_divide, "mod": np.mod,
    "equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
    "greater": np.greater, "greater_equal": np.greater_equal, "logical_and": np.logical_and,
    "logical_or": np.logical_or, "logical_xor": np.logical_xor,
}


def _binary(ufunc):
    def run(call: Call) -> np.ndarray:
        x, y = call["x"], call["y"]
        out = call.out(0, np.broadcast_shapes(np.shape(x), np.shape(y)))
        return ufunc(x, y, out=out, casting="unsafe")
    return run


for _name, _ufunc in _BINARY.items():
    kernel(_name)(_binary(_ufunc))

_UNARY = {
    "abs": np.abs, "ceil": np.ceil, "floor": np.floor, "round": np.round, "sign": np.sign, "sqrt": np.sqrt,
    "exp": np.exp, "exp2": np.exp2, "sin": np.sin, "cos": np.cos, "tan": np.tan, "tanh": np.tanh,
    "atan": np.arctan, "asin": np.arcsin, "acos": np.arccos, "sinh": np.sinh, "cosh": np.cosh,
    "atanh": np.arctanh, "asinh": np.arcsinh, "acosh": np.arccosh, "square": np.square,
    "logical_not": np.logical_not, "sigmoid": special.expit, "erf": special.erf,
}


def _unary(ufunc):
    def run(call: Call) -> np.ndarray:
        x = call["x"]
        return ufunc(x, out=call.out(0, np.shape(x)), casting="unsafe")
    return run


for _name, _ufunc in _UNARY.items():
    kernel(_name)(_unary(_ufunc))


def _fp32_unary(function):
    """An activation of several steps: computed in fp32 scratch, rounded once into the output."""
    def run(call: Call) -> np.ndarray:
        x = call["x"]
        t = call.scratch("t", np.shape(x))
        np.copyto(t, x, casting="unsafe")
        function(call, t)
        return write(call, t)
    return run


@kernel("relu")
def relu(call: Call) -> np.ndarray:
    x = call["x"]
    return np.maximum(x, 0, out=call.out(0, x.shape), casting="unsafe")


@kernel("clip")
def clip(call: Call) -> np.ndarray:
    x = call["x"]
    return np.clip(x, call["alpha"], call["beta"], out=call.out(0, x.shape), casting="unsafe")


@kernel("threshold")
def threshold(call: Call) -> np.ndarray:
    x = call["x"]
    return np.maximum(x, call["alpha"], out=call.out(0, x.shape), casting="unsafe")


@kernel("log")
@_fp32_unary
def log(call: Call, t: np.ndarray) -> None:
    t += call.float("epsilon", 1e-45)
    np.log(t, out=t)


@kernel("rsqrt")
@_fp32_unary
def rsqrt(call: Call, t: np.ndarray) -> None:
    t += call.float("epsilon", 1e-12)
    np.sqrt(t, out=t)
    np.reciprocal(t, out=t)


@kernel("inverse")
@_fp32_unary
def inverse(call: Call, t: np.ndarray) -> None:
    t += call.float("epsilon", 1e-4)
    np.reciprocal(t, out=t)


@kernel("silu")
@_fp32_unary
def silu(call: Call, t: np.ndarray) -> None:
    t *= special.expit(t, out=call.scratch("s", t.shape))


@kernel("softplus")
@_fp32_unary
def softplus(call: Call, t: np.ndarray) -> None:
    np.logaddexp(t, 0, out=t)


@kernel("softsign")
@_fp32_unary
def softsign(call: Call, t: np.ndarray) -> None:
    denominator = np.abs(t, out=call.scratch("d", t.shape))
    denominator += 1
    t /= denominator


@kernel("elu")
@_fp32_unary
def elu(call: Call, t: np.ndarray) -> None:
    negative = np.expm1(np.minimum(t, 0, out=call.scratch("n", t.shape)), out=call.scratch("e", t.shape))
    negative *= call.float("alpha", 1.0)
    np.copyto(t, negative, where=t < 0)


@kernel("leaky_relu")
@_fp32_unary
def leaky_relu(call: Call, t: np.ndarray) -> None:
    np.multiply(t, call.float("alpha", 0.01), out=t, where=t < 0)


@kernel("hard_sigmoid")
@_fp32_unary
def hard_sigmoid(call: Call, t: np.ndarray) -> None:
    t *= call.float("alpha", 0.2)
    t += call.float("beta", 0.5)
    np.clip(t, 0, 1, out=t)


@kernel("linear_activation")
@_fp32_unary
def linear_activation(call: Call, t: np.ndarray) -> None:
    t *= call.float("alpha", 1.0)
    t += call.float("beta", 0.0)


@kernel("scaled_tanh")
@_fp32_unary
def scaled_tanh(call: Call, t: np.ndarray) -> None:
    t *= call.float("beta", 1.0)
    np.tanh(t, out=t)
    t *= call.float("alpha", 1.0)


@kernel("gelu")
@_fp32_unary
def gelu(call: Call, t: np.ndarray) -> None:
    mode = call.text("mode", "EXACT")
    s = call.scratch("s", t.shape)
    if mode == "EXACT":  # x Φ(x) = x (1 + erf(x / √2)) / 2
        np.multiply(t, 1 / math.sqrt(2), out=s)
        special.erf(s, out=s)
        s += 1
        s *= 0.5
    elif mode == "TANH_APPROXIMATION":  # x (1 + tanh(√(2/π) (x + 0.044715 x³))) / 2
        np.power(t, 3, out=s)
        s *= 0.044715
        s += t
        s *= math.sqrt(2 / math.pi)
        np.tanh(s, out=s)
        s += 1
        s *= 0.5
    elif mode == "SIGMOID_APPROXIMATION":  # x σ(1.702 x)
        np.multiply(t, 1.702, out=s)
        special.expit(s, out=s)
    else:
        raise call.error(f"gelu mode {mode!r} is not one of EXACT, TANH_APPROXIMATION, SIGMOID_APPROXIMATION")
    t *= s


@kernel("prelu")
def prelu(call: Call) -> np.ndarray:  # alpha per channel (axis 1)
    x = call["x"]
    alpha = call["alpha"].reshape((-1,) + (1,) * (x.ndim - 2))
    out = call.out(0, x.shape)
    np.copyto(out, x)
    np.multiply(x, alpha, out=out, where=x < 0, casting="unsafe")
    return out


@kernel("cast")
def cast(call: Call) -> np.ndarray:
    x = call["x"]
    return write(call, np.asarray(x))


@kernel("select")
def select(call: Call) -> np.ndarray:
    cond, a, b = call["cond"], call["a"], call["b"]
    out = call.out(0, np.broadcast_shapes(cond.shape, a.shape, b.shape))
    np.copyto(out, b, casting="unsafe")
    np.copyto(out, a, casting="unsafe", where=cond.astype(bool, copy=False))
    return out


@kernel("identity")
def identity(call: Call) -> np.ndarray:
    return write(call, call["x"])


# -- reductions and normalisation ----------------------------------------------------------------

def _reduce_axes(call: Call, x: np.ndarray) -> tuple[int, ...]:
    axes = call.ints("axes")
    return tuple(range(x.ndim)) if axes is None else axes_of(axes, x.ndim, call)


def _reduced_shape(x: np.ndarray, axes: tuple[int, ...], keep: bool) -> tuple[int, ...]:
    return tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)


def _reduction(finish=None, exact=None, square=False, absolute=False, log_sum_exp=False):
    def run(call: Call) -> np.ndarray:
        x = call["x"]
        axes, keep = _reduce_axes(call, x), call.flag("keep_dims")
        shape = _reduced_shape(x, axes, keep)
        if exact is not None:  # max, min: no arithmetic, no rounding
            return exact.reduce(x, axis=axes, keepdims=keep, out=call.out(0, shape))
        t = as_f32(call, "x", x)
        if square or absolute or log_sum_exp:  # work on a copy, never on the input
            t = np.copyto(work := call.scratch("t", x.shape), t) or work
        peak = None
        if log_sum_exp:
            small = _reduced_shape(x, axes, True)
            peak = np.maximum.reduce(t, axis=axes, keepdims=True, out=call.scratch("peak", small))
            t -= peak
            np.exp(t, out=t)
        if square:
            np.square(t, out=t)
        if absolute:
            np.abs(t, out=t)
        total = np.add.reduce(t, axis=axes, keepdims=keep, out=call.scratch("sum", shape))
        if finish is not None:
            finish(total, math.prod(x.shape[a] for a in axes))
        if peak is not None:
            np.log(total, out=total)
            total += peak.reshape(shape)
        return write(call, total)
    return run


def _mean(total, count):
    total /= count


kernel("reduce_sum")(_reduction())
kernel("reduce_mean")(_reduction(finish=_mean))
kernel("reduce_max")(_reduction(exact=np.maximum))
kernel("reduce_min")(_reduction(exact=np.minimum))
kernel("reduce_sum_square")(_reduction(square=True))
kernel("reduce_l1_norm")(_reduction(absolute=True))
kernel("reduce_l2_norm")(_reduction(square=True, finish=lambda total, count: np.sqrt(total, out=total)))
kernel("reduce_log_sum")(_reduction(finish=lambda total, count: np.log(total, out=total)))
kernel("reduce_log_sum_exp")(_reduction(log_sum_exp=True))


@kernel("reduce_prod")
def reduce_prod(call: Call) -> np.ndarray:
    x = call["x"]
    axes, keep = _reduce_axes(call, x), call.flag("keep_dims")
    total = np.multiply.reduce(as_f32(call, "x", x), axis=axes, keepdims=keep,
                               out=call.scratch("prod", _reduced_shape(x, axes, keep)))
    return write(call, total)


def _arg_reduction(function):
    def run(call: Call) -> np.ndarray:
        x = call["x"]
        axis = axis_of(call.int("axis", -1), x.ndim, call)
        keep = call.flag("keep_dims")
        index = function(x, axis=axis, keepdims=keep)
        return write(call, index)
    return run


kernel("reduce_argmax")(_arg_reduction(np.argmax))
kernel("reduce_argmin")(_arg_reduction(np.argmin))


@kernel("softmax")
def softmax(call: Call) -> np.ndarray:
    x = call["x"]
    axis = axis_of(call.int("axis", -1), x.ndim, call)
    t = call.scratch("t", x.shape)
    np.copyto(t, x, casting="unsafe")
    small = tuple(1 if i == axis else d for i, d in enumerate(x.shape))
    t -= np.maximum.reduce(t, axis=axis, keepdims=True, out=call.scratch("peak", small))
    np.exp(t, out=t)
    t /= np.add.reduce(t, axis=axis, keepdims=True, out=call.scratch("sum", small))
    return write(call, t)


def _normalise(call: Call, x: np.ndarray, axes: tuple[int, ...], epsilon: float) -> np.ndarray:
    """(x - mean) / sqrt(var + epsilon) over ``axes``, in fp32 scratch (biased variance, as in MIL)."""
    t = call.scratch("t", x.shape)
    np.copyto(t, x, casting="unsafe")
    small = _reduced_shape(x, axes, True)
    count = math.prod(x.shape[a] for a in axes)
    mean = np.add.reduce(t, axis=axes, keepdims=True, out=call.scratch("mean", small))
    mean /= count
    t -= mean
    square = np.square(t, out=call.scratch("square", x.shape))
    variance = np.add.reduce(square, axis=axes, keepdims=True, out=call.scratch("variance", small))
    variance /= count
    variance += epsilon
    np.sqrt(variance, out=variance)
    t /= variance
    return t


def _affine(call: Call, t: np.ndarray, shape: tuple[int, ...]) -> None:
    """t = t * gamma + beta, each (when given) reshaped to ``shape``."""
    if call.get("gamma") is not None:
        t *= call.f32("gamma").reshape(shape)
    if call.get("beta") is not None:
        t += call.f32("beta").reshape(shape)


def _channel_shape(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


@kernel("layer_norm")
def layer_norm(call: Call) -> np.ndarray:
    x = call["x"]
    axes = _reduce_axes(call, x)
    t = _normalise(call, x, axes, call.float("epsilon", 1e-5))
    _affine(call, t, tuple(x.shape[a] for a in range(axes[0], x.ndim)) if axes else ())
    return write(call, t)


@kernel("instance_norm")
def instance_norm(call: Call) -> np.ndarray:
    x = call["x"]
    t = _normalise(call, x, tuple(range(2, x.ndim)), call.float("epsilon", 1e-5))
    _affine(call, t, _channel_shape(x))
    return write(call, t)


@kernel("batch_norm")
def batch_norm(call: Call) -> np.ndarray:
    x = call["x"]
    shape = _channel_shape(x)
    epsilon = call.float("epsilon", 1e-5)

    def scale_shift():  # y = x * scale + shift, folded once from the constant statistics
        scale = 1 / np.sqrt(call.f32("variance").astype(np.float64) + epsilon)
        if call.get("gamma") is not None:
            scale = scale * call.f32("gamma")
        shift = -call.f32("mean") * scale
        if call.get("beta") is not None:
            shift = shift + call.f32("beta")
        return scale.astype(F32).reshape(shape), shift.astype(F32).reshape(shape)

    scale, shift = call.derived("scale_shift", scale_shift, "mean", "variance", "gamma", "beta")
    t = call.scratch("t", x.shape)
    np.copyto(t, x, casting="unsafe")
    t *= scale
    t += shift
    return write(call, t)


# -- linear algebra ------------------------------------------------------------------------------

@kernel("linear")
def linear(call: Call) -> np.ndarray:
    """y = x Wᵀ + b;  x [..., D_in], weight [D_out, D_in], bias [D_out]."""
    x = call["x"]
    weight_t = call.derived("weight_t", lambda: np.ascontiguousarray(call.f32("weight").T), "weight")
    acc = call.scratch("acc", x.shape[:-1] + weight_t.shape[1:])
    np.matmul(as_f32(call, "x", x), weight_t, out=acc)
    if call.get("bias") is not None:
        acc += call.f32("bias")
    return write(call, acc)


@kernel("matmul")
def matmul(call: Call) -> np.ndarray:
    x, y = call.f32("x"), call.f32("y")
    if call.flag("transpose_x"):
        x = np.swapaxes(x, -1, -2)
    if call.flag("transpose_y"):
        y = np.swapaxes(y, -1, -2)
    if x.ndim == 1 or y.ndim == 1:
        return write(call, np.matmul(x, y))
    shape = np.broadcast_shapes(x.shape[:-2], y.shape[:-2]) + (x.shape[-2], y.shape[-1])
    return write(call, np.matmul(x, y, out=call.scratch("acc", shape)))


# -- shape and data movement ---------------------------------------------------------------------

@kernel("reshape", view=True)
def reshape(call: Call) -> np.ndarray:
    x = call["x"]
    shape = call.ints("shape")
    shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]  # 0 copies the input's dim
    try:
        return x.reshape(shape)
    except ValueError:
        raise call.error(f"cannot reshape {list(x.shape)} to {shape}") from None


@kernel("expand_dims", view=True)
def expand_dims(call: Call) -> np.ndarray:
    x = call["x"]
    rank = x.ndim + len(call.ints("axes"))
    return np.expand_dims(x, axes_of(call.ints("axes"), rank, call))


@kernel("squeeze", view=True)
def squeeze(call: Call) -> np.ndarray:
    x = call["x"]
    axes = call.ints("axes")
    if axes is None:
        return np.squeeze(x)
    axes = axes_of(axes, x.ndim, call)
    if any(x.shape[a] != 1 for a in axes):
        raise call.error(f"cannot squeeze axes {list(axes)} of shape {list(x.shape)}")
    return np.squeeze(x, axis=axes)


@kernel("transpose")
def transpose(call: Call) -> np.ndarray:
    return write(call, np.transpose(call["x"], call.ints("perm")))


@kernel("concat")
def concat(call: Call) -> np.ndarray:
    values = call["values"]
    values = values if isinstance(values, list) else [values]
    axis = axis_of(call.int("axis"), values[0].ndim, call)
    if call.flag("interleave"):
        raise call.error("concat with interleave = true is not supported")
    shape = list(values[0].shape)
    shape[axis] = sum(v.shape[axis] for v in values)
    return np.concatenate(values, axis=axis, out=call.out(0, shape), casting="unsafe")


@kernel("stack")
def stack(call: Call) -> np.ndarray:
    values = call["values"]
    values = values if isinstance(values, list) else [values]
    axis = axis_of(call.int("axis", 0), values[0].ndim + 1, call)
    shape = list(values[0].shape)
    shape.insert(axis, len(values))
    return np.stack(values, axis=axis, out=call.out(0, shape), casting="unsafe")


@kernel("split")
def split(call: Call) -> tuple[np.ndarray, ...]:
    x = call["x"]
    axis = axis_of(call.int("axis"), x.ndim, call)
    sizes = call.ints("split_sizes")
    if sizes is None:
        parts = call.int("num_splits")
        if not parts or x.shape[axis] % parts:
            raise call.error(f"cannot split {x.shape[axis]} into {parts} equal parts")
        sizes = [x.shape[axis] // parts] * parts
    if sum(sizes) != x.shape[axis]:
        raise call.error(f"split sizes {sizes} do not add up to {x.shape[axis]}")
    bounds = np.cumsum([0, *sizes])
    return tuple(write(call, x[(slice(None),) * axis + (slice(a, b),)], i)
                 for i, (a, b) in enumerate(itertools.pairwise(bounds)))


def _slices(call: Call, x: np.ndarray) -> tuple:
    """The index tuple of slice_by_index: begin/end/stride with masks, as NumPy slices."""
    rank = x.ndim
    begin, end = call.ints("begin"), call.ints("end")
    stride = call.ints("stride", [1] * rank)
    begin_mask = call.ints("begin_mask", [0] * rank)
    end_mask = call.ints("end_mask", [0] * rank)
    squeeze_mask = call.ints("squeeze_mask", [0] * rank)
    if not len(begin) == len(end) == len(stride) == rank:
        raise call.error(f"begin, end and stride need {rank} entries each")
    index = []
    for axis in range(rank):
        if squeeze_mask[axis]:
            index.append(begin[axis])
            continue
        start = None if begin_mask[axis] else begin[axis]
        stop = None if end_mask[axis] else end[axis]
        index.append(slice(start, stop, stride[axis]))
    return tuple(index)


@kernel("slice_by_index")
def slice_by_index(call: Call) -> np.ndarray:
    x = call["x"]
    return write(call, x[_slices(call, x)])


@kernel("slice_by_size")
def slice_by_size(call: Call) -> np.ndarray:
    x = call["x"]
    begin, size = call.ints("begin"), call.ints("size")
    index = tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size, strict=True))
    return write(call, x[index])


def _indices(call: Call, size: int) -> np.ndarray:
    """The op's indices into an axis of ``size``, as the intp array NumPy indexes with; each checked in range
    (-size ≤ i < size). NumPy would make that copy itself, uncounted: 8 GiB from a 4 GiB int32 value."""
    indices = np.asarray(call["indices"])
    if indices.dtype != np.intp:
        call.checked(indices.shape, np.intp)
        indices = indices.astype(np.intp)
    if indices.size and (indices.max() >= size or indices.min() < -size):
        raise call.error(f"an index is out of range for an axis of {size}")
    return indices


@kernel("gather")
def gather(call: Call) -> np.ndarray:
    x = call["x"]
    axis = axis_of(call.int("axis", 0), x.ndim, call)
    if call.int("batch_dims", 0):
        raise call.error("gather with batch_dims is not supported")
    indices = _indices(call, x.shape[axis])
    # the output sized (and checked) first: NumPy's own would be allocated whatever the indices make of it
    out = call.out(0, (*x.shape[:axis], *indices.shape, *x.shape[axis + 1:]))
    taken = out if out.dtype == x.dtype else call.scratch("taken", out.shape, x.dtype)
    np.take(x, indices, axis=axis, out=taken, mode="wrap")  # in range (above): "wrap" reads -1 as the last
    return out if taken is out else write(call, taken)


@kernel("gather_along_axis")
def gather_along_axis(call: Call) -> np.ndarray:
    x = call["x"]
    axis = axis_of(call.int("axis", 0), x.ndim, call)
    indices = _indices(call, x.shape[axis])
    if indices.ndim != x.ndim:
        raise call.error(f"indices of rank {indices.ndim} do not match x of rank {x.ndim}")
    # the other axes broadcast: [1, 20000] indices into a [60000, 4] x make [60000, 20000]; checked first
    out = call.out(0, np.broadcast_shapes(x.shape[:axis] + (1,) + x.shape[axis + 1:], indices.shape))
    np.copyto(out, np.take_along_axis(x, indices, axis=axis), casting="unsafe")
    return out


@kernel("tile")
def tile(call: Call) -> np.ndarray:
    x, reps = call["x"], call.ints("reps")
    if len(reps) != x.ndim:
        raise call.error(f"reps {reps} do not match rank {x.ndim}")
    out = call.out(0, [d * r for d, r in zip(x.shape, reps, strict=True)])
    if out.size:  # NumPy tiles axis by axis: reps [2**31 - 1, 7, 0] made 64 GiB on the way to nothing
        np.copyto(out, np.tile(x, reps))
    return out


@kernel("shape")
def shape(call: Call) -> np.ndarray:
    return write(call, np.array(np.shape(call["x"]), np.int32))


@kernel("fill")
def fill(call: Call) -> np.ndarray:
    out = call.out(0, call.ints("shape"))
    out.fill(call.float("value", 0.0))
    return out


@kernel("range_1d")
def range_1d(call: Call) -> np.ndarray:
    start, end, step = (call[k].item() for k in ("start", "end", "step"))
    if step == 0:
        raise call.error("step is 0")
    count = max(0, math.ceil((end - start) / step))
    out = call.out(0, (count,))
    for first in range(0, count, 1 << 20):  # a block at a time: whole, the int64 temporaries took 4× the output
        indices = np.arange(first, min(first + (1 << 20), count))
        out[first:first + len(indices)] = indices * step + start
    return out


@kernel("pad")
def pad(call: Call) -> np.ndarray:
    """Pad the last N axes; ``pad`` is [before₀, after₀, before₁, after₁, ...] for those axes.

    Constant fills; reflect mirrors without repeating the edge (``abc`` → ``cb|abc|ba``);
    replicate repeats it (``aa|abc|cc``). Axes are filled one after another over the full extent
    of the others, so corners come out as NumPy's ``np.pad`` makes them.
    """
    x = call["x"]
    widths = call.ints("pad")
    mode = call.text("mode", "constant")
    if len(widths) % 2 or len(widths) // 2 > x.ndim or min(widths, default=0) < 0:
        raise call.error(f"pad {widths} does not fit a tensor of rank {x.ndim}")
    pairs = [(0, 0)] * (x.ndim - len(widths) // 2) + list(zip(widths[::2], widths[1::2], strict=True))
    out = call.out(0, [d + a + b for d, (a, b) in zip(x.shape, pairs, strict=True)])
    interior = tuple(slice(a, a + d) for d, (a, b) in zip(x.shape, pairs, strict=True))
    if mode == "constant":
        out.fill(call.float("constant_val", 0.0))
        out[interior] = x
        return out
    if mode not in ("reflect", "replicate"):
        raise call.error(f"pad mode {mode!r} is not one of constant, reflect, replicate")
    out[interior] = x
    for axis, ((before, after), size) in enumerate(zip(pairs, x.shape, strict=True)):
        if not before and not after:
            continue
        if mode == "reflect" and max(before, after) >= size:
            raise call.error(f"reflect padding of {max(before, after)} needs more than {size} samples on axis {axis}")

        def at(start, stop, step=1, axis=axis):
            return out[(slice(None),) * axis + (slice(start, stop, step),)]
        edge_start, edge_stop = before, before + size  # the interior along this axis
        if mode == "reflect":
            if before:
                at(0, before)[...] = at(edge_start + before, edge_start, -1)
            if after:
                at(edge_stop, edge_stop + after)[...] = at(edge_stop - 2, edge_stop - 2 - after if
                                                           edge_stop - 2 - after >= 0 else None, -1)
        else:
            if before:
                at(0, before)[...] = at(edge_start, edge_start + 1)
            if after:
                at(edge_stop, edge_stop + after)[...] = at(edge_stop - 1, edge_stop)
    return out


# -- convolution ---------------------------------------------------------------------------------

def _conv_geometry(call: Call, spatial: tuple[int, ...], kernel_size: tuple[int, ...],
                   transpose: bool = False) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Strides, dilations and (begin, end) padding per spatial axis, from pad_type and pad."""
    n = len(spatial)
    strides = call.ints("strides", [1] * n)
    dilations = call.ints("dilations", [1] * n)
    pad_type = call.text("pad_type", "valid")
    effective = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilations, strict=True)]
    if pad_type == "valid":
        return strides, dilations, [(0, 0)] * n
    if pad_type == "custom":
        widths = call.ints("pad", [0] * 2 * n)
        return strides, dilations, list(zip(widths[::2], widths[1::2], strict=True))
    if pad_type in ("same", "same_lower"):
        pads = []
        for size, s, k in zip(spatial, strides, effective, strict=True):
            total = (k - s) if transpose else max((math.ceil(size / s) - 1) * s + k - size, 0)
            total = max(total, 0)
            small, large = total // 2, total - total // 2
            pads.append((large, small) if pad_type == "same_lower" else (small, large))
        return strides, dilations, pads
    raise call.error(f"pad_type {pad_type!r} is not one of valid, same, same_lower, custom")


@kernel("conv")
def conv(call: Call) -> np.ndarray:
    """x [N, C_in, *D], weight [C_out, C_in/groups, *K] → [N, C_out, *D_out], as im2col + one matmul.

    The padded input is copied into fp32 scratch, its sliding windows gathered into
    ``cols [N, G, C_in/G · ∏K, ∏D_out]``, and ``weight [G, C_out/G, C_in/G · ∏K] @ cols`` gives the
    output with one fp32 accumulation per value. A prepared plan builds the views once.
    """
    x = call["x"]
    padded, interior, windows, cols, w, acc, out_shape = call.memo("conv", lambda: _conv_setup(call, x))
    padded[interior] = x
    np.copyto(cols, windows)
    np.matmul(w, cols.reshape(acc.shape[:2] + w.shape[2:] + acc.shape[3:]), out=acc)
    if call.get("bias") is not None:
        acc += call.f32("bias").reshape(w.shape[0], w.shape[1], 1)
    return write(call, acc.reshape(out_shape))


def _conv_setup(call: Call, x: np.ndarray) -> tuple:
    """Buffers and views of one conv: padded input, its interior, window view, cols, weight, accumulator."""
    weight = call["weight"]
    n, c_in, spatial = x.shape[0], x.shape[1], x.shape[2:]
    c_out, c_group, kernel_size = weight.shape[0], weight.shape[1], weight.shape[2:]
    groups = call.int("groups", 1)
    if len(kernel_size) != len(spatial) or c_group * groups != c_in or c_out % groups:
        raise call.error(f"weight {list(weight.shape)} with groups={groups} does not fit input {list(x.shape)}")
    strides, dilations, pads = _conv_geometry(call, spatial, kernel_size)
    padded = call.scratch("padded", (n, c_in, *(d + a + b for d, (a, b) in zip(spatial, pads, strict=True))))
    padded.fill(0)  # the padding stays zero; each call rewrites only the interior
    interior = (slice(None), slice(None), *(slice(a, a + d) for d, (a, _) in zip(spatial, pads, strict=True)))
    effective = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilations, strict=True)]
    out_spatial = [(p - e) // s + 1 for p, e, s in zip(padded.shape[2:], effective, strides, strict=True)]
    if min(out_spatial, default=1) < 1:
        raise call.error(f"input {list(x.shape)} is shorter than the kernel {list(kernel_size)}")
    rank = len(spatial)
    windows = np.lib.stride_tricks.sliding_window_view(padded, effective, axis=tuple(range(2, 2 + rank)))
    windows = windows[(slice(None), slice(None), *(slice(None, None, s) for s in strides),
                       *(slice(None, None, d) for d in dilations))]
    # windows [N, C_in, *D_out, *K] → [N, G, C_in/G, *K, *D_out], the layout of cols
    windows = windows.reshape(n, groups, c_group, *windows.shape[2:])
    windows = windows.transpose(0, 1, 2, *range(3 + rank, 3 + 2 * rank), *range(3, 3 + rank))
    k_total, d_total = math.prod(kernel_size), math.prod(out_spatial)
    cols = call.scratch("cols", (n, groups, c_group * k_total, d_total)).reshape(windows.shape)
    w = call.f32("weight").reshape(groups, c_out // groups, c_group * k_total)
    acc = call.scratch("acc", (n, groups, c_out // groups, d_total))
    return padded, interior, windows, cols, w, acc, (n, c_out, *out_spatial)


@kernel("conv_transpose")
def conv_transpose(call: Call) -> np.ndarray:
    """x [N, C_in, *D], weight [C_in, C_out/groups, *K] → [N, C_out, *D_out].

    Each input position scatters ``weight`` into the output: ``cols = Wᵀ x`` gives every
    (kernel tap, input position) contribution, then each tap is added at ``i·stride + k·dilation``;
    the padding is cropped from both ends afterwards.
    """
    x = call["x"]
    weight = call["weight"]
    n, c_in, spatial = x.shape[0], x.shape[1], x.shape[2:]
    groups = call.int("groups", 1)
    c_out_group, kernel_size = weight.shape[1], weight.shape[2:]
    c_out = c_out_group * groups
    if weight.shape[0] != c_in or c_in % groups or len(kernel_size) != len(spatial):
        raise call.error(f"weight {list(weight.shape)} with groups={groups} does not fit input {list(x.shape)}")
    strides, dilations, pads = _conv_geometry(call, spatial, kernel_size, transpose=True)
    full = [(d - 1) * s + (k - 1) * dl + 1
            for d, s, k, dl in zip(spatial, strides, kernel_size, dilations, strict=True)]
    output_shape = call.ints("output_shape")
    rank, k_total, d_total = len(spatial), math.prod(kernel_size), math.prod(spatial)
    w = call.derived("weight_t", lambda: np.ascontiguousarray(
        call.f32("weight").reshape(groups, c_in // groups, c_out_group * k_total).transpose(0, 2, 1)), "weight")
    cols = call.scratch("cols", (n, groups, c_out_group * k_total, d_total))
    np.matmul(w, as_f32(call, "x", x).reshape(n, groups, c_in // groups, d_total), out=cols)
    cols = cols.reshape(n, c_out, *kernel_size, *spatial)
    acc = call.scratch("acc", (n, c_out, *full))
    acc.fill(0)
    for tap in itertools.product(*(range(k) for k in kernel_size)):
        target = tuple(slice(t * dl, t * dl + (d - 1) * s + 1, s)
                       for t, dl, d, s in zip(tap, dilations, spatial, strides, strict=True))
        acc[(slice(None), slice(None), *target)] += cols[(slice(None), slice(None), *tap)]
    if call.get("bias") is not None:
        acc += call.f32("bias").reshape((1, c_out) + (1,) * rank)
    if output_shape is not None:  # the declared size wins; padding is cropped from the start
        crop = tuple(slice(a, a + o) for (a, _), o in zip(pads, output_shape[2:], strict=True))
    else:
        crop = tuple(slice(a, f - b) for (a, b), f in zip(pads, full, strict=True))
    return write(call, acc[(slice(None), slice(None), *crop)])


# -- recurrent layers ----------------------------------------------------------------------------

_GATE_ACTIVATIONS = {
    "sigmoid": lambda t: special.expit(t, out=t),
    "tanh": lambda t: np.tanh(t, out=t),
    "relu": lambda t: np.maximum(t, 0, out=t),
    "linear": lambda t: t,
}


def _activation(call: Call, key: str, default: str):
    name = call.text(key, default).lower()
    if name not in _GATE_ACTIVATIONS:
        raise call.error(f"{key} {name!r} is not supported (supported: {', '.join(_GATE_ACTIVATIONS)})")
    return _GATE_ACTIVATIONS[name]


def _directions(call: Call, suffixes: tuple[str, ...]) -> list[tuple[str, bool]]:
    """``(weight-name suffix, runs backwards)`` for each direction the op computes."""
    direction = call.text("direction", "forward")
    if direction == "forward":
        return [("", False)]
    if direction == "reverse":
        return [("", True)]
    if direction == "bidirectional" and "_back" in suffixes:
        return [("", False), ("_back", True)]
    raise call.error(f"direction {direction!r} is not supported here")


@kernel("lstm")
def lstm(call: Call) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [S, B, I] → (outputs [S or 1, B, D·H], h [B, D·H], c [B, D·H]); gates in MIL order i, f, o, z.

    A reverse direction runs from the last step to the first and emits its outputs in the order
    it computes them; in a bidirectional LSTM the backward half is stored in time order, as PyTorch does.
    """
    if call.get("clip") is not None:
        raise call.error("lstm with a cell clip is not supported")
    x = call.f32("x")
    steps, batch, _ = x.shape
    recurrent = _activation(call, "recurrent_activation", "sigmoid")
    cell_act = _activation(call, "cell_activation", "tanh")
    output_act = _activation(call, "activation", "tanh")
    directions = _directions(call, ("", "_back"))
    bidirectional = len(directions) == 2
    h0, c0 = call.f32("initial_h"), call.f32("initial_c")
    hidden = h0.shape[-1] // len(directions)
    sequence = call.flag("output_sequence")
    width = len(directions) * hidden
    outputs = call.scratch("outputs", (steps, batch, width))
    h_all, c_all = call.scratch("h", (batch, width)), call.scratch("c", (batch, width))
    for d, (suffix, backwards) in enumerate(directions):
        part = slice(d * hidden, (d + 1) * hidden)
        w_ih = call.derived(f"w_ih{suffix}", lambda s=suffix: np.ascontiguousarray(call.f32(f"weight_ih{s}").T),
                            f"weight_ih{suffix}")
        w_hh = call.derived(f"w_hh{suffix}", lambda s=suffix: np.ascontiguousarray(call.f32(f"weight_hh{s}").T),
                            f"weight_hh{suffix}")
        projected = np.matmul(x, w_ih, out=call.scratch(f"xw{suffix}", (steps, batch, 4 * hidden)))
        if call.get(f"bias{suffix}") is not None:
            projected += call.f32(f"bias{suffix}")
        has_peephole = call.get(f"peephole{suffix}") is not None
        peephole = call.f32(f"peephole{suffix}").reshape(3, hidden) if has_peephole else None
        h, c = h_all[:, part], c_all[:, part]
        h[...] = h0[:, part]
        c[...] = c0[:, part]
        gates = call.scratch(f"gates{suffix}", (batch, 4 * hidden))
        cell = call.scratch(f"cell{suffix}", (batch, hidden))
        order = range(steps - 1, -1, -1) if backwards else range(steps)
        for count, t in enumerate(order):
            np.matmul(h, w_hh, out=gates)
            gates += projected[t]
            i, f, o, z = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
            if peephole is not None:
                i += peephole[0] * c
                f += peephole[1] * c
            recurrent(i), recurrent(f), cell_act(z)
            c *= f
            c += np.multiply(i, z, out=cell)
            if peephole is not None:
                o += peephole[2] * c
            recurrent(o)
            np.copyto(cell, c)
            np.multiply(o, output_act(cell), out=h)
            outputs[t if bidirectional or not backwards else count, :, part] = h
    if sequence:
        result = outputs
    elif bidirectional:  # forward's last step and backward's first (the last it computed)
        result = call.scratch("last", (1, batch, 2 * hidden))
        result[0, :, :hidden] = outputs[-1, :, :hidden]
        result[0, :, hidden:] = outputs[0, :, hidden:]
    else:
        result = outputs[-1:]
    return write(call, result, 0), write(call, h_all, 1), write(call, c_all, 2)


@kernel("gru")
def gru(call: Call) -> tuple[np.ndarray, np.ndarray]:
    """x [S, B, I] → (outputs [S or 1, B, H], h [B, H]); gates in MIL order r, o, z.

    r = σ(W_ir x + W_hr h + b_r), z = σ(W_iz x + W_hz h + b_z),
    o = tanh(W_io x + b_o + W_ho (r ⊙ h)), h = (1 - z) ⊙ o + z ⊙ h.
    """
    x = call.f32("x")
    steps, batch, _ = x.shape
    recurrent = _activation(call, "recurrent_activation", "sigmoid")
    output_act = _activation(call, "activation", "tanh")
    ((_, backwards),) = _directions(call, ("",))
    h = call.scratch("h", call["initial_h"].shape)
    h[...] = call.f32("initial_h")
    hidden = h.shape[-1]
    w_ih = call.derived("w_ih", lambda: np.ascontiguousarray(call.f32("weight_ih").T), "weight_ih")
    w_hh = call.derived("w_hh", lambda: call.f32("weight_hh").reshape(3, hidden, hidden).transpose(0, 2, 1).copy(),
                        "weight_hh")
    projected = np.matmul(x, w_ih, out=call.scratch("xw", (steps, batch, 3 * hidden)))
    if call.get("bias") is not None:
        projected += call.f32("bias")
    outputs = call.scratch("outputs", (steps, batch, hidden))
    r, z, o = (call.scratch(k, (batch, hidden)) for k in "rzo")
    for count, t in enumerate(range(steps - 1, -1, -1) if backwards else range(steps)):
        xr, xo, xz = (projected[t, :, k * hidden:(k + 1) * hidden] for k in range(3))
        recurrent(np.add(np.matmul(h, w_hh[0], out=r), xr, out=r))
        recurrent(np.add(np.matmul(h, w_hh[2], out=z), xz, out=z))
        np.multiply(r, h, out=r)
        output_act(np.add(np.matmul(r, w_hh[1], out=o), xo, out=o))
        h -= o  # h = o + z (h - o)
        h *= z
        h += o
        outputs[count] = h
    return write(call, outputs if call.flag("output_sequence") else outputs[-1:], 0), write(call, h, 1)
