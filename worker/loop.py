"""The worker loop: own shards, read, predict in one call per batch, commit atomically.

Each iteration runs inside an explicit except ladder (rq-style): lost leases drop the
shard, Redis outages back off with jitter and mark the worker not ready, anything else
is logged and retried. After any failure the shard's in-memory state is dropped and
rebuilt from the checkpoint plus the pending entries, so nothing is lost or duplicated.
The parts: `worker.pipeline` (the batch path), `worker.ownership` (leases and shards),
`worker.telemetry` (counters, metrics, summaries), `worker.watcher` (new models).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import redis

from forecast.backoff import Backoff
from forecast.errors import Fenced, error_code
from forecast.settings import Settings
from worker import metrics
from worker.batch import Commit, Served
from worker.consumer import ShardIO, ensure_group
from worker.live import LiveBuffer
from worker.outputs import Follow
from worker.ownership import Ownership
from worker.pipeline import RETRYABLE, BatchPath
from worker.promoter import Promoter
from worker.scripts import Scripts
from worker.shard import Shard
from worker.state import COLUMNS
from worker.telemetry import Telemetry
from worker.watcher import Lineup, ModelWatcher

log = logging.getLogger(__name__)


def raw_client(client: Any) -> Any:
    """Make stream replies come back as raw arrays (no per-entry dicts, duplicates kept)."""
    for cmd in ("XREAD", "XREADGROUP", "XAUTOCLAIM", "XINFO GROUPS"):
        client.set_response_callback(cmd, lambda r, **_: r)
    return client


class Worker:
    """One worker process: the loop, its except ladder, and the parts it drives."""

    def __init__(
        self, client: Any, settings: Settings, watcher: ModelWatcher | None = None
    ) -> None:
        self.client = raw_client(client)
        self.settings = settings
        self.consumer = settings.consumer_name()
        self.scripts = Scripts(self.client)
        self.io = ShardIO(
            self.client, self.scripts, settings.group, self.consumer, settings.cluster,
            input_maxlen=settings.input_maxlen, input_retention_ms=settings.input_retention_ms,
            series_ttl_ms=settings.series_ttl_ms, commit_replicas=settings.commit_replicas,
            replicas_timeout_ms=settings.replicas_timeout_ms,
        )
        self.watcher = watcher or ModelWatcher(
            client, settings.model_poll_s, settings.model_hmac_key
        )
        self.telemetry = Telemetry(settings.summary_interval_s)
        self.live = LiveBuffer(self.consumer)
        self.promoter = Promoter(self.client, settings.promote == "auto", settings.promote_min_n)
        self.path = BatchPath(self.client, self.io, settings, self._account)
        self.ownership = Ownership(self.client, self.scripts, settings, self.consumer, self.io)
        self.follow = Follow(settings.follow)
        self.model: Any = None  # the current version: its forecasts are written
        self.shadows: list[Any] = []  # scored on the same inputs, never written
        self.connected = False
        self.scripts_loaded = False
        self.stopping = threading.Event()
        self.next_maintenance = 0.0

    @property
    def shards(self) -> dict[int, Shard]:
        """The shards held now, by number."""
        return self.ownership.shards

    @property
    def limits(self) -> Any:
        """The input size caps."""
        return self.path.limits

    # --- health -----------------------------------------------------------------
    def ready(self) -> bool:
        """Redis reachable and a model loaded."""
        return self.connected and self.model is not None

    def status(self) -> dict[str, Any]:
        """The heartbeat body."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "ready": self.ready(),
                "model_version": getattr(self.model, "version", None),
                "shadows": [m.version for m in self.shadows],
                "shards": sorted(self.shards), **self.telemetry.totals}

    # --- the loop ---------------------------------------------------------------
    def run(self) -> None:
        """Run until `stop()`; never dies of Redis errors or bad input."""
        self.watcher.start()
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                self.step()
                if not self.connected:
                    self.connected = True
                    log.info("connected to Redis")
                backoff.reset()
            except RETRYABLE as exc:
                self._disconnected(exc)
                self.stopping.wait(backoff.next())
            except redis.ResponseError as exc:
                if error_code(exc) == "NOGROUP":
                    self._recreate_groups()
                else:
                    log.error("Redis error: %s", exc)
                self.stopping.wait(backoff.next())
            except Exception:
                log.exception("unexpected error; the batch will be retried")
                self.ownership.reset_all()
                self.stopping.wait(backoff.next())
        self.shutdown()

    def stop(self) -> None:
        """Warm stop: finish the batch in hand, commit it, then leave."""
        self.stopping.set()

    def step(self) -> None:
        """One iteration: maintenance when due, then one batch per owned shard."""
        new = self.watcher.take()
        if new is not None:
            self._swap_model(new)
        now = time.monotonic()
        if now >= self.next_maintenance:
            self.maintain()
            self.next_maintenance = now + self.settings.lease_ttl_ms / 3000
        if self.telemetry.summary_due(now):
            self.telemetry.summary(sorted(self.shards), getattr(self.model, "version", None))
        if self.model is None or not self.shards:
            self.stopping.wait(0.05)
            return
        done = 0
        for shard in list(self.shards.values()):
            if self.stopping.is_set() or time.monotonic() >= self.next_maintenance:
                break  # leases must be renewed on time, however many shards wait
            done += self._process(shard)
        if done == 0 and not self.stopping.is_set():
            self.path.wait_for_data(list(self.shards.values()), self.stopping.wait)

    def _account(self, commit: Commit, n_entries: int) -> None:
        self.telemetry.account(commit, n_entries)
        self.live.add(commit)

    def _process(self, shard: Shard) -> int:
        """One batch of a shard; a lost lease drops it, any other failure resets it."""
        s = self.settings
        served = Served(self.model, self.shadows, s.interval_gamma, self.follow, s.gap_policy,
                        s.gap_max_steps, s.anomaly_rate, s.anomaly_window == "replace")
        try:
            return self.path.process(shard, served)
        except Fenced:
            log.warning("lost the lease of shard %d; dropping it", shard.index)
            shard.settle_quietly()
            self.ownership.drop(shard.index)
            metrics.SHARDS_OWNED.set(len(self.shards))
            return 0
        except BaseException:
            shard.reset()  # in-memory windows may be ahead of the checkpoint now
            raise

    def maintain(self) -> None:
        """Heartbeat, renew leases, rebalance, publish accuracy and group gauges."""
        if not self.scripts_loaded:
            self.scripts.load()
            self.scripts.probe()
            self.scripts_loaded = True
        self.ownership.renew_and_rebalance(self.status(), self._width())
        metrics.SHARDS_OWNED.set(len(self.shards))
        metrics.READY.set(1 if self.model is not None and self.connected else 0)
        streams = [shard.keys.values for shard in self.shards.values()]
        self.telemetry.group_gauges(self.client, streams, self.settings.group)
        self.telemetry.flush_accuracy(self.client, getattr(self.model, "version", None))
        self.live.flush(self.client, self.scripts.add_once)
        if self.model is not None:
            self.promoter.tick(self.model.version, [m.version for m in self.shadows])

    def _versions(self) -> list[str]:
        """The served versions, current first (the score columns)."""
        return [m.version for m in ([self.model, *self.shadows] if self.model else [])]

    def _width(self) -> int | None:
        """Window width the served models need (at least 2: the naive forecast's value)."""
        if self.model is None:
            return None
        return max(2, self.model.n_steps, *(m.n_steps for m in self.shadows))

    def _swap_model(self, new: Any) -> None:
        """Serve a new lineup from the next batch on; windows are kept (resized if needed)."""
        lineup = new if isinstance(new, Lineup) else Lineup(new)
        old = self.model
        before = self._versions()
        self.model, self.shadows = lineup.current, lineup.shadows[:COLUMNS - 1]
        after = self._versions()
        if old is None or old.version != self.model.version:
            self.telemetry.new_model()
        self.next_maintenance = 0.0  # acquire shards right away
        self.ownership.resize(self._width() or 2)
        self.ownership.remap([before.index(v) if v in before else None for v in after])
        for gone in set(before) - set(after):
            metrics.drop_version(gone)
        metrics.SHADOWS.set(len(self.shadows))
        model = self.model
        metrics.set_model(model.version, str(model.manifest.get("arch", "")), model.n_steps)
        log.info("serving model %s (was %s), shadows %s", model.version,
                 getattr(old, "version", None), after[1:] or "none")

    def _recreate_groups(self) -> None:
        log.warning("consumer group missing (stream deleted?); re-creating it")
        # From the last id seen, not 0: if only the group was destroyed, the entries already
        # predicted must not be predicted again.
        starts = {k: s.last_id or b"0" for k, s in self.shards.items()}
        self.ownership.reset_all()
        for k, shard in self.shards.items():
            ensure_group(self.client, shard.keys.values, self.settings.group, starts[k])

    def _disconnected(self, exc: Exception) -> None:
        if self.connected:
            name = type(exc).__name__
            log.warning("Redis unavailable (%s: %s); retrying with backoff", name, exc)
            metrics.RECONNECTS.inc()
        self.connected = False
        self.scripts_loaded = False  # a restarted Redis has an empty script cache
        metrics.READY.set(0)
        self.ownership.reset_all()
        self.next_maintenance = 0.0

    def shutdown(self) -> None:
        """Release leases and leave the live set (best effort), then stop the watcher."""
        self.watcher.stop()
        self.ownership.release_all(self.path.settle)
        try:
            self.telemetry.flush_accuracy(self.client, getattr(self.model, "version", None))
            self.live.flush(self.client, self.scripts.add_once)
            self.live.forget_markers(self.client)
            self.ownership.leases.leave()
        except redis.RedisError as exc:
            log.warning("could not leave cleanly: %s", exc)
        log.info("stopped", extra=self.telemetry.totals)
