"""Live evidence reaches Redis exactly once, also when a flush fails half-way."""

from __future__ import annotations

from typing import Any

import fakeredis
import numpy as np
import pytest
import redis

from forecast import evidence, keys
from worker.live import LiveBuffer
from worker.scripts import ADD_ONCE


def _buffer() -> LiveBuffer:
    buf = LiveBuffer("w1")
    buf.versions["v1"] += np.arange(1.0, 11.0)
    buf.versions["v2"] += np.full(10, 0.5)
    buf.pairs[("v2", "v1")] += np.array([4.0, -1.0, 2.0, 3.0, 4.0])
    return buf


def _lossy(client: Any, fail_on: set[int], after: bool) -> Any:
    """The ADD_ONCE script; calls numbered in `fail_on` raise a connection error, `after`
    the script ran (its reply lost) or before it reached Redis."""
    real = client.register_script(ADD_ONCE)
    calls = {"n": 0}

    def script(keys: list[str], args: list[Any]) -> Any:
        calls["n"] += 1
        if calls["n"] in fail_on and not after:
            raise redis.ConnectionError("connection reset by peer")
        out = real(keys=keys, args=args)
        if calls["n"] in fail_on:
            raise redis.ConnectionError("connection reset by peer")
        return out
    return script


@pytest.mark.parametrize("after", [True, False])
def test_a_flush_that_fails_half_way_is_added_exactly_once(after: bool) -> None:
    client = fakeredis.FakeRedis()
    buf = _buffer()
    script = _lossy(client, {2}, after)  # the second of three keys
    with pytest.raises(redis.ConnectionError):
        buf.flush(client, script)
    buf.versions["v1"] += np.ones(10)  # new sums wait for the next flush
    buf.flush(client, script)  # the same flush again, completed
    buf.flush(client, script)  # then the new sums
    live = evidence.read_live(client, ["v1", "v2"])
    assert live["v1"].forecast_n == 2.0 and live["v1"].naive_d2 == 11.0  # 1 + 10, + 1 + 1
    assert live["v2"].n == 0.5
    pair = evidence.read_pair(client, "v2", "v1")
    assert (pair.n, pair.d, pair.d2) == (4.0, -1.0, 2.0)


def test_a_clean_shutdown_removes_the_flush_markers() -> None:
    client = fakeredis.FakeRedis()
    buf = _buffer()
    buf.flush(client, client.register_script(ADD_ONCE))
    assert client.hget(keys.live("v1"), "flush:w1") is not None
    buf.forget_markers(client)
    assert client.hget(keys.live("v1"), "flush:w1") is None
    assert evidence.read_live(client, ["v1"])["v1"].forecast_n == 1.0
