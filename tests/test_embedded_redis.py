"""The worker on the embedded fakeredis server `forecast demo` falls back to (no cmsgpack)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from forecast import keys
from forecast.local_redis import free_port
from forecast.processes import wait_until
from tests.helpers import LinearModel, wait_for_len
from tests.test_worker_loop import make_worker, predictions


@pytest.fixture
def fake_url() -> Iterator[str]:
    from fakeredis import TcpFakeServer

    port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis", server_version=(7, 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"redis://127.0.0.1:{port}/0"
    server.shutdown()
    server.server_close()


def run_worker(url: str, **kw: Any) -> tuple[Any, threading.Thread]:
    w = make_worker(url, **kw)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    return w, t


def exercise(url: str) -> Any:
    """Predictions and a dead letter through a worker on `url`; returns the worker."""
    r = redis.Redis.from_url(url, protocol=2)
    w, t = run_worker(url, model=LinearModel(has_interval=True))
    try:
        wait_until(lambda: w.shards, what="shard acquired")
        for v in (1, 2, 3, 4):
            r.xadd(keys.VALUES, {"series": "e", "value": str(v)})
        r.xadd(keys.VALUES, {"series": "e", "value": "oops"})
        preds = wait_for_len(lambda: predictions(r), 2, what="predictions")
        got = [tuple(float(p[k]) for k in (b"prediction", b"lower", b"upper")) for p in preds]
        assert got[0] == (4, 3, 5)
        # 4 fell inside [3, 5]: the adaptive interval around 5 is a little narrower than +-1
        assert got[1][0] == 5 and 4 < got[1][1] < 4.01 and 5.99 < got[1][2] < 6
        wait_until(lambda: r.xlen(keys.DEADLETTER) == 1, what="dead letter")
        wait_until(lambda: r.xpending(keys.VALUES, "forecast")["pending"] == 0, what="all acked")
        return w
    finally:
        w.stop()
        t.join(10)


def test_worker_runs_on_the_embedded_fakeredis_server(fake_url: str) -> None:
    w = exercise(fake_url)
    assert w.scripts.msgpack_ok is False  # the flat commit encoding was used


def test_flat_commit_encoding_on_a_real_server(redis_url: str, monkeypatch: Any) -> None:
    from worker.scripts import Scripts

    monkeypatch.setattr(Scripts, "probe", lambda self: setattr(self, "msgpack_ok", False))
    assert exercise(redis_url).scripts.msgpack_ok is False
