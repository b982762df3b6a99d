"""A flapping Redis must not turn valid entries into poison.

A delivery is counted right before its entries go to the model (XAUTOCLAIM JUSTID, then an
explicit XCLAIM RETRYCOUNT), and one that ended with a Redis error in this process is not
counted again; so resets caused by a Redis that stops, restarts or drops connections leave
delivery counts alone. The real-process tests restart / freeze a redis-server ten times while
a backlog flows and check: no dead letter, every input predicted exactly once, in order,
equal to an uninterrupted replay.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from forecast import keys
from forecast.client import Producer
from forecast.local_redis import RedisServer, redis_server_binary
from forecast.processes import wait_until
from forecast.redis_conn import connect
from forecast.settings import Settings
from tests import procs
from tests.helpers import LinearModel, StaticWatcher, WorkerThreads, make_worker
from worker.loop import Worker


def _pending_counts(client: Any) -> dict[bytes, int]:
    rows = client.xpending_range(keys.VALUES, "forecast", "-", "+", 10_000)
    return {p["message_id"]: p["times_delivered"] for p in rows}


def _ghost_pending(client: Any, n: int) -> list[bytes]:
    """`n` entries read by a consumer that then died (pending, delivered once)."""
    client.xgroup_create(keys.VALUES, "forecast", id="0", mkstream=True)
    ids = [client.xadd(keys.VALUES, {"series": "f", "value": str(v)}) for v in range(n)]
    client.xreadgroup("forecast", "ghost", {keys.VALUES: ">"})
    return ids


def _break_first(w: Worker, call: str, times: int) -> None:
    """The worker's `w.io.<call>` raises a connection reset the first `times` times."""
    real, broken = getattr(w.io, call), {"n": 0}

    def flaky(*args: Any) -> Any:
        if broken["n"] < times:
            broken["n"] += 1
            raise redis.ConnectionError("connection reset by peer")
        return real(*args)

    setattr(w.io, call, flaky)


def _recover_through_breaks(w: Worker, times: int,
                            check: Callable[[], bool] = lambda: True) -> None:
    """`times` recoveries that each end with a connection error, then the outage path;
    `check` holds after each."""
    for _ in range(times):
        with pytest.raises(redis.ConnectionError):
            w.step()
            w.step()
        w._disconnected(redis.ConnectionError("reset"))
        assert check()


def test_a_lost_claim_reply_counts_no_delivery(redis_url: str, r: redis.Redis) -> None:
    """Ten recoveries that break between the claim and the model leave the counts at 1."""
    client: Any = r
    ids = _ghost_pending(client, 6)
    w = make_worker(redis_url, "heir", max_deliveries=2)
    _break_first(w, "bump", 10)  # the connection breaks before the bump reaches Redis
    _recover_through_breaks(w, 10, lambda: set(_pending_counts(client).values()) == {1})
    wait_until(lambda: (w.step(), client.xlen(keys.PREDICTIONS) == 4)[1], 10, 0.01,
               what="the recovered entries predicted")
    assert client.xlen(keys.DEADLETTER) == 0
    assert [f[b"source_id"] for _, f in client.xrange(keys.PREDICTIONS)] == ids[2:]
    w.shutdown()


def test_a_delivery_broken_by_redis_is_not_counted_twice(redis_url: str,
                                                         r: redis.Redis) -> None:
    """Recoveries that break after the delivery was counted (checkpoint load, commit) are
    refunded: ten of them with max_deliveries=2 dead-letter nothing."""
    client: Any = r
    _ghost_pending(client, 5)
    w = make_worker(redis_url, "heir", max_deliveries=2)
    _break_first(w, "load", 10)  # the checkpoint load breaks after the delivery counted
    _recover_through_breaks(w, 10)
    assert max(_pending_counts(client).values()) == 2  # counted once, then refunded
    wait_until(lambda: (w.step(), client.xlen(keys.PREDICTIONS) == 3)[1], 10, 0.01,
               what="the recovered entries predicted")
    assert client.xlen(keys.DEADLETTER) == 0
    w.shutdown()


