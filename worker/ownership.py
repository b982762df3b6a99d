"""Which shards this worker holds: heartbeat, lease renewal, rebalancing, acquire and drop.

Runs every third of a lease period (`Worker.maintain`). A shard is held through its lease;
one that expired or that the assignment gives to another worker is dropped (after settling
the commit in flight), and its in-memory state goes with it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from forecast import keys
from forecast.errors import Fenced
from forecast.settings import Settings
from worker import metrics
from worker.consumer import ShardIO, ensure_group
from worker.leases import Leases, assign
from worker.scripts import Scripts
from worker.shard import Shard
from worker.state import SeriesStore

log = logging.getLogger(__name__)


class Ownership:
    """The shards this worker holds the leases of, by shard number."""

    def __init__(self, client: Any, scripts: Scripts, settings: Settings, consumer: str,
                 io: ShardIO | None = None) -> None:
        self.client = client
        self.io = io
        self.settings = settings
        self.consumer = consumer
        self.leases = Leases(client, scripts, consumer, settings.shards, settings.cluster,
                             settings.lease_ttl_ms, settings.heartbeat_ttl_s)
        self.shards: dict[int, Shard] = {}

    def renew_and_rebalance(self, status: dict[str, Any], width: int | None) -> None:
        """Heartbeat, renew every lease, then (with a model) take or give shards to balance."""
        live = self.leases.heartbeat(status)
        for k, shard in list(self.shards.items()):
            if not self.leases.renew(k, shard.token):
                log.warning("lease of shard %d expired; dropping it", k)
                self.drop(k)
        if width is None:
            return
        wanted = assign(self.settings.shards, live, self.consumer)
        for k in set(self.shards) - wanted:
            token = self.shards[k].token
            self.drop(k)  # settles the commit in flight; forgotten before another can take it
            self.leases.release(k, token)
            log.info("released shard %d (rebalance)", k)
        for k in sorted(wanted - set(self.shards)):
            self._acquire(k, width)
        self.expire_series()
        self.forget_dead_consumers()

    def forget_dead_consumers(self, every_s: float = 60.0) -> None:
        """Once a minute per shard: delete consumers of dead workers (nothing pending, idle a
        minute): every restart names a new consumer, and the group would keep them all."""
        if self.io is None:
            return
        now = time.monotonic()
        for k, shard in list(self.shards.items()):
            if now - shard.consumers_checked < every_s:
                continue
            shard.consumers_checked = now
            try:
                gone = self.io.forget_consumers(shard, keys.WORKER_FORGET_MS)
            except Fenced:
                log.warning("lease of shard %d lost; dropping it", k)
                self.drop(k)
                continue
            if gone:
                log.info("shard %d: removed %d idle consumer(s) of the group", k, gone)

    def expire_series(self, rounds: int = 5) -> None:
        """Remove checkpoints (and windows) of series idle past FORECAST_SERIES_TTL_MS.

        Fenced like every write; at most `rounds` x 2000 series per shard per maintenance.
        A series whose value is in flight right now either keeps its window (its commit
        lands after the sweep) or starts fresh (before): both are consistent.
        """
        if self.io is None or self.settings.series_ttl_ms <= 0:
            return
        for k, shard in list(self.shards.items()):
            for _ in range(rounds):
                try:
                    removed = self.io.sweep(shard)
                except Fenced:
                    log.warning("lease of shard %d lost during the series sweep; dropping it", k)
                    self.drop(k)
                    break
                if removed:
                    shard.store.forget(removed)
                    metrics.SERIES_EXPIRED.inc(len(removed))
                    log.debug("shard %d: %d idle series expired", k, len(removed))
                if len(removed) < 2000 and not shard.backfill:
                    break

    def _acquire(self, k: int, width: int) -> None:
        token = self.leases.acquire(k)
        if token is None:
            return
        s = self.settings
        shard_keys = keys.shard_keys(k, s.shards, s.cluster)
        try:
            ensure_group(self.client, shard_keys.values, s.group)
        except BaseException:
            self.leases.release(k, token)  # nobody else knows this token: give the shard back
            raise
        store = SeriesStore(width, s.max_series)
        self.shards[k] = Shard(keys=shard_keys, token=token, store=store)
        log.info("acquired shard %d (%s) token=%s", k, shard_keys.values, token.split(":", 1)[0])

    def drop(self, k: int) -> None:
        """Forget shard `k` (its lease is not released: see `release_all` and rebalancing)."""
        shard = self.shards.pop(k, None)
        if shard is not None:
            shard.settle_quietly()
            shard.close()

    def resize(self, width: int) -> None:
        """Windows of another width (models with another n_steps; the newest values are kept)."""
        for shard in self.shards.values():
            shard.store.resize(width)

    def remap(self, columns: list[int | None]) -> None:
        """New served versions: see `SeriesStore.remap`."""
        for shard in self.shards.values():
            shard.store.remap(columns)

    def reset_all(self) -> None:
        """Drop every shard's in-memory state (it is rebuilt from the checkpoint)."""
        for shard in self.shards.values():
            shard.reset()

    def release_all(self, settle: Any) -> None:
        """Commit what is in flight (`settle(shard)`), release every lease, close connections."""
        for k, shard in list(self.shards.items()):
            try:
                if shard.inflight is not None:
                    settle(shard)  # the batch in hand is committed before leaving
                self.leases.release(k, shard.token)
            except (Fenced, redis.RedisError) as exc:
                log.warning("shard %d not released cleanly: %s", k, exc)
            finally:
                shard.close()
