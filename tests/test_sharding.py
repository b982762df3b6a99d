"""Sharded input on one Redis: routing, rebalancing between in-process workers, status (no TF)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from cli.main import main
from forecast import keys
from forecast.client import Producer
from forecast.processes import wait_until
from forecast.settings import load_settings
from forecast.status import collect, render
from testkit import PacedProducer
from tests.helpers import LinearModel, StaticWatcher
from worker.loop import Worker

SHARDS = 4
TTL_MS = 600
N_STEPS = 3  # LinearModel's window: the first N_STEPS - 1 values of a series predict nothing


class Fleet:
    """In-process workers over the same shards, and a monitor of who holds what."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.workers: dict[str, tuple[Worker, threading.Thread]] = {}
        self.violations: list[str] = []
        self.polls = 0
        self._done = threading.Event()
        self._monitor = threading.Thread(target=self._watch, daemon=True)
        self._monitor.start()

    def start(self, name: str, model: Any = True) -> Worker:
        """Start a worker thread named `name` (with `model=None` it has no model to serve yet)."""
        settings = load_settings(redis_url=self.url, metrics_port=0, block_ms=50, shards=SHARDS,
                                 lease_ttl_ms=TTL_MS, consumer=name)
        client = redis.Redis.from_url(self.url, protocol=2)
        watcher = StaticWatcher(LinearModel() if model is True else model)
        w = Worker(client, settings, watcher=watcher)  # type: ignore[arg-type]
        t = threading.Thread(target=w.run, daemon=True, name=name)
        self.workers[name] = (w, t)
        t.start()
        return w

    def stop(self, name: str) -> None:
        """Warm stop: the worker commits, releases its leases and leaves."""
        w, t = self.workers[name]
        w.stop()
        t.join(10)
        assert not t.is_alive()

    def crash(self, name: str) -> None:
        """Stop a worker without any clean-up: leases, heartbeat and pending entries stay."""
        w, t = self.workers[name]
        w.shutdown = lambda: None  # type: ignore[method-assign]
        w.stop()
        t.join(10)
        assert not t.is_alive()

    def owned(self) -> dict[str, set[int]]:
        """Shards each running (not stopping) worker holds in memory."""
        return {n: set(w.shards.copy()) for n, (w, _) in self.workers.items()
                if not w.stopping.is_set()}

    def _watch(self) -> None:
        while not self._done.is_set():
            seen: dict[int, str] = {}
            for name, shards in self.owned().items():
                for k in shards:
                    if k in seen:
                        self.violations.append(f"shard {k} held by {seen[k]} and {name}")
                    seen[k] = name
            self.polls += 1
            self._done.wait(0.002)

    def close(self) -> None:
        """Stop the monitor and every worker still running."""
        self._done.set()
        self._monitor.join(5)
        for w, t in self.workers.values():
            w.stop()
            t.join(10)


@pytest.fixture
def fleet(redis_url: str) -> Iterator[Fleet]:
    f = Fleet(redis_url)
    yield f
    f.close()


def feed(url: str, series: int = 16, pause_s: float = 0.02) -> PacedProducer:
    """One value per series per round, 0, 1, 2, ... (prediction = v + 1), every `pause_s` s."""
    producer = Producer(redis.Redis.from_url(url, protocol=2), shards=SHARDS)
    names = [f"sensor-{i}" for i in range(series)]
    return PacedProducer(producer, lambda n: [(s, n, None) for s in names], interval=pause_s)


def balanced(fleet: Fleet, expected: dict[str, set[int]]) -> float:
    """Seconds until the running workers hold exactly `expected`."""
    t0 = time.monotonic()
    wait_until(lambda: fleet.owned() == expected, timeout=15, interval=0.01,
             what=f"ownership {expected} (have {fleet.owned()})")
    return time.monotonic() - t0


