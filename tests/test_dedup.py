"""End-to-end exactly once from the producer: a value sent again (same `seq`) is recognised,
dead-lettered as `duplicate` and never predicted twice."""

from __future__ import annotations

from typing import Any

import redis

from forecast import keys
from forecast.client import Producer
from forecast.grammar import Limits
from forecast.processes import wait_until
from tests.helpers import LinearModel, make_worker
from worker.batch import build_commit
from worker.state import SeriesStore


def _entries(rows: list[tuple[str, int, int | None]], start: int = 1) -> list[Any]:
    out = []
    for i, (series, value, seq) in enumerate(rows, start=start):
        fields = [b"series", series.encode(), b"value", str(value).encode()]
        if seq is not None:
            fields += [b"seq", str(seq).encode()]
        out.append((f"{i}-0".encode(), fields))
    return out


def test_repeated_sequence_numbers_are_duplicates_within_and_across_batches() -> None:
    store = SeriesStore(width=3)
    no_load = lambda names: [None] * len(names)  # noqa: E731
    first = build_commit(_entries([("a", 1, 10), ("a", 2, 11), ("a", 2, 11), ("b", 5, None),
                                   ("a", 3, 12), ("b", 5, None), ("a", 0, 9)]),
                         store, LinearModel(), Limits(), no_load)
    assert [(d[d.index("reason") + 1], d[1]) for d in first.deadletters] == [
        ("duplicate", b"a"), ("duplicate", b"a")]
    assert first.n_predictions == 1  # a: [1, 2, 3]; b never sends seq: both 5s are values
    # a restarted worker reads the sequence number back from the checkpoint
    blobs = dict(zip(first.state[0::2], first.state[1::2], strict=True))
    fresh = SeriesStore(width=3)
    second = build_commit(_entries([("a", 3, 12), ("a", 4, 13)], start=8), fresh,
                          LinearModel(), Limits(), lambda names: [blobs[n] for n in names])
    assert [d[d.index("reason") + 1] for d in second.deadletters] == ["duplicate"]
    assert second.n_predictions == 1


def test_a_producer_retry_after_a_lost_reply_is_predicted_once(
        redis_url: str, r: redis.Redis) -> None:
    client: Any = r
    real_pipeline = client.pipeline
    lost = {"left": 1}

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        execute = pipe.execute

        def execute_then_drop() -> Any:
            out = execute()
            if lost["left"]:
                lost["left"] -= 1
                raise redis.ConnectionError("connection reset by peer")  # the reply is lost
            return out
        pipe.execute = execute_then_drop
        return pipe

    client.pipeline = pipeline
    producer = Producer(client, chunk=50, retry_wait_s=0.0)
    ids = producer.push_many([("p", float(v), None) for v in range(100)])
    assert len(ids) == 100 and client.xlen(keys.VALUES) == 150  # the first 50 went twice
    client.pipeline = real_pipeline
    w = make_worker(redis_url, "w1")

    def done() -> bool:
        w.step()
        return client.xlen(keys.PREDICTIONS) + client.xlen(keys.DEADLETTER) == 98 + 50
    wait_until(done, 30, 0.001, what="every entry handled")
    w.shutdown()
    dead = client.xrange(keys.DEADLETTER)
    assert len(dead) == 50 and {f[b"reason"] for _, f in dead} == {b"duplicate"}
    values = [float(dict(client.xrange(keys.VALUES, f[b"source_id"], f[b"source_id"])[0][1])
                     [b"value"]) for _, f in client.xrange(keys.PREDICTIONS)]
    assert values == [float(v) for v in range(2, 100)]  # each once, in order
