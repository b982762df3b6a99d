"""A shard this worker holds the lease of: its windows, its recovery cursor, the commit under
way on its dedicated connection, and the bookkeeping of its commits."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import redis

from forecast.keys import ShardKeys
from worker.batch import Commit, Entry
from worker.state import SeriesStore

log = logging.getLogger(__name__)


@dataclass
class Shard:
    """A shard this worker holds the lease of, and its in-memory windows."""

    keys: ShardKeys
    token: str
    store: SeriesStore
    recovering: bool = True  # pending entries of earlier owners are processed first
    cursor: bytes = b"0-0"
    deliveries: dict[bytes, int] = field(default_factory=dict)
    last_id: bytes | None = None  # last id delivered to the group (for the blocking wait)
    ahead: deque[list[Entry]] = field(default_factory=deque)  # batches read, not processed yet
    inflight: Commit | None = None  # sent with a read-ahead; replies not collected yet
    inflight_replies: int = 0  # how many replies the commands sent will produce
    inflight_commit: int = 0  # how many of them belong to the commit (EVALSHA, WAIT)
    conn: Any = None  # dedicated connection for the pipelined commit + read
    pool: Any = None  # the pool `conn` came from
    # (first id, entries) of the batches committed since the last reset, coalesced: where
    # FORECAST_INPUT_MAXLEN puts the trim point (the commit script caps it at the oldest
    # uncommitted entry, so a stale ledger can only trim less, never lose anything).
    ledger: deque[list[Any]] = field(default_factory=deque)
    ledger_total: int = 0
    backfill: bytes = b"0"  # HSCAN cursor giving old checkpoints a last-seen time ("" = done)
    # Series whose last-seen time (FORECAST_SERIES_TTL_MS) a commit of the current window
    # (SEEN_EVERY_S) has written already: a series' first commit in each window writes it,
    # atomically with its checkpoint, so a hot series costs one ZADD per window, not one per
    # batch, and a last-seen time is at most one window old. Cleared on reset (the commit
    # that carried it may not have landed).
    seen_recent: set[bytes] = field(default_factory=set)
    seen_window: float = 0.0  # time.monotonic() when the current window began
    consumers_checked: float = 0.0  # time.monotonic() of the last clean-up of dead consumers
    # Isolating entries that break the worker (see `worker.pipeline`): while `probe` > 0 the
    # pending entries are recovered `probe` at a time; `attempt` are the ids of the batch
    # being built (`bumped`: their delivery was counted); `retry_at` (monotonic) delays the
    # shard after a failure, `failures` in a row.
    probe: int = 0
    attempt: list[bytes] = field(default_factory=list)
    bumped: bool = False
    retry_at: float = 0.0
    failures: int = 0

    @property
    def index(self) -> int:
        """Shard number."""
        return self.keys.shard

    def note_batch(self, first_id: bytes, n: int, maxlen: int) -> None:
        """Record a batch about to be committed; keep just enough for `maxlen` entries."""
        if maxlen <= 0 or n <= 0:
            return
        if self.ledger and self.ledger[-1][1] < max(1, maxlen // 128):
            self.ledger[-1][1] += n  # at most ~128 ledger items, trims within ~1% of maxlen
        else:
            self.ledger.append([first_id, n])
        self.ledger_total += n
        while self.ledger and self.ledger_total - self.ledger[0][1] >= maxlen:
            self.ledger_total -= self.ledger.popleft()[1]

    def count_minid(self, maxlen: int) -> bytes:
        """The MINID that keeps about `maxlen` committed entries (b"0-0": no trim yet)."""
        if maxlen > 0 and self.ledger and self.ledger_total >= maxlen:
            return bytes(self.ledger[0][0])
        return b"0-0"

    def read_replies(self) -> list[Any]:
        """The two replies of the commit + read under way (errors as values).

        `inflight` is cleared only once both are read; on any failure the connection is
        closed, so it never carries a stale reply into the next round trip.
        """
        replies: list[Any] = []
        try:
            for _ in range(self.inflight_replies):
                try:
                    replies.append(self.conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            self.close()
            raise
        finally:
            self.inflight = None
        return replies

    def settle_quietly(self) -> None:
        """Wait for the commit under way, ignoring its outcome (the caller handles a failure)."""
        if self.inflight is not None:
            try:
                self.read_replies()
            except Exception as exc:
                log.debug("in-flight commit of shard %d ended with %r", self.index, exc)

    def close(self) -> None:
        """Drop the dedicated connection (and give it back to its pool)."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.disconnect()
            if self.pool is not None:
                self.pool.release(conn)

    def reset(self) -> None:
        """Forget in-memory state: windows reload from the checkpoint, pending are re-claimed."""
        self.settle_quietly()  # a late commit must not land after the recovery claims
        self.ahead.clear()
        self.last_id = None  # the read-ahead that advanced it was discarded
        self.store = SeriesStore(self.store.width, self.store.max_series)
        self.recovering = True
        self.cursor = b"0-0"
        self.ledger.clear()
        self.ledger_total = 0
        self.seen_recent.clear()
