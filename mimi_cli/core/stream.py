"""One streaming protocol for every stateful layer: ``step``, ``flush``, ``reset``.

``layer.streaming()`` hands out a :class:`Stream`, a stateful copy of the layer
that is fed a sequence ``[B, C, T]`` piece by piece along ``T``::

    y = stream.step(x)     the outputs ``x`` completes (possibly none: ``T`` of 0)
    y = stream.flush()     the input has ended: what the layer still holds or now can
                           compute (a right padding, say); None if nothing; then reset
    stream.reset()         forget everything: the next step starts a new sequence

A layer emits every output its inputs so far determine, and keeps what the next
piece needs (carried context, partial sums, recurrent state), so any split of a
sequence into pieces, then ``flush()``, gives the batch result (float rounding
aside: BLAS may sum in another order on pieces of another size). Chains
(:class:`Chain`) and sums (:class:`Sum`) are streams of streams, and
:func:`run_chunks` is the one runner: batch mode runs a codec's convolutional
stacks through it in chunks that stay in cache; streaming mode feeds the same
streams as audio or codes arrive.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from mimi_cli.core import threads


def _join(pieces: list) -> np.ndarray | None:
    """Outputs of successive calls, concatenated along time (None and empty pieces skipped); pairs (an
    opened sum's, :func:`_opened`) side by side."""
    if any(isinstance(p, _Pair) for p in pieces):
        return _Pair((_join([p[0] for p in pieces if p is not None]), _join([p[1] for p in pieces if p is not None])))
    pieces = [p for p in pieces if p is not None and p.shape[-1]]
    if not pieces:
        return None
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=-1)


