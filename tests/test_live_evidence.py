"""Shadow scoring, promotion on evidence, rollback, adaptive intervals (in-process, no TF)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from forecast import evidence, keys, registry
from forecast.client import Producer
from forecast.processes import wait_until
from tests.helpers import LinearModel, NaiveModel, WorkerThreads, make_worker
from worker.watcher import Lineup


@pytest.fixture
def threads() -> Iterator[Any]:
    runner = WorkerThreads()
    yield runner.start
    runner.stop_all()


def register(r: redis.Redis, current: str, states: dict[str, str]) -> None:
    """Registry entries for fake versions (the in-process worker gets the models directly)."""
    import hashlib

    for v in [current, *states]:
        blob = f"blob {v}".encode()
        r.set(keys.model_blob(v), blob)
        r.set(keys.model_manifest(v), f'{{"sha256": "{hashlib.sha256(blob).hexdigest()}"}}')
        r.zadd(keys.MODEL_VERSIONS, {v: int(v[1:])})
    r.set(keys.MODEL_CURRENT, current)
    for v, state in states.items():
        r.hset(keys.MODEL_STATES, v, state)


def random_walks(r: redis.Redis, n_series: int, steps: int, seed: int = 3,
                 noise: float = 1.0) -> None:
    rng = np.random.default_rng(seed)
    level = rng.uniform(10, 1000, n_series)
    producer = Producer(r)
    for _ in range(steps):
        level += rng.normal(0, noise, n_series) * level / 100  # every scale, same shape
        producer.push_many((f"rw{i}", f"{v:.6g}", None) for i, v in enumerate(level))


def events(r: redis.Redis) -> list[dict[bytes, bytes]]:
    return [f for _, f in r.xrange(keys.MODELS_STREAM)]


def test_a_better_candidate_is_promoted_on_live_evidence(r: redis.Redis, redis_url: str,
                                                         threads: Any) -> None:
    """On random walks naive beats trend extrapolation: the naive candidate is promoted."""
    register(r, "v1", {"v2": "candidate"})
    w = make_worker(redis_url, model=Lineup(LinearModel("v1"), [NaiveModel("v2")]),
                    promote_min_n=300)
    threads(w)
    random_walks(r, 20, 60)
    wait_until(lambda: registry.current_version(r) == "v2", 30, 0.1, what="v2 promoted")
    (event,) = [e for e in events(r) if e[b"event"] == b"promoted"]
    assert event[b"version"] == b"v2" and event[b"reason"] == b"live"
    assert int(event[b"n"]) >= 300 and float(event[b"statistic"]) < -3
    assert float(event[b"mase"]) < float(event[b"against_mase"])
    assert registry.states(r)["v1"] == "previous"  # kept in shadow for rollback evidence
    live = evidence.read_live(r, ["v1", "v2"])
    assert live["v2"].mase == pytest.approx(1.0)  # naive against itself
    assert live["v1"].mase is not None and live["v1"].mase > 1.2
    # only the current version's forecasts are written
    assert {f[b"model_version"] for _, f in r.xrange(keys.PREDICTIONS)} == {b"v1"}
    assert not r.exists(keys.live_series("v1"))  # no per-series evidence is written


def test_an_equal_candidate_is_never_promoted(r: redis.Redis, redis_url: str,
                                              threads: Any) -> None:
    """A stable stream and a candidate no better than the current one: no switch, no flap."""
    register(r, "v1", {"v2": "candidate"})
    w = make_worker(redis_url, model=Lineup(NaiveModel("v1"), [NaiveModel("v2", half=1.5)]),
                    promote_min_n=100)
    threads(w)
    random_walks(r, 30, 150)
    wait_until(lambda: evidence.read_pair(r, "v2", "v1").n >= 4000, 30, 0.1, what="evidence")
    w.promoter.next_check = 0.0
    w.next_maintenance = 0.0
    wait_until(lambda: w.promoter.next_check > 0, 10, what="a decision round")
    assert registry.current_version(r) == "v1"
    assert [e[b"event"] for e in events(r)] == []
    pair = evidence.read_pair(r, "v2", "v1")
    assert pair.t == 0.0 and pair.ratio == pytest.approx(1.0)


def test_a_current_version_behind_the_previous_one_is_rolled_back(
        r: redis.Redis, redis_url: str, threads: Any) -> None:
    register(r, "v2", {"v1": "previous"})
    r.lpush(keys.MODEL_HISTORY, "v1")
    w = make_worker(redis_url, model=Lineup(LinearModel("v2"), [NaiveModel("v1")]),
                    promote_min_n=300)
    threads(w)
    random_walks(r, 20, 60)
    wait_until(lambda: registry.current_version(r) == "v1", 30, 0.1, what="rolled back")
    (event,) = [e for e in events(r) if e[b"event"] == b"rolled_back"]
    assert event[b"version"] == b"v1" and event[b"reason"] == b"live"
    assert registry.states(r)["v2"] == "rejected"


def test_manual_mode_only_reports(r: redis.Redis, redis_url: str, threads: Any) -> None:
    register(r, "v1", {"v2": "candidate"})
    w = make_worker(redis_url, model=Lineup(LinearModel("v1"), [NaiveModel("v2")]),
                    promote_min_n=300, promote="manual")
    threads(w)
    random_walks(r, 20, 60)
    wait_until(lambda: evidence.read_pair(r, "v2", "v1").n >= 1000, 30, 0.1, what="evidence")
    assert registry.current_version(r) == "v1" and events(r) == []


def test_adaptive_intervals_reach_nominal_coverage(r: redis.Redis, redis_url: str,
                                                   threads: Any) -> None:
    """Intervals of +-1 on steps of about 3: coverage climbs from ~25% to about 90%."""
    register(r, "v1", {})
    w = make_worker(redis_url, model=NaiveModel("v1", half=1.0), promote_min_n=10**9)
    threads(w)
    rng = np.random.default_rng(8)
    level = np.full(10, 100.0)
    producer = Producer(r)
    for _ in range(400):
        level += rng.normal(0, 3.0, 10)
        producer.push_many((f"c{i}", f"{v:.6g}", None) for i, v in enumerate(level))
    wait_until(lambda: r.xlen(keys.PREDICTIONS) >= 3980, 30, what="all predictions")
    preds = [f for _, f in r.xrange(keys.PREDICTIONS)]
    by_series: dict[bytes, list[dict[bytes, bytes]]] = {}
    for f in preds:
        by_series.setdefault(f[b"series"], []).append(f)
    inside = []
    for rows in by_series.values():
        for prev, nxt in itertools.pairwise(rows[200:]):  # after the adaptation
            value = float(nxt[b"prediction"])  # naive: the prediction is the actual
            inside.append(float(prev[b"lower"]) <= value <= float(prev[b"upper"]))
    assert abs(np.mean(inside) - 0.9) < 0.05
    widths = [float(f[b"upper"]) - float(f[b"lower"]) for f in preds[-100:]]
    assert np.median(widths) > 5  # from 2 (the model's) to about 2 x 1.645 x 3


def test_replay_writes_forecasts_with_their_actuals_elsewhere(r: redis.Redis) -> None:
    from forecast.grammar import Limits
    from worker.replay import replay

    ids = [r.xadd(keys.VALUES, {"series": "a", "value": str(v)}) for v in (1, 2, 3, 5, 8)]
    r.xadd(keys.VALUES, {"series": "a", "value": "oops"})
    summary = replay(r, LinearModel("v1"), [keys.VALUES], "-", "+", "forecast:replay:v1",
                     Limits())
    out = [f for _, f in r.xrange("forecast:replay:v1")]
    # windows [1,2,3] -> 4 (actual 5), [2,3,5] -> 7 (actual 8), [3,5,8] -> 11 (no actual yet)
    assert [(f[b"source_id"], f[b"prediction"], f.get(b"actual")) for f in out[:3]] == [
        (ids[2], b"4", b"5"), (ids[3], b"7", b"8"), (ids[4], b"11", None)]
    assert out[-1][b"summary"] == b"1" and summary["n"] == 2
    assert summary["mae"] == 1.0 and summary["naive_mae"] == 2.5 and summary["relative_mae"] == 0.4
    assert r.xlen(keys.PREDICTIONS) == 0


def test_replay_refuses_the_live_streams(redis_url: str) -> None:
    from cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["replay", "--redis-url", redis_url, "--version", "v1", "--into",
              keys.PREDICTIONS])
    assert exc.value.code == 2


def test_registry_retires_old_blobs_but_keeps_what_serving_needs(r: redis.Redis) -> None:
    import hashlib

    versions = []
    for i in range(6):
        blob = f"b{i}".encode()
        versions.append(registry.publish(r, blob, {"sha256": hashlib.sha256(blob).hexdigest()},
                                         make_current=i < 4, candidate=i == 5))
    # v1..v4 were current in turn (v4 now, v3 previous), v5 stored, v6 the candidate
    gone = registry.retire(r, keep=2)
    assert gone == ["v1", "v2"]
    assert not r.exists(keys.model_blob("v1")) and r.exists(keys.model_manifest("v1"))
    assert registry.states(r) == {"v1": "retired", "v2": "retired", "v3": "previous",
                                  "v6": "candidate"}
    assert [f[b"event"] for _, f in r.xrange(keys.MODELS_STREAM)][-2:] == [b"retired"] * 2
    assert registry.rollback(r) == "v3"
