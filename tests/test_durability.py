"""Durability a user can choose: FORECAST_COMMIT_REPLICAS (the worker's commits) and
`forecast push --wait-replicas` / `Producer(wait_replicas=...)`, against a real primary and
replica. A replica that stops confirming is an outage for the worker, never a loss.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from forecast import keys
from forecast.client import Producer
from forecast.errors import ReplicasBehind, UsageError
from forecast.local_redis import RedisServer, redis_server_binary
from forecast.processes import wait_until
from tests.helpers import WorkerThreads, make_worker
from tests.sentinel import FAST_SYNC, online_replicas
from tests.test_retention import _all_predicted_once, _items, _push
from worker import metrics

pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason="no redis-server")


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer(extra_args=FAST_SYNC).start()
    replica = RedisServer(
        extra_args=[*FAST_SYNC, "--replicaof", "127.0.0.1", str(primary.port)]).start()
    client: Any = redis.Redis(port=primary.port)
    wait_until(lambda: online_replicas(client.info("replication")) == 1, 20,
               what="the replica in sync")
    client.close()
    yield primary, replica
    replica.cleanup()
    primary.cleanup()


@pytest.fixture
def primary(pair: tuple[RedisServer, RedisServer]) -> Iterator[Any]:
    client: Any = redis.Redis(port=pair[0].port, protocol=2)
    client.flushall()
    yield client
    client.close()


def test_commits_wait_for_a_replica(pair: Any, primary: Any) -> None:
    threads = WorkerThreads()
    threads.start(make_worker(pair[0].url, "w", commit_replicas=1, replicas_timeout_ms=2000))
    try:
        pushed = _push(primary, _items(3000, 20))
        wait_until(lambda: primary.xlen(keys.PREDICTIONS) >= 3000 - 40, 30, what="predictions")
    finally:
        threads.stop_all()
    assert _all_predicted_once(primary, pushed) == 3000 - 40
    replica: Any = redis.Redis(port=pair[1].port)
    assert replica.xlen(keys.PREDICTIONS) == 3000 - 40  # already there when counted
    replica.close()


def test_a_silent_replica_is_an_outage_not_a_loss(pair: Any, primary: Any) -> None:
    """The replica frozen: commits time out, the worker reports not ready and recovers from
    the checkpoint; thawed: it carries on. Exactly once throughout."""
    w = make_worker(pair[0].url, "w", commit_replicas=1, replicas_timeout_ms=100,
                    batch_size=200)
    threads = WorkerThreads()
    threads.start(w)
    before = metrics.REPLICA_TIMEOUTS._value.get()
    pushed = _push(primary, _items(1000, 10))
    try:
        wait_until(lambda: primary.xlen(keys.PREDICTIONS) >= 1000 - 20, 30, what="predictions")
        assert pair[1].proc is not None
        os.kill(pair[1].proc.pid, signal.SIGSTOP)
        try:
            pushed += _push(primary, _items(1000, 10, start=1000))
            wait_until(lambda: metrics.REPLICA_TIMEOUTS._value.get() > before, 20,
                       what="a commit the replica did not confirm")
            wait_until(lambda: not w.ready(), 10, what="the worker not ready")
        finally:
            os.kill(pair[1].proc.pid, signal.SIGCONT)
        wait_until(lambda: primary.xlen(keys.PREDICTIONS) >= 2000 - 20
                   and primary.xpending(keys.VALUES, "forecast")["pending"] == 0, 60,
                   what="everything predicted after the thaw")
        wait_until(w.ready, 20, what="ready again")
    finally:
        threads.stop_all()
    assert _all_predicted_once(primary, pushed) == 2000 - 20
    assert primary.xlen(keys.DEADLETTER) == 0


def test_producer_waits_for_replicas(pair: Any, primary: Any) -> None:
    producer = Producer(primary, wait_replicas=1, wait_timeout_ms=2000, chunk=100)
    ids = producer.push_many(_items(250, 5))
    assert len(ids) == 250 and primary.xlen(keys.VALUES) == 250
    assert producer.push("one", 1.0)
    with pytest.raises(ReplicasBehind) as info:
        Producer(primary, wait_replicas=2, wait_timeout_ms=50, chunk=100).push_many(
            _items(150, 5))
    assert info.value.confirmed == 1 and info.value.pushed == 100
    with pytest.raises(UsageError):
        Producer(primary, cluster=True, wait_replicas=1)


def test_push_command_waits_for_replicas(pair: Any, primary: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    url = pair[0].url
    assert main(["push", "--redis-url", url, "--wait-replicas", "1", "s", "1", "2"]) == 0
    assert "confirmed by 1 replica" in capsys.readouterr().out
    assert main(["push", "--redis-url", url, "--wait-replicas", "3", "--replicas-timeout-ms",
                 "50", "s", "3"]) == 4
    assert "only 1 of 3 replica(s)" in capsys.readouterr().err
    assert primary.xlen(keys.VALUES) == 3


