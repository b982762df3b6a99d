"""A shard's scripted calls outside the batch path: claiming and counting the pending entries
of earlier owners, forgetting idle consumers, sweeping expired checkpoints. Every call is a
Lua script that first checks the shard's lease token (FENCED otherwise)."""

from __future__ import annotations

from typing import Any

import redis

from forecast.errors import Fenced, error_code
from worker.batch import Entry
from worker.scripts import Scripts
from worker.shard import Shard


def is_fenced(exc: redis.ResponseError) -> bool:
    """Whether a script error is the lease check failing."""
    return error_code(exc) == "FENCED"


def to_entries(raw: Any) -> list[Entry]:
    """Flat `(id, fields)` list from an XREADGROUP/XAUTOCLAIM-style entry array."""
    return [(e[0], e[1]) for e in raw or ()]


class FencedCalls:
    """Recovery and housekeeping scripts of the shards one worker owns."""

    def __init__(self, client: Any, scripts: Scripts, group: str, consumer: str,
                 series_ttl_ms: int = 0) -> None:
        self.client = client
        self.scripts = scripts
        self.group = group
        self.consumer = consumer
        self.series_ttl_ms = series_ttl_ms
        # stream -> ids whose last counted delivery ended with a Redis error in this process
        # (it never produced a commit because the connection broke): the next one is free.
        self.refunds: dict[str, set[bytes]] = {}

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.ResponseError as exc:
            if is_fenced(exc):
                raise Fenced(str(exc)) from None
            raise

    def claim(self, shard: Shard, count: int, min_idle_ms: int) -> list[Entry] | None:
        """The next pending entries of earlier owners; [] when done, None to wait."""
        raw = self._call(
            self.scripts.claim,
            [shard.keys.values, shard.keys.lease],
            [shard.token, self.group, self.consumer, min_idle_ms, shard.cursor, count],
        )
        if raw[0] == b"WAIT":
            return None
        shard.cursor = raw[0]
        # Deliveries counted so far; one that ended with a Redis error here does not count.
        free = self.refunds.get(shard.keys.values, set())
        shard.deliveries = {d[0]: int(d[3]) - (d[0] in free) for d in raw[2]}
        entries = to_entries(raw[1])
        if shard.cursor == b"0-0" and not entries:
            shard.recovering = False
        return entries

    def bump(self, shard: Shard, ids: list[bytes]) -> None:
        """Count a delivery of these claimed entries, right before they go to the model.

        The claim itself counts nothing (XAUTOCLAIM JUSTID): a reset caused by a flapping
        Redis re-claims entries that never reached the model, and those must not become
        poison. An entry whose previous counted delivery ended with a Redis error in this
        process (`refund`) was claimed with that delivery uncounted, so it keeps its count.
        """
        if not ids:
            return
        self.refunds.get(shard.keys.values, set()).difference_update(ids)
        by_count: dict[int, list[bytes]] = {}
        for eid in ids:
            n = shard.deliveries.get(eid, 0) + 1
            shard.deliveries[eid] = n
            by_count.setdefault(n, []).append(eid)
        args: list[Any] = [shard.token, self.group, self.consumer]
        for n, group in by_count.items():
            args += [n, len(group), *group]
        self._call(self.scripts.bump, [shard.keys.values, shard.keys.lease], args)

    def refund(self, shard: Shard, ids: list[bytes]) -> None:
        """The delivery just counted for `ids` ended with a Redis error: do not count it again."""
        if ids:
            self.refunds.setdefault(shard.keys.values, set()).update(ids)

    def forget_consumers(self, shard: Shard, min_idle_ms: int) -> int:
        """Delete the group's consumers with nothing pending, idle for `min_idle_ms` (fenced)."""
        return int(self._call(self.scripts.forget, [shard.keys.values, shard.keys.lease],
                              [shard.token, self.group, self.consumer, min_idle_ms]))

    def sweep(self, shard: Shard, limit: int = 2000) -> list[bytes]:
        """Remove checkpoints of series idle longer than the series TTL (at most `limit`)."""
        if self.series_ttl_ms <= 0:
            return []
        k = shard.keys
        cursor, removed = self._call(
            self.scripts.sweep, [k.state, k.seen, k.lease, k.latest],
            [shard.token, self.series_ttl_ms, limit, shard.backfill],
        )
        shard.backfill = cursor
        return list(removed)