class Stream:
    """The protocol (see the module docstring); subclasses implement ``step`` and, if they hold anything,
    ``flush`` and ``reset``."""

    def step(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def flush(self) -> np.ndarray | None:
        self.reset()
        return None

    def reset(self) -> None:
        pass


class Pointwise(Stream):
    """A stateless function of each step (ELU, GELU ...): ``step`` is the function itself.

    ``in_place``: each input is the stream before's own new output, which nothing else reads, so
    ``fn(x, in_place=True)`` may write its result over it (an ELU over a 2 MB activation took 0.33
    instead of 0.54 ms so: no second array to bring into the cache; docs/performance.md).
    """

    def __init__(self, fn: Callable[..., np.ndarray], in_place: bool = False):
        self.fn, self.in_place = fn, in_place

    def step(self, x: np.ndarray) -> np.ndarray:
        if not x.shape[-1]:
            return x
        return self.fn(x, in_place=True) if self.in_place else self.fn(x)


class Identity(Stream):
    def step(self, x: np.ndarray) -> np.ndarray:
        return x


def _finish(streams: list[Stream], y: np.ndarray | None = None) -> np.ndarray | None:
    """End ``streams`` in turn: each steps on what the one before flushed (``y`` for the first), then flushes."""
    for stream in streams:
        y = _join([stream.step(y) if y is not None else None, stream.flush()])
    return y


class Chain(Stream):
    """Streams in order. ``flush`` ends them in turn: what one flushes is the next one's last input.

    ``costs`` is where :func:`run_chunks` keeps each stream's time per piece between runs: given,
    a dict the layer that made the chain owns, so every chain of that layer shares it; else the
    chain's own.
    """

    def __init__(self, streams: list[Stream], costs: dict | None = None):
        self.streams = streams
        self.costs = {} if costs is None else costs

    def step(self, x: np.ndarray) -> np.ndarray:
        for stream in self.streams:
            x = stream.step(x)
        return x

    def flush(self) -> np.ndarray | None:
        return _finish(self.streams)

    def reset(self) -> None:
        for stream in self.streams:
            stream.reset()


class Sum(Stream):
    """``a(x) + b(x)`` for two streams of the same input whose outputs may arrive at different times
    (a shortcut is ready at once, a padded branch may wait): each output waits for its partner.

    ``in_place``: ``b`` makes a new array for every output, which nothing else reads, so a sum
    that covers all of one is written over it (:class:`Pointwise` says why).
    """

    def __init__(self, a: Stream, b: Stream, in_place: bool = False):
        self.a, self.b, self.in_place = a, b, in_place
        self.reset()

    def reset(self) -> None:
        self.a.reset()
        self.b.reset()
        self._a: np.ndarray | None = None
        self._b: np.ndarray | None = None

    def _emit(self, a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        a, b = _join([self._a, a]), _join([self._b, b])
        if a is None or b is None:
            self._a, self._b = a, b
            return None
        n = min(a.shape[-1], b.shape[-1])
        self._a, self._b = a[..., n:], b[..., n:]
        if self.in_place and n == b.shape[-1] and b.flags.c_contiguous:
            return np.add(a[..., :n], b, out=b)
        return a[..., :n] + b[..., :n]

    def step(self, x: np.ndarray) -> np.ndarray:  # [B, C, T] → [B, C, T'] (a residual keeps its width)
        y = self._emit(self.a.step(x), self.b.step(x))
        return y if y is not None else np.zeros((x.shape[0], x.shape[1], 0), np.float32)

    def flush(self) -> np.ndarray | None:
        y = self._emit(self.a.flush(), self.b.flush())
        self.reset()
        return y


# Many streams advance in groups of MIN_GROUP to MAX_GROUP streams (an even number of groups, for two
# cores), each group a whole step on one thread (see :class:`Groups`). Fewer than 2 · MIN_GROUP streams
# stay one group: smaller groups each read every weight again, which costs more than a second core
# gains (2 groups of 2 streams: 1.45× the time of one group of 4 on one thread, no faster on two).
# A stream that has a thread to itself (a side of a duplex, models/streaming.py) is one group whatever
# its size: each weight is then read once per step for all its streams.
MIN_GROUP, MAX_GROUP = 4, 8


def batch_groups(batch: int, split: bool = True) -> list[slice]:
    """The batch axis cut into groups (see :data:`MAX_GROUP`), sizes within one; one group unless ``split``.
    They depend on ``batch`` and ``split`` alone, never on the thread count."""
    if not split or batch < 2 * MIN_GROUP:
        return [slice(0, batch)]
    return threads.even_pieces(batch, batch, MAX_GROUP)


class Groups(Stream):
    """B streams of one layer, ``[B, ...]``, as groups along the batch axis stepped at once on the threads.

    A step of many streams is made of hundreds of small products; shared out one by one, each
    hand-off costs more than half of it gains. A group of streams is instead a whole step on one
    thread, with no hand-off inside: B = 16 streams as 2 groups of 8 on two threads. Each group's
    products have the group's shape whatever the thread count, so the bits are the same on any
    number of threads, and a group's streams get exactly what a batch of that group alone would.
    """

    def __init__(self, make: Callable[[], Stream], batch: int, split: bool = True):
        self.groups = batch_groups(batch, split)
        self.streams = [make() for _ in self.groups]

    def _each(self, work: Callable[[int], np.ndarray | None]) -> np.ndarray | None:
        outputs: list[np.ndarray | None] = [None] * len(self.streams)

        def one(i: int) -> None:
            outputs[i] = work(i)

        threads.run_blocks(one, len(outputs))
        if any(out is None for out in outputs):  # every group holds the same steps: all or none
            return None
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)

    def step(self, x: np.ndarray) -> np.ndarray:
        return self._each(lambda i: self.streams[i].step(x[self.groups[i]]))

    def flush(self) -> np.ndarray | None:
        return self._each(lambda i: self.streams[i].flush())

    def reset(self) -> None:
        for stream in self.streams:
            stream.reset()


def run_chunks(stream: Stream, x: np.ndarray, chunk: int, head: int = 0, tail: int = 0, regroup: int = 1
               ) -> np.ndarray:
    """``x`` ``[B, C, T]`` through ``stream`` in pieces of ``chunk`` steps, then ``flush``: the batch result.

    The first ``head`` and the last ``tail`` streams of a :class:`Chain` may step on pieces of
    ``regroup`` chunks instead (a layer with a large weight and few steps per chunk then reads its
    weight once per ``regroup`` chunks): the head's output is cut back into one chunk's worth per piece
    for the streams after it (see :func:`_pieces`), the tail gathers ``regroup`` pieces before it steps
    (:class:`_Gathered`). With more than one thread (:mod:`mimi_cli.core.threads`), a chain runs as a
    pipeline: see :func:`_pipeline`. Every stream sees the same pieces in the same order whatever the
    thread count, each product on one BLAS thread, so the result is the same bits at any count.
    """
    streams = stream.streams if isinstance(stream, Chain) else [stream]
    head = head if 0 < head < len(streams) and regroup > 1 else 0
    if 0 < tail < len(streams) - head and regroup > 1:
        streams = [*streams[:-tail], _Gathered(streams[-tail:], regroup)]
    stages = threads.current()
    if stages > 1 and len(streams) > 1 and -(-x.shape[2] // chunk) > 2:
        return _pipeline(streams, x, chunk, head, regroup, stages, stream.costs)
    rest = Chain(streams[head:])
    with threads.one_blas_thread():
        return _join([_finish(rest.streams, piece.last) if isinstance(piece, _End) else rest.step(piece)
                      for piece in _pieces(x, chunk, streams[:head], regroup, [0.0] * head)])


def _pieces(x: np.ndarray, chunk: int, head: list[Stream], regroup: int, spent: list[float]
            ) -> Iterator[np.ndarray | _End]:
    """What the streams after ``head`` step on: ``x`` in pieces of ``chunk`` steps, then an :class:`_End`.

    With a ``head``, it steps on pieces of ``regroup`` chunks (each stream's time added to ``spent``),
    and its output is cut into pieces of one chunk's worth of output::

        x:        [ chunk · regroup        ][ chunk · regroup        ][ rest  ]
        head:     [ out ][ out ][ out ][ out ][ out ][ out ][ out ][ out ][ .. ]   → the streams after it
        the end:  _End(what the head's streams flush, in turn)
    """
    size = chunk * (regroup if head else 1)
    for start in range(0, x.shape[2], size):
        piece = x[:, :, start : start + size]
        if not head:
            yield piece
            continue
        y = _timed_step(head, piece, spent, 0)
        each = max(1, y.shape[2] * chunk // piece.shape[2])  # one chunk's worth of the head's output
        for a in range(0, y.shape[2], each):
            yield y[:, :, a : a + each]
    yield _End(_finish(head) if head else None)


def _pipeline(streams: list[Stream], x: np.ndarray, chunk: int, head: int, regroup: int, stages: int,
              known: dict) -> np.ndarray:
    """Run ``streams`` (a chain) over ``x``'s pieces (:func:`_pieces`) as ``stages`` threads in a row, each
    with one BLAS thread::

        piece:      0      1      2      3
        stage 0:  [0 ··· ][1 ··· ][2 ··· ][3 ··· ]
        stage 1:          [0 ··· ][1 ··· ][2 ··· ][3 ··· ]

    Stage k runs a run of consecutive streams on piece n while stage k − 1 runs piece n + 1:
    two cores, up to twice the pieces per second once the pipe is full. Stage 0 also runs the
    ``head`` streams, as it takes its pieces. A residual sum is opened into its parts (:func:`_opened`),
    so a cut may fall inside it. The cut points split the time of a piece evenly. That
    time comes from ``known`` (each stream's mean time per piece of this shape in an earlier run,
    measured inside its stage), or else the first two pieces run alone and the second one is timed
    (the first warms up; the head's time is per piece it makes). A cut never changes a result (each
    stream gets the same inputs, in order, either way), so timing noise cannot. The caller's thread
    runs the last stage; an error in any stage, or an interrupt in the caller, stops every stage and
    is raised in the caller.
    """
    key = x.shape[:2] + (chunk,)
    streams = streams[:head] + _opened(streams[head:])
    with threads.one_blas_thread(), threads.single():
        pipe = _Pipe(stages, len(streams))
        pieces = _pieces(x, chunk, streams[:head], regroup, pipe.spent)
        outputs, costs = [], known.get(key)
        if costs is not None and len(costs) != len(streams):  # timed for another arrangement of the chain
            costs = None
        if costs is None:
            for _ in range(2):
                costs, piece = [0.0] * len(streams), next(pieces)
                if isinstance(piece, _End):  # a head that made fewer pieces than the input had chunks
                    return _join([*outputs, _finish(streams[head:], piece.last)])
                outputs.append(_timed_step(streams[head:], piece, costs, head))
            costs[:head] = [spent / regroup for spent in pipe.spent[:head]]  # the head has run once
        timed = len(outputs)  # pieces that went through every stream before the pipe
        # Stage 0 steps from the first stream after the head, which makes its pieces.
        cuts = [(a + head, b + head) for a, b in _balanced_cuts([sum(costs[: head + 1]), *costs[head + 1 :]], stages)]
        pipe.links = pipe.links[: len(cuts)]
        helpers = [threading.Thread(target=pipe.stage, args=(k, streams, cut, pieces), daemon=True,
                                    name=f"mimi-stage-{k}") for k, cut in enumerate(cuts[:-1])]
        try:
            for helper in helpers:
                helper.start()  # RuntimeError where the system refuses a thread (ulimit -u)
            outputs += pipe.stage(len(cuts) - 1, streams, cuts[-1], pieces)
        finally:
            pipe.stopped.set()  # after an error or an interrupt here, the helpers stop at their next piece
            for helper in helpers:
                if helper.ident is not None:  # started
                    helper.join()
        if pipe.pieces:  # the head ran for the pieces timed above too
            known[key] = [spent / (pipe.pieces + timed) for spent in pipe.spent[:head]] + [
                spent / pipe.pieces for spent in pipe.spent[head:]]
    return _join(outputs)


class Split(Stream):
    """``streams`` stepped on ``parts`` near-equal pieces of each input in turn, their outputs joined.

    For a chain's high-rate layers in batch mode: at 24 kHz a 1.28 s piece of 64 channels is 7.8 MB
    an activation, which every layer reads from the shared cache; a quarter of it stays in the core's
    own (docs/performance.md, "The 24 kHz layers on quarter pieces"). The pieces depend on the input's
    length alone, so the result does not depend on the thread count.
    """

    def __init__(self, streams: list[Stream], parts: int):
        self.chain, self.parts = Chain(streams), parts

    def step(self, x: np.ndarray) -> np.ndarray:
        bounds = sorted({x.shape[2] * i // self.parts for i in range(self.parts + 1)})  # no empty piece
        if len(bounds) < 2:
            return self.chain.step(x)
        outputs = [self.chain.step(x[:, :, a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        y = _join(outputs)
        return y if y is not None else outputs[-1]

    def flush(self) -> np.ndarray | None:
        return self.chain.flush()

    def reset(self) -> None:
        self.chain.reset()


def split_layers(chain: Chain, layers: slice, parts: int) -> Chain:
    """``chain`` with its streams ``layers`` in one :class:`Split` of ``parts`` (its costs dict kept)."""
    streams = chain.streams
    start, stop, _ = layers.indices(len(streams))
    return Chain([*streams[:start], Split(streams[start:stop], parts), *streams[stop:]], chain.costs)


class _Gathered(Stream):
    """``streams`` stepped once every ``count`` pieces, on those pieces joined (a chain's tail, see
    :func:`run_chunks`); ``flush`` steps them on what is left, then ends them."""

    def __init__(self, streams: list[Stream], count: int):
        self.chain, self.count = Chain(streams), count
        self.held: list[np.ndarray] = []

    def step(self, x: np.ndarray) -> np.ndarray | None:
        self.held.append(x)
        return self._step_held() if len(self.held) == self.count else None

    def _step_held(self) -> np.ndarray | None:
        x, self.held = _join(self.held), []
        return None if x is None else self.chain.step(x)

    def flush(self) -> np.ndarray | None:
        return _join([self._step_held(), self.chain.flush()])

    def reset(self) -> None:
        self.held = []
        self.chain.reset()


class _Pair(tuple):
    """``(shortcut, branch)``: a residual sum's two outputs so far, on their way through its opened parts."""


def _opened(streams: list[Stream]) -> list[Stream]:
    """``streams`` with each :class:`Sum` whose branch is a :class:`Chain` opened into its parts, for the
    pipeline's cut to fall anywhere inside it (the same steps in the same order, so the same bits)::

        Sum(a, Chain([b1, b2]))  →  _Fork (a; x passed on)  _Branch(b1)  _Branch(b2)  _Merge (a + b)
    """
    opened: list[Stream] = []
    for stream in streams:
        if isinstance(stream, Sum) and isinstance(stream.b, Chain):
            opened += [_Fork(stream), *(_Branch(part) for part in stream.b.streams), _Merge(stream)]
        else:
            opened.append(stream)
    return opened


class _Fork(Stream):
    def __init__(self, sum_: Sum):
        self.sum = sum_

    def step(self, x: np.ndarray) -> _Pair:
        return _Pair((self.sum.a.step(x), x))

    def flush(self) -> _Pair:
        return _Pair((self.sum.a.flush(), None))


class _Branch(Stream):
    def __init__(self, stream: Stream):
        self.stream = stream

    def step(self, pair: _Pair) -> _Pair:
        return _Pair((pair[0], None if pair[1] is None else self.stream.step(pair[1])))

    def flush(self) -> _Pair:
        return _Pair((None, self.stream.flush()))


class _Merge(Stream):
    def __init__(self, sum_: Sum):
        self.sum = sum_

    def step(self, pair: _Pair) -> np.ndarray | None:
        y = self.sum._emit(*pair)
        if y is None and pair[0] is not None:  # the branch is behind: nothing yet, as Sum.step says it
            return np.zeros((*pair[0].shape[:2], 0), np.float32)
        return y

    def flush(self) -> None:
        self.sum.reset()


def _timed_step(streams: list[Stream], x: np.ndarray, spent: list[float], first: int) -> np.ndarray:
    """``streams`` (a run of a chain, the first being ``first`` in it) in turn on ``x``, each one's time
    added to ``spent``."""
    for index, stream in enumerate(streams, first):
        start = time.perf_counter()
        x = stream.step(x)
        spent[index] += time.perf_counter() - start
    return x


class _End:
    """After the last piece: end the streams, what the stage before flushed (``last``) first."""

    def __init__(self, last: np.ndarray | None = None):
        self.last = last


class _Pipe:
    """The queues between the stages of :func:`_pipeline`: ``links[k]`` is stage ``k``'s input (stage 0
    takes its pieces from :func:`_pieces` itself).

    A stage that fails passes its exception down instead of results; the last stage raises it.
    """

    def __init__(self, stages: int, streams: int):
        self.links = [queue.Queue(maxsize=2) for _ in range(stages)]
        self.finished = [threading.Event() for _ in range(stages)]
        self.stopped = threading.Event()
        self.spent = [0.0] * streams  # each stream's time over all the pieces that went through the pipe
        self.pieces = 0

    def _put(self, k: int, item) -> None:
        while not self.stopped.is_set():
            try:
                return self.links[k].put(item, timeout=0.1)
            except queue.Full:
                pass

    def _get(self, k: int, pieces: Iterator):
        if k == 0:
            try:
                return InterruptedError("the pipeline was stopped") if self.stopped.is_set() else next(pieces)
            except BaseException as error:  # noqa: BLE001 - a head stream's failure, passed down
                return error
        while not self.stopped.is_set():
            try:
                return self.links[k].get(timeout=0.1)
            except queue.Empty:
                pass
        return InterruptedError("the pipeline was stopped")

    def stage(self, k: int, streams: list[Stream], cut: tuple[int, int], pieces: Iterator
              ) -> list[np.ndarray | None]:
        """Step ``streams[cut[0]:cut[1]]`` on each piece from stage ``k − 1`` (stage 0: from ``pieces``),
        timing each, then end them (:func:`_finish`); pass each result to stage ``k + 1``, or return them
        all from the last stage (which raises a failure).

        A stage that runs alone shares its own work out to every thread (:func:`threads.run_blocks`,
        the same bits): the first stage on its first piece, before the others have any, and the last
        one once the stages before it are done::

            stage 0:  [0 ══][1 ··· ][2 ··· ]
            stage 1:        [0 ··· ][1 ··· ][2 ══]        ══ on every thread
        """
        try:
            return self._stage(k, streams, cut, pieces)
        finally:
            self.finished[k].set()

    def _stage(self, k: int, streams: list[Stream], cut: tuple[int, int], pieces: Iterator
               ) -> list[np.ndarray | None]:
        last, mine, results = k == len(self.links) - 1, streams[cut[0] : cut[1]], []
        everyone, first = len(self.links), k == 0
        while True:
            with threads.using(everyone if first else 1):  # stage 0's first piece comes from its head
                item = self._get(k, pieces)
            alone = first or (last and all(done.is_set() for done in self.finished[:k]))
            with threads.using(everyone if alone else 1):
                if not isinstance(item, BaseException):
                    try:
                        if isinstance(item, _End):
                            item = _End(_finish(mine, item.last))
                        else:
                            item = _timed_step(mine, item, self.spent, cut[0])
                    except BaseException as error:  # noqa: BLE001 - passed down to the caller, which raises it
                        item = error
            first = False
            if not last:
                self._put(k + 1, item)
            elif isinstance(item, BaseException):
                raise item
            elif isinstance(item, _End):
                results.append(item.last)
            else:
                results.append(item)
                self.pieces += 1
            if isinstance(item, (_End, BaseException)):
                return results


def _balanced_cuts(costs: list[float], parts: int) -> list[tuple[int, int]]:
    """Split ``costs`` into at most ``parts`` consecutive runs whose largest sum is as small as can be."""
    parts = min(parts, len(costs))
    total = np.concatenate([[0.0], np.cumsum(costs)])
    # best[k][i]: the smallest possible largest run when the first i costs make k runs.
    best = np.full((parts + 1, len(costs) + 1), np.inf)
    cut = np.zeros((parts + 1, len(costs) + 1), int)
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, len(costs) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], total[i] - total[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    bounds, i = [], len(costs)
    for k in range(parts, 0, -1):
        bounds.append((cut[k][i], i))
        i = cut[k][i]
    return bounds[::-1]
