"""Redis Sentinel: a primary, a replica and three sentinels from the `redis-server` binary.

The workers, the producer and the checks find the primary through the sentinels only
(FORECAST_REDIS_URL points nowhere). The primary is SIGKILLed mid-stream, a worker too; the
old primary is restarted and comes back as a replica. Every input that exists after the
failover has exactly one prediction, equal to an uninterrupted replay, in per-series order;
the inputs that async replication lost (acknowledged to the producer by the old primary,
absent from the new one) are counted and reported.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from forecast import keys, registry
from forecast.client import Producer
from forecast.errors import UsageError
from forecast.local_redis import redis_server_binary
from forecast.processes import WorkerProcess, wait_until
from forecast.redis_conn import connect, sentinel_addresses
from forecast.settings import Settings
from testkit.results import write_results
from tests import procs
from tests.sentinel import MASTER, Sentinels, sentinels

SHARDS = 2
NOWHERE = "redis://127.0.0.1:1/0"  # host and port unused with sentinels

pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason="no redis-server")


def test_sentinel_settings_are_checked() -> None:
    assert sentinel_addresses("a:1,b:2") == [("a", 1), ("b", 2)]
    for bad in ("a", "a:x", ":1", ",", "a:70000"):
        with pytest.raises(UsageError):
            sentinel_addresses(bad)
    with pytest.raises(UsageError, match="SENTINEL_MASTER"):
        connect(Settings(_env_file=None, sentinels="a:1"))  # type: ignore[call-arg]
    with pytest.raises(UsageError, match="CLUSTER"):
        connect(Settings(_env_file=None, sentinels="a:1", sentinel_master="m",  # type: ignore[call-arg]
                         cluster=True))
    masked = Settings(_env_file=None, sentinel_password="s3cret").safe_dump()  # type: ignore[call-arg]
    assert masked["sentinel_password"] == "***"


def _settings(setup: Sentinels, **kw: Any) -> Settings:
    return Settings(_env_file=None, redis_url=NOWHERE, sentinels=setup.spec,  # type: ignore[call-arg]
                    sentinel_master=MASTER, shards=SHARDS, **kw)


class RetryingProducer(threading.Thread):
    """Pushes rounds of values through the sentinels; a failed round is pushed again once
    the new primary answers. Records the ids the server acknowledged."""

    def __init__(self, settings: Settings, series: int = 40) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.series = series
        self.acked: list[tuple[str, bytes]] = []  # (stream, id)
        self.failures = 0
        self.halt = threading.Event()
        self.rounds = 0

    def run(self) -> None:
        producer = Producer(connect(self.settings, timeout=2), SHARDS)
        while not self.halt.is_set():
            items = [(f"m{s}", f"{(self.rounds * 7 + s) % 50}.5", None)
                     for s in range(self.series)]
            try:
                ids = producer.push_many(items)
            except redis.RedisError:
                self.failures += 1
                self.halt.wait(0.1)
                continue
            self.acked += [(producer.stream_of(it[0]), i) for it, i in zip(items, ids,
                                                                          strict=True)]
            self.rounds += 1
            self.halt.wait(0.02)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def _predictions(client: Any) -> int:
    """Length of the predictions stream; 0 while the sentinels do not agree on a primary."""
    try:
        return int(client.xlen(keys.PREDICTIONS))
    except redis.RedisError:  # MasterNotFoundError for a moment after a failover
        return 0


def _committed(client: Any, streams: list[str]) -> bool:
    """No input pending or unread in any stream."""
    try:
        return all(client.xpending(s, "forecast")["pending"] == 0
                   and (client.xinfo_groups(s)[0]["lag"] or 0) == 0 for s in streams)
    except redis.RedisError:
        return False


def _start(setup: Sentinels, name: str) -> WorkerProcess:
    return procs.start_worker(NOWHERE, name, sentinels=setup.spec, sentinel_master=MASTER,
                              shards=SHARDS, lease_ttl_ms=1500)


@pytest.mark.slow
@pytest.mark.tf
def test_failover_under_sentinel_is_exactly_once(tmp_path: Path) -> None:
    from forecast import modelio

    with sentinels(replicas=1) as setup:
        settings = _settings(setup)
        client: Any = connect(settings)
        blob, manifest = procs.tiny_model()
        version = registry.publish(client, blob, manifest)
        streams = [keys.values_stream(k, SHARDS) for k in range(SHARDS)]
        workers = [_start(setup, "s1"), _start(setup, "s2")]
        producer = RetryingProducer(settings)
        try:
            for w in workers:
                procs.wait_serving(client, w.consumer, version, proc=w)
            producer.start()
            wait_until(lambda: client.xlen(keys.PREDICTIONS) > 2000, 60, what="predictions")
            workers[1].kill()  # SIGKILL a worker: its batch in hand is recovered by s1
            workers[1].wait(10)
            wait_until(lambda: client.xlen(keys.PREDICTIONS) > 4000, 60, what="more")
            old = setup.primary_port()
            setup.server(old).stop(kill=True)  # SIGKILL the primary mid-stream
            killed = time.monotonic()
            wait_until(lambda: setup.primary_port() != old, 30, 0.05, what="the failover")
            failover_s = time.monotonic() - killed
            workers.append(_start(setup, "s3"))
            n = wait_until(lambda: _predictions(client), 30, 0.05, what="the new primary")
            wait_until(lambda: _predictions(client) > n + 2000, 60,
                       what="predictions from the new primary")
            resumed_s = time.monotonic() - killed
            setup.server(old).start()  # comes back empty; the sentinels make it a replica
            wait_until(setup.replicas_in_sync, 60, 0.1, what="the old primary a replica")
            n = wait_until(lambda: _predictions(client), 30, 0.05, what="the primary")
            wait_until(lambda: _predictions(client) > n + 1000, 60, what="more")
        finally:
            producer.stop()
        try:
            wait_until(lambda: _committed(client, streams), 60, what="everything committed")
            for w in workers:
                if w is not workers[1]:
                    w.check_alive()
        finally:
            for w in workers:
                w.stop()
        entries = [e for s in streams for e in client.xrange(s)]
        model = modelio.load_version(client, version)
        reference = procs.reference_predictions(model, entries)
        preds = client.xrange(keys.PREDICTIONS)
        seen = Counter((f[b"series"], f[b"source_id"]) for _, f in preds)
        missing = set(reference) - set(seen)
        assert not missing, f"{len(missing)} inputs without a prediction"
        assert set(seen.values()) == {1}, "duplicated predictions"
        extra = set(seen) - set(reference)  # predictions of inputs replication lost
        last: dict[bytes, bytes] = {}
        for _, f in preds:
            if (f[b"series"], f[b"source_id"]) in extra:
                continue
            want = reference[(f[b"series"], f[b"source_id"])]
            assert float(f[b"prediction"]) == pytest.approx(want, rel=1e-5, abs=1e-5)
            sid = tuple(map(int, f[b"source_id"].split(b"-")))
            assert sid > tuple(map(int, last.get(f[b"series"], b"0-0").split(b"-"))), "order"
            last[f[b"series"]] = f[b"source_id"]
        present = {(s, eid) for s in streams for eid, _ in client.xrange(s)}
        lost = [a for a in producer.acked if (a[0], a[1]) not in present]
        assert client.xlen(keys.DEADLETTER) == 0
        report = {"inputs_acked": len(producer.acked), "inputs_after_failover": len(entries),
                  "lost_to_async_replication": len(lost), "predictions": len(preds),
                  "predictions_of_lost_inputs": len(extra),
                  "failover_s": round(failover_s, 2), "resumed_s": round(resumed_s, 2),
                  "producer_retries": producer.failures}
        print("sentinel failover:", json.dumps(report))
        write_results("sentinel-results", report, client)


def test_no_sentinel_answers_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["status", "--sentinels", "127.0.0.1:1", "--sentinel-master", "fc"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "cannot reach the primary of 'fc' via sentinels 127.0.0.1:1" in err
    assert "Traceback" not in err
