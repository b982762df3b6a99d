"""The worker loop in-process against a real private redis-server (no TensorFlow)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from forecast import keys
from forecast.errors import Fenced
from forecast.processes import wait_until
from tests.helpers import LinearModel, WorkerThreads, make_worker
from worker.shard import Shard
from worker.state import SeriesStore


@pytest.fixture
def running(redis_url: str) -> Iterator[Any]:
    """Start workers in threads; stop them all at the end."""
    threads = WorkerThreads()
    yield lambda **kw: threads.start(make_worker(redis_url, **kw))
    threads.stop_all()


def predictions(r: redis.Redis, stream: str = keys.PREDICTIONS) -> list[dict[bytes, bytes]]:
    return [dict(f) for _, f in r.xrange(stream)]


def test_one_prediction_per_input_once_window_full(r: redis.Redis, running: Any) -> None:
    ids = [r.xadd(keys.VALUES, {"series": "s1", "value": str(v)}) for v in range(10)]
    running()
    preds = wait_until(lambda: len(predictions(r)) >= 8 and predictions(r), what="8 predictions")
    assert [p[b"source_id"] for p in preds] == ids[2:]
    assert [float(p[b"prediction"]) for p in preds] == [float(v + 1) for v in range(2, 10)]
    assert {p[b"model_version"] for p in preds} == {b"v1"}
    wait_until(lambda: r.xpending(keys.VALUES, "forecast")["pending"] == 0, what="all acked")


def test_bad_input_is_dead_lettered_and_good_input_predicted(r: redis.Redis, running: Any) -> None:
    running()
    r.xadd(keys.VALUES, {"series": "a", "value": "1"})
    bad = r.xadd(keys.VALUES, {"series": "a", "value": "nan"})
    r.xadd(keys.VALUES, {"series": "a", "value": "2"})
    r.xadd(keys.VALUES, {"value": "3"})
    r.xadd(keys.VALUES, {"series": "a", "value": "3", "ts": "1000"})
    old = r.xadd(keys.VALUES, {"series": "a", "value": "4", "ts": "999"})
    wait_until(lambda: r.xlen(keys.DEADLETTER) == 3, what="3 dead letters")
    dead = [dict(f) for _, f in r.xrange(keys.DEADLETTER)]
    assert [d[b"reason"] for d in dead] == [b"bad_value", b"missing_series", b"ts_out_of_order"]
    assert dead[0][b"source_id"] == bad and dead[2][b"source_id"] == old
    assert dead[0][b"value"] == b"nan"
    preds = wait_until(lambda: predictions(r), what="a prediction")
    assert len(preds) == 1 and float(preds[0][b"prediction"]) == 4.0
    assert preds[0][b"ts"] == b"1000"


def test_restart_resumes_from_checkpoint(r: redis.Redis, running: Any) -> None:
    for v in (1, 2):
        r.xadd(keys.VALUES, {"series": "s", "value": str(v)})
    w = running(consumer="first")
    wait_until(lambda: r.hlen(keys.shard_keys(0, 1).state) == 1, what="checkpoint")
    w.stop()
    wait_until(lambda: not r.exists(keys.shard_keys(0, 1).lease), what="lease released")
    r.xadd(keys.VALUES, {"series": "s", "value": "4"})
    running(consumer="second")
    preds = wait_until(lambda: predictions(r), what="prediction after restart")
    assert float(preds[0][b"prediction"]) == 6.0  # window [1, 2, 4] survived the restart


def test_commit_with_a_stale_token_is_fenced(r: redis.Redis, redis_url: str) -> None:
    w = make_worker(redis_url)
    r.xadd(keys.VALUES, {"series": "s", "value": "1"})
    w.model = LinearModel()
    w.maintain()
    shard = w.shards[0]
    r.delete(shard.keys.lease)  # the lease expired; another worker may take it
    stale = Shard(keys=shard.keys, token=shard.token, store=SeriesStore(3))
    with pytest.raises(Fenced):
        w.io.read(stale, 10)
    assert r.xpending(keys.VALUES, "forecast")["pending"] == 0


def test_horizon_and_interval_fields(r: redis.Redis, running: Any) -> None:
    running(model=LinearModel(horizon=3, has_interval=True))
    for v in (1, 2, 3):
        r.xadd(keys.VALUES, {"series": "h", "value": str(v)})
    pred = wait_until(lambda: predictions(r), what="a prediction")[0]
    assert pred[b"prediction"] == b"4"
    assert (pred[b"lower"], pred[b"upper"]) == (b"3", b"5")
    assert pred[b"path"] == b"4,5,6"
    assert (pred[b"lower_path"], pred[b"upper_path"]) == (b"3,4,5", b"5,6,7")


def test_online_accuracy_is_recorded_per_version(r: redis.Redis, running: Any) -> None:
    w = running()
    for v in (1, 2, 3, 5):  # 3 predicts 4; the actual 5 is off by 1
        r.xadd(keys.VALUES, {"series": "acc", "value": str(v)})
    wait_until(lambda: len(predictions(r)) == 2, what="2 predictions")
    w.next_maintenance = 0.0
    wait_until(lambda: r.hget(keys.ACCURACY, "v1:count") == b"1", what="accuracy flushed")
    assert float(r.hget(keys.ACCURACY, "v1:abs_err_sum")) == 1.0


def test_evicted_series_reload_from_checkpoint(r: redis.Redis, running: Any) -> None:
    w = running(max_series=2, batch_size=1)
    wait_until(lambda: w.shards, what="shard acquired")
    for s in ("a", "b", "c", "a"):  # 'a' is evicted when 'c' arrives, then comes back
        for v in (1, 2):
            r.xadd(keys.VALUES, {"series": s, "value": str(v)})
        wait_until(
            lambda: (
                r.xpending(keys.VALUES, "forecast")["pending"] == 0
                and r.xinfo_groups(keys.VALUES)[0]["lag"] == 0
            ),
            what="batch committed",
        )
    preds = wait_until(lambda: len(predictions(r)) == 2 and predictions(r),
                       what="predictions for a")
    # windows [1, 2, 1] and [2, 1, 2]: the first two values of a survived the eviction
    assert [(p[b"series"], p[b"prediction"]) for p in preds] == [(b"a", b"0"), (b"a", b"3")]
    assert w.shards[0].store.evicted >= 1


def test_deleted_input_stream_is_recreated_and_work_goes_on(r: redis.Redis, running: Any) -> None:
    w = running()
    wait_until(lambda: w.shards, what="shard acquired")
    r.delete(keys.VALUES)  # someone deletes the stream and its consumer group
    wait_until(lambda: r.exists(keys.VALUES) and r.xinfo_groups(keys.VALUES),
               what="group re-created")
    for v in (1, 2, 3):
        r.xadd(keys.VALUES, {"series": "z", "value": str(v)})
    preds = wait_until(lambda: predictions(r), what="prediction after re-creation")
    assert float(preds[0][b"prediction"]) == 4.0
    assert w.shards[0].token.startswith("1:")  # recovered in place, without losing the lease


def test_commit_refuses_before_writing_when_an_output_key_has_a_wrong_type(
    r: redis.Redis, running: Any
) -> None:
    r.set(keys.DEADLETTER, "not a stream")  # an operator mistake
    w = running()
    wait_until(lambda: w.shards, what="shard acquired")
    pipe = r.pipeline(transaction=True)  # all four in one read: a batch that cannot commit
    for v in ("1", "2", "3", "bad"):     # is retried, and a later entry would never be read
        pipe.xadd(keys.VALUES, {"series": "t", "value": v})
    pipe.execute()
    wait_until(lambda: r.xpending(keys.VALUES, "forecast")["pending"] == 4, what="batch read")
    assert not r.exists(keys.PREDICTIONS)  # nothing half-written, nothing acked
    r.delete(keys.DEADLETTER)
    preds = wait_until(lambda: predictions(r), timeout=30, what="predictions after the fix")
    wait_until(lambda: r.xpending(keys.VALUES, "forecast")["pending"] == 0, what="all acked")
    assert len(predictions(r)) == len(preds) == 1 and r.xlen(keys.DEADLETTER) == 1


def test_a_zombie_reads_nothing_once_another_worker_holds_the_lease(
    r: redis.Redis, redis_url: str
) -> None:
    w = make_worker(redis_url)
    w.model = LinearModel()
    w.maintain()
    shard = w.shards[0]
    r.set(shard.keys.lease, "99:other", px=10_000)  # taken over while we were paused
    r.xadd(keys.VALUES, {"series": "s", "value": "1"})
    with pytest.raises(Fenced):
        w.io.read(shard, 10)
    assert r.xpending(keys.VALUES, "forecast")["pending"] == 0  # nothing was delivered
    assert r.get(shard.keys.lease) == b"99:other"  # the new owner's lease is untouched
    shard.close()


class OverflowingModel(LinearModel):
    """A model whose forecast overflows for windows with a large last value."""

    def predict(self, windows: Any) -> Any:
        out = super().predict(windows)
        out[windows[:, -1] > 1e6] = float("inf")
        return out


def test_values_the_model_cannot_carry_and_non_finite_forecasts_are_dead_lettered(
        r: redis.Redis, running: Any) -> None:
    from worker import metrics

    before = metrics.DEADLETTERED.labels(reason="prediction_not_finite")._value.get()
    running(model=OverflowingModel())
    for v in ("1e300", "1e300", "1e300", "3e38", "3.3e38", "3.4e38"):  # float32 overflows
        r.xadd(keys.VALUES, {"series": "huge", "value": v})
    ids = [r.xadd(keys.VALUES, {"series": "x", "value": v}) for v in ("1", "2", "5e6", "3")]
    wait_until(lambda: r.xlen(keys.DEADLETTER) == 7 and len(predictions(r)) == 1,
               what="7 dead letters and 1 prediction")
    reasons = [f[b"reason"] for _, f in r.xrange(keys.DEADLETTER)]
    assert reasons == [b"value_out_of_range"] * 6 + [b"prediction_not_finite"]
    assert r.xrange(keys.DEADLETTER)[-1][1][b"source_id"] == ids[2]
    (pred,) = predictions(r)
    assert pred[b"source_id"] == ids[3] and float(pred[b"prediction"]) == 3 + (3 - 5e6)
    wait_until(lambda: r.xpending(keys.VALUES, "forecast")["pending"] == 0, what="all acked")
    after = metrics.DEADLETTERED.labels(reason="prediction_not_finite")._value.get()
    assert after - before == 1


def test_a_corrupt_checkpoint_poisons_nothing(r: redis.Redis, redis_url: str) -> None:
    """20 series, the worker stopped, `HSET forecast:state s5 xyz`, 100 more values per series,
    the worker started again: every value of the 19 healthy series is predicted, s5 starts a
    fresh window (no prediction for its first n_steps - 1 new values), nothing is poison."""
    state = keys.shard_keys(0, 1).state
    pipe = r.pipeline(transaction=True)
    for t in range(3):
        for s in range(20):
            pipe.xadd(keys.VALUES, {"series": f"s{s}", "value": str(t)})
    pipe.execute()
    first = make_worker(redis_url, "w1")
    wait_until(lambda: (first.step(), r.xlen(keys.PREDICTIONS) == 20)[1], 20, 0.001,
               what="the first predictions")
    first.shutdown()
    r.hset(state, "s5", "xyz")
    pipe = r.pipeline(transaction=True)
    for t in range(3, 103):
        for s in range(20):
            pipe.xadd(keys.VALUES, {"series": f"s{s}", "value": str(t)})
    pipe.execute()
    second = make_worker(redis_url, "w2")
    wait_until(lambda: (second.step(), r.xlen(keys.PREDICTIONS) == 20 + 19 * 100 + 98)[1], 30,
               0.001, what="every prediction")
    second.shutdown()
    assert r.xlen(keys.DEADLETTER) == 0
    assert r.xpending(keys.VALUES, "forecast")["pending"] == 0
    s5 = [p for p in predictions(r)[20:] if p[b"series"] == b"s5"]
    assert len(s5) == 98 and float(s5[0][b"prediction"]) == 6.0  # [3, 4, 5] -> 6
    from worker.checkpoint import decode_blob
    assert decode_blob(r.hget(state, "s5") or b"").values.tolist() == [100.0, 101.0, 102.0]


def test_two_signals_together_exit_at_once_before_the_stop_thread_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The second signal exits even when the first one's stop thread has not run yet."""
    import signal
    import threading

    from worker import main

    exits: list[int] = []
    monkeypatch.setattr(main.os, "_exit", exits.append)

    class NotYet:  # the stop thread, started but not scheduled yet
        def __init__(self, **_kw: Any) -> None:
            pass

        def start(self) -> None:
            pass

    monkeypatch.setattr(main.threading, "Thread", NotYet)

    class Idle:
        stopping = threading.Event()

        def stop(self) -> None:  # pragma: no cover - the thread never runs
            self.stopping.set()

    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        main.install_signals(Idle())  # type: ignore[arg-type]
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        handler(signal.SIGTERM, None)
        assert exits == []
        handler(signal.SIGINT, None)
        assert exits == [1]
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
