"""The same bits at any thread count, and the pieces that make it so.

OpenBLAS rounds a product differently on more threads, so the codecs keep BLAS on one thread
and share the work in their own threads (mimi_cli.core.threads, docs/performance.md). These
tests run the real models at 1, 2 and 3 threads (3 is more than CI's 2 cores: threads then
take turns, and must still agree) and compare every byte.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time

import numpy as np
import pytest

from mimi_cli.bench import speech_like
from mimi_cli.core import cgroups, threads
from mimi_cli.core.stream import (Chain, Identity, Pointwise, Stream, Sum, _balanced_cuts, run_chunks,
                                  split_layers)
from mimi_cli.models import codec_spec

THREAD_COUNTS = (1, 2, 3)


def _digest(*arrays: np.ndarray) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16] for a in arrays]


def _batch_and_stream(model, pcm: np.ndarray, stream_frames: int) -> list[str]:
    """Digests of batch codes and audio, and of two concurrent streams' codes and audio."""
    codes = model.encode(pcm)
    audio = model.decode(codes)
    frame = model.config.frame_size
    pair = np.stack([pcm[: stream_frames * frame], pcm[-stream_frames * frame:]])
    encoder, decoder = model.stream_encoder(batch_size=2), model.stream_decoder(batch_size=2)
    stream_codes = [encoder.push(pair[:, i : i + frame]) for i in range(0, pair.shape[1], frame)]
    stream_codes.append(encoder.flush())
    stream_codes = np.concatenate(stream_codes, axis=-1)
    stream_audio = np.concatenate([decoder.push(stream_codes), decoder.flush()], axis=-1)
    return _digest(codes, audio, stream_codes, stream_audio)


@pytest.mark.parametrize("codec", ["mimi", "encodec-24khz"])
def test_same_bits_at_every_thread_count(codec, full_model):
    """Batch (12 s: a pipeline of 10 SEANet chunks, two transformer blocks) and two streams of 20 frames."""
    spec = codec_spec(codec)
    model = full_model if codec == "mimi" else spec.model().from_state_dict(spec.random_state())
    pcm = speech_like(12.0, seed=5)[: 12 * model.config.sample_rate]
    runs = {}
    for count in THREAD_COUNTS:
        with threads.limit_threads(count):
            runs[count] = _batch_and_stream(model, pcm, stream_frames=20)
    assert runs[2] == runs[1], "2 threads changed: [codes, audio, stream codes, stream audio]"
    assert runs[3] == runs[1], "3 threads changed: [codes, audio, stream codes, stream audio]"


class _Accumulate(Stream):
    """A stateful stream with a known answer: the running sum along time, times ``scale``."""

    def __init__(self, scale: float):
        self.scale = scale
        self.reset()

    def reset(self) -> None:
        self.total = np.zeros(0)

    def step(self, x: np.ndarray) -> np.ndarray:
        base = self.total if self.total.size else np.zeros(x.shape[:2])
        y = base[..., None] + np.cumsum(x, axis=-1)
        if y.shape[-1]:
            self.total = y[..., -1]
        return y * self.scale

    def flush(self) -> np.ndarray:
        last = (self.total if self.total.size else np.zeros((1, 1)))[..., None] * self.scale
        self.reset()
        return last  # one extra step at the end, as a right padding would give


def _chain() -> Chain:
    return Chain([_Accumulate(0.5), Pointwise(np.tanh), _Accumulate(2.0), _Accumulate(1.0)])


def _naive(x: np.ndarray) -> np.ndarray:
    """The chain above, written out over the whole sequence at once."""
    a = np.cumsum(x, axis=-1) * 0.5
    a = np.concatenate([a, a[..., -1:]], axis=-1)  # the first stream's flush
    b = np.tanh(a)
    c = np.cumsum(b, axis=-1) * 2.0
    c = np.concatenate([c, c[..., -1:]], axis=-1)
    d = np.cumsum(c, axis=-1)
    return np.concatenate([d, d[..., -1:]], axis=-1)


@pytest.mark.parametrize("count", THREAD_COUNTS)
@pytest.mark.parametrize(("head", "tail", "regroup"), [(0, 0, 1), (1, 0, 2), (1, 0, 3), (2, 0, 4), (3, 0, 2),
                                                       (0, 1, 3), (0, 2, 4), (1, 2, 2), (0, 3, 5)])
