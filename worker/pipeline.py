"""The batch path of one shard: recover pending entries, then read, predict and commit.

Live batches are pipelined: while Redis runs the commit of batch k and the read of batch
k+2 (sent in one round trip on the shard's dedicated connection), the worker turns batch
k+1 into a commit. On a Redis Cluster the connection goes to the node serving the shard's
hash tag, where every key of the shard lives, so the same path runs per node. Recovery
(the pending entries of earlier owners) is always synchronous, in id order, before any new
entry is read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from forecast.errors import Fenced
from forecast.grammar import Limits
from forecast.redis_conn import group_info
from forecast.settings import Settings
from worker import metrics
from worker.batch import Commit, Entry, Served, build_commit, finish_scores
from worker.consumer import ShardIO, alone_if_suspect, split_poison
from worker.shard import Shard

log = logging.getLogger(__name__)

RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
FAILURE_WAIT_S = 0.005  # a shard whose batch failed waits this, doubling per failure in a row
FAILURE_WAIT_CAP_S = 2.0


class BatchPath:
    """Reads, builds and commits batches for the shards a worker holds."""

    def __init__(self, client: Any, io: ShardIO, settings: Settings,
                 account: Callable[[Commit, int], None]) -> None:
        self.client = client
        self.io = io
        self.settings = settings
        self.account = account  # called once per committed batch
        self.limits = Limits(settings.max_series_bytes, settings.max_value_bytes)
        # A batch never holds more series than the LRU can keep (else eviction cannot make room).
        self.batch_size = min(settings.batch_size, settings.max_series)
        self.block_ms = max(1, min(settings.block_ms, settings.lease_ttl_ms // 4))

    def process(self, shard: Shard, model: Served) -> int:
        """Handle one batch of a shard; the number of entries handled.

        A failure that is not Redis's (the model or the parser raised on some entry) resets
        the shard and isolates the entries that cause it (`_failed`); Redis errors and a lost
        lease propagate to the worker's except ladder.
        """
        if shard.retry_at and time.monotonic() < shard.retry_at:
            return 0
        try:
            if shard.recovering:
                return self._recover(shard, model)
            return self._live(shard, model)
        except (Fenced, redis.RedisError):
            raise
        except Exception as exc:
            self._failed(shard, exc)
            return 0

    def _failed(self, shard: Shard, exc: Exception) -> None:
        """Reset the shard and recover its pending entries in smaller parts: half of the batch
        that failed (the delivery it counted is refunded: that part may be healthy), down to
        one entry at a time, whose deliveries count until it is dead-lettered as poison."""
        attempt, bumped = shard.attempt, shard.bumped
        n, first = len(attempt), shard.probe == 0
        shard.reset()
        if n > 1:
            if bumped:
                self.io.refund(shard, attempt)
            shard.probe = max(1, n // 2)
        elif n == 1:
            shard.probe = 1
        shard.failures += 1
        shard.retry_at = time.monotonic() + min(FAILURE_WAIT_CAP_S,
                                                FAILURE_WAIT_S * 2 ** min(shard.failures, 10))
        what = f"a batch of {n} entries of shard {shard.index} failed"
        if first:
            log.exception("%s; retrying it in parts of %d to isolate the entries that break it",
                          what, shard.probe)
        else:
            log.warning("%s (%s: %s); next part %d", what, type(exc).__name__, exc, shard.probe)

    def _build(self, shard: Shard, model: Any, entries: list[Entry],
               commit: Commit | None = None, defer: bool = False) -> Commit:
        return build_commit(entries, shard.store, model, self.limits,
                            lambda series: self.io.load(shard, series), commit, defer)

    def _commit_now(self, shard: Shard, commit: Commit) -> None:
        s = self.settings
        t0 = time.perf_counter()
        self.io.commit(shard, commit, s.predictions_maxlen, s.deadletter_maxlen)
        metrics.COMMIT_LATENCY.observe(time.perf_counter() - t0)
        self.account(commit, commit.entries)

    def _recover(self, shard: Shard, model: Any) -> int:
        """Claim pending entries of earlier owners (in id order) and commit them, synchronously."""
        commit = Commit()
        entries = self.io.claim(shard, shard.probe or self.batch_size,
                                self.settings.claim_min_idle_ms)
        if entries is None:
            return 0
        if not shard.recovering:
            shard.probe = 0  # every pending entry is done: back to whole batches
        entries = alone_if_suspect(shard, entries)
        entries = split_poison(shard, entries, self.settings.max_deliveries, commit)
        if not entries and not commit.ack_ids:
            return 0
        ids = [eid for eid, _ in entries]
        shard.attempt, shard.bumped = ids, False
        try:
            self.io.bump(shard, ids)  # this delivery counts from here: the model sees them next
            shard.bumped = True
            commit = self._build(shard, model, entries, commit)
            commit.entries = len(entries)
            self._commit_now(shard, commit)
        except RETRYABLE:
            self.io.refund(shard, ids)  # the connection broke, not these entries
            raise
        self._succeeded(shard)
        return len(commit.ack_ids)

    def _succeeded(self, shard: Shard) -> None:
        shard.attempt, shard.failures, shard.retry_at = [], 0, 0.0
        if shard.probe:
            shard.probe = min(self.batch_size, 2 * shard.probe)

    def _live(self, shard: Shard, model: Any) -> int:
        """Process the next batch while Redis runs the previous commit and the next read."""
        if not shard.ahead:
            shard.ahead.append(self.settle(shard) if shard.inflight else self._read(shard))
        entries = shard.ahead.popleft()
        if not entries:
            if shard.inflight is None:
                return 0
            shard.ahead.append(self.settle(shard))
            return len(shard.ahead[-1])
        shard.attempt, shard.bumped = [eid for eid, _ in entries], False
        commit = self._build(shard, model, entries, defer=True)  # scored once it is sent
        commit.entries = len(entries)
        if shard.inflight is not None:
            shard.ahead.append(self.settle(shard))
        elif not shard.ahead and len(entries) >= self.batch_size:
            # A full batch means a backlog: start the read-ahead. With light traffic the
            # commit goes out at once instead (latency over overlap).
            shard.ahead.append(self._read(shard))
        commit.sent_at = time.perf_counter()
        s = self.settings
        self.io.send_commit_and_read(shard, commit, s.predictions_maxlen, s.deadletter_maxlen,
                                     self.batch_size)
        finish_scores(commit)  # while Redis runs the commit, before the shard's next batch
        self._succeeded(shard)
        return len(entries)

    def _read(self, shard: Shard) -> list[Entry]:
        entries = self.io.read(shard, self.batch_size)
        if entries:
            shard.last_id = entries[-1][0]
        return entries

    def settle(self, shard: Shard) -> list[Entry]:
        """Collect the shard's commit under way; account it; return the entries read ahead."""
        commit, entries = self.io.finish(shard)
        metrics.COMMIT_LATENCY.observe(time.perf_counter() - commit.sent_at)
        self.account(commit, commit.entries)
        if entries:
            shard.last_id = entries[-1][0]
        return entries

    def wait_for_data(self, shards: list[Shard], wait: Callable[[float], Any]) -> None:
        """Block until a live shard has new entries (XREAD on the last delivered ids)."""
        live = [s for s in shards if not s.recovering]
        if len(live) < len(shards):
            wait(0.01)  # recovering shards poll
            return
        if not live:
            return
        if self.settings.cluster and len(live) > 1:
            for shard in live:  # streams live in different slots: one short wait each
                self.client.xread({shard.keys.values: self._last_id(shard)},
                                  block=max(1, self.block_ms // len(live)), count=1)
            return
        self.client.xread({s.keys.values: self._last_id(s) for s in live},
                          block=self.block_ms, count=1)

    def _last_id(self, shard: Shard) -> bytes:
        """The group's last delivered id of the shard's stream (cached after the first ask)."""
        if shard.last_id is None:
            info = group_info(self.client, shard.keys.values, self.settings.group)
            shard.last_id = info.get("last-delivered-id", b"$")
        return shard.last_id
