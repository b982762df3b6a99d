"""The chaos proof: worker processes SIGKILLed and paused under load; nothing lost or duplicated.

One run pushes at least VALUES values over SERIES series into SHARDS shards while WORKERS
`forecast worker` processes are SIGKILLed (and restarted) at random moments, at least
MIN_KILLS times, and one of them is SIGSTOPped until the others took its shards over, then
SIGCONTed (a zombie). A paced producer pushes in the background; each kill follows a burst
by a random 0-100 ms, so most kills hit workers with entries in flight. At the end every
input after its series' warm-up has exactly one prediction, equal to what an uninterrupted
replay of the same model makes, and per-series order holds.
The figures go to bench/results/chaos-results.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest
import redis

from forecast import evidence, keys, processes, registry
from forecast.client import Item, Producer
from forecast.local_redis import RedisServer
from forecast.processes import WorkerProcess, wait_until
from testkit import PacedProducer
from testkit.results import write_results
from tests import procs

pytestmark = [pytest.mark.slow, pytest.mark.tf]

SHARDS = 4
SERIES = 240
VALUES = 50_000  # at least: BACKGROUND paced values + a BURST before each kill and the zombie
BACKGROUND = 38_000
BURST = 1_000
WORKERS = 3
MIN_KILLS = 10
PRODUCE_S = 45.0  # the background producer spreads its values over this long
N_STEPS = 3
WORKER_ENV: dict[str, Any] = {"shards": SHARDS, "lease_ttl_ms": 1000, "batch_size": 500,
                              "max_deliveries": 5, "summary_interval_s": 5}


def background(url: str) -> PacedProducer:
    """BACKGROUND random-walk values over SERIES series, paced over PRODUCE_S seconds."""
    producer = Producer(redis.Redis.from_url(url, protocol=2), shards=SHARDS)
    rng = np.random.default_rng(2024)
    level = rng.uniform(5.0, 80.0, SERIES)
    chunk = 250

    def one_round(_: int) -> list[Item]:
        items: list[Item] = []
        for s in rng.integers(0, SERIES, chunk).tolist():
            level[s] += rng.normal(0.0, 1.0)
            items.append((f"series-{s}", f"{level[s]:.4f}", None))
        return items

    return PacedProducer(producer, one_round, interval=PRODUCE_S * chunk / BACKGROUND,
                         limit=BACKGROUND)


def burst(producer: Producer, rng: np.random.Generator) -> int:
    """Push BURST values at once over random series (the workers get busy); how many."""
    which, values = rng.integers(0, SERIES, BURST).tolist(), rng.uniform(0, 100, BURST).tolist()
    items: list[Item] = [(f"series-{s}", f"{v:.4f}", None)
                         for s, v in zip(which, values, strict=True)]
    producer.push_many(items)
    return BURST


def holders(client: Any, workers: dict[int, WorkerProcess]) -> list[int]:
    """Worker slots whose live process currently holds at least one shard lease."""
    owners = [client.get(keys.shard_keys(k, SHARDS).lease) for k in range(SHARDS)]
    names = {o.decode().split(":", 1)[1] for o in owners if o}
    return [slot for slot, p in workers.items() if p.poll() is None and p.consumer in names]


def leases_of(client: Any, consumer: str) -> list[int]:
    """Shards whose lease `consumer` holds."""
    out = []
    for k in range(SHARDS):
        owner = client.get(keys.shard_keys(k, SHARDS).lease)
        if owner and owner.decode().split(":", 1)[1] == consumer:
            out.append(k)
    return out


def zombie_episode(client: Any, proc: WorkerProcess) -> dict[str, Any]:
    """SIGSTOP a shard holder until others hold all its shards and committed there; SIGCONT."""
    lost = leases_of(client, proc.consumer)
    before = client.xlen(keys.PREDICTIONS)
    os.kill(proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        def taken_over() -> bool:
            owners = [client.get(keys.shard_keys(k, SHARDS).lease) for k in lost]
            return all(o and not o.decode().endswith(":" + proc.consumer) for o in owners)
        wait_until(taken_over, 30, 0.05, what="the paused worker's shards taken over")
        wait_until(lambda: client.xlen(keys.PREDICTIONS) > before + 200, 30, 0.05,
                 what="the new owners committing")
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    paused = time.monotonic() - t0
    # The resumed worker finds its leases gone (renewal or a fenced script) and drops them.
    wait_until(lambda: "expired; dropping it" in proc.log() or "lost the lease" in proc.log(),
             30, 0.1, what="the zombie noticing it lost its shards")
    return {"shards": lost, "paused_s": round(paused, 2)}


def pending_of(client: Any, consumer: str) -> int:
    """Entries delivered to `consumer` and not acked (for a killed one: left in flight)."""
    total = 0
    for k in range(SHARDS):
        for c in client.xinfo_consumers(keys.shard_keys(k, SHARDS).values, "forecast"):
            if c["name"] == consumer.encode():
                total += int(c["pending"])
    return total


def final_state(client: Any) -> tuple[list[tuple[bytes, dict[bytes, bytes]]], int]:
    """All input entries (stream order per shard) and the total of pending entries."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = []
    pending = 0
    for k in range(SHARDS):
        stream = keys.shard_keys(k, SHARDS).values
        entries += client.xrange(stream)
        pending += client.xpending(stream, "forecast")["pending"]
    return entries, pending


