"""Faults one at a time: signals, a Redis crash with AOF, poison entries, broken models,
the LRU cap, and a zombie's commit. Process tests run `forecast worker`; the others run the
worker loop in-process with the TensorFlow-free LinearModel.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from forecast import keys, processes, registry
from forecast.client import Item, Producer
from forecast.errors import Fenced, ModelRejected
from forecast.local_redis import RedisServer, redis_server_binary
from forecast.processes import wait_until
from testkit import PacedProducer
from tests import procs
from tests.helpers import LinearModel, WorkerThreads, make_worker
from worker.batch import build_commit

ROOT = Path(__file__).resolve().parent.parent


# --- helpers -------------------------------------------------------------------------------

@pytest.fixture
def threads() -> Iterator[Any]:
    """Run in-process workers in threads; stop and join them all at the end."""
    runner = WorkerThreads()
    yield runner.start
    runner.stop_all()


def paced(url: str, n: int, series: int, per_s: float, shards: int = 1) -> PacedProducer:
    """`n` random-walk values over `series` series, in chunks of 100 at `per_s` values/s."""
    producer = Producer(redis.Redis.from_url(url, protocol=2), shards=shards)
    rng = np.random.default_rng(5)
    level = rng.uniform(10, 50, series)

    def chunk(_: int) -> list[Item]:
        items: list[Item] = []
        for s in rng.integers(0, series, 100).tolist():
            level[s] += rng.normal()
            items.append((f"p{s}", f"{level[s]:.3f}", None))
        return items

    return PacedProducer(producer, chunk, interval=100 / per_s, limit=n)


def check_exactly_once(client: Any, streams: list[str]) -> int:
    """Every warmed-up input has exactly one prediction equal to the replay; returns the count."""
    from forecast import modelio

    model = modelio.load_version(client, client.get(keys.MODEL_CURRENT).decode())
    entries = [e for s in streams for e in client.xrange(s)]
    reference = procs.reference_predictions(model, entries)
    preds = client.xrange(keys.PREDICTIONS)
    procs.assert_predicted_once([f for _, f in preds], reference)
    last: dict[bytes, tuple[int, int]] = {}
    for _, f in preds:
        ms, seq = f[b"source_id"].split(b"-")
        assert (int(ms), int(seq)) > last.get(f[b"series"], (-1, -1)), "per-series order"
        last[f[b"series"]] = (int(ms), int(seq))
    return len(preds)


def settled(client: Any, streams: list[str], expected: int) -> bool:
    """Nothing pending and `expected` predictions written."""
    pending = sum(client.xpending(s, "forecast")["pending"] for s in streams)
    return pending == 0 and client.xlen(keys.PREDICTIONS) >= expected


def warm_count(client: Any, streams: list[str], n_steps: int = 3) -> int:
    """How many inputs get a prediction (all but each series' first n_steps - 1)."""
    per = Counter(f[b"series"] for s in streams for _, f in client.xrange(s))
    return sum(max(0, n - (n_steps - 1)) for n in per.values())


# --- signals -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.tf
def test_first_signal_is_warm_second_exits_at_once(redis_url: str, r: redis.Redis) -> None:
    """SIGTERM: exit 0 within seconds, nothing lost; SIGTERM+SIGINT: exit 1 at once."""
    client: Any = r
    version = procs.publish_tiny_model(redis_url)
    first = procs.start_worker(redis_url, "warm", batch_size=200)
    second = None
    producer = paced(redis_url, 12_000, 50, 2000)
    try:
        procs.wait_serving(client, "warm", version)
        producer.start()
        wait_until(lambda: client.xlen(keys.PREDICTIONS) > 1500, 30, what="the worker busy")
        t0 = time.monotonic()
        first.send_signal(signal.SIGTERM)
        assert first.wait(10) == 0
        assert time.monotonic() - t0 < 5
        log = first.log()
        assert "SIGTERM received" in log and "stopped" in log
        assert not client.exists(keys.shard_keys(0, 1).lease), "the lease was not released"

        second = procs.start_worker(redis_url, "cold", batch_size=200)
        producer.join(60)
        assert producer.limit is not None and producer.sent >= producer.limit
        wait_until(lambda: settled(client, [keys.VALUES], warm_count(client, [keys.VALUES])),
                 60, 0.1, what="the second worker finishing")
        assert check_exactly_once(client, [keys.VALUES]) > 10_000

        # Two signals while stopped arrive together: the second one exits at once.
        os.kill(second.pid, signal.SIGSTOP)
        second.send_signal(signal.SIGTERM)
        second.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        os.kill(second.pid, signal.SIGCONT)
        assert second.wait(5) == 1
        assert time.monotonic() - t0 < 3
        assert re.search(r"second SIG(INT|TERM): exiting now", second.log())
    finally:
        producer.stop()
        processes.stop_process(first)
        processes.stop_process(second)


# --- Redis outage --------------------------------------------------------------------------

@pytest.fixture
def aof_server() -> Iterator[RedisServer]:
    """A private redis-server with AOF, restartable on the same port and directory."""
    if redis_server_binary() is None:
        pytest.skip("redis-server is not on PATH")
    srv = RedisServer(appendonly=True).start()
    yield srv
    srv.cleanup()


def check_cmd(url: str, consumer: str) -> subprocess.CompletedProcess[str]:
    """`forecast worker --check` for one consumer."""
    return subprocess.run(
        [processes.PYTHON, "-m", "cli", "worker", "--check", "--redis-url", url,
         "--consumer", consumer], capture_output=True, text=True, timeout=60,
        env=processes.worker_env(), cwd=procs.LOG_DIR)


def fill_and_rewrite_aof(client: Any, n: int = 3000) -> None:
    """Add `n` filler keys and rewrite the AOF (its RDB base is what key-load-delay slows)."""
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        pipe.set(f"filler:{i}", i)
    pipe.execute()
    client.bgrewriteaof()

    def rewritten() -> bool:
        info = client.info("persistence")
        return not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]
    wait_until(rewritten, 30, 0.05, what="the AOF rewrite")


