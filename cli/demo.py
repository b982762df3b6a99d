"""`forecast demo`: the tutorial end to end on a private Redis, leaving no process behind.

Starts a private `redis-server` (or an embedded fakeredis TCP server when none is on
PATH), trains and publishes the tutorial model, starts a worker process, pushes 0..9 and
then 7, 8, 9 on a new series, and prints the prediction for [7, 8, 9].
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from forecast import keys, processes
from forecast.client import Producer
from forecast.errors import ForecastError
from forecast.local_redis import RedisServer, free_port, redis_server_binary
from forecast.settings import Settings


@contextlib.contextmanager
def demo_redis(url: str | None) -> Iterator[str]:
    """A Redis URL for the demo: the given one, a private redis-server, or fakeredis."""
    if url:
        yield url
        return
    if redis_server_binary():
        server = RedisServer().start()
        print(f"[demo] started a private redis-server on {server.url} (pid {server.proc.pid})")  # type: ignore[union-attr]
        try:
            yield server.url
        finally:
            server.cleanup()
        return
    from fakeredis import TcpFakeServer

    port = free_port()
    fake = TcpFakeServer(("127.0.0.1", port), server_type="redis", server_version=(7, 0))
    thread = threading.Thread(target=fake.serve_forever, daemon=True)
    thread.start()
    print(f"[demo] no redis-server on PATH: using an embedded fakeredis server on port {port}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        fake.shutdown()
        fake.server_close()


def wait_prediction(client: Any, source_id: bytes, timeout: float) -> dict[bytes, bytes]:
    """The prediction made for one input entry (polls the output stream)."""

    def made() -> dict[bytes, bytes] | None:
        for _, fields in client.xrevrange(keys.PREDICTIONS, count=50):
            if fields.get(b"source_id") == source_id:
                return dict(fields)
        return None

    try:
        found: dict[bytes, bytes] = processes.wait_until(made, timeout, 0.1, "the prediction")
    except TimeoutError:
        raise ForecastError(f"no prediction for entry {source_id.decode()} "
                            f"within {timeout:.0f}s") from None
    return found


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The `forecast demo` command."""
    from trainer import cli as trainer_cli

    t0 = time.monotonic()
    with demo_redis(args.redis_url) as url:
        print(
            "[demo] training the tutorial model: SimpleRNN(50, relu) + Dense(1) on 0..9, n_steps=3"
        )
        with tempfile.TemporaryDirectory(prefix="forecast-demo-") as out:  # leave nothing behind
            # `forecast train --example --quiet` on the demo's Redis
            tutorial = argparse.Namespace(example=True, csv=None, from_stream=False, quiet=True,
                                          no_publish=False, force=False, watch=False,
                                          report=None)
            rc = trainer_cli.run(tutorial, settings.model_copy(
                update={"redis_url": url, "shards": 1, "model_dir": out}))
        if rc not in (0, None):
            raise ForecastError(f"training failed with exit code {rc}")
        print("[demo] starting a worker process")
        with tempfile.TemporaryDirectory(prefix="forecast-demo-") as logs:
            worker = processes.start_worker(url, "demo-worker", log_dir=Path(logs), threads=None,
                                          shards=1, **processes.QUICK)
            try:
                _predict_789(url, t0)
            finally:
                processes.stop_process(worker, grace=20)
                if worker.returncode not in (0, None):
                    print(worker.log()[-2000:], file=sys.stderr)
    print(NEXT_STEPS)
    return 0


def _predict_789(url: str, t0: float) -> None:
    """Push 0..9 and then 7, 8, 9 on a new series; print the prediction for [7, 8, 9]."""
    client = redis.Redis.from_url(url)
    producer = Producer(client)
    producer.push_many(("tutorial", v, None) for v in range(10))
    ids = producer.push_many(("demo-789", v, None) for v in (7, 8, 9))
    print("[demo] pushed 0..9 on series 'tutorial' and 7, 8, 9 on series 'demo-789'")
    pred = wait_prediction(client, ids[-1], timeout=120)
    value = float(pred[b"prediction"])
    version = pred[b"model_version"].decode()
    print(f"\n  prediction for [7, 8, 9]: {value:.3f}   (model {version},"
          " tutorial printed 10.705)\n")
    n = client.xlen(keys.PREDICTIONS)
    print(f"[demo] {n} predictions in {keys.PREDICTIONS}; done in {time.monotonic() - t0:.0f}s")
    client.close()


NEXT_STEPS = """
Where to look next (against your own Redis: FORECAST_REDIS_URL, default 127.0.0.1:6379):
  forecast worker                            # after `forecast train --example` or --csv FILE
  forecast tail --from-start                 # follow predictions
  redis-cli XADD forecast:values '*' series s1 value 7
  redis-cli XREAD BLOCK 0 STREAMS forecast:predictions '$'
  forecast models list                       # versions, validation and live accuracy
  docker compose up                          # the deployment (README: Deployment)"""