def test_chaos_nothing_lost_nothing_duplicated(fresh_server: RedisServer) -> None:
    """SIGKILL x >=10 and a SIGSTOP zombie under load: exactly one correct prediction each."""
    from forecast import modelio

    t_start = time.monotonic()
    url = fresh_server.url
    client: Any = redis.Redis.from_url(url, protocol=2)
    version = procs.publish_tiny_model(url)
    model = modelio.load_version(client, version)
    # a worse candidate in shadow (it forecasts twice the last value): scored, never promoted
    blob, manifest = procs.doubling_model(registry.get_manifest(client, version))
    shadow = registry.publish(client, blob, manifest, make_current=False, candidate=True)
    assert model.n_steps == N_STEPS
    rng = random.Random(99)
    generation: Counter[int] = Counter()

    def spawn(slot: int) -> WorkerProcess:
        # Even generations restart under the same consumer name, odd ones under a new one.
        generation[slot] += 1
        name = f"chaos{slot}" + (f"-g{generation[slot]}" if generation[slot] % 2 else "")
        return procs.start_worker(url, name, **WORKER_ENV)

    workers = {slot: spawn(slot) for slot in range(WORKERS)}
    started = [*workers.values()]
    stop = threading.Event()  # only ever waited on: random pauses that end early on failure
    producer = background(url)
    kills = in_flight = bursts = 0
    zombie: dict[str, Any] = {}
    # seq is per series, and both producers write the same series: only one numbers its values
    # (the background one: its sequence numbers must survive every kill without a duplicate)
    bursty = Producer(client, shards=SHARDS, sequence=False)
    burst_rng = np.random.default_rng(7)
    try:
        for p in workers.values():
            procs.wait_serving(client, p.consumer, version, proc=p)
        producer.start()
        deadline = time.monotonic() + 150
        while producer.is_alive() or kills < MIN_KILLS or not zombie \
                or BACKGROUND + bursts < VALUES:
            assert time.monotonic() < deadline, f"chaos phase too slow: {kills} kills"
            stop.wait(rng.uniform(1.0, 3.0))  # a random moment (not a synchronisation)
            candidates = holders(client, workers)
            if not candidates:
                continue
            slot = rng.choice(candidates)
            bursts += burst(bursty, burst_rng)
            stop.wait(rng.uniform(0.0, 0.1))
            if not zombie and kills >= MIN_KILLS // 2:
                zombie = zombie_episode(client, workers[slot])
                continue
            processes.kill_process(workers[slot])
            kills += 1
            in_flight += pending_of(client, workers[slot].consumer)
            workers[slot] = spawn(slot)
            started.append(workers[slot])
        producer.stop()
        for p in workers.values():  # a just-restarted worker may not have its handlers yet
            procs.wait_serving(client, p.consumer, version, proc=p)
        def settled() -> bool:
            _, pending = final_state(client)
            warm = BACKGROUND + bursts - SERIES * (N_STEPS - 1)
            return pending == 0 and client.xlen(keys.PREDICTIONS) >= warm
        with contextlib.suppress(TimeoutError):  # the checks below say what is missing
            wait_until(settled, 60, 0.2, what="all values processed")
        exit_codes = [processes.stop_process(p) for p in workers.values()]
    finally:
        stop.set()
        producer.stop()
        for p in started:
            processes.stop_process(p, grace=5)
    wall = time.monotonic() - t_start

    entries, pending = final_state(client)
    assert len(entries) == BACKGROUND + bursts >= VALUES
    reference = procs.reference_predictions(model, entries)
    preds = client.xrange(keys.PREDICTIONS)
    seen = Counter((f[b"series"], f[b"source_id"]) for _, f in preds)
    lost = set(reference) - set(seen)
    duplicated = {k: n for k, n in seen.items() if n > 1}
    unexpected = set(seen) - set(reference)
    mismatched, worst = 0, 0.0
    order_violations = 0
    last: dict[bytes, bytes] = defaultdict(bytes)
    for _, f in preds:
        sid, series = f[b"source_id"], f[b"series"]
        ref = reference.get((series, sid))
        if ref is not None:
            got = float(f[b"prediction"])
            # float32 rounding relative to the window's magnitude (values are below 100):
            # the numpy and TensorFlow engines may differ there, a wrong window by units
            err = abs(got - ref) / (abs(ref) + 100.0)
            worst = max(worst, err)
            mismatched += err > 1e-5
        if _id(sid) <= _id(last[series] or b"0-0"):
            order_violations += 1
        last[series] = sid
    dead = client.xlen(keys.DEADLETTER)
    # the anomaly alerts, written by the same commits: each flagged output entry has exactly
    # one alert on forecast:anomalies, and no alert is there twice
    alerts = Counter((f[b"series"], f[b"source_id"]) for _, f in client.xrange(keys.ANOMALIES))
    flagged = {(f[b"series"], f[b"source_id"]) for _, f in preds if f.get(b"anomaly") == b"1"}
    judged = sum(b"anomaly_score" in f for _, f in preds)
    # forecast:latest after every kill: each series' entry is its last prediction
    newest = {f[b"series"]: f for _, f in preds}
    stale = [s for s, f in newest.items()
             if json.loads(client.hget(keys.LATEST, s) or b"{}").get("source_id")
             != f[b"source_id"].decode()]
    logs = "".join(p.log() for p in started)
    figures = {
        "values": len(entries), "series": SERIES, "shards": SHARDS, "worker_processes": WORKERS,
        "sigkills": kills, "worker_starts": len(started),
        "entries_in_flight_at_kills": in_flight,
        "lease_losses_logged": logs.count("expired; dropping it") + logs.count("lost the lease"),
        "zombie_episode": zombie,
        "expected_predictions": len(reference), "predictions": len(preds),
        "lost": len(lost), "duplicated": sum(n - 1 for n in duplicated.values()),
        "unexpected": len(unexpected), "mismatched": mismatched,
        "max_rel_error": float(f"{worst:.3g}"), "order_violations": order_violations,
        "dead_letters": dead, "pending_at_end": pending, "exit_codes_at_stop": exit_codes,
        "latest_not_the_last_prediction": len(stale),
        "anomalies": sum(alerts.values()),
        "anomalies_duplicated": sum(n - 1 for n in alerts.values()),
        "wall_s": round(wall, 1),
    }
    print("chaos figures:", json.dumps(figures))
    write_results("chaos-results", figures, client)
    assert kills >= MIN_KILLS and zombie and in_flight > 0
    assert len(reference) == len(entries) - SERIES * (N_STEPS - 1)
    assert not lost, f"{len(lost)} inputs without a prediction"
    assert not duplicated, f"{len(duplicated)} inputs predicted more than once"
    assert not unexpected and mismatched == 0 and order_violations == 0
    assert set(alerts.values()) <= {1}, "alerts written more than once"
    assert set(alerts) == flagged and judged > len(preds) // 2
    assert dead == 0 and pending == 0
    assert len(newest) == SERIES and not stale, f"forecast:latest stale for {stale[:5]}"
    assert exit_codes == [0] * WORKERS
    # the worse candidate ran in shadow on the same inputs: scored (as worse), never written,
    # not promoted
    assert {f[b"model_version"] for _, f in preds} == {version.encode()}
    pair = evidence.read_pair(client, shadow, version)
    assert pair.n > 10_000 and pair.ratio is not None and pair.ratio > 3, pair
    assert registry.current_version(client) == version
    client.close()


def _id(entry_id: bytes) -> tuple[int, int]:
    ms, seq = entry_id.split(b"-")
    return int(ms), int(seq)