def test_pipeline_equals_the_whole_sequence(count, head, tail, regroup):
    """run_chunks as a pipeline of 1-3 stages: carried state and flushes in order, whatever the cuts;
    with a head or a tail, its streams on pieces of several chunks and the rest on the usual pieces
    (head 3 leaves one stream after it: one stage)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 70))
    with threads.limit_threads(count):
        got = run_chunks(_chain(), x, chunk=8, head=head, tail=tail, regroup=regroup)
    np.testing.assert_allclose(got, _naive(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("count", THREAD_COUNTS)
@pytest.mark.parametrize(("layers", "parts", "tail", "longest"), [(slice(0, 2), 3, 0, 8), (slice(1, 3), 4, 1, 2),
                                                                  (slice(-2, None), 2, 0, 8), (slice(0, 4), 5, 0, 2)])
def test_split_layers_step_on_parts_of_each_piece(count, layers, parts, tail, longest):
    """Streams in a Split step on ``parts`` pieces of each 8-step piece, state carried between them: the
    whole sequence's result at any thread count, with a gathered tail too. A watching stream third in
    the chain sees pieces of at most ``longest`` steps, never an empty one (8 steps in 5 parts)."""
    x = np.random.default_rng(1).standard_normal((2, 3, 70))
    watch, streams = _Watch(), _chain().streams
    chain = split_layers(Chain([*streams[:2], watch, *streams[2:]]), layers, parts)
    with threads.limit_threads(count):
        got = run_chunks(chain, x, chunk=8, tail=tail, regroup=2)
    np.testing.assert_allclose(got, _naive(x), rtol=1e-12, atol=1e-12)
    assert min(watch.lengths) > 0 and max(watch.lengths) == longest


class _Late(Stream):
    """Passes its input on ``lag`` steps late: holds the last ``lag`` steps, gives them up at ``flush``."""

    def __init__(self, lag: int):
        self.lag = lag
        self.reset()

    def reset(self) -> None:
        self.held = np.zeros((0, 0, 0))

    def step(self, x: np.ndarray) -> np.ndarray:
        joined = np.concatenate([self.held, x], axis=-1) if self.held.size else x
        cut = max(0, joined.shape[-1] - self.lag)
        self.held = joined[..., cut:]
        return joined[..., :cut]

    def flush(self) -> np.ndarray:
        held = self.held
        self.reset()
        return held


def _residual_chain() -> Chain:
    """Two residual sums whose branches lag their shortcuts (as a padded convolution's would)."""
    return Chain([Sum(_Accumulate(1.0), Chain([_Late(3), Pointwise(np.tanh)])), _Accumulate(0.5),
                  Sum(Identity(), Chain([Pointwise(np.sin), _Late(5), Pointwise(np.negative)]))])


def _residual_naive(x: np.ndarray) -> np.ndarray:
    a = np.cumsum(x, axis=-1) + np.tanh(x)  # the shortcut's extra flushed step has no partner: dropped
    b = np.cumsum(a, axis=-1) * 0.5
    b = np.concatenate([b, b[..., -1:]], axis=-1)
    return b - np.sin(b)


@pytest.mark.parametrize("count", THREAD_COUNTS)
@pytest.mark.parametrize(("head", "tail", "regroup"), [(0, 0, 1), (1, 0, 2), (0, 1, 3), (0, 2, 2)])
def test_a_pipeline_cuts_inside_residual_sums(count, head, tail, regroup):
    """The pipeline opens each residual sum into its parts (shortcut, branch streams, merge), so a
    stage may end inside one: with branches that lag, pieces of 7 steps, the whole sequence's result."""
    x = np.random.default_rng(2).standard_normal((2, 3, 66))
    want, costs = _residual_naive(x), {}
    for _ in range(2):  # cut by the first pieces' times, then by equal times: inside the first sum
        with threads.limit_threads(count):
            got = run_chunks(Chain(_residual_chain().streams, costs), x, chunk=7, head=head, tail=tail,
                             regroup=regroup)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        if costs:
            costs[(2, 3, 7)] = [1.0] * len(costs[(2, 3, 7)])


class _Watch(Stream):
    """Passes its input on, recording each piece's length and how many threads its step may use;
    optionally slow."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self.lengths, self.threads = seconds, [], []

    def step(self, x: np.ndarray) -> np.ndarray:
        self.lengths.append(x.shape[-1])
        self.threads.append(threads.current())
        time.sleep(self.seconds)
        return x


@pytest.mark.parametrize("regroup", [1, 2, 3, 5])
def test_the_streams_after_a_head_get_one_chunks_worth_per_piece(regroup):
    """A head that doubles the length (an upsampling): the streams after it step on pieces of twice
    the chunk, the same pieces at every thread count, and the result is the whole sequence's."""
    x = np.random.default_rng(1).standard_normal((1, 2, 75))
    want = np.cumsum(np.repeat(x, 2, axis=-1), axis=-1)
    want = np.concatenate([want, want[..., -1:]], axis=-1)  # _Accumulate's flush
    seen = {}
    for count in THREAD_COUNTS:
        lengths = _Watch()
        chain = Chain([Pointwise(lambda a: np.repeat(a, 2, axis=-1)), lengths, _Accumulate(1.0)])
        with threads.limit_threads(count):
            np.testing.assert_allclose(run_chunks(chain, x, chunk=10, head=1, regroup=regroup), want, rtol=1e-12)
        seen[count] = lengths.lengths
    assert seen[1] == [20] * 7 + [10], seen[1]  # 75 steps: 7 chunks of 10, then 5 → 150 steps in pieces of 20
    assert seen[2] == seen[1] and seen[3] == seen[1]


@pytest.mark.parametrize("regroup", [2, 3, 8])
def test_a_tail_steps_on_gathered_pieces(regroup):
    """The last two streams step on ``regroup`` pieces at once (what is left at the end on the rest),
    the same pieces at every thread count, and the result is the whole sequence's."""
    x = np.random.default_rng(3).standard_normal((1, 2, 75))
    want = np.cumsum(-x, axis=-1)
    want = np.concatenate([want, want[..., -1:]], axis=-1)
    seen = {}
    for count in THREAD_COUNTS:
        lengths = _Watch()
        chain = Chain([Pointwise(np.negative), lengths, _Accumulate(1.0)])
        with threads.limit_threads(count):
            np.testing.assert_allclose(run_chunks(chain, x, chunk=10, tail=2, regroup=regroup), want, rtol=1e-12)
        seen[count] = lengths.lengths
    whole, rest = divmod(75, 10 * regroup)
    assert seen[1] == [10 * regroup] * whole + ([rest] if rest else []), seen[1]
    assert seen[2] == seen[1] and seen[3] == seen[1]


@pytest.mark.parametrize("stored", [None, [1e9, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1e9], [1.0, 1.0, 1.0, 1.0],
                                    [1.0, 3.0, 1.0, 1.0], [0.5, 0.2, 2.0, 0.1], [1.0, 1.0]])
@pytest.mark.parametrize("head", [0, 2])
def test_a_pipeline_remembers_its_streams_times(stored, head):
    """A chain that keeps its costs: the first run stores each stream's time per piece (a head's too);
    a later run cuts by the stored times (however wrong; times for another number of streams are
    measured again) and still gives the same result."""
    x = np.random.default_rng(0).standard_normal((2, 3, 70))
    costs = {} if stored is None else {(2, 3, 8): stored}
    with threads.limit_threads(2):
        got = run_chunks(Chain(_chain().streams, costs), x, chunk=8, head=head, regroup=2)
        np.testing.assert_allclose(got, _naive(x), rtol=1e-12, atol=1e-12)
        assert len(costs[(2, 3, 8)]) == 4 and all(c > 0 for c in costs[(2, 3, 8)])  # measured, replaced
        np.testing.assert_array_equal(run_chunks(Chain(_chain().streams, costs), x, chunk=8, head=head, regroup=2),
                                      got)


def test_a_stage_alone_in_the_pipe_uses_every_thread():
    """The first stage's first piece (the last stage has nothing yet) and the last stage's last piece
    (the first stage is done: the last stage is slow) may share their work out to both threads; every
    other piece runs on its stage's thread alone."""
    early, late = _Watch(), _Watch(seconds=0.05)
    costs = {(1, 1, 10): [1.0, 1.0, 1.0, 1.0]}  # the cut falls between early and late
    with threads.limit_threads(2):
        got = run_chunks(Chain([Pointwise(np.negative), early, Pointwise(np.abs), late], costs),
                         np.arange(100.0).reshape(1, 1, 100), chunk=10)
    np.testing.assert_array_equal(got[0, 0], np.arange(100.0))
    assert early.threads == [2] + [1] * 9, early.threads
    assert late.threads[0] == 1 and late.threads[-1] == 2 and len(late.threads) == 10, late.threads


class _Fails(Stream):
    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def step(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.at:
            raise ValueError(f"piece {self.at} is bad")
        return x


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("stored", [False, True])
@pytest.mark.parametrize("head", [0, 1])
def test_an_error_in_a_stage_reaches_the_caller(position, stored, head):
    """A failing stream, first, middle or last in the chain, on its fifth piece (with a head of one
    stream on pieces of two chunks, the first stream is that head): the caller gets its error, no
    thread hangs, whether the stages' cut comes from stored times or from the first pieces."""
    streams: list[Stream] = [Pointwise(np.negative), Pointwise(np.abs)]
    streams.insert(position, _Fails(at=5))
    costs = {(1, 1, 10): [1.0, 1.0, 1.0]} if stored else {}
    before = threading.active_count()
    with threads.limit_threads(2), pytest.raises(ValueError, match="piece 5 is bad"):
        run_chunks(Chain(streams, costs), np.ones((1, 1, 200)), chunk=10, head=head, regroup=2)
    assert threading.active_count() <= before + 2  # at most the pool's own workers remain


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_the_cores_a_process_may_use(tmp_path, monkeypatch, version):
    """Its CPU affinity (taskset, a cpuset), and its control group's CPU quota (docker --cpus) in whole cores,
    the smallest of its group's and the groups above: not os.cpu_count(), the machine's."""
    monkeypatch.setattr(cgroups, "CGROUPS", tmp_path)
    monkeypatch.setattr(cgroups, "OWN_GROUPS", tmp_path / "self")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    group = tmp_path / ("" if version == "v2" else "cpu,cpuacct") / "kubepods" / "pod1"
    group.mkdir(parents=True)
    (tmp_path / "self").write_text("0::/kubepods/pod1\n" if version == "v2" else
                                   "5:memory:/kubepods/pod1\n4:cpu,cpuacct:/kubepods/pod1\n0::/\n")

    def limit(folder, quota, period=100_000):
        if version == "v2":
            (folder / "cpu.max").write_text(f"{quota} {period}\n")
        else:
            (folder / "cpu.cfs_quota_us").write_text(f"{-1 if quota == 'max' else quota}\n")
            (folder / "cpu.cfs_period_us").write_text(f"{period}\n")

    limit(group, "max")
    assert cgroups.cpu_quota() is None and threads.usable_cores() == 8  # no quota: the affinity's 8
    limit(group, 250_000)
    assert cgroups.cpu_quota() == 2.5 and threads.usable_cores() == 3  # 2.5 cores of time: 3 threads
    limit(group.parent, 100_000)
    assert threads.usable_cores() == 1  # the parent's quota is smaller
    assert threads.usable_threads(4) == (1, "--threads 4 is more than the 1 core this process may use; using 1")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    (tmp_path / "self").unlink()  # not Linux's /proc: the affinity alone
    assert threads.usable_cores() == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and two cores")
def test_a_run_pinned_to_one_core_uses_one_thread(tmp_path, weights_file):
    """`taskset -c 0 mimi encode` ran as many threads as the machine has cores, on the one it may use."""
    import subprocess
    import sys

    from conftest import SAMPLE_AUDIO

    pinned = subprocess.run([sys.executable, "-m", "mimi_cli", "encode", str(SAMPLE_AUDIO / "speech_16k_mono.wav"),
                             "-o", str(tmp_path / "a.npz"), "--threads", "2"], capture_output=True, text=True,
                            timeout=300, preexec_fn=lambda: os.sched_setaffinity(0, {0}),
                            env={**os.environ, "MIMI_WEIGHTS": str(weights_file), "HF_HUB_OFFLINE": "1"})
    assert pinned.returncode == 0 and "--threads 2 is more than the 1 core this process may use" in pinned.stderr


def test_balanced_cuts_are_optimal():
    """Against every way to cut a short list into consecutive runs."""
    rng = np.random.default_rng(1)
    for _ in range(30):
        costs = list(rng.uniform(0, 10, rng.integers(1, 8)))
        for parts in (1, 2, 3):
            cuts = _balanced_cuts(costs, parts)
            assert cuts[0][0] == 0 and cuts[-1][1] == len(costs)
            assert all(a < b for a, b in cuts) and all(b == c for (_, b), (c, _) in zip(cuts, cuts[1:], strict=False))
            best = min(
                max(sum(costs[a:b]) for a, b in zip((0, *inner), (*inner, len(costs)), strict=True))
                for k in range(min(parts, len(costs)))
                for inner in itertools.combinations(range(1, len(costs)), k)
            )
            assert max(sum(costs[a:b]) for a, b in cuts) == pytest.approx(best)


def _check_product(product, a: np.ndarray, b: np.ndarray, atol: float) -> None:
    """``product(a, b)`` against float64, and the same bits on 1, 2 and 3 threads."""
    results = []
    for count in THREAD_COUNTS:
        with threads.limit_threads(count), threads.one_blas_thread():
            results.append(product(a, b))
    np.testing.assert_allclose(results[0], a.astype(np.float64) @ b.astype(np.float64), rtol=1e-4, atol=atol)
    assert all(np.array_equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("shape", [(1536, 512, 2), (512, 2048, 16), (100, 70, 3), (64, 64, 200)])
def test_matmul_rows(shape):
    """Pieces of rows for few columns."""
    rows, depth, columns = shape
    rng = np.random.default_rng(2)
    w = rng.standard_normal((rows, depth), np.float32)
    x = rng.standard_normal((columns, depth), np.float32).T  # a transposed view, as linear() passes
    _check_product(threads.matmul_rows, w, x, atol=1e-3)


@pytest.mark.parametrize("shape", [(2, 2048, 1024), (3, 4096, 640), (4, 2048, 1024), (1, 100, 70)])
def test_matmul_depth(shape):
    """Pieces of the depth for up to 3 rows of a weight over 4 MB."""
    rows, depth, columns = shape
    rng = np.random.default_rng(4)
    _check_product(threads.matmul_depth, rng.standard_normal((rows, depth), np.float32),
                   rng.standard_normal((depth, columns), np.float32), atol=2e-3)


def test_run_blocks_runs_each_block_once_and_raises():
    seen = []
    lock = threading.Lock()

    def record(i: int) -> None:
        with lock:
            seen.append(i)

    with threads.limit_threads(3):
        threads.run_blocks(record, 50)
    assert sorted(seen) == list(range(50))

    def fail(i: int) -> None:
        if i == 7:
            raise KeyError("block 7")

    with threads.limit_threads(2), pytest.raises(KeyError, match="block 7"):
        threads.run_blocks(fail, 20)


def test_run_blocks_lets_go_of_the_callers_arrays():
    """Once run_blocks returns, no helper holds the blocks' function and what it refers to (a helper
    that kept its last job held a decode's activations until the next call: 60 MB more peak memory)."""
    import weakref

    data = np.zeros(1000)
    alive = weakref.ref(data)
    with threads.limit_threads(2):
        threads.run_blocks(lambda i, held=data: held.sum(), 4)
    del data
    assert alive() is None


@pytest.mark.parametrize("where", ["after a helper's return was taken", "while waking the helpers"])
def test_ctrl_c_at_any_point_of_a_hand_off_neither_hangs_nor_loses_a_helper(where, monkeypatch):
    """Ctrl-C lands between two steps of the caller: it is raised once the helpers that were woken are
    back, and the team serves the next call. (A Ctrl-C that came just after a wait had taken a helper's
    "done" left the caller waiting for it a second time, for ever: `mimi encode --stream`, 1 run in 10.)"""
    job_class, raised = threads._Job, []

    class Interrupted(job_class):
        def __init__(self, work):
            super().__init__(work)
            if where == "while waking the helpers":
                self.woken = _RaisingCount()
            else:
                self.returns = _RaisingQueue(self.returns)

    class _RaisingCount(int):
        def __add__(self, other):  # the count comes just before the helper's wake-up
            raised.append(True)
            raise KeyboardInterrupt

    class _RaisingQueue:
        def __init__(self, inner):
            self.inner = inner

        def get(self):
            self.inner.get()  # the helper's return is taken, then the interrupt lands
            if not raised:
                raised.append(True)
                raise KeyboardInterrupt

        def put(self, item):
            self.inner.put(item)

    monkeypatch.setattr(threads, "_Job", Interrupted)
    seen, outcome = [], []

    def block(i: int) -> None:  # the helper's block outlasts the caller's: the caller is waiting when it returns
        time.sleep(0.05 if threading.current_thread().name != "mimi-worker" else 0.3)
        seen.append(i)

    def call() -> None:
        with threads.limit_threads(2):
            try:
                threads.run_blocks(block, 4)
            except KeyboardInterrupt:
                outcome.append("interrupted")

    caller = threading.Thread(target=call)
    caller.start()
    caller.join(timeout=30)
    assert not caller.is_alive(), "run_blocks hung after the interrupt"
    assert outcome == ["interrupted"] and raised
    monkeypatch.setattr(threads, "_Job", job_class)
    seen.clear()
    with threads.limit_threads(2):
        threads.run_blocks(lambda i: seen.append(i), 40)
    assert sorted(seen) == list(range(40))


@pytest.mark.parametrize("count", [1, 2])
def test_elementwise_on_a_strided_input(count):
    """ELU and GELU of a transposed batch (EnCodec's LSTM hands one on): every element written, none left
    uninitialised (a copy made by reshaping the output used to be filled instead of the output)."""
    from scipy.special import erf

    from mimi_cli.core import elu, gelu

    x = np.random.default_rng(3).standard_normal((2, 300, 512), np.float32).transpose(0, 2, 1)
    x64 = x.astype(np.float64)
    with threads.limit_threads(count):
        np.testing.assert_allclose(elu(x), np.where(x64 > 0, x64, np.expm1(x64)), atol=2e-7)
        np.testing.assert_allclose(gelu(x), 0.5 * x64 * (1 + erf(x64 / np.sqrt(2))), rtol=1e-5, atol=1e-6)


def test_run_blocks_nested_and_from_two_threads_at_once():
    """A block that runs blocks of its own, and two threads running blocks at the same time: every
    block runs exactly once, nothing deadlocks (the helpers serve one caller; the other runs alone)."""
    counts = np.zeros((2, 8, 8), int)

    def outer(caller: int) -> None:
        def block(i: int) -> None:
            def inner(j: int) -> None:
                counts[caller, i, j] += 1  # each (caller, i, j) is written by one thread only

            threads.run_blocks(inner, 8)

        with threads.limit_threads(2):
            threads.run_blocks(block, 8)

    other = threading.Thread(target=outer, args=(1,))
    other.start()
    outer(0)
    other.join(timeout=60)
    assert not other.is_alive()
    assert (counts == 1).all()


@pytest.mark.parametrize("steps", [0, 1, 63, 64, 250, 750, 1024, 1025, 4000])
def test_transformer_blocks_cover_every_step_in_an_even_share(steps):
    """Batch transformer blocks: every step once, in order; an even number of near-equal blocks of at
    most 512 steps (two threads take equal halves), one block for short sequences."""
    from mimi_cli.models.mimi.model import MAX_BLOCK_STEPS, MIN_SPLIT_STEPS, row_blocks

    blocks = row_blocks(steps)
    assert [t for b in blocks for t in range(b.start, b.stop)] == list(range(steps))
    sizes = [b.stop - b.start for b in blocks]
    if steps < MIN_SPLIT_STEPS:
        assert len(blocks) == 1
    else:
        assert len(blocks) % 2 == 0 and max(sizes) <= MAX_BLOCK_STEPS and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("batch", [1, 2, 7, 8, 9, 16, 17, 40])
def test_stream_groups_cover_the_batch(batch):
    """Every stream in one group, in order; under 2·MIN_GROUP one group, else an even number of groups
    of MIN_GROUP..MAX_GROUP streams, sizes within one."""
    from mimi_cli.core.stream import MAX_GROUP, MIN_GROUP, batch_groups

    groups = batch_groups(batch)
    assert [s for g in groups for s in range(g.start, g.stop)] == list(range(batch))
    sizes = [g.stop - g.start for g in groups]
    if batch < 2 * MIN_GROUP:
        assert sizes == [batch]
    else:
        assert len(groups) % 2 == 0 and MIN_GROUP <= min(sizes) and max(sizes) <= MAX_GROUP
        assert max(sizes) - min(sizes) <= 1


def test_many_streams_step_in_groups_with_the_same_bits(small_model):
    """Nine streams (groups of 4 and 5): the same bits on 1, 2 and 3 threads, and each group's streams
    exactly what a batch of that group alone gives (groups share nothing but the call)."""
    from mimi_cli.core.stream import batch_groups

    frame = small_model.config.frame_size
    pcm = np.stack([speech_like(0.5, seed=i)[: 12 * frame + 5] for i in range(9)])

    def run(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        encoder = small_model.stream_encoder(batch_size=len(rows), num_codebooks=4)
        decoder = small_model.stream_decoder(batch_size=len(rows))
        codes = np.concatenate([encoder.push(rows[:, i : i + 3 * frame]) for i in range(0, rows.shape[1], 3 * frame)]
                               + [encoder.flush()], axis=-1)
        audio = np.concatenate([decoder.push(codes), decoder.flush()], axis=-1)
        return codes, audio

    runs = {}
    for count in THREAD_COUNTS:
        with threads.limit_threads(count):
            runs[count] = _digest(*run(pcm))
    assert runs[2] == runs[1] and runs[3] == runs[1]
    codes, audio = run(pcm)
    assert codes.shape == (9, 4, 13) and len(np.unique(codes)) > 20  # real codes, not a constant
    for group in batch_groups(9):
        alone_codes, alone_audio = run(pcm[group])
        np.testing.assert_array_equal(codes[group], alone_codes)
        np.testing.assert_array_equal(audio[group], alone_audio)


def test_a_duplex_steps_both_ways_with_the_same_bits(small_model):
    """Nine streams both ways at once (each side one group of nine, on a thread of its own): the same
    bits on 1, 2 and 3 threads; the codes those of a lone encoder (whose groups are 4 and 5), the
    audio a lone decoder's to float rounding."""
    frame = small_model.config.frame_size
    pcm = np.stack([speech_like(0.5, seed=i)[: 12 * frame + 5] for i in range(9)])
    codes_in = np.random.default_rng(4).integers(0, 64, (9, 4, 12))

    def run() -> tuple[np.ndarray, np.ndarray]:
        duplex = small_model.stream_duplex(batch_size=9, num_codebooks=4)
        steps = [duplex.push(pcm[:, i * 3 * frame : (i + 1) * 3 * frame], codes_in[:, :, 3 * i : 3 * i + 3])
                 for i in range(5)] + [duplex.flush()]
        return np.concatenate([s[0] for s in steps], axis=-1), np.concatenate([s[1] for s in steps], axis=-1)

    runs = {}
    for count in THREAD_COUNTS:
        with threads.limit_threads(count):
            runs[count] = _digest(*run())
    assert runs[2] == runs[1] and runs[3] == runs[1]
    codes, audio = run()
    encoder = small_model.stream_encoder(batch_size=9, num_codebooks=4)
    decoder = small_model.stream_decoder(batch_size=9)
    np.testing.assert_array_equal(codes, np.concatenate([encoder.push(pcm), encoder.flush()], axis=-1))
    lone = np.concatenate([decoder.push(codes_in), decoder.flush()], axis=-1)
    assert audio.shape == lone.shape == (9, 12 * frame) and np.std(audio) > 1e-3
    np.testing.assert_allclose(audio, lone, rtol=1e-4, atol=1e-5)


# A probe's start: glibc's mallinfo2 through ctypes (the probes run in fresh processes: malloc settings
# last for a process's life).
_GLIBC = '''
import ctypes, sys
import numpy as np
from mimi_cli.core.threads import keep_freed_memory

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
'''


def _glibc_probe(script: str, setting: str) -> list[int]:
    """Run ``_GLIBC + script`` in a fresh Python with ``setting`` as its argument; the integers it prints."""
    import ctypes
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc 2.33 or newer only")
    done = subprocess.run([sys.executable, "-c", _GLIBC + script, setting], capture_output=True, text=True, check=True,
                          timeout=120)
    return [int(word) for word in done.stdout.split()]


_MALLINFO = '''
if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = libc.mallinfo2()
block = np.ones(2 << 20, np.float32)  # 8 MB
during = libc.mallinfo2()
del block
after = libc.mallinfo2()
print(during.hblkhd - before.hblkhd, after.fordblks, during.arena - after.arena)
'''


@pytest.mark.parametrize("setting", ["default", "keep"])
def test_keep_freed_memory_keeps_a_freed_block_for_reuse(setting):
    """glibc hands an 8 MB block to mmap and back to the system on free; after keep_freed_memory it comes
    from the heap, which keeps it once freed (mallinfo2: bytes mmapped, the heap's free bytes, bytes
    trimmed from the heap). A fresh process each."""
    mapped, free_in_heap, trimmed = _glibc_probe(_MALLINFO, setting)
    if setting == "keep":
        assert mapped == 0 and free_in_heap >= 8 << 20 and trimmed == 0
    else:
        assert mapped >= 8 << 20


_NEXT_THREAD = '''
import os
import threading
import time
assert keep_freed_memory()
first_freed, second_done = threading.Event(), threading.Event()

def first():
    block = np.ones(2 << 20, np.float32)  # 8 MB in this thread's arena, then freed
    del block
    first_freed.set()
    if sys.argv[1] == "while the first lives":
        second_done.wait()

def second():
    global during
    block = np.ones(2 << 20, np.float32)
    during = libc.mallinfo2()
    del block
    second_done.set()

before = libc.mallinfo2()
one = threading.Thread(target=first)
one.start()
first_freed.wait()
if sys.argv[1] == "after the first ended":  # as a pipeline's stage thread follows the last call's
    one.join()
    # join() returns when Python is done with the thread; glibc hands its arena back on the way out of
    # the OS thread, a moment later. Wait for that thread to be gone (at most 5 s).
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/self/task/{one.native_id}") and time.monotonic() < deadline:
        time.sleep(0.001)
two = threading.Thread(target=second)
two.start()
two.join()
one.join()
print(during.arena - before.arena)
'''


@pytest.mark.parametrize("setting", ["after the first ended", "while the first lives"])
def test_keep_freed_memory_hands_a_thread_what_the_last_one_kept(setting):
    """Each thread has a malloc arena of its own (one shared arena made every allocation take its lock:
    6–7 % of a 2-thread encode). A pipeline's stage threads are new on every call: a thread started
    after another ended takes over that arena, so 8 MB freed there serves the new thread's 8 MB (the
    heaps grow by 8 MB, not 16). The control: while the first thread lives, the second gets an arena of
    its own, and the heaps grow by both blocks."""
    (grown,) = _glibc_probe(_NEXT_THREAD, setting)
    if setting == "after the first ended":
        assert grown < 12 << 20  # at most 8 MB (less if an arena already held free space), never two blocks
    else:
        assert grown >= 16 << 20


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_overlapping_calls_in_two_threads_keep_blas_on_one_thread_until_the_last_ends():
    """BLAS's thread count is the process's. Each call once set it to one and put back what it had found:
    the first call to end put back two threads under the second, whose products then rounded otherwise, and
    the second, ending, put back the one it had found. The first call to begin sets it, the last to end puts
    it back, whichever threads those are."""
    from threadpoolctl import threadpool_limits

    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first() -> None:
        with threads.one_blas_thread():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with threads.one_blas_thread():
            second_in.set()
            first_out.wait(10)
            seen["alone, after the first ended"] = _blas_threads()

    with threadpool_limits(limits=2, user_api="blas"):
        if _blas_threads() != {2}:
            pytest.skip("BLAS cannot run on two threads here")
        workers = [threading.Thread(target=work) for work in (first, second)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(20)
        assert seen == {"alone, after the first ended": {1}}
        assert _blas_threads() == {2}  # put back once both had ended


def test_a_blas_whose_limit_is_each_threads_own_is_limited_in_every_thread(monkeypatch):
    """An OpenBLAS built on OpenMP keeps a limit per thread: the process-wide setting above reaches only the
    thread that made it, so every call sets its own thread's (a pipeline's stage threads included)."""
    import contextlib
    import types

    limited = []

    class PerThread:  # what threadpoolctl's controller of such libraries offers
        lib_controllers = ["OpenBLAS on OpenMP"]

        @contextlib.contextmanager
        def limit(self, limits: int):
            limited.append((threading.get_ident(), limits))
            yield

    class Libraries:
        def limit(self, limits: int):  # the process-wide setting, which the test above checks
            return types.SimpleNamespace(restore_original_limits=lambda: None)

    monkeypatch.setattr(threads, "_blas", lambda: (Libraries(), PerThread()))

    def call() -> None:
        with threads.one_blas_thread(), threads.one_blas_thread():  # nested, as a stage inside a call
            pass

    other = threading.Thread(target=call)
    other.start()
    other.join(10)
    call()
    assert [limits for _, limits in limited] == [1] * 4 and len({ident for ident, _ in limited}) == 2


def test_a_model_and_its_streams_used_from_several_threads_at_once(small_model):
    """A web server's request threads share one model: calls at once give each the bits it gives alone (a
    call that ended put BLAS's threads back under another's products, above). Pushes into one stream from
    several threads take turns, each whole: four threads pushing a second each into one encoder had their
    steps interleave, and got 86 frames for 4 s of audio."""
    from threadpoolctl import threadpool_limits

    frame = small_model.config.frame_size
    clips = [speech_like(1.0, seed=i)[: 9 * frame] for i in range(4)]
    alone = [small_model.decode(small_model.encode(clip)) for clip in clips]
    chunk = clips[0][: 3 * frame + 123]  # each push ends mid-frame: where the next begins is state
    encoder = small_model.stream_encoder()
    in_order = [encoder.push(chunk).tobytes() for _ in range(4)]
    assert len(set(in_order)) == 4  # each push's codes tell its place in the stream

    together: dict[int, np.ndarray] = {}
    pushed: list[bytes] = []
    shared = small_model.stream_encoder()
    start = threading.Barrier(8)

    def call(i: int) -> None:
        start.wait(10)
        together[i] = small_model.decode(small_model.encode(clips[i]))

    def push() -> None:
        start.wait(10)
        pushed.append(shared.push(chunk).tobytes())

    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        workers = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        workers += [threading.Thread(target=push) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert _blas_threads() == before  # put back (it was left on one thread)
    for i in range(4):
        np.testing.assert_array_equal(together[i], alone[i])
    assert sorted(pushed) == sorted(in_order)


def test_two_runs_in_two_threads_keep_their_own_thread_counts():
    """Two runs of a process's Python API in two threads at once (execute, each with its own threads): each
    kept its count in one variable of the process, so one ending put back the count under the other, and the
    process kept whatever the last had found."""
    before = threads.current()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first() -> None:
        with threads.limit_threads(1):
            first_in.set()
            second_in.wait(10)
            seen["first, the second inside"] = threads.current()
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with threads.limit_threads(3):
            second_in.set()
            first_out.wait(10)
            seen["second, the first gone"] = threads.current()

    workers = [threading.Thread(target=work) for work in (first, second)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(20)
    assert seen == {"first, the second inside": 1, "second, the first gone": 3}
    assert threads.current() == before


def test_a_child_forked_during_a_call_elsewhere_makes_calls_of_its_own():
    """multiprocessing's fork copies the process as it is: a call running in another thread (its count, its
    lock held a moment) came along, and the child's first call waited for ever on a lock nobody would let go."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    with threads._blas_lock:  # the instant another thread's call holds it
        child = os.fork()
        if child == 0:  # the child: one call, then out, whatever happens
            try:
                with threads.one_blas_thread():
                    pass
                os._exit(0 if threads._blas_users == 0 else 2)
            finally:
                os._exit(3)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(child, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if done == (0, 0):
        os.kill(child, 9)
        os.waitpid(child, 0)
        pytest.fail("the forked child's call waited for ever")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_a_team_refused_a_thread_leaves_none_asleep(monkeypatch):
    """Under a limit on processes and threads (ulimit -u) the third of four helpers is refused: the error is
    raised, and the two started end rather than sleep for ever, each still counted against the limit."""
    start, started = threading.Thread.start, []

    def limited(thread):
        if thread.name == "mimi-worker":
            started.append(thread)
            if len(started) == 3:
                raise RuntimeError("can't start new thread")
        return start(thread)

    monkeypatch.setattr(threading.Thread, "start", limited)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        threads._Team(4)
    for thread in started[:2]:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in started[:2])
