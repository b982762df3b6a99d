"""A real `forecast worker` process against a private redis-server, fed by a plain client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from forecast import keys, registry
from forecast.redis_server import RedisServer
from tests.helpers import wait_for
from tests.procs import WorkerProc, publish_tiny_model, start_worker, stop, tiny_model

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def served(redis_server: RedisServer) -> Iterator[tuple[redis.Redis, WorkerProc]]:
    """One worker process serving the tiny model for the whole module."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    version = publish_tiny_model(redis_server.url)
    proc = start_worker(redis_server.url, "proc-test")
    try:
        wait_for(lambda: b"acquired shard 0" in proc.log_path.read_bytes(), timeout=90,
                 what=f"worker serving {version}")
        yield client, proc
    finally:
        stop(proc)
        client.close()


def predictions_of(client: redis.Redis, series: bytes) -> list[dict[bytes, bytes]]:
    return [f for _, f in client.xrange(keys.PREDICTIONS) if f[b"series"] == series]


def test_exactly_one_prediction_per_input_once_window_full(served: Any) -> None:
    client, _ = served
    ids = {s: [client.xadd(keys.VALUES, {"series": s, "value": str(v)}) for v in range(20)]
           for s in ("p1", "p2", "p3")}
    for s, sent in ids.items():
        preds = wait_for(lambda s=s: (lambda p: p if len(p) >= 18 else None)(
            predictions_of(client, s.encode())), what=f"18 predictions of {s}")
        assert [p[b"source_id"] for p in preds] == sent[2:]  # once each, in input order
        assert all(b"prediction" in p and p[b"model_version"] == b"v1" for p in preds)
    wait_for(lambda: client.xpending(keys.VALUES, "forecast")["pending"] == 0, what="all acked")


def test_bad_messages_go_to_the_dead_letter_stream(served: Any) -> None:
    client, proc = served
    bad = [client.xadd(keys.VALUES, f) for f in (
        {"series": "d1", "value": "abc"}, {"series": "", "value": "1"}, {"value": "1"},
        {"series": "d1", "value": "1", "ts": "-3"})]
    good = [client.xadd(keys.VALUES, {"series": "d1", "value": str(v)}) for v in (1, 2, 3)]
    dead = wait_for(lambda: (lambda d: d if len(d) >= 4 else None)(
        [f for _, f in client.xrange(keys.DEADLETTER) if f[b"source_id"] in bad]),
        what="4 dead letters")
    assert [d[b"reason"] for d in dead] == [b"bad_value", b"empty_series", b"missing_series", b"bad_ts"]
    preds = wait_for(lambda: predictions_of(client, b"d1"), what="prediction of d1")
    assert [p[b"source_id"] for p in preds] == good[2:]
    assert proc.poll() is None  # bad input never stops the worker


def test_hot_reload_mid_stream_loses_nothing(served: Any) -> None:
    client, _ = served
    sent = [client.xadd(keys.VALUES, {"series": "h1", "value": str(v)}) for v in range(10)]
    wait_for(lambda: len(predictions_of(client, b"h1")) == 8, what="v1 predictions")
    blob, manifest = tiny_model()
    v2 = registry.publish(client, blob, {**manifest, "note": "second"})
    wait_for(lambda: client.get(keys.heartbeat("proc-test")) and
             b'"model_version": "' + v2.encode() in client.get(keys.heartbeat("proc-test")),
             timeout=30, what=f"worker serving {v2}")
    sent += [client.xadd(keys.VALUES, {"series": "h1", "value": str(v)}) for v in range(10, 20)]
    preds = wait_for(lambda: (lambda p: p if len(p) >= 18 else None)(predictions_of(client, b"h1")),
                     what="18 predictions of h1")
    assert [p[b"source_id"] for p in preds] == sent[2:]  # windows kept: no new warm-up
    assert {p[b"model_version"] for p in preds[8:]} == {v2.encode()}