def test_a_model_that_always_raises_makes_every_entry_poison_one_by_one(
        redis_url: str, r: redis.Redis) -> None:
    """A failure that is not Redis's is isolated down to single entries; each then counts its
    deliveries until it is dead-lettered as poison (nothing is predicted, nothing lost)."""
    client: Any = r
    _ghost_pending(client, 5)

    class Broken(LinearModel):
        def predict(self, windows: Any) -> Any:
            raise RuntimeError("model crashed")

    w = make_worker(redis_url, "heir", max_deliveries=3, model=Broken())
    wait_until(lambda: (w.step(), client.xlen(keys.DEADLETTER) == 3)[1], 30, 0.001,
               what="three poison entries")
    dead = client.xrange(keys.DEADLETTER)
    assert {f[b"reason"] for _, f in dead} == {b"poison"}
    # 0 and 1 only fill the window (the model never sees them); 2, 3, 4 break it
    assert [f[b"value"] for _, f in dead] == [b"2", b"3", b"4"]  # in stream order
    assert {f[b"deliveries"] for _, f in dead} == {b"4"}
    assert client.xpending(keys.VALUES, "forecast")["pending"] == 0
    assert client.xlen(keys.PREDICTIONS) == 0
    w.shutdown()


class Picky(LinearModel):
    """Raises on any window that holds the value 666."""

    def predict(self, windows: Any) -> Any:
        if (windows == 666).any():
            raise ValueError("cannot forecast a window with 666")
        return super().predict(windows)


def test_poison_is_judged_per_entry_not_per_batch(redis_url: str, r: redis.Redis) -> None:
    """One entry that breaks the model takes nothing else with it: its batch-mates (other
    series, and its own series before it) are predicted once each, in order."""
    client: Any = r
    client.xgroup_create(keys.VALUES, "forecast", id="0", mkstream=True)
    pipe = client.pipeline(transaction=True)
    for t in range(40):
        for s in ("a", "b", "c"):
            value = 666 if (s, t) == ("b", 20) else t
            pipe.xadd(keys.VALUES, {"series": s, "value": str(value)})
    pipe.execute()
    w = make_worker(redis_url, "w1", max_deliveries=3, model=Picky())

    def settled() -> bool:
        w.step()
        return client.xpending(keys.VALUES, "forecast")["pending"] == 0 and \
            client.xlen(keys.DEADLETTER) + client.xlen(keys.PREDICTIONS) >= 40 * 3 - 3 * 2
    wait_until(settled, 60, 0.001, what="every entry predicted or dead-lettered")
    w.shutdown()
    dead = client.xrange(keys.DEADLETTER)
    # only the 666 breaks the model; dead-lettered, it never enters b's window
    assert [(f[b"series"], f[b"value"], f[b"reason"]) for _, f in dead] == [
        (b"b", b"666", b"poison")]
    preds = [f for _, f in client.xrange(keys.PREDICTIONS)]
    per_series: dict[bytes, list[bytes]] = {}
    for f in preds:
        per_series.setdefault(f[b"series"], []).append(f[b"source_id"])
    sources = {eid: dict(f) for eid, f in client.xrange(keys.VALUES)}
    assert len(per_series[b"a"]) == len(per_series[b"c"]) == 38  # from the third value on
    for ids in per_series.values():
        assert ids == sorted(set(ids), key=lambda e: tuple(map(int, e.split(b"-"))))
    b_values = [int(sources[e][b"value"]) for e in per_series[b"b"]]
    assert b_values == [*range(2, 20), *range(21, 40)]


# --- real processes ---------------------------------------------------------------------