def answers_loading(port: int) -> bool:
    """Whether the server at `port` answers PING with LOADING (a raw socket: no client retries)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"-LOADING")
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.tf
def test_redis_killed_and_restarted_mid_run(aof_server: RedisServer) -> None:
    """SIGKILL redis-server mid-run (restart with AOF, seconds of LOADING), then freeze it past
    the socket timeout: the worker survives, reports not ready meanwhile, loses nothing."""
    url = aof_server.url
    client: Any = redis.Redis.from_url(url, protocol=2)
    streams = [keys.shard_keys(k, 2).values for k in range(2)]
    version = procs.publish_tiny_model(url)
    worker = procs.start_worker(url, "outage", metrics=True, shards=2, batch_size=200)
    producer = paced(url, 10_000, 40, 2000, shards=2)
    try:
        procs.wait_serving(client, "outage", version)
        wait_until(lambda: worker.readyz() == 200, 10, what="/readyz 200")
        producer.start()
        wait_until(lambda: client.xlen(keys.PREDICTIONS) > 2000, 30, what="the worker busy")
        producer.pause()
        fill_and_rewrite_aof(client)  # so that the restart spends seconds in LOADING
        client.close()
        aof_server.stop(kill=True)

        wait_until(lambda: worker.readyz() == 503, 20, 0.1, what="/readyz 503 while Redis is down")
        down = check_cmd(url, "outage")
        assert down.returncode == 1 and "unhealthy" in down.stdout
        assert worker.poll() is None, "the worker died of the outage"
        assert worker.readyz() == 503

        aof_server.extra_args = ["--key-load-delay", "500",  # us per key of the RDB base
                                 "--loading-process-events-interval-bytes", "1024"]
        starter = threading.Thread(target=aof_server.start, kwargs={"timeout": 60}, daemon=True)
        starter.start()
        wait_until(lambda: answers_loading(aof_server.port), 20, 0.02, what="Redis LOADING")
        assert worker.readyz() == 503 and worker.poll() is None  # not ready, alive, in LOADING
        starter.join(60)
        client = redis.Redis.from_url(url, protocol=2)
        wait_until(lambda: worker.readyz() == 200, 30, 0.1, what="/readyz 200 after the restart")
        assert check_cmd(url, "outage").returncode == 0
        producer.producer.client = redis.Redis.from_url(url, protocol=2)
        producer.resume()

        # A frozen server: replies stop, connections stay open (timeouts, not resets).
        seen = client.xlen(keys.PREDICTIONS)
        wait_until(lambda: client.xlen(keys.PREDICTIONS) > seen + 1000, 30, what="busy again")
        producer.pause()  # its own client would time out too
        assert aof_server.proc is not None
        os.kill(aof_server.proc.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: worker.readyz() == 503, 30, 0.1, what="/readyz 503 on timeouts")
            assert worker.poll() is None, "the worker died of a timeout"
        finally:
            os.kill(aof_server.proc.pid, signal.SIGCONT)
        wait_until(lambda: worker.readyz() == 200, 30, 0.1, what="/readyz 200 after the freeze")
        producer.resume()
        producer.join(60)
        assert producer.limit is not None and producer.sent >= producer.limit
        wait_until(lambda: settled(client, streams, warm_count(client, streams)), 60, 0.1,
                 what="everything processed after the outage")
        assert check_exactly_once(client, streams) > 8000
        log = worker.log()
        assert "Redis unavailable (ConnectionError" in log
        assert "Redis unavailable (TimeoutError" in log
        assert "unexpected error" not in log, log[-3000:]
        assert processes.stop_process(worker) == 0
    finally:
        producer.stop()
        processes.stop_process(worker)
        client.close()


# --- poison entries ------------------------------------------------------------------------

def test_poison_entry_is_dead_lettered_with_its_delivery_count(
        redis_url: str, r: redis.Redis, threads: Any) -> None:
    """Entries delivered more than max_deliveries times go to the dead letters; others run."""
    client: Any = r
    client.xgroup_create(keys.VALUES, "forecast", id="0", mkstream=True)
    ids = [client.xadd(keys.VALUES, {"series": "p", "value": str(v)}) for v in (1, 2, 3, 4)]
    client.xreadgroup("forecast", "ghost", {keys.VALUES: ">"})  # a consumer that then died
    client.xclaim(keys.VALUES, "forecast", "ghost", 0, [ids[1]], retrycount=9)
    client.xclaim(keys.VALUES, "forecast", "ghost", 0, [ids[2]], retrycount=4)
    threads(make_worker(redis_url, "w1", max_deliveries=5))
    wait_until(lambda: client.xlen(keys.DEADLETTER) == 1 and client.xlen(keys.PREDICTIONS) == 1,
             what="one dead letter and one prediction")
    dead = dict(client.xrange(keys.DEADLETTER)[0][1])
    assert dead[b"reason"] == b"poison" and dead[b"deliveries"] == b"10"
    assert dead[b"source_id"] == ids[1] and dead[b"value"] == b"2"
    pred = dict(client.xrange(keys.PREDICTIONS)[0][1])
    # ids[2] (5 deliveries = the limit) was processed; the window is [1, 3, 4].
    assert pred[b"source_id"] == ids[3] and float(pred[b"prediction"]) == 5.0
    wait_until(lambda: client.xpending(keys.VALUES, "forecast")["pending"] == 0, what="all acked")


def test_pending_entries_are_claimed_after_claim_min_idle_ms(
        redis_url: str, r: redis.Redis) -> None:
    """A dead consumer's entries wait until idle for claim_min_idle_ms, then run exactly once."""
    client: Any = r
    client.xgroup_create(keys.VALUES, "forecast", id="0", mkstream=True)
    ids = [client.xadd(keys.VALUES, {"series": "c", "value": str(v)}) for v in range(5)]
    client.xreadgroup("forecast", "dead", {keys.VALUES: ">"})
    read_at = time.monotonic()
    w = make_worker(redis_url, "heir", claim_min_idle_ms=700)
    w.step()  # model, lease, then a first recovery attempt: too young to claim
    assert 0 in w.shards and w.shards[0].recovering
    assert client.xlen(keys.PREDICTIONS) == 0
    pending = client.xpending_range(keys.VALUES, "forecast", "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"dead"}

    def step_until_done() -> bool:
        w.step()
        return client.xlen(keys.PREDICTIONS) == 3 and not w.shards[0].recovering
    wait_until(step_until_done, 10, 0.01, what="the claim after min idle")
    assert time.monotonic() - read_at >= 0.7
    assert [f[b"source_id"] for _, f in client.xrange(keys.PREDICTIONS)] == ids[2:]
    assert client.xpending(keys.VALUES, "forecast")["pending"] == 0
    w.shutdown()


# --- broken models -------------------------------------------------------------------------

def _keras_bytes(kind: str) -> bytes:
    """A `.keras` artifact with NaN weights or a Lambda layer, input (None, 3, 1)."""
    import keras

    from trainer.model import to_bytes

    inputs = keras.Input((3, 1))
    if kind == "nan":
        dense = keras.layers.Dense(1)
        out = dense(keras.layers.Flatten()(inputs))
        dense.set_weights([np.full((3, 1), np.nan, np.float32), np.zeros(1, np.float32)])
    else:
        out = keras.layers.Lambda(lambda x: x[:, -1, :])(inputs)
    return to_bytes(keras.Model(inputs, out))


@pytest.mark.slow
@pytest.mark.tf
def test_broken_models_are_rejected_and_the_old_one_keeps_serving(
        redis_url: str, r: redis.Redis) -> None:
    """Corrupt bytes, sha256 mismatch, wrong shape, NaN probe, Lambda: each rejected, v1 serves."""
    client: Any = r
    good = procs.publish_tiny_model(redis_url)
    blob, manifest = procs.tiny_model()
    base = {k: v for k, v in manifest.items() if k not in ("sha256", "version", "hmac")}
    point = {**base, "outputs": "point", "conformal_q": []}
    worker = procs.start_worker(redis_url, "models")
    try:
        procs.wait_serving(client, "models", good)

        def sha_mismatch() -> str:
            v = registry.publish(client, blob, base, make_current=False)
            client.set(keys.model_blob(v), blob[:-16] + b"\x00" * 16)  # corrupted at rest
            with pytest.raises(ModelRejected, match="sha256 mismatch"):
                registry.promote(client, v)  # the registry refuses it...
            client.set(keys.MODEL_CURRENT, v)  # ...so make it current behind its back
            return v

        cases = [
            (lambda: registry.publish(client, b"PK\x03\x04 not a zip", base), "Keras refused"),
            (sha_mismatch, "sha256 mismatch"),
            (lambda: registry.publish(client, blob, {**base, "n_steps": 5}), "input shape"),
            (lambda: registry.publish(client, _keras_bytes("nan"), point), "non-finite"),
            (lambda: registry.publish(client, _keras_bytes("lambda"), point), "Keras refused"),
        ]
        for publish_bad, reason in cases:  # one at a time: the watcher sees the current one
            version = publish_bad()
            pattern = rf"model {version} rejected, the previous model keeps serving: .*{reason}"
            wait_until(lambda p=pattern: re.search(p, worker.log()), 30, 0.1,  # type: ignore[misc]
                     what=f"rejection of {version} ({reason})")
        assert "Lambda" in worker.log()
        ids = [client.xadd(keys.VALUES, {"series": "m", "value": str(v)}) for v in range(5)]
        wait_until(lambda: client.xlen(keys.PREDICTIONS) == 3, 30, what="predictions")
        preds = [f for _, f in client.xrange(keys.PREDICTIONS)]
        assert [p[b"source_id"] for p in preds] == ids[2:]
        assert {p[b"model_version"] for p in preds} == {good.encode()}
        assert procs.heartbeat(client, "models")["model_version"] == good  # type: ignore[index]
        assert worker.poll() is None
        newer = procs.publish_tiny_model(redis_url)  # a good one is still picked up
        procs.wait_serving(client, "models", newer)
    finally:
        processes.stop_process(worker)


def test_no_pickle_anywhere() -> None:
    """No module of the product imports pickle (or friends); Keras loads in safe mode."""
    offenders = []
    for path in [*ROOT.glob("forecast/**/*.py"), *ROOT.glob("worker/*.py"),
                 *ROOT.glob("trainer/*.py")]:
        text = path.read_text()
        banned = r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib|cloudpickle)\b"
        if re.search(banned, text, re.M) or "allow_pickle=True" in text:
            offenders.append(str(path))
    assert not offenders
    assert "safe_mode=True" in (ROOT / "forecast" / "modelio.py").read_text()


