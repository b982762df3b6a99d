"""The loop end to end with real processes: drift, retrain, shadow, promote, on a regime change.

A watching trainer (`forecast train --from-stream --watch`) and a worker run against a
private redis-server. Twelve seasonal series (period 12) stream in; halfway the period and
the level of every series change. Nobody types a command: the worker's drift detector
fires, the trainer retrains on the recent history and publishes a candidate, the worker
scores it in shadow and promotes it on live evidence.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from forecast import evidence, keys, processes, registry
from forecast.client import Item, Producer
from forecast.local_redis import RedisServer
from forecast.processes import wait_until
from testkit import PacedProducer
from tests import procs

pytestmark = [pytest.mark.slow, pytest.mark.tf]

SERIES = 12
TRAINER = {"forecaster": "rnn", "n_steps": 12, "units": 16, "epochs": 40, "patience": 5,
           "retrain_min_gap_s": 10,
           "retrain_history": 96, "keep_versions": 5, "log_level": "INFO"}
RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "loop-results.json"


class Regimes:
    """Seasonal series; from `switch_at` on, another period and level."""

    def __init__(self, switch_at: int | None) -> None:
        self.switch_at = switch_at
        rng = np.random.default_rng(11)
        self.level = rng.uniform(20, 200, SERIES)
        self.phase = rng.uniform(0, 2 * np.pi, SERIES)
        self.rng = rng

    def values(self, t: int) -> np.ndarray:
        changed = self.switch_at is not None and t >= self.switch_at
        period, scale = (5.0, 2.5) if changed else (12.0, 1.0)
        season = np.sin(2 * np.pi * t / period + self.phase)
        # a drifting level: neither the naive nor the seasonal-naive forecast is good
        self.level *= np.exp(self.rng.normal(0, 0.01, SERIES))
        return self.level * scale * (1 + 0.3 * season + self.rng.normal(0, 0.02, SERIES))

    def round(self, t: int) -> list[Item]:
        return [(f"m{i}", f"{v:.6g}", None) for i, v in enumerate(self.values(t))]


def start_trainer(url: str, log_dir: Path) -> subprocess.Popen[bytes]:
    log = (log_dir / "trainer.log").open("wb")
    return subprocess.Popen(
        [processes.PYTHON, "-m", "cli", "train", "--from-stream", "--watch", "--every",
         "3600", "--quiet", "--model-dir", str(log_dir / "models")],
        stdout=log, stderr=subprocess.STDOUT, cwd=log_dir, env=processes.worker_env(url, **TRAINER))


def models_events(client: Any, event: str) -> list[dict[bytes, bytes]]:
    return [f for _, f in client.xrange(keys.MODELS_STREAM) if f[b"event"] == event.encode()]


def coverage_after(client: Any, first_id: bytes, skip: int) -> float:
    """Share of actuals inside the interval written one value earlier, after `first_id`."""
    by_series: dict[bytes, list[tuple[bytes, float]]] = defaultdict(list)
    for eid, f in client.xrange(keys.VALUES, min=first_id):
        by_series[f[b"series"]].append((eid, float(f[b"value"])))
    preds = {f[b"source_id"]: f for _, f in client.xrange(keys.PREDICTIONS)}
    inside = []
    for values in by_series.values():
        for (eid, _), (_, actual) in list(itertools.pairwise(values))[skip:]:
            p = preds.get(eid)
            if p is not None:
                inside.append(float(p[b"lower"]) <= actual <= float(p[b"upper"]))
    return float(np.mean(inside))


def test_a_regime_change_is_detected_retrained_and_promoted(fresh_server: RedisServer,
                                                            tmp_path: Path) -> None:
    client: Any = redis.Redis.from_url(fresh_server.url, protocol=2)
    regimes = Regimes(switch_at=None)
    producer = Producer(client)
    for t in range(120):  # history of the first regime
        producer.push_many(regimes.round(t))
    trainer = start_trainer(fresh_server.url, tmp_path)
    worker = None
    values = None
    try:
        wait_until(lambda: registry.current_version(client) == "v1" or trainer.poll() is not None,
                   180, 0.2, what="the first model")
        assert registry.current_version(client) == "v1", (tmp_path / "trainer.log").read_text()
        worker = procs.start_worker(fresh_server.url, "loop", promote_min_n=200, lease_ttl_ms=2000)
        procs.wait_serving(client, "loop", "v1", proc=worker)
        t0 = 120
        regimes.switch_at = t0 + 60  # 3 s of the old regime live, then the new one
        values = PacedProducer(producer, lambda n: regimes.round(t0 + n), interval=0.05)
        values.start()
        wait_until(lambda: client.xlen(keys.EVENTS) > 0, 120, 0.2, what="a drift event")
        drift = [f for _, f in client.xrange(keys.EVENTS)]
        wait_until(lambda: models_events(client, "promoted"), 240, 0.5, what="a promotion")
        (promoted,) = models_events(client, "promoted")[:1]
        new = promoted[b"version"].decode()
        old = promoted[b"against"].decode()
        assert promoted[b"reason"] == b"live" and float(promoted[b"statistic"]) < -3
        procs.wait_serving(client, "loop", new, proc=worker)
        values.wait_rounds(500, timeout=90)  # 25 s more on the new regime, new model serving
        pair = evidence.read_pair(client, old, new)  # the old one now runs in shadow
        first_new = client.xrange(keys.VALUES, count=1,
                                  min=f"{int(time.time() * 1000) - 10000}-0")[0][0]
        cov = coverage_after(client, first_new, skip=0)
        values.stop()
        values = None
    finally:
        if values is not None:
            values.stop()
        trainer.send_signal(signal.SIGTERM)
        trainer_rc = trainer.wait(60)
        processes.stop_process(worker)
    figures = {
        "drift_events": len(drift), "first_drift": {k.decode(): v.decode()
                                                    for k, v in drift[0].items()},
        "candidates": len(models_events(client, "candidate")), "promoted": new,
        "replaced": old, "promotion_evidence": {k.decode(): v.decode()
                                                for k, v in promoted.items()},
        "after_promotion_pairs": pair.n, "old_over_new_scaled_error": pair.ratio,
        "coverage_last_10s": cov, "rollbacks": len(models_events(client, "rolled_back")),
    }
    print("loop figures:", json.dumps(figures))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    assert trainer_rc == 0
    assert drift[0][b"event"] == b"drift" and drift[0][b"detector"] == b"page_hinkley"
    assert pair.n > 500 and pair.ratio is not None and pair.ratio > 1.1  # clearly better
    assert abs(cov - 0.9) <= 0.05
    assert figures["rollbacks"] == 0
    # exactly once and in order through the promotion and the hot reload
    wait_until(lambda: client.xpending(keys.VALUES, "forecast")["pending"] == 0, 30, 0.1,
               what="nothing pending")
    inputs: dict[bytes, list[bytes]] = defaultdict(list)
    for eid, f in client.xrange(keys.VALUES):
        inputs[f[b"series"]].append(eid)
    got: dict[bytes, list[bytes]] = defaultdict(list)
    for _, f in client.xrange(keys.PREDICTIONS):
        got[f[b"series"]].append(f[b"source_id"])
    n_steps = TRAINER["n_steps"]
    assert all(got[s] == ids[n_steps - 1:len(got[s]) + n_steps - 1] for s, ids in inputs.items())
    assert sum(len(v) for v in got.values()) >= sum(len(v) for v in inputs.values()) - \
        SERIES * (n_steps - 1) - SERIES  # the last value of a series may be in flight at stop
    client.close()


def test_a_stable_stream_does_not_flap(fresh_server: RedisServer, tmp_path: Path) -> None:
    """Retraining every 15 s on a stable stream: new versions come, none is rolled back and at
    most one (a model trained on more data) is promoted."""
    client: Any = redis.Redis.from_url(fresh_server.url, protocol=2)
    regimes = Regimes(switch_at=None)
    producer = Producer(client)
    for t in range(120):
        producer.push_many(regimes.round(t))
    trainer = subprocess.Popen(
        [processes.PYTHON, "-m", "cli", "train", "--from-stream", "--watch", "--every",
         "15", "--quiet", "--model-dir", str(tmp_path / "models")],
        stdout=(tmp_path / "trainer.log").open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path,
        env=processes.worker_env(fresh_server.url, **TRAINER))
    worker = None
    values = PacedProducer(producer, lambda n: regimes.round(120 + n), interval=0.05)
    try:
        wait_until(lambda: registry.current_version(client) == "v1", 180, 0.2, what="v1")
        worker = procs.start_worker(fresh_server.url, "stable", promote_min_n=200)
        procs.wait_serving(client, "stable", "v1", proc=worker)
        values.start()
        wait_until(lambda: client.zcard(keys.MODEL_VERSIONS) >= 4, 240, 0.5,
                   what="three retrainings")
        values.wait_rounds(100)
    finally:
        values.stop()
        trainer.send_signal(signal.SIGTERM)
        trainer.wait(60)
        processes.stop_process(worker)
    promotions = models_events(client, "promoted")
    print("stable figures:", json.dumps({
        "candidates": len(models_events(client, "candidate")), "promotions": len(promotions),
        "rollbacks": len(models_events(client, "rolled_back")),
        "drift_events": client.xlen(keys.EVENTS)}))
    assert len(promotions) <= 1 and not models_events(client, "rolled_back")
    client.close()
