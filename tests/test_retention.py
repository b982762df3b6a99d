"""Bounded Redis memory: input retention (count and age) that never trims an uncommitted
entry, and a series TTL that removes idle checkpoints (and their windows) on Redis 7.0.

In-process workers with the TensorFlow-free LinearModel against a private redis-server.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from forecast import keys
from forecast.client import Producer
from forecast.processes import wait_until
from testkit import PacedProducer
from tests import procs
from tests.helpers import LinearModel, WorkerThreads, make_worker
from worker import metrics


@pytest.fixture
def threads() -> Iterator[Any]:
    runner = WorkerThreads()
    yield runner.start
    runner.stop_all()


def _items(n: int, series: int, start: int = 0, prefix: str = "s") -> list[Any]:
    return [(f"{prefix}{(start + k) % series}", f"{(start + k) % 89}.25", None)
            for k in range(n)]


def _reference(pushed: list[tuple[bytes, dict[bytes, bytes]]]) -> dict[Any, float]:
    return procs.reference_predictions(LinearModel(), pushed)


def _fields(item: Any) -> dict[bytes, bytes]:
    return {b"series": item[0].encode(), b"value": item[1].encode()}


def _all_predicted_once(client: Any, pushed: list[Any]) -> int:
    reference = _reference(pushed)
    preds = client.xrange(keys.PREDICTIONS)
    procs.assert_predicted_once([f for _, f in preds], reference)
    return len(preds)


def _push(client: Any, items: list[Any]) -> list[Any]:
    ids = Producer(client).push_many(items)
    return [(i, _fields(it)) for i, it in zip(ids, items, strict=True)]


def test_maxlen_trims_committed_entries_only(redis_url: str, r: redis.Redis,
                                             threads: Any) -> None:
    """A backlog 20x FORECAST_INPUT_MAXLEN: all predicted exactly once, the stream cut to ~N."""
    client: Any = r
    pushed = _push(client, _items(6000, 30))
    threads(make_worker(redis_url, "w", batch_size=250, input_maxlen=300,
                        input_retention_ms=0))
    wait_until(lambda: client.xlen(keys.PREDICTIONS) >= 6000 - 60
               and client.xpending(keys.VALUES, "forecast")["pending"] == 0, 30,
               what="the backlog predicted")
    assert _all_predicted_once(client, pushed) == 6000 - 60
    assert client.xlen(keys.DEADLETTER) == 0
    # ~N committed entries kept: N plus a ledger step (N/128) plus Redis's node slack (100)
    assert 300 <= client.xlen(keys.VALUES) <= 300 + 3 + 100 + 250


def test_retention_never_passes_another_group_or_pending_entries(
        redis_url: str, r: redis.Redis, threads: Any) -> None:
    """An age limit of 1 ms trims only what every group has committed."""
    client: Any = r
    client.xgroup_create(keys.VALUES, "forecast", id="0", mkstream=True)
    client.xgroup_create(keys.VALUES, "archiver", id="0")
    pushed = _push(client, _items(1000, 10))
    # the archiver read 400 entries and acked 300 of them (100 pending, 600 undelivered)
    got = client.xreadgroup("archiver", "a1", {keys.VALUES: ">"}, count=400)[0][1]
    client.xack(keys.VALUES, "archiver", *[eid for eid, _ in got[:300]])
    threads(make_worker(redis_url, "w", batch_size=100, input_retention_ms=1,
                        input_maxlen=0))
    wait_until(lambda: client.xlen(keys.PREDICTIONS) >= 980, 30, what="all predicted")
    first = client.xrange(keys.VALUES, count=1)[0][0]
    assert first <= got[300][0], "trimmed an entry another group has pending"
    assert client.xlen(keys.VALUES) >= 700
    # the archiver acks everything it has: the next commits trim up to the first entry it
    # has not read yet (the 300 new ones stay, give or take Redis's 100-entry nodes)
    rest = client.xreadgroup("archiver", "a1", {keys.VALUES: ">"})[0][1]
    client.xack(keys.VALUES, "archiver", *[eid for eid, _ in got + rest])
    more = _push(client, _items(300, 10, start=1000))
    wait_until(lambda: client.xlen(keys.PREDICTIONS) >= 1280, 30, what="more predicted")
    wait_until(lambda: client.xlen(keys.VALUES) <= 400, 10, what="the stream trimmed")
    assert client.xrange(keys.VALUES, count=1)[0][0] <= more[0][0]
    assert _all_predicted_once(client, pushed + more) == 1280


def test_series_ttl_removes_idle_checkpoints_and_windows(
        redis_url: str, r: redis.Redis) -> None:
    """An idle series' checkpoint and window go; when it comes back it starts fresh."""
    client: Any = r
    w = make_worker(redis_url, "w", series_ttl_ms=300)
    before = metrics.SERIES_EXPIRED._value.get()
    _push(client, [("old", "1", None), ("old", "2", None), ("old", "3", None)])

    def step_until(cond: Any, what: str) -> None:
        wait_until(lambda: (w.step(), cond())[1], 10, 0.01, what=what)

    step_until(lambda: client.xlen(keys.PREDICTIONS) == 1, "a prediction for old")
    assert client.hexists(keys.shard_keys(0, 1).state, "old")
    assert client.hexists(keys.LATEST, "old")
    assert b"old" in w.shards[0].store.index
    live = 0

    def keep_live_alive() -> bool:
        nonlocal live
        live += 1
        _push(client, [("live", str(live), None)])
        w.next_maintenance = 0.0  # sweep on every step
        w.step()
        return not client.hexists(keys.shard_keys(0, 1).state, "old")

    wait_until(keep_live_alive, 10, 0.02, what="old expired")
    assert b"old" not in w.shards[0].store.index
    assert client.hexists(keys.shard_keys(0, 1).state, "live"), "an active series expired"
    assert client.zscore(keys.shard_keys(0, 1).seen, "old") is None
    assert not client.hexists(keys.LATEST, "old")  # its latest forecast went with it
    assert metrics.SERIES_EXPIRED._value.get() - before >= 1
    # back again: a fresh window, so no prediction until it has n_steps values again
    n = client.xlen(keys.PREDICTIONS)
    _push(client, [("old", "10", None), ("old", "20", None)])
    step_until(lambda: client.xpending(keys.VALUES, "forecast")["pending"] == 0
               and client.hexists(keys.shard_keys(0, 1).state, "old"), "old back")
    assert [f for _, f in client.xrange(keys.PREDICTIONS)[n:] if f[b"series"] == b"old"] == []
    w.shutdown()


