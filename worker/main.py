"""`forecast worker`: start-up, signals (warm then cold shutdown), health server, `--check`."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

import redis
import threadpoolctl

from forecast import keys
from forecast.logs import setup_logging
from forecast.redis_conn import connect
from forecast.settings import Settings
from worker.loop import Worker

log = logging.getLogger(__name__)


def install_signals(worker: Worker) -> None:
    """First SIGTERM/SIGINT: warm stop after the batch in hand. Second: exit at once."""
    # The handler's own record, not `worker.stopping`: that is set by a thread that may not
    # have run yet when two signals arrive together (both pending while the process was
    # stopped, or under load), and the second must still count as the second.
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if len(received) > 1 or worker.stopping.is_set():
            log.warning(
                "second %s: exiting now (the atomic commit keeps this safe)",
                signal.Signals(signum).name,
            )
            os._exit(1)
        log.info(
            "%s received: finishing the batch in hand, then stopping", signal.Signals(signum).name
        )
        # Event.set() takes a lock the interrupted main thread may hold inside Event.wait().
        threading.Thread(target=worker.stop, name="stop", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def check(client: Any, consumer: str | None) -> int:
    """Exit code for `--check`: 0 if a fresh heartbeat of this worker (or host) exists."""
    if consumer:
        names = [consumer]
    else:
        prefix = socket.gethostname() + "-"
        now = int(time.time() * 1000)
        members = client.zrangebyscore(keys.WORKERS, now - keys.WORKER_FORGET_MS, "+inf")
        names = [m.decode() for m in members if m.decode().startswith(prefix)]
    for name in names:
        raw = client.get(keys.heartbeat(name))
        if raw is not None:
            status = json.loads(raw)
            print(
                f"ok: {name} model={status.get('model_version')} ready={status.get('ready')} "
                f"shards={status.get('shards')}"
            )
            return 0
    print(f"unhealthy: no fresh heartbeat for {consumer or socket.gethostname() + '-*'}")
    return 1


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The `forecast worker` command."""
    setup_logging(settings.log_level, settings.log_json)
    # Longer than a lease: a reply that never comes means the lease (and its token) is gone,
    # so a command still queued somewhere can no longer commit with that token.
    timeout = max(5.0, settings.block_ms / 1000 + 5, settings.lease_ttl_ms / 1000 + 1)
    client = connect(settings, timeout=timeout)
    if getattr(args, "check", False):
        try:
            return check(client, settings.consumer or None)
        except redis.RedisError as exc:
            print(f"unhealthy: {exc}")
            return 1
    try:
        client.ping()  # wrong credentials are a configuration error: exit 2 (cli.main)
    except redis.AuthenticationError:
        raise
    except redis.RedisError:
        pass  # not reachable yet: the loop retries with backoff and reports not ready
    worker = Worker(client, settings)
    install_signals(worker)  # first: a SIGTERM during the slow imports is still a warm stop
    from forecast.tf import import_tensorflow

    import_tensorflow()  # before any thread logs: it silences stderr while importing
    # One BLAS thread: numpy serves the small models (forecast.npgraph), and OpenBLAS's
    # spinning threads fought Redis and the batch path for the cores (1,000-window batches
    # took 10.6 ms instead of 0.76).
    threadpoolctl.threadpool_limits(1, user_api="blas")
    # TensorFlow's ~340k long-lived objects out of the cyclic GC: else the full collections the
    # per-batch containers trigger walk them all (measured: half the worker's CPU per value).
    gc.freeze()
    # The batch path allocates ~3 containers per entry and makes no reference cycles; with the
    # default threshold (700) every batch runs a dozen collections, and the full ones walk
    # every batch held (more with more shards: one worker over 6 cluster shards lost ~25% of
    # its CPU to them). Collect rarely instead.
    gc.set_threshold(50_000, 20, 10)
    server = None
    if settings.metrics_port:
        from worker.health import start_http_server

        try:
            server = start_http_server(
                settings.metrics_host,
                settings.metrics_port,
                lambda: not worker.stopping.is_set(),
                worker.ready,
            )
        except OSError as exc:
            log.error("metrics/health server not started: %s", exc)
    log.info(
        "worker %s starting",
        worker.consumer,
        extra={"settings": settings.safe_dump(worker_only=True)},
    )
    worker.run()
    if server is not None:
        server.stop()
    return 0

