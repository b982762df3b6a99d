"""Shard ownership: heartbeats, a deterministic assignment, and leases with fencing tokens.

Every worker heartbeats into `forecast:workers`; all workers compute the same assignment
from the same sorted list of live workers that have a model loaded (shard k goes to live
worker k mod n), so a worker still starting takes no shards yet. A worker
acquires the leases of its shards when they are free and releases shards that are no
longer its own, so starting or stopping a worker rebalances within a few lease periods.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from forecast import keys
from worker.scripts import Scripts

log = logging.getLogger(__name__)


def assign(shards: int, live: list[str], me: str) -> set[int]:
    """The shards `me` should own given the live workers.

    >>> sorted(assign(8, ["a", "b", "c"], "b"))
    [1, 4, 7]
    >>> sorted(assign(2, ["a"], "z"))
    []
    """
    workers = sorted(live)
    if me not in workers:
        return set()
    i, n = workers.index(me), len(workers)
    return {k for k in range(shards) if k % n == i}


class Leases:
    """Heartbeat, assignment and lease calls of one worker."""

    def __init__(
        self,
        client: Any,
        scripts: Scripts,
        consumer: str,
        shards: int,
        cluster: bool,
        ttl_ms: int,
        heartbeat_ttl_s: int,
    ) -> None:
        self.client = client
        self.scripts = scripts
        self.consumer = consumer
        self.shards = shards
        self.cluster = cluster
        self.ttl_ms = ttl_ms
        self.heartbeat_ttl_s = heartbeat_ttl_s

    def heartbeat(self, status: dict[str, Any]) -> list[str]:
        """Publish this worker's status; return the live workers with a model (sorted)."""
        now = int(time.time() * 1000)
        body = json.dumps({**status, "consumer": self.consumer, "ts": now})
        pipe = self.client.pipeline(transaction=False)
        pipe.set(keys.heartbeat(self.consumer), body, ex=self.heartbeat_ttl_s)
        pipe.zadd(keys.WORKERS, {self.consumer: now})
        pipe.zremrangebyscore(keys.WORKERS, "-inf", now - keys.WORKER_FORGET_MS)
        pipe.zrangebyscore(keys.WORKERS, now - self.ttl_ms, "+inf")
        live = sorted(m.decode() for m in pipe.execute()[-1])
        # Only workers with a model get shards: one still loading its model takes none yet.
        pipe = self.client.pipeline(transaction=False)
        for name in live:
            pipe.get(keys.heartbeat(name))
        beats = pipe.execute()
        return [
            n
            for n, raw in zip(live, beats, strict=True)
            if raw is not None and json.loads(raw).get("model_version") is not None
        ]

    def leave(self) -> None:
        """Remove this worker from the live set and drop its heartbeat."""
        self.client.zrem(keys.WORKERS, self.consumer)
        self.client.delete(keys.heartbeat(self.consumer))

    def acquire(self, shard: int) -> str | None:
        """Take the shard's lease if it is free; the fencing token or None."""
        k = keys.shard_keys(shard, self.shards, self.cluster)
        token = self.scripts.acquire(keys=[k.lease, k.epoch], args=[self.consumer, self.ttl_ms])
        return token.decode() if token else None

    def renew(self, shard: int, token: str) -> bool:
        """Extend the lease; False when it is no longer ours."""
        k = keys.shard_keys(shard, self.shards, self.cluster)
        return bool(self.scripts.renew(keys=[k.lease], args=[token, self.ttl_ms]))

    def release(self, shard: int, token: str) -> None:
        """Give the lease up (after the last commit)."""
        k = keys.shard_keys(shard, self.shards, self.cluster)
        self.scripts.release(keys=[k.lease], args=[token])