# --- bounded memory ------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [4, 5000])
def test_lru_eviction_reloads_windows_from_the_checkpoint(
        redis_url: str, r: redis.Redis, threads: Any, batch_size: int) -> None:
    """With max_series=4 and 12 series, evicted windows reload and predictions stay exact."""
    client: Any = r
    n_series, n_values = 12, 6
    for t in range(n_values):
        for s in range(n_series):
            client.xadd(keys.VALUES, {"series": f"s{s}", "value": str(s * 100 + t * t)})
    w = threads(make_worker(redis_url, "lru", max_series=4, batch_size=batch_size))
    expected = n_series * (n_values - 2)
    wait_until(lambda: client.xlen(keys.PREDICTIONS) >= expected, 30, what="all predictions")
    preds = [f for _, f in client.xrange(keys.PREDICTIONS)]
    assert len(preds) == expected
    step_of = {e: i // n_series for i, (e, _) in enumerate(client.xrange(keys.VALUES))}
    for f in preds:
        s, t = int(f[b"series"][1:]), step_of[f[b"source_id"]]
        last, prev = s * 100 + t * t, s * 100 + (t - 1) ** 2
        assert float(f[b"prediction"]) == 2 * last - prev  # the LinearModel on the true window
    store = w.shards[0].store
    assert store.evicted > 0 and len(store) <= 4
    assert client.hlen(keys.shard_keys(0, 1).state) == n_series


# --- zombie commit -------------------------------------------------------------------------

def test_a_zombie_commit_is_fenced(redis_url: str, r: redis.Redis) -> None:
    """A worker that lost its lease mid-batch cannot commit it, pipelined or not."""
    client: Any = r
    for v in range(6):
        client.xadd(keys.VALUES, {"series": "z", "value": str(v)})
    zombie = make_worker(redis_url, "zombie")
    zombie.model = LinearModel()
    zombie.maintain()
    shard = zombie.shards[0]
    shard.recovering = False
    entries = zombie.io.read(shard, 100)
    commit = build_commit(entries, shard.store, zombie.model, zombie.limits,
                          lambda series: zombie.io.load(shard, series))
    assert commit.n_predictions == 4
    client.delete(shard.keys.lease)  # paused past its lease: another worker takes over
    other = make_worker(redis_url, "other")
    other.model = LinearModel()
    other.maintain()
    deadline = time.monotonic() + 10
    while client.xlen(keys.PREDICTIONS) < 4 or client.xpending(keys.VALUES, "forecast")["pending"]:
        assert time.monotonic() < deadline, "the new owner did not take over"
        other.step()
    assert client.xlen(keys.PREDICTIONS) == 4
    with pytest.raises(Fenced):
        zombie.io.commit(shard, commit, 1000, 1000)
    zombie.io.send_commit_and_read(shard, commit, 1000, 1000, 100)
    with pytest.raises(Fenced):
        zombie.io.finish(shard)
    assert client.xlen(keys.PREDICTIONS) == 4
    zombie.step()  # its loop notices and drops the shard
    assert 0 not in zombie.shards
    assert client.xlen(keys.PREDICTIONS) == 4