def test_series_ttl_backfills_checkpoints_written_before_it(redis_url: str,
                                                           r: redis.Redis) -> None:
    """Checkpoints without a last-seen time (TTL turned on later) expire too."""
    client: Any = r
    state = keys.shard_keys(0, 1).state
    client.hset(state, mapping={f"pre{i}": b"x" for i in range(5000)})
    w = make_worker(redis_url, "w", series_ttl_ms=200)

    def swept() -> bool:
        w.next_maintenance = 0.0
        w.step()
        return client.hlen(state) == 0

    wait_until(swept, 20, 0.05, what="old checkpoints expired")
    assert client.zcard(keys.shard_keys(0, 1).seen) == 0
    w.shutdown()


@pytest.mark.slow
def test_soak_memory_plateaus(redis_url: str, r: redis.Redis, threads: Any) -> None:
    """Steady traffic with waves of new series ids, a small retention and a short series TTL:
    the input stream, the checkpoints and Redis memory stay bounded; every entry is
    delivered and acknowledged; no dead letters."""
    client: Any = r
    threads(make_worker(redis_url, "w", batch_size=500, input_maxlen=3000,
                        input_retention_ms=2000, series_ttl_ms=1000, predictions_maxlen=2000))
    producer = Producer(redis.Redis.from_url(redis_url, protocol=2))
    wave = {"n": 0}
    predicted = metrics.PREDICTIONS._value.get()

    def chunk(i: int) -> list[Any]:
        wave["n"] = i // 40  # a new set of 200 series ids every 40 rounds (2 s)
        return _items(100, 200, start=i * 100, prefix=f"w{wave['n']}-")

    samples: list[tuple[int, int, int, int]] = []
    stop = threading.Event()

    def rss() -> int:  # this process holds the in-process worker
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) * 1024

    def sample() -> None:
        while not stop.wait(0.5):
            samples.append((client.xlen(keys.VALUES), client.hlen(keys.shard_keys(0, 1).state),
                            int(client.info("memory")["used_memory"]), rss()))

    sampler = threading.Thread(target=sample, daemon=True)
    with PacedProducer(producer, chunk, interval=0.05, limit=300 * 100) as paced:
        sampler.start()
        wait_until(lambda: paced.sent >= 300 * 100 or not paced.is_alive(), 60,
                   what="the soak")
    wait_until(lambda: client.xpending(keys.VALUES, "forecast")["pending"] == 0
               and (client.xinfo_groups(keys.VALUES)[0]["lag"] or 0) == 0, 20,
               what="everything delivered and acked")
    stop.set()
    sampler.join(5)
    assert client.xlen(keys.DEADLETTER) == 0
    assert max(s[0] for s in samples) <= 3000 * 2 + 1000, samples
    assert max(s[1] for s in samples) <= 200 * 4, samples  # ~ the waves alive within a TTL
    late = [s[2] for s in samples[len(samples) // 3:]]
    assert max(late) < 1.1 * min(late), samples  # memory plateaus
    late_rss = [x[3] for x in samples[len(samples) // 3:]]
    assert max(late_rss) < min(late_rss) + 16 * 2**20, samples  # worker RSS flat
    # every value predicted but each wave's series' first n_steps - 1 = 2 (8 waves of 200)
    assert metrics.PREDICTIONS._value.get() - predicted == 30_000 - 8 * 200 * 2
    print("soak samples (xlen, checkpoints, used_memory):", samples)


def test_consumers_of_dead_workers_are_forgotten(redis_url: str, r: redis.Redis) -> None:
    """Every restart names a new consumer: idle ones with nothing pending are deleted (under
    the lease); one with pending entries stays."""
    client: Any = r
    client.xgroup_create(keys.VALUES, "forecast", id="0", mkstream=True)
    for name in ("dead-1", "dead-2", "w"):  # w: the worker itself, never removed
        client.xgroup_createconsumer(keys.VALUES, "forecast", name)
    _push(client, _items(5, 1))
    client.xreadgroup("forecast", "dead-3", {keys.VALUES: ">"}, count=2)  # 2 pending
    w = make_worker(redis_url, "w", claim_min_idle_ms=60_000)  # they stay with dead-3
    w.step()
    assert w.io.forget_consumers(w.shards[0], 0) == 2
    names = {c["name"] for c in client.xinfo_consumers(keys.VALUES, "forecast")}
    assert names == {b"dead-3", b"w"}
    assert client.xpending(keys.VALUES, "forecast")["pending"] == 2
    w.shutdown()