@pytest.fixture
def flappy() -> Iterator[RedisServer]:
    """A private redis-server whose every write is fsynced (a restart loses nothing)."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not on PATH")
    server = RedisServer(appendonly=True, extra_args=["--appendfsync", "always"]).start()
    yield server
    server.cleanup()


def test_a_transaction_cut_by_a_kill_never_comes_back(flappy: RedisServer) -> None:
    """A SIGKILL half-way through writing a script's effects to the AOF: the restarts that
    follow (two, since Redis 7 replays the cut block's first part only at the second)
    never apply any of it, and lose nothing written after it."""
    client: Any = redis.Redis.from_url(flappy.url)
    client.set("before", 1)
    client.eval("for i = 1, 3 do redis.call('SET', 'cut' .. i, i) end", 0)
    flappy.stop(kill=True)
    assert flappy.dir is not None
    (aof,) = (flappy.dir / "appendonlydir").glob("*.incr.aof")
    data = aof.read_bytes()
    aof.write_bytes(data[:data.rindex(b"cut3") - 3])  # the kill came mid-block
    for after in ("after1", "after2"):
        flappy.start()
        client = redis.Redis.from_url(flappy.url)
        client.set(after, 1)
        client.eval("redis.call('SET', KEYS[1], 1); redis.call('SET', KEYS[2], 1)", 2,
                    f"{after}.a", f"{after}.b")
        flappy.stop(kill=True)
    flappy.start()
    client = redis.Redis.from_url(flappy.url)
    assert client.keys("cut*") == []
    assert sorted(client.keys("*")) == [b"after1", b"after1.a", b"after1.b", b"after2",
                                        b"after2.a", b"after2.b", b"before"]


def test_damage_that_no_kill_makes_is_left_for_an_operator(flappy: RedisServer) -> None:
    """`redis-check-aof --fix` would cut everything after a damaged byte mid-file: the
    repair refuses (the server is not started), and the file stays as it was."""
    client: Any = redis.Redis.from_url(flappy.url)
    for k in range(100):
        client.set(f"k{k}", k)
    flappy.stop()
    assert flappy.dir is not None
    (aof,) = (flappy.dir / "appendonlydir").glob("*.incr.aof")
    data = bytearray(aof.read_bytes())
    at = data.index(b"k50")
    data[at - 5] = ord("x")  # a length prefix ("$3") is no longer a length
    aof.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="left for an operator"):
        flappy.start()
    assert aof.read_bytes() == bytes(data)


def _worker(url: str) -> Worker:
    settings = Settings(_env_file=None, redis_url=url, metrics_port=0, block_ms=50,  # type: ignore[call-arg]
                        lease_ttl_ms=600, consumer="flap", batch_size=500)
    return Worker(connect(settings, timeout=1.0), settings, watcher=StaticWatcher(LinearModel()))


def _check(client: Any) -> int:
    entries = client.xrange(keys.VALUES)
    reference = procs.reference_predictions(LinearModel(), entries)
    preds = client.xrange(keys.PREDICTIONS)
    procs.assert_predicted_once([f for _, f in preds], reference)
    assert client.xlen(keys.DEADLETTER) == 0, client.xrange(keys.DEADLETTER, count=3)
    return len(preds)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["restart", "sigstop"])
def test_ten_flaps_while_values_flow(flappy: RedisServer, fault: str) -> None:
    """Redis SIGKILLed and restarted (AOF, fsync always) or frozen, ten times mid-backlog."""
    url = flappy.url
    threads = WorkerThreads()
    w = threads.start(_worker(url))
    client: Any = redis.Redis.from_url(url, protocol=2, socket_timeout=5)
    producer = Producer(client)
    total = 0
    try:
        for i in range(10):
            items = [(f"s{k % 40}", f"{(i * 3000 + k) % 97}.5", None) for k in range(3000)]
            producer.push_many(items)
            total += len(items)
            wait_until(lambda c=client, t=total: c.xlen(keys.PREDICTIONS) > t - 2500, 30,
                       0.005, what="the worker mid-backlog")
            if fault == "restart":
                flappy.stop(kill=True)
                flappy.start()
            else:
                assert flappy.proc is not None
                os.kill(flappy.proc.pid, signal.SIGSTOP)
                try:
                    wait_until(lambda: not w.connected, 10, 0.01, what="the worker to notice")
                finally:
                    os.kill(flappy.proc.pid, signal.SIGCONT)
            client = redis.Redis.from_url(url, protocol=2, socket_timeout=5)
            producer = Producer(client)
        wait_until(lambda: client.xlen(keys.PREDICTIONS) >= total - 80
                   and client.xpending(keys.VALUES, "forecast")["pending"] == 0, 60,
                   what="every value predicted")
        assert _check(client) == total - 80
    finally:
        threads.stop_all()
