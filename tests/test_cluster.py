"""A real 3-master Redis Cluster: registry, training, and worker processes over 8 shards."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forecast import keys, processes, registry
from forecast.client import Item, Producer, run_tail
from forecast.processes import WorkerProcess, wait_until
from forecast.redis_conn import connect
from forecast.settings import load_settings
from forecast.status import collect, render
from testkit import PacedProducer
from tests.cluster import LocalCluster, cluster_available
from trainer.data import from_stream

SHARDS = 8
TTL_MS = 1000
N_STEPS = 3  # the example model's window: a series' first two values predict nothing

pytestmark = pytest.mark.skipif(not cluster_available(), reason="redis-server/redis-cli missing")


@pytest.fixture
def rc(cluster: LocalCluster) -> Iterator[Any]:
    """A cluster client (bytes, RESP2 like the worker) on an emptied cluster."""
    cluster.flush()
    client = connect(load_settings(redis_url=cluster.url, cluster=True))
    yield client
    client.close()


def start_worker(url: str, name: str, logs: Path) -> WorkerProcess:
    """`forecast worker --cluster --shards 8` as a subprocess, logging under `logs`."""
    return processes.start_worker(url, name, "--cluster", "--shards", str(SHARDS), log_dir=logs,
                                lease_ttl_ms=TTL_MS, **processes.QUICK)


def stop_all(procs: list[WorkerProcess]) -> None:
    """Warm-stop every process still running (all signalled first, so they stop together)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)  # not stop_process at once: its SIGTERM would be a second signal
        except subprocess.TimeoutExpired:
            processes.stop_process(p, grace=5)


def owners(rc: Any) -> dict[int, str | None]:
    """The consumer holding each shard's lease (None when free)."""
    out: dict[int, str | None] = {}
    for k in range(SHARDS):
        raw = rc.get(keys.shard_keys(k, SHARDS, cluster=True).lease)
        out[k] = raw.decode().split(":", 1)[1] if raw else None
    return out


