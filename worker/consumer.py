"""A shard's fenced, pipelined read and its atomic commit (the shard itself is in
`worker.shard`, the recovery and housekeeping scripts in `worker.recovery`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError

from forecast.errors import Fenced, error_code
from worker import metrics
from worker.batch import Commit, Entry, dead_letter, id_key
from worker.recovery import FencedCalls, is_fenced, to_entries
from worker.scripts import GUARD, Scripts, commit_args
from worker.shard import Shard

log = logging.getLogger(__name__)

CLUSTER_MOVES = (MovedError, AskError, ClusterDownError, TryAgainError)
SEEN_EVERY_S = 1.0  # a series' last-seen time is written once per window this long ...
SEEN_MAX = 50_000  # ... and the window starts again when it has seen this many series


class ReplicationTimeout(redis.ConnectionError):
    """Fewer than FORECAST_COMMIT_REPLICAS replicas confirmed a commit in time (WAIT).

    A ConnectionError on purpose: the worker takes its outage path (not ready, reset,
    recover from the checkpoint); the commit itself stays applied on the primary.
    """

    def __init__(self, confirmed: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(f"only {confirmed} of {wanted} replica(s) confirmed the commit "
                         f"within {timeout_ms} ms")


def ensure_group(client: Any, stream: str, group: str, start: bytes | str = "0") -> None:
    """Create the consumer group (and the stream) if missing; by default from the start."""
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
        log.info("created consumer group %s on %s", group, stream)
    except redis.ResponseError as exc:
        if error_code(exc) != "BUSYGROUP":
            raise


class ShardIO(FencedCalls):
    """The Redis calls of a shard, every one fenced by its lease token: the pipelined read and
    commit here, the scripted recovery and housekeeping calls in `FencedCalls`."""

    def __init__(
        self, client: Any, scripts: Scripts, group: str, consumer: str, cluster: bool = False,
        *, input_maxlen: int = 0, input_retention_ms: int = 0, series_ttl_ms: int = 0,
        commit_replicas: int = 0, replicas_timeout_ms: int = 1000,
    ) -> None:
        super().__init__(client, scripts, group, consumer, series_ttl_ms)
        self.cluster = cluster
        self.input_maxlen = input_maxlen
        self.input_retention_ms = input_retention_ms
        self.commit_replicas = commit_replicas
        self.replicas_timeout_ms = replicas_timeout_ms

    def read(self, shard: Shard, count: int) -> list[Entry]:
        """New entries (`>`), at most `count`; only while the lease is ours."""
        self._send(shard, None, [], self._read_commands(shard, count))
        return self.finish(shard)[1]

    def _read_commands(self, shard: Shard, count: int) -> list[tuple[Any, ...]]:
        """A fenced XREADGROUP without Lua (converting a big reply to Lua costs ~2.5 us/entry).

        WATCH lease+fence, GUARD (touches the fence unless the lease is ours), then the read
        in MULTI/EXEC: EXEC runs only if neither key changed since WATCH, so a worker that
        lost its lease, before or during these commands, reads nothing.
        """
        k = shard.keys
        return [
            ("WATCH", k.lease, k.fence),
            ("EVAL", GUARD, 2, k.lease, k.fence, shard.token),
            ("MULTI",),
            ("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count,
             "STREAMS", k.values, ">"),
            ("EXEC",),
        ]

    def load(self, shard: Shard, series: list[bytes]) -> list[bytes | None]:
        """Checkpointed windows of series not in memory."""
        return list(self.client.hmget(shard.keys.state, series))

    def _commit_args(self, shard: Shard, commit: Commit, pred_maxlen: int,
                     dead_maxlen: int) -> list[Any]:
        """SHA, KEYS and ARGV of the commit's COMMIT script (the one of its layout)."""
        if commit.ack_ids and self.input_maxlen:
            first = min(commit.ack_ids, key=id_key) if shard.recovering else commit.ack_ids[0]
            shard.note_batch(first, len(commit.ack_ids), self.input_maxlen)
        layout, args = commit_args(shard.token, self.group, commit, pred_maxlen, dead_maxlen,
                                   self.scripts.msgpack_ok, self.input_retention_ms,
                                   shard.count_minid(self.input_maxlen), self._seen(shard, commit))
        keys = [*shard.keys.commit_keys,
                *(shard.keys.follow_stream(s) for s in commit.follow_series)]
        return [self.scripts.commit_for(layout).sha, len(keys), *keys, *args]

    def _seen(self, shard: Shard, commit: Commit) -> list[bytes]:
        """The series whose last-seen time this commit writes (see `Shard.seen_recent`)."""
        if self.series_ttl_ms <= 0:
            return []
        now = time.monotonic()
        recent = shard.seen_recent
        every = min(SEEN_EVERY_S, self.series_ttl_ms / 10_000)
        if now - shard.seen_window >= every or len(recent) >= SEEN_MAX:
            recent.clear()
            shard.seen_window = now
        new = [series for series in commit.state[0::2] if series not in recent]
        recent.update(new)
        return new

    def _commit_commands(self, shard: Shard, commit: Commit, pred_maxlen: int,
                         dead_maxlen: int) -> list[tuple[Any, ...]]:
        """The commit script call, then `WAIT n timeout` with FORECAST_COMMIT_REPLICAS=n."""
        commands: list[tuple[Any, ...]] = [
            ("EVALSHA", *self._commit_args(shard, commit, pred_maxlen, dead_maxlen))]
        if self.commit_replicas:
            commands.append(("WAIT", self.commit_replicas, self.replicas_timeout_ms))
        return commands

    def commit(self, shard: Shard, commit: Commit, pred_maxlen: int, dead_maxlen: int) -> None:
        """Write predictions, dead letters, checkpoint and acks in one atomic script."""
        self._send(shard, commit, self._commit_commands(shard, commit, pred_maxlen,
                                                        dead_maxlen), [])
        self.finish(shard)

    def send_commit_and_read(
        self, shard: Shard, commit: Commit, pred_maxlen: int, dead_maxlen: int, count: int
    ) -> None:
        """Send a batch's commit and the next read without waiting for the replies.

        Redis runs both while the caller prepares the next batch; `finish` collects them.
        """
        self._send(shard, commit, self._commit_commands(shard, commit, pred_maxlen, dead_maxlen),
                   self._read_commands(shard, count))

    def _connection(self, shard: Shard) -> Any:
        """The shard's dedicated connection: to the one Redis, or to the cluster node that
        serves the shard's hash tag (every key of a shard lives there)."""
        if shard.conn is None:
            if self.cluster:
                node = self.client.get_node_from_key(shard.keys.values)
                shard.pool = self.client.get_redis_connection(node).connection_pool
            else:
                shard.pool = self.client.connection_pool
            shard.conn = shard.pool.get_connection()
        return shard.conn

    def _send(self, shard: Shard, commit: Commit | None, commit_commands: list[tuple[Any, ...]],
              read_commands: list[tuple[Any, ...]]) -> None:
        """Send commands on the shard's dedicated connection; `finish` reads the replies."""
        conn = self._connection(shard)
        commands = [*commit_commands, *read_commands]
        packed = conn.pack_commands(commands)
        shard.inflight = commit if commit is not None else Commit()
        shard.inflight_replies = len(commands)  # set before sending: every reply must be read
        shard.inflight_commit = len(commit_commands)
        try:
            conn.send_packed_command(packed, check_health=False)
        except BaseException:
            shard.inflight = None
            shard.close()
            raise

    def _raise(self, shard: Shard, reply: redis.ResponseError) -> None:
        if is_fenced(reply):
            raise Fenced(str(reply))
        if isinstance(reply, NoScriptError):
            self.scripts.load()
        if self.cluster and isinstance(reply, CLUSTER_MOVES):
            # The slot moved (resharding, failover): learn the new layout; the worker takes
            # the outage path and recovers on the node that serves the shard now.
            shard.close()
            try:
                self.client.nodes_manager.initialize()
            except redis.RedisError as exc:
                log.debug("cluster topology refresh failed: %r", exc)
            raise redis.ConnectionError(f"shard {shard.index} moved: {reply}") from None
        raise reply

    def finish(self, shard: Shard) -> tuple[Commit, list[Entry]]:
        """Collect the replies of `_send`: the commit (if any) and the fenced read (if any)."""
        commit = shard.inflight
        assert commit is not None
        n_commit = shard.inflight_commit
        replies = shard.read_replies()
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                self._raise(shard, reply)
        if n_commit == 2 and int(replies[1]) < self.commit_replicas:
            metrics.REPLICA_TIMEOUTS.inc()
            raise ReplicationTimeout(int(replies[1]), self.commit_replicas,
                                     self.replicas_timeout_ms)
        if len(replies) == n_commit:  # a commit without a read
            return commit, []
        _watch, guard, _multi, _queued, result = replies[-5:]
        if guard == 0:
            raise Fenced(f"FENCED lease {shard.keys.lease} is not held by this worker")
        if result is None:  # a key changed since WATCH (e.g. our own renewal): nothing was read
            return commit, []
        raw = result[0]
        if isinstance(raw, redis.ResponseError):
            self._raise(shard, raw)
        return commit, (to_entries(raw[0][1]) if raw else [])