def inputs_by_series(r: Any) -> dict[bytes, list[tuple[bytes, float]]]:
    """(entry id, value) of every input, per series, in stream order."""
    out: dict[bytes, list[tuple[bytes, float]]] = defaultdict(list)
    for k in range(SHARDS):
        for eid, f in r.xrange(keys.values_stream(k, SHARDS)):
            out[f[b"series"]].append((eid, float(f[b"value"])))
    return out


def test_producer_routes_every_series_to_its_shard(r: Any) -> None:
    producer = Producer(r, shards=SHARDS)
    series = [f"s{i}" for i in range(200)] + ["é-ünïcode", "a" * 200]
    producer.push_many((s, 1.0, None) for s in series)
    producer.push("s0", 2.0)
    for k in range(SHARDS):
        stream = keys.values_stream(k, SHARDS)
        assert stream == f"forecast:values:{{{k}}}"
        got = [f[b"series"].decode() for _, f in r.xrange(stream)]
        assert got and all(keys.shard_of(s, SHARDS) == k for s in got)
    assert sum(r.xlen(keys.values_stream(k, SHARDS)) for k in range(SHARDS)) == len(series) + 1
    assert not r.exists(keys.VALUES)  # shards > 1: the plain stream is not used
    assert Producer(r, shards=8, cluster=True).stream_of("a") == "forecast:values:{3}"
    assert Producer(r, shards=1, cluster=True).stream_of("a") == "forecast:values:{0}"
    assert Producer(r).stream_of("a") == keys.VALUES


