"""A real two-node Ray cluster on this machine, the recipe of docs/datasets.md ("Several machines").

Two `ray start` nodes (the second with its own CPUs and a custom resource label), `mimi encode --engine
ray` joining them through RAY_ADDRESS: actors run on both nodes, outputs are byte-identical to the
local engine, and dataset inputs with Parquet output work through the cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SAMPLE_AUDIO, run

pytest.importorskip("ray.data")
pytestmark = pytest.mark.ray
RAY = Path(sys.executable).with_name("ray")
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _ray(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), *args], env=ENV, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def cluster():
    if subprocess.run(["pgrep", "-f", "gcs_server"], capture_output=True).returncode == 0:
        pytest.skip("a Ray cluster is already running on this machine; not starting (or stopping) another")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must fit 107 bytes
    head = _ray("start", "--head", f"--port={port}", "--num-cpus=2", '--resources={"head_node": 1}',
                "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}")
    try:
        assert head.returncode == 0, head.stderr
        worker = _ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=2", '--resources={"mimi_worker": 1}',
                      "--disable-usage-stats")
        assert worker.returncode == 0, worker.stderr
        yield f"127.0.0.1:{port}"
    finally:
        _ray("stop", "--force")
        shutil.rmtree(temp, ignore_errors=True)


def _nodes(address: str) -> dict[str, dict]:
    script = (f"import json, ray; ray.init(address={address!r}, log_to_driver=False); "
              "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}))")
    done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_nodes_share_the_work_and_match_the_local_engine(cluster, tmp_path, weights_file):
    nodes = _nodes(cluster)
    assert len(nodes) == 2 and sum("mimi_worker" in r for r in nodes.values()) == 1
    speech, rate = sf.read(SAMPLE_AUDIO / "speech_16k_mono.wav", dtype="float32")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index in range(4):
        sf.write(corpus / f"clip{index}.wav", speech[index * rate:(index + 1) * rate], rate, subtype="PCM_16")
    env = {**ENV, "RAY_ADDRESS": cluster}
    assert run("encode", corpus, "-o", tmp_path / "local", weights=weights_file).returncode == 0
    result = run("encode", corpus, "-o", tmp_path / "cluster", "--engine", "ray", "--jobs", "2", "--manifest",
                 tmp_path / "m.jsonl", weights=weights_file, env_extra=env)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert {row["status"] for row in rows} == {"done"}
    assert {row["node"] for row in rows} == set(nodes)  # both nodes did work
    for name in sorted(p.name for p in (tmp_path / "local").iterdir()):
        assert (tmp_path / "cluster" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name

    # a dataset in, Parquet out, through the cluster, from a relative path in another working folder
    datasets = pytest.importorskip("datasets")
    audio = [{"bytes": (corpus / f"clip{i}.wav").read_bytes(), "path": f"clip{i}.wav"} for i in range(4)]
    table = datasets.Dataset.from_dict({"audio": audio, "text": [f"t{i}" for i in range(4)]})
    table.cast_column("audio", datasets.Audio(decode=False)).to_parquet(str(tmp_path / "train.parquet"))
    result = run("encode", "train.parquet", "--engine", "ray", "--jobs", "2", "--parquet", "shards",
                 weights=weights_file, env_extra=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import pyarrow.parquet as pq

    shards = pq.read_table(tmp_path / "shards").to_pylist()
    assert [row["text"] for row in shards] == ["t0", "t1", "t2", "t3"]
    for index, row in enumerate(shards):
        with np.load(tmp_path / "local" / f"clip{index}.npz") as npz:
            np.testing.assert_array_equal(np.array(row["codes"], np.uint16), npz["codes"][0])
