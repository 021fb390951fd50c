"""`mimi bench` and the FLOP count it reports."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest
from conftest import SMALL, run

import mimi_cli.core.layers as layers_module
import mimi_cli.core.vq as vq_module
import mimi_cli.models.mimi.model as model_module
from mimi_cli.bench import codec_flops


def _count_calls(monkeypatch, counted: dict, module, name: str, flops_of) -> None:
    """Wrap ``module.name`` so that each call adds ``flops_of(result, *args)`` to ``counted["flops"]``."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        counted["flops"] += flops_of(result, *args, **kwargs)
        return result

    monkeypatch.setattr(module, name, wrapper)


def test_flop_count_matches_the_operations_the_model_runs(small_model, monkeypatch):
    """Count the multiply-adds of every conv, linear, attention and code search actually executed."""
    counted = {"flops": 0.0}

    def counting(name, flops_of, module=model_module):
        _count_calls(monkeypatch, counted, module, name, flops_of)

    counting("conv1d", lambda y, x, w, *a, **k: 2 * w.shape[1] * w.shape[2] * y.size, layers_module)
    counting("conv_transpose1d", lambda y, x, w, *a, **k: 2 * x.size * w.shape[1] * w.shape[2], layers_module)
    counting("linear", lambda y, x, w, *a, **k: 2 * y.size * w.shape[1])
    counting("nearest_code", lambda y, x, book, *a, **k: 2 * x.shape[0] * book.size, vq_module)

    def attention_flops(y, q, k, v, q0, q1, context):  # queries q0 .. q1-1 (one block)
        keys = sum(min(i + 1, context) for i in range(q0, q1))
        return 4 * keys * q.shape[1] * q.shape[3] * q.shape[0]

    counting("attend_block", attention_flops)
    frames = 40  # past the small config's attention window
    pcm = np.random.default_rng(0).standard_normal(frames * SMALL.frame_size).astype(np.float32)
    codes = small_model.encode(pcm, 5)
    encode_counted = counted["flops"]
    counted["flops"] = 0.0
    small_model.decode(codes)
    encode, decode = codec_flops(SMALL, frames * SMALL.frame_size / SMALL.sample_rate, 5)
    # the model's extra work is the causal padding at the very start (a few steps per conv)
    assert abs(encode_counted - encode) / encode < 0.02
    assert abs(counted["flops"] - decode) / decode < 0.02


def test_flop_count_of_the_released_model_matches_the_reference_notes():
    from mimi_cli.models.mimi import MimiConfig

    encode, decode = codec_flops(MimiConfig(), 60.0, 8)
    assert abs(encode / 60 / 1e9 - 5.53) < 0.02  # docs/performance.md: ≈ 5.53 and 5.49 GFLOP/s
    assert abs(decode / 60 / 1e9 - 5.49) < 0.02


