"""The benchmark harness: tiny scenarios produce table rows and a JSON file (no timing asserts)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.run import Row, format_table, rows, run, run_bench
from bench.scenarios import Outcome, Plan
from bench.util import Series, acked, preload, series_by_shard
from forecast.errors import UsageError
from forecast.keys import shard_of
from forecast.local_redis import redis_server_binary

TINY = Plan(repeats=1, series=100, values=3_000, warmup=500, raw_requests=2_000)

needs_redis = pytest.mark.skipif(redis_server_binary() is None, reason="redis-server not on PATH")


def test_rows_judge_the_targets() -> None:
    """Targets and same-run ratios come out of the medians (TF-free, no Redis)."""
    results = {
        "raw_redis": Outcome(median={"values_per_s": 400_000.0}),
        "tutorial": Outcome(median={"values_per_s": 40.0}),
        "throughput": Outcome(median={"values_per_s": 100_000.0}),
        "latency": Outcome(median={"p50_ms": 1.5, "p99_ms": 12.0, "offered_per_s": 20_000.0}),
        "cold_start": Outcome(median={"seconds": 9.0}),
    }
    table = {r.scenario: r for r in rows(results)}
    throughput = table["throughput: 1 worker, 1,000 series, SimpleRNN n=3"]
    assert throughput.verdict == "FAIL"  # 100k < 150k
    assert table["throughput vs tutorial-style worker"].figure == "2,500x"
    assert table["throughput vs tutorial-style worker"].verdict == "PASS"
    assert table["throughput vs Redis XADD limit"].figure == "0.25x"
    assert table["latency p50 at 20,000 values/s offered"].verdict == "PASS"
    assert table["latency p99 at 20,000 values/s offered"].verdict == "FAIL"
    assert table["cold start: process start to first prediction"].verdict == "PASS"
    redis_rows = {r.scenario: r for r in rows({
        "cluster_speed": Outcome(median={"single_values_per_s": 100.0,
                                         "cluster_values_per_s": 95.0, "ratio": 0.9,
                                         "ratio_of_medians": 0.95}),
        "durability": Outcome(median={"replicas_0": 100.0, "replicas_1": 80.0, "ratio": 0.8}),
    })}
    assert redis_rows["1 worker: 3-master Cluster, 6 shards vs one Redis"].verdict == "PASS"
    assert "0.80x" in redis_rows["commit replicas 0 / 1 (one replica)"].figure
    text = format_table(list(table.values()))
    assert text.splitlines()[0].startswith("scenario")
    assert "2,500x" in text


def test_unknown_scenario_is_a_usage_error(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = argparse.Namespace(quick=True, only="throughput,nope", bench_out=str(out))
    with pytest.raises(UsageError, match="nope"):
        run(args, None)  # type: ignore[arg-type]
    assert not out.exists()


def test_series_by_shard_routes_like_the_producer() -> None:
    buckets = series_by_shard(50, 4)
    assert sum(b.n for b in buckets) == 50
    for k, bucket in enumerate(buckets):
        assert all(shard_of(name, 4) == k for name in bucket.names)


@needs_redis
def test_preload_generates_round_robin_values(r: redis.Redis) -> None:
    """Server-side preload: entry j is series j mod n with a parseable value."""
    preload(r, "forecast:values", 7, Series(3, "p"))
    entries: list[Any] = r.xrange("forecast:values")  # type: ignore[assignment]
    assert [e[1][b"series"] for e in entries] == [b"p0", b"p1", b"p2", b"p0", b"p1", b"p2", b"p0"]
    assert all(float(e[1][b"value"]) >= 0 for e in entries)
    r.xgroup_create("forecast:values", "forecast", id="0")
    assert acked(r, ["forecast:values"]) == 0


@needs_redis
def test_raw_redis_scenario_writes_row_and_json(tmp_path: Path) -> None:
    """TF-free end to end: redis-benchmark on a private server, one table row, the JSON file."""
    out = tmp_path / "bench" / "results.json"
    data = run_bench(TINY, ["raw_redis"], out, quick=True)
    assert data["errors"] == {}
    on_disk = json.loads(out.read_text())
    assert on_disk["table"] == data["table"]
    assert on_disk["machine"]["cores"] >= 1 and on_disk["machine"]["redis"]
    runs = on_disk["scenarios"]["raw_redis"]["runs"]
    assert len(runs) == 1 and runs[0]["values_per_s"] > 0
    scenarios = [Row(**r).scenario for r in on_disk["table"]]
    assert scenarios == ["Redis XADD limit (redis-benchmark -P 64)"]


@needs_redis
def test_throughput_scenario_runs_a_real_worker(tmp_path: Path) -> None:
    """A tiny throughput run: a real worker process, pause/preload/resume, every value acked."""
    out = tmp_path / "results.json"
    # enough values for the worker to use measurable CPU (/proc counts 10 ms ticks)
    plan = dataclasses.replace(TINY, values=30_000)
    data = run_bench(plan, ["throughput"], out, quick=True)
    assert data["errors"] == {}
    run0 = data["scenarios"]["throughput"]["runs"][0]
    assert run0["values"] == plan.values
    assert run0["values_per_s"] > 0 and run0["worker_cpu_us_per_value"] > 0
    rate = json.loads(out.read_text())["scenarios"]["throughput"]["median"]["values_per_s"]
    row = {r["scenario"]: r for r in data["table"]}["throughput: 1 worker, 1,000 series, " \
                                                    "SimpleRNN n=3"]
    # the row is the measured median, judged against the target
    assert row["figure"].startswith(f"{rate:,.0f} values/s")
    assert row["verdict"] == ("PASS" if rate >= 150_000 else "FAIL")