def test_cli_push_routes_by_shard(r: Any, redis_url: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("pump-7", "valve-2"):
        assert main(["push", "--shards", "4", "--redis-url", redis_url, name, "1", "2", "3"]) == 0
    assert "pushed 3 value(s)" in capsys.readouterr().out
    for k in range(SHARDS):
        got = [f[b"series"] for _, f in r.xrange(f"forecast:values:{{{k}}}")]
        want = [s.encode() for s in ("pump-7", "valve-2") if keys.shard_of(s, 4) == k]
        assert sorted(set(got)) == sorted(want)
        assert len(got) == 3 * len(want)
    assert main(["push", "--shards", "1", "--redis-url", redis_url, "pump-7", "4"]) == 0
    assert r.xlen(keys.VALUES) == 1


def test_rebalance_handover_is_exactly_once_and_in_order(r: Any, fleet: Fleet,
                                                         redis_url: str) -> None:
    everything = set(range(SHARDS))
    times: dict[str, float] = {}
    with feed(redis_url) as values:
        fleet.start("w1")
        balanced(fleet, {"w1": everything})
        values.wait_rounds(5)
        fleet.start("w2")  # joins: w1 gives up half (assignment: k mod 2 over sorted names)
        times["join"] = balanced(fleet, {"w1": {0, 2}, "w2": {1, 3}})
        values.wait_rounds(5)
        fleet.stop("w1")  # leaves cleanly: releases its leases at once
        times["leave"] = balanced(fleet, {"w2": everything})
        fleet.start("w3")
        times["join2"] = balanced(fleet, {"w2": {0, 2}, "w3": {1, 3}})
        values.wait_rounds(5)
        fleet.crash("w3")  # no release: its leases expire and its pending entries are claimed
        times["crash"] = balanced(fleet, {"w2": everything})
        values.wait_rounds(5)
    # Joins and clean leaves settle within about one lease period; a crash within about two.
    assert times["join"] < 4 * TTL_MS / 1000 and times["leave"] < 4 * TTL_MS / 1000
    assert times["crash"] < 6 * TTL_MS / 1000
    inputs = inputs_by_series(r)
    assert len(inputs) == 16
    expected = sum(len(v) - (N_STEPS - 1) for v in inputs.values())

    def preds() -> list[dict[bytes, bytes]]:
        return [f for _, f in r.xrange(keys.PREDICTIONS)]

    wait_until(lambda: len(preds()) >= expected, timeout=20, what=f"{expected} predictions")
    wait_until(lambda: all(r.xpending(keys.values_stream(k, SHARDS), "forecast")["pending"] == 0
                         for k in range(SHARDS)), what="every entry acknowledged")
    got: dict[bytes, list[tuple[bytes, float]]] = defaultdict(list)
    for p in preds():
        got[p[b"series"]].append((p[b"source_id"], float(p[b"prediction"])))
    assert sum(len(v) for v in got.values()) == expected  # nothing duplicated
    for series, values in inputs.items():
        # every input after warm-up predicted once, in input order, from an unbroken window
        assert got[series] == [(eid, v + 1) for eid, v in values[N_STEPS - 1:]], series
    assert r.xlen(keys.DEADLETTER) == 0
    assert fleet.polls > 100 and fleet.violations == []
    print(f"rebalance seconds (lease {TTL_MS} ms): {times}")


def test_a_worker_without_a_model_takes_no_shards_until_it_has_one(r: Any, fleet: Fleet,
                                                                   redis_url: str) -> None:
    with feed(redis_url, series=8):
        fleet.start("w1")
        balanced(fleet, {"w1": set(range(SHARDS))})
        starting = fleet.start("w0", model=None)  # still loading: sorts first, would get 0, 2
        joined = wait_until(lambda: r.zscore(keys.WORKERS, "w0"), what="w0's heartbeat")
        # w1 has since run its rebalancing several times with w0 in the live set
        wait_until(lambda: (r.zscore(keys.WORKERS, "w1") or 0) > joined + 2 * TTL_MS,
                 what="w1 heartbeats after w0 joined")
        assert fleet.owned() == {"w0": set(), "w1": set(range(SHARDS))}
        assert all(r.exists(keys.shard_keys(k, SHARDS).lease) for k in range(SHARDS))
        starting.watcher.next = LinearModel()  # type: ignore[attr-defined]
        balanced(fleet, {"w0": {0, 2}, "w1": {1, 3}})


def test_status_lists_shards_owners_lag_and_workers(r: Any, fleet: Fleet,
                                                   redis_url: str) -> None:
    settings = load_settings(redis_url=redis_url, shards=SHARDS, lease_ttl_ms=TTL_MS)
    producer = Producer(r, shards=SHARDS)
    series = [f"m{i}" for i in range(12)]
    producer.push_many((s, v, None) for v in range(3) for s in series)
    fleet.start("w1")
    fleet.start("w2")
    balanced(fleet, {"w1": {0, 2}, "w2": {1, 3}})
    wait_until(lambda: r.xlen(keys.PREDICTIONS) == len(series), what="predictions")
    def fresh() -> dict[str, Any] | None:
        status = collect(r, settings)
        shown = {w["consumer"]: w["shards"] for w in status["workers"]}
        return status if shown == {"w1": [0, 2], "w2": [1, 3]} else None

    status = wait_until(fresh, what="heartbeats showing the balanced shards")
    assert [s["shard"] for s in status["shards"]] == list(range(SHARDS))
    owner = {s["shard"]: s["owner"] for s in status["shards"]}
    assert owner == {0: "w1", 1: "w2", 2: "w1", 3: "w2"}
    assert all(s["lag"] == 0 and s["pending"] == 0 for s in status["shards"])
    assert sum(s["length"] for s in status["shards"]) == 3 * len(series)
    workers = {w["consumer"]: w for w in status["workers"]}
    assert workers["w1"]["alive"] and workers["w1"]["shards"] == [0, 2]
    assert workers["w2"]["ready"] and workers["w2"]["shards"] == [1, 3]
    text = render(status)
    assert "forecast:values:{3}" in text and "w1" in text and "w2" in text

    fleet.stop("w1")
    fleet.stop("w2")
    lagging = "m0"
    producer.push_many((lagging, v, None) for v in range(3, 6))
    status = collect(r, settings)
    lag = {s["shard"]: s["lag"] for s in status["shards"]}
    assert lag == {k: 3 if k == keys.shard_of(lagging, SHARDS) else 0 for k in range(SHARDS)}
    assert all(s["owner"] is None for s in status["shards"]) and status["workers"] == []
    text = render(status)
    assert "(unowned)" in text and "(no live workers)" in text