def test_bench_runs_without_weights_and_reports_json():
    # OPENBLAS_CORETYPE, when set, picks OpenBLAS's kernels: the report names both (Haswell's run on any x86-64)
    result = run("bench", "--only", "model", "--seconds", "1", "--threads", "1", "--json",
                 env_extra={"OPENBLAS_CORETYPE": "Haswell"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    blas = report["blas"]
    assert blas["name"] and blas["version"] and blas["openblas_coretype"] == "Haswell", blas
    if blas["name"] == "openblas" and platform.machine() in ("x86_64", "AMD64"):  # NumPy's wheels there
        assert blas["kernels"] == "Haswell", blas
    assert report["blas_peak_gflops"] > 1 and report["weights_load_seconds"] > 0 and report["peak_rss_mb"] > 300
    names = [row["name"] for row in report["model"]]
    assert names == ["encode, 8 codebooks", "decode, 8 codebooks", "encode, 32 codebooks", "decode, 32 codebooks"]
    assert all(row["rtf"] > 0 and 0 < row["peak_fraction"] < 1.5 for row in report["model"])


def test_bench_rejects_an_unknown_part():
    result = run("bench", "--only", "everything")
    assert result.returncode == 2 and "--only takes one of kernels, model, stream" in result.stderr


def test_encodec_flop_count_matches_the_operations_the_model_runs(monkeypatch):
    """The same count for EnCodec: convs, LSTM products (from the weights' shapes) and the code search."""
    import mimi_cli.core.recurrent as recurrent
    from mimi_cli.models.encodec.synthetic import random_encodec

    model = random_encodec()
    counted = {"flops": 0.0}

    def counting(module, name, flops_of):
        _count_calls(monkeypatch, counted, module, name, flops_of)

    def lstm_flops(result, lstm, x, *a, **k):
        per_step = sum(lstm.params[f"weight_ih_l{i}"].size + lstm.params[f"weight_hh_l{i}"].size
                       for i in range(lstm.num_layers))
        return 2 * per_step * x.shape[0] * x.shape[1]

    counting(layers_module, "conv1d", lambda y, x, w, *a, **k: 2 * w.shape[1] * w.shape[2] * y.size)
    counting(layers_module, "conv_transpose1d", lambda y, x, w, *a, **k: 2 * x.size * w.shape[1] * w.shape[2])
    counting(vq_module, "nearest_code", lambda y, x, book, *a, **k: 2 * x.shape[0] * book.size)
    counting(recurrent.LSTM, "__call__", lstm_flops)
    seconds = 2.0
    pcm = np.random.default_rng(0).standard_normal(int(seconds * 24000)).astype(np.float32) * 0.1
    codes = model.encode(pcm, 8)
    encode_counted, counted["flops"] = counted["flops"], 0.0
    model.decode(codes)
    encode, decode = codec_flops(model.config, seconds, 8)
    assert abs(encode_counted - encode) / encode < 0.02
    assert abs(counted["flops"] - decode) / decode < 0.02


@pytest.mark.parametrize("duplex", [False, True])
def test_many_streams_reports_each_batch(small_model, duplex):
    from mimi_cli.bench import many_streams

    results = many_streams(small_model, counts=(3, 1), frames=4, warmup=1, num_codebooks=4, find_limit=False,
                           duplex=duplex)
    assert [r.streams for r in results] == [1, 3]
    for r in results:
        row = r.as_dict()
        assert row["duplex"] == duplex and row["step_ms"] > 0
        assert row["frame_ms"] == 1000 / small_model.config.frame_rate
        if duplex:  # the two directions run at once: no time of their own
            assert row["encode_ms"] is None and row["decode_ms"] is None
        else:  # medians of each direction and of their sums
            assert row["encode_ms"] > 0 and row["decode_ms"] > 0
        assert row["real_time"] == (r.step_ms <= r.frame_ms)
        assert row["ms_per_stream_frame"] == r.step_ms / r.streams


@pytest.mark.parametrize("real_time,expected", [
    ({1: True, 4: True, 8: False, 16: False}, 6),  # between 4 (held) and 8 (not)
    ({1: True, 4: True, 6: False, 8: False}, 5),
    ({1: True, 4: True, 5: False, 8: False}, None),  # 4 and 5 meet: 4 is the limit
    ({1: False, 4: False}, None),  # not even one stream
    ({1: True, 4: True, 8: True}, None),  # every count held: nothing above to bisect
    ({1: True, 2: False, 4: True, 8: False}, 6),  # noise: the largest real-time count leads
])
def test_the_streams_limit_is_bisected(real_time, expected):
    """next_streams_count halves the gap between the largest real-time B and the next B measured; run to the
    end, the bisection finds the exact limit of a machine that holds 5 streams."""
    from mimi_cli.bench import StreamsStep, next_streams_count

    def step(count: int, held: bool) -> StreamsStep:
        return StreamsStep(count, 60.0 if held else 110.0, 80.0)

    assert next_streams_count([step(b, ok) for b, ok in real_time.items()]) == expected
    results = [step(b, b <= 5) for b in (1, 4, 8, 16)]
    while (count := next_streams_count(results)) is not None:
        assert count not in [r.streams for r in results]
        results.append(step(count, count <= 5))
    assert sorted(r.streams for r in results) == [1, 4, 5, 6, 8, 16]


def test_describe_blas_names_the_kernels_and_the_variable_that_forced_them():
    from mimi_cli.bench import describe_blas

    blas = {"name": "openblas", "version": "0.3.31", "kernels": "SkylakeX", "openblas_coretype": None}
    assert describe_blas(blas) == "openblas 0.3.31, SkylakeX kernels"
    blas.update(kernels="Haswell", openblas_coretype="Haswell")
    assert describe_blas(blas) == "openblas 0.3.31, Haswell kernels (OPENBLAS_CORETYPE=Haswell)"
    assert describe_blas({}) == "unknown"