CRASH_SUSPECT = 2  # deliveries without a commit after which a pending entry is tried alone


def alone_if_suspect(shard: Shard, entries: list[Entry]) -> list[Entry]:
    """The claimed entries to process now: all of them, unless one was delivered
    `CRASH_SUSPECT` times without a commit (a worker may have died on it): then the entries
    before it, or it alone, and the claim cursor rewinds to the first entry left out.

    A process that dies cannot isolate the entry that killed it, so entries suspected of
    that go one at a time; their deliveries count until `split_poison` takes the culprit.
    """
    first = next((i for i, (eid, _) in enumerate(entries)
                  if shard.deliveries.get(eid, 0) >= CRASH_SUSPECT), None)
    if first is None:
        return entries
    keep = entries[:max(first, 1)]
    if len(keep) < len(entries):
        shard.cursor = entries[len(keep)][0]  # XAUTOCLAIM's start is inclusive
        shard.recovering = True
    return keep


def split_poison(
    shard: Shard, entries: list[Entry], max_deliveries: int, commit: Commit
) -> list[Entry]:
    """Dead-letter entries that this delivery would take past `max_deliveries`; the rest.

    `shard.deliveries` holds the counts of the claimed entries before this delivery.
    """
    if not shard.deliveries:
        return entries
    keep = []
    for eid, fields in entries:
        n = shard.deliveries.get(eid, 0) + 1  # counting the delivery about to happen
        if n > max_deliveries:
            commit.ack_ids.append(eid)
            dead_letter(commit, eid, fields or [], "poison", deliveries=str(n))
            log.warning(
                "entry %s of %s delivered %d times: dead-lettered as poison",
                eid.decode(),
                shard.keys.values,
                n,
            )
        else:
            keep.append((eid, fields))
    return keep
