"""A real `forecast worker` process against a private redis-server, fed by a plain client."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from forecast import keys, registry
from forecast.local_redis import RedisServer
from forecast.processes import WorkerProcess, stop_process, wait_until
from tests.helpers import wait_for_len
from tests.procs import publish_tiny_model, start_worker, tiny_model

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def served(redis_server: RedisServer) -> Iterator[tuple[redis.Redis, WorkerProcess]]:
    """One worker process serving the tiny model for the whole module."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    version = publish_tiny_model(redis_server.url)
    proc = start_worker(
        redis_server.url, "proc-test", metrics=True, log_json="true", summary_interval_s="1"
    )
    try:
        wait_until(
            lambda: b"acquired shard 0" in proc.log_path.read_bytes(),
            timeout=90,
            what=f"worker serving {version}",
        )
        yield client, proc
    finally:
        stop_process(proc)
        client.close()


def predictions_of(client: redis.Redis, series: bytes) -> list[dict[bytes, bytes]]:
    return [f for _, f in client.xrange(keys.PREDICTIONS) if f[b"series"] == series]


def test_exactly_one_prediction_per_input_once_window_full(served: Any) -> None:
    client, _ = served
    ids = {
        s: [client.xadd(keys.VALUES, {"series": s, "value": str(v)}) for v in range(20)]
        for s in ("p1", "p2", "p3")
    }
    for s, sent in ids.items():
        series = s.encode()
        preds = wait_for_len(
            lambda series=series: predictions_of(client, series), 18, what=f"predictions of {s}"
        )
        assert [p[b"source_id"] for p in preds] == sent[2:]  # once each, in input order
        assert all(b"prediction" in p and p[b"model_version"] == b"v1" for p in preds)
    wait_until(lambda: client.xpending(keys.VALUES, "forecast")["pending"] == 0, what="all acked")


def test_bad_messages_go_to_the_dead_letter_stream(served: Any) -> None:
    client, proc = served
    bad = [
        client.xadd(keys.VALUES, f)
        for f in (
            {"series": "d1", "value": "abc"},
            {"series": "", "value": "1"},
            {"value": "1"},
            {"series": "d1", "value": "1", "ts": "-3"},
        )
    ]
    good = [client.xadd(keys.VALUES, {"series": "d1", "value": str(v)}) for v in (1, 2, 3)]
    dead = wait_for_len(
        lambda: [f for _, f in client.xrange(keys.DEADLETTER) if f[b"source_id"] in bad],
        4,
        what="dead letters",
    )
    assert [d[b"reason"] for d in dead] == [
        b"bad_value",
        b"empty_series",
        b"missing_series",
        b"bad_ts",
    ]
    preds = wait_until(lambda: predictions_of(client, b"d1"), what="prediction of d1")
    assert [p[b"source_id"] for p in preds] == good[2:]
    assert proc.poll() is None  # bad input never stops the worker


def test_hot_reload_mid_stream_loses_nothing(served: Any) -> None:
    client, _ = served
    sent = [client.xadd(keys.VALUES, {"series": "h1", "value": str(v)}) for v in range(10)]
    wait_until(lambda: len(predictions_of(client, b"h1")) == 8, what="v1 predictions")
    blob, manifest = tiny_model()
    v2 = registry.publish(client, blob, {**manifest, "note": "second"})
    wait_until(
        lambda: (
            client.get(keys.heartbeat("proc-test"))
            and b'"model_version": "' + v2.encode() in client.get(keys.heartbeat("proc-test"))
        ),
        timeout=30,
        what=f"worker serving {v2}",
    )
    sent += [client.xadd(keys.VALUES, {"series": "h1", "value": str(v)}) for v in range(10, 20)]
    preds = wait_for_len(lambda: predictions_of(client, b"h1"), 18, what="predictions of h1")
    assert [p[b"source_id"] for p in preds] == sent[2:]  # windows kept: no new warm-up
    assert {p[b"model_version"] for p in preds[8:]} == {v2.encode()}


def scrape(proc: WorkerProcess) -> dict[str, float]:
    """The worker's /metrics as {sample name with labels: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=5).read()
    samples = {}
    for line in text.decode().splitlines():
        m = re.match(r"^(forecast_\S+) ([-+\d.eE]+|NaN)$", line)
        if m:
            samples[m.group(1)] = float(m.group(2))
    return samples


def test_metrics_move_and_health_endpoints_answer(served: Any) -> None:
    client, proc = served
    before = scrape(proc).get("forecast_values_read_total", 0.0)
    for v in range(5):
        client.xadd(keys.VALUES, {"series": "m1", "value": str(v)})
    client.xadd(keys.VALUES, {"series": "m1", "value": "x"})
    after = wait_until(
        lambda: (lambda m: m if m.get("forecast_values_read_total", 0) >= before + 6 else None)(
            scrape(proc)
        ),
        what="values_read to move",
    )
    assert after["forecast_predictions_written_total"] >= 3
    assert after['forecast_deadletter_total{reason="bad_value"}'] >= 1
    assert [k for k in after if k.startswith("forecast_model_info{") and 'version="v' in k]
    assert after["forecast_ready"] == 1 and after["forecast_shards_owned"] == 1
    assert after["forecast_end_to_end_lag_seconds_count"] > 0
    assert 'forecast_pending{stream="forecast:values"}' in after
    assert 'forecast_group_lag{stream="forecast:values"}' in after
    assert proc.readyz() == 200
    url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "worker",
            "--check",
            "--redis-url",
            url,
            "--consumer",
            "proc-test",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_logs_are_json_lines_with_a_start_up_and_a_summary_line(served: Any) -> None:
    _, proc = served
    lines = wait_until(
        lambda: (lambda ls: ls if any(json.loads(x)["msg"] == "summary" for x in ls) else None)(
            [x for x in proc.log().splitlines() if x.strip()]
        ),
        what="a summary line",
    )
    records = [json.loads(x) for x in lines]  # every line is one JSON object
    start = next(r for r in records if r["msg"].startswith("worker proc-test starting"))
    assert start["settings"]["redis_url"].startswith("redis://")
    summary = next(r for r in records if r["msg"] == "summary")
    assert {"values", "predictions", "deadletters", "shards"} <= set(summary)