def test_registry_works_on_a_cluster(rc: Any, cluster: LocalCluster,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    v1 = registry.publish(rc, b"blob-1", {"arch": "lstm", "n_steps": 3})
    v2 = registry.publish(rc, b"blob-2", {"arch": "gru", "n_steps": 3}, make_current=False)
    assert (v1, v2) == ("v1", "v2") and registry.current_version(rc) == "v1"
    assert registry.promote(rc, v2) and registry.current_version(rc) == "v2"
    assert registry.get_blob(rc, v2) == b"blob-2"
    assert [m["version"] for m in registry.list_versions(rc)] == ["v1", "v2"]
    assert registry.rollback(rc) == "v1" and registry.current_version(rc) == "v1"
    events = [f[b"event"] for _, f in rc.xrange(keys.MODELS_STREAM)]
    assert events == [b"published", b"promoted", b"rolled_back"]
    with pytest.raises(registry.RegistryError):
        registry.rollback(rc)  # the history is used up

    from cli.main import main

    assert main(["models", "--cluster", "--redis-url", cluster.url, "list"]) == 0
    listing = capsys.readouterr().out
    assert "v1" in listing and "v2" in listing


def feed(url: str, series: int = 24) -> PacedProducer:
    """One value per series per round through the cluster Producer, every 50 ms."""
    producer = Producer(connect(load_settings(redis_url=url, cluster=True)), shards=SHARDS,
                        cluster=True)
    names = [f"meter-{i}" for i in range(series)]

    def one_round(n: int) -> list[Item]:
        return [(s, math.sin(n / 5) + i, None) for i, s in enumerate(names)]

    return PacedProducer(producer, one_round, interval=0.05)


@pytest.mark.slow
def test_workers_on_a_cluster_survive_a_kill_exactly_once(
        rc: Any, cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t_start = time.monotonic()
    train = subprocess.run(
        [sys.executable, "-m", "cli", "train", "--example", "--cluster", "--redis-url",
         cluster.url, "--epochs", "5", "--quiet", "--force", "--model-dir",
         str(tmp_path / "models")],
        capture_output=True, text=True, env=processes.worker_env(cluster.url), timeout=120,
        check=False)
    assert train.returncode == 0, train.stdout + train.stderr
    assert registry.current_version(rc) == "v1" and registry.exists(rc, "v1")

    procs: list[WorkerProcess] = []
    values: PacedProducer | None = None
    try:
        procs += [start_worker(cluster.url, f"w{i}", tmp_path) for i in (1, 2, 3)]
        values = feed(cluster.url)
        values.start()
        wait_until(lambda: set(owners(rc).values()) == {"w1", "w2", "w3"}, timeout=60,
                 what="3 workers sharing the 8 shards")
        wait_until(lambda: sum(rc.xlen(s) for s in keys.output_streams(SHARDS, True)) > 200,
                 timeout=30, what="predictions flowing")
        procs[1].kill()  # SIGKILL w2: no release, no commit of the batch in hand
        procs[1].wait(10)
        killed_at = time.monotonic()
        wait_until(lambda: "w2" not in owners(rc).values() and None not in owners(rc).values(),
                 timeout=10 * TTL_MS / 1000, what="w2's shards taken over")
        takeover = time.monotonic() - killed_at
        procs.append(start_worker(cluster.url, "w4", tmp_path))
        # sorted live workers [w1, w3, w4]: shard k goes to the (k mod 3)-th
        want = {k: ("w1", "w3", "w4")[k % 3] for k in range(SHARDS)}
        wait_until(lambda: owners(rc) == want, timeout=60, what=f"rebalanced to {want}")
        values.wait_rounds(10)
        values.stop()
        values = None
        inputs: dict[bytes, list[bytes]] = defaultdict(list)
        for k in range(SHARDS):
            for eid, f in rc.xrange(keys.values_stream(k, SHARDS, cluster=True)):
                inputs[f[b"series"]].append(eid)
        expected = sum(len(ids) - (N_STEPS - 1) for ids in inputs.values())

        def predictions() -> list[dict[bytes, bytes]]:
            return [f for s in keys.output_streams(SHARDS, True) for _, f in rc.xrange(s)]

        wait_until(lambda: len(predictions()) >= expected, timeout=30,
                 what=f"{expected} predictions")
        status = collect(rc, load_settings(redis_url=cluster.url, cluster=True, shards=SHARDS,
                                      lease_ttl_ms=TTL_MS))
    finally:
        if values is not None:
            values.stop()
        stop_all(procs)
    got: dict[bytes, list[bytes]] = defaultdict(list)
    for p in predictions():  # per shard stream: a series' predictions are in commit order
        got[p[b"series"]].append(p[b"source_id"])
        assert p[b"model_version"] == b"v1" and math.isfinite(float(p[b"prediction"]))
    assert len(inputs) == 24
    for series, ids in inputs.items():
        assert got[series] == ids[N_STEPS - 1:], series  # exactly once, in input order
    assert sum(rc.xlen(s) for s in keys.deadletter_streams(SHARDS, True)) == 0
    assert all(p.returncode == 0 for p in procs if p is not procs[1])  # clean warm stops
    assert {s["shard"]: s["owner"] for s in status["shards"]} == want
    assert all(s["lag"] == 0 and s["pending"] == 0 for s in status["shards"])
    alive = {w["consumer"]: w["alive"] for w in status["workers"]}
    assert alive == {"w1": True, "w2": False, "w3": True, "w4": True}  # w2 was killed
    assert "forecast:values:{7}" in render(status) and "w4" in render(status)
    # the trainer reads the sharded history back from every node
    data = from_stream(rc, load_settings(redis_url=cluster.url, cluster=True, shards=SHARDS))
    assert len(data.series) == 24 and data.n_values == sum(len(v) for v in inputs.values())
    # the CLI reads on a cluster: `tail` follows all 8 per-shard streams, `status` lists them
    from cli.main import main
    from cli.parser import build_parser

    conn = ["--cluster", "--shards", str(SHARDS), "--redis-url", cluster.url]
    out = io.StringIO()
    args = build_parser().parse_args(["tail", *conn, "--from-start", "--count", "5"])
    assert run_tail(args, load_settings(cluster=True, shards=SHARDS, redis_url=cluster.url),
                    out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and all("model=v1" in line for line in lines)
    capsys.readouterr()
    assert main(["status", *conn]) == 0
    assert "forecast:values:{7}" in capsys.readouterr().out
    total = time.monotonic() - t_start
    print(f"cluster test: takeover after SIGKILL {takeover:.2f}s "
          f"({takeover * 1000 / TTL_MS:.1f} lease periods), total {total:.0f}s")
