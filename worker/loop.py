"""The worker loop: own shards, read, predict in one call per batch, commit atomically.

Each iteration runs inside an explicit except ladder (rq-style): lost leases drop the
shard, Redis outages back off with jitter and mark the worker not ready, anything else
is logged and retried. After any failure the shard's in-memory state is dropped and
rebuilt from the checkpoint plus the pending entries, so nothing is lost or duplicated.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any

import redis

from forecast import keys
from forecast.grammar import Limits
from forecast.settings import Settings
from worker import metrics
from worker.backoff import Backoff
from worker.batch import Commit, Entry, build_commit
from worker.consumer import Fenced, Shard, ShardIO, ensure_group, split_poison
from worker.leases import Leases, assign
from worker.models import ModelWatcher
from worker.scripts import Scripts
from worker.state import SeriesStore

log = logging.getLogger(__name__)

RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def raw_client(client: Any) -> Any:
    """Make stream replies come back as raw arrays (no per-entry dicts, duplicates kept)."""
    for cmd in ("XREAD", "XREADGROUP", "XAUTOCLAIM", "XINFO GROUPS"):
        client.set_response_callback(cmd, lambda r, **_: r)
    return client


def group_fields(group: Any) -> dict[bytes, Any]:
    """One XINFO GROUPS entry as a bytes-keyed dict.

    Raw pairs on a single Redis; a cluster client's node clients still parse it to a dict.
    """
    pairs = group.items() if isinstance(group, dict) else zip(group[::2], group[1::2],
                                                              strict=False)
    return {(k if isinstance(k, bytes) else k.encode()): v for k, v in pairs}


class Worker:
    """One worker process: the loop and its state."""

    def __init__(
        self, client: Any, settings: Settings, watcher: ModelWatcher | None = None
    ) -> None:
        self.client = raw_client(client)
        self.s = settings
        self.consumer = settings.consumer_name()
        self.scripts = Scripts(self.client)
        self.io = ShardIO(
            self.client, self.scripts, settings.group, self.consumer, settings.cluster
        )
        self.leases = Leases(self.client, self.scripts, self.consumer, settings.shards,
                             settings.cluster, settings.lease_ttl_ms, settings.heartbeat_ttl_s)
        self.watcher = watcher or ModelWatcher(
            client, settings.model_poll_s, settings.model_hmac_key
        )
        self.limits = Limits(settings.max_series_bytes, settings.max_value_bytes)
        self.shards: dict[int, Shard] = {}
        self.pipelined = not settings.cluster  # overlap commit k + read k+2 with batch k+1
        self.scripts_loaded = False
        self.model: Any = None
        self.connected = False
        self.stopping = threading.Event()
        self.next_maintenance = 0.0
        self.next_summary = time.monotonic() + settings.summary_interval_s
        self.block_ms = max(1, min(settings.block_ms, settings.lease_ttl_ms // 4))
        # A batch never holds more series than the LRU can keep (else eviction cannot make room).
        self.batch_size = min(settings.batch_size, settings.max_series)
        self.totals = {"values": 0, "predictions": 0, "deadletters": 0, "batches": 0}
        self.errors: deque[tuple[float, int]] = deque(maxlen=200)  # (abs err sum, n) per batch
        self.unflushed_errors = [0.0, 0]  # online errors not yet added to forecast:accuracy
        self.last_summary = (time.monotonic(), 0)  # (when, values) of the last summary line
        self.lag = 0  # entries not yet delivered, over the owned shards

    # --- health -----------------------------------------------------------------
    def ready(self) -> bool:
        """Redis reachable and a model loaded."""
        return self.connected and self.model is not None

    def status(self) -> dict[str, Any]:
        """The heartbeat body."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "ready": self.ready(),
                "model_version": getattr(self.model, "version", None),
                "shards": sorted(self.shards), **self.totals}

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
                if "NOGROUP" in str(exc):
                    log.warning("consumer group missing (stream deleted?); re-creating it")
                    # From the last id seen, not 0: if only the group was destroyed, the
                    # entries already predicted must not be predicted again.
                    starts = {k: s.last_id or b"0" for k, s in self.shards.items()}
                    self._reset_all()
                    for k, shard in self.shards.items():
                        ensure_group(self.client, shard.keys.values, self.s.group, starts[k])
                    self.stopping.wait(backoff.next())
                else:
                    log.error("Redis error: %s", exc)
                    self.stopping.wait(backoff.next())
            except Exception:
                log.exception("unexpected error; the batch will be retried")
                self._reset_all()
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
            self.next_maintenance = now + self.s.lease_ttl_ms / 3000
        if now >= self.next_summary:
            self._summary()
        if self.model is None or not self.shards:
            self.stopping.wait(0.05)
            return
        done = 0
        for shard in list(self.shards.values()):
            if self.stopping.is_set() or time.monotonic() >= self.next_maintenance:
                break  # leases must be renewed on time, however many shards wait
            done += self._process(shard)
        if done == 0 and not self.stopping.is_set():
            self._wait_for_data()

    def _process(self, shard: Shard) -> int:
        """Handle one batch of a shard; the number of entries handled."""
        try:
            if shard.recovering:
                return self._recover_batch(shard)
            return self._live_batch(shard)
        except Fenced:
            log.warning("lost the lease of shard %d; dropping it", shard.index)
            shard.settle_quietly()
            self._drop(shard.index)
            return 0
        except BaseException:
            shard.reset()  # in-memory windows may be ahead of the checkpoint now
            raise

    def _recover_batch(self, shard: Shard) -> int:
        """Claim pending entries of earlier owners (in id order) and commit them, synchronously."""
        commit = Commit()
        entries = self.io.claim(shard, self.batch_size, self.s.claim_min_idle_ms)
        if entries is None:
            return 0
        entries = split_poison(shard, entries, self.s.max_deliveries, commit)
        if not entries and not commit.ack_ids:
            return 0
        commit = build_commit(entries, shard.store, self.model, self.limits,
                              lambda series: self.io.load(shard, series), commit)
        t0 = time.perf_counter()
        self.io.commit(shard, commit, self.s.predictions_maxlen, self.s.deadletter_maxlen)
        metrics.COMMIT_LATENCY.observe(time.perf_counter() - t0)
        self._account(commit, len(entries))
        return len(commit.ack_ids)

    def _live_batch(self, shard: Shard) -> int:
        """Process the next batch while Redis runs the previous commit and the next read.

        The worker keeps one batch read ahead: batch k+1 is turned into a commit while
        Redis commits batch k and reads k+2 (both sent in one round trip), so Redis and
        Python work overlap.
        """
        if not shard.ahead:
            shard.ahead.append(self._settle(shard) if shard.inflight else self._read(shard))
        entries = shard.ahead.popleft()
        if not entries:
            if shard.inflight is None:
                return 0
            shard.ahead.append(self._settle(shard))
            return len(shard.ahead[-1])
        commit = build_commit(entries, shard.store, self.model, self.limits,
                              lambda series: self.io.load(shard, series))
        commit.entries = len(entries)
        if not self.pipelined:  # e.g. the cluster client: commit, then read, two round trips
            t0 = time.perf_counter()
            self.io.commit(shard, commit, self.s.predictions_maxlen, self.s.deadletter_maxlen)
            metrics.COMMIT_LATENCY.observe(time.perf_counter() - t0)
            self._account(commit, commit.entries)
            return len(entries)
        if shard.inflight is not None:
            shard.ahead.append(self._settle(shard))
        elif not shard.ahead and len(entries) >= self.batch_size:
            # A full batch means a backlog: start the read-ahead. With light traffic the
            # commit goes out at once instead (latency over overlap).
            shard.ahead.append(self._read(shard))
        commit.sent_at = time.perf_counter()
        self.io.send_commit_and_read(shard, commit, self.s.predictions_maxlen,
                                     self.s.deadletter_maxlen, self.batch_size)
        return len(entries)

    def _read(self, shard: Shard) -> list[Entry]:
        entries = self.io.read(shard, self.batch_size)
        if entries:
            shard.last_id = entries[-1][0]
        return entries

    def _settle(self, shard: Shard) -> list[Entry]:
        """Collect the shard's commit under way; account it; return the entries read ahead."""
        commit, entries = self.io.finish(shard)
        metrics.COMMIT_LATENCY.observe(time.perf_counter() - commit.sent_at)
        self._account(commit, commit.entries)
        if entries:
            shard.last_id = entries[-1][0]
        return entries

    def _account(self, commit: Commit, n_entries: int) -> None:
        """Counters and metrics of one committed batch."""
        self.totals["batches"] += 1
        self.totals["values"] += n_entries
        self.totals["predictions"] += commit.n_predictions
        self.totals["deadletters"] += len(commit.deadletters)
        metrics.VALUES_READ.inc(n_entries)
        metrics.PREDICTIONS.inc(commit.n_predictions)
        metrics.BATCH_SIZE.observe(n_entries)
        for reason, n in commit.reasons.items():
            metrics.DEADLETTERED.labels(reason=reason).inc(n)
        if commit.model_seconds:
            metrics.MODEL_LATENCY.observe(commit.model_seconds)
        for lag in commit.lags_ms:
            metrics.E2E_LAG.observe(max(lag, 0) / 1000)
        if commit.abs_err_n:
            self.errors.append((commit.abs_err_sum, commit.abs_err_n))
            self.unflushed_errors[0] += commit.abs_err_sum
            self.unflushed_errors[1] += int(commit.abs_err_n)

    def _wait_for_data(self) -> None:
        """Block until a live shard has new entries (XREAD on the last delivered ids)."""
        live = [s for s in self.shards.values() if not s.recovering]
        if len(live) < len(self.shards):
            self.stopping.wait(0.01)  # recovering shards poll
            return
        if not live:
            return
        if self.s.cluster and len(live) > 1:
            for shard in live:  # streams live in different slots: one short wait each
                self.client.xread({shard.keys.values: self._last_id(shard)},
                                  block=max(1, self.block_ms // len(live)), count=1)
            return
        self.client.xread({s.keys.values: self._last_id(s) for s in live},
                          block=self.block_ms, count=1)

    def _last_id(self, shard: Shard) -> bytes:
        """The group's last delivered id of the shard's stream (cached after the first ask)."""
        if shard.last_id is None:
            shard.last_id = b"$"
            for group in self.client.xinfo_groups(shard.keys.values):
                info = group_fields(group)
                if info[b"name"] in (self.s.group, self.s.group.encode()):
                    shard.last_id = info[b"last-delivered-id"]
        return shard.last_id

    # --- shards and models ------------------------------------------------------
    def maintain(self) -> None:
        """Heartbeat, renew leases, rebalance, publish accuracy and group gauges."""
        if not self.scripts_loaded:
            self.scripts.load()
            self.scripts.probe()
            self.scripts_loaded = True
        live = self.leases.heartbeat(self.status())
        for k, shard in list(self.shards.items()):
            if not self.leases.renew(k, shard.token):
                log.warning("lease of shard %d expired; dropping it", k)
                self._drop(k)
        if self.model is not None:
            wanted = assign(self.s.shards, live, self.consumer)
            for k in set(self.shards) - wanted:
                token = self.shards[k].token
                self._drop(k)  # settles the commit in flight; forgotten before another can take it
                self.leases.release(k, token)
                log.info("released shard %d (rebalance)", k)
            for k in sorted(wanted - set(self.shards)):
                self._acquire(k)
        metrics.SHARDS_OWNED.set(len(self.shards))
        metrics.READY.set(1 if self.model is not None and self.connected else 0)
        self._update_group_gauges()
        self._flush_accuracy()

    def _acquire(self, k: int) -> None:
        token = self.leases.acquire(k)
        if token is None:
            return
        sk = keys.shard_keys(k, self.s.shards, self.s.cluster)
        try:
            ensure_group(self.client, sk.values, self.s.group)
        except BaseException:
            self.leases.release(k, token)  # nobody else knows this token: give the shard back
            raise
        store = SeriesStore(self.model.n_steps, self.s.max_series)
        self.shards[k] = Shard(keys=sk, token=token, store=store)
        log.info("acquired shard %d (%s) token=%s", k, sk.values, token.split(":", 1)[0])

    def _drop(self, k: int) -> None:
        shard = self.shards.pop(k, None)
        if shard is not None:
            shard.settle_quietly()
            shard.close()
        metrics.SHARDS_OWNED.set(len(self.shards))

    def _swap_model(self, model: Any) -> None:
        """Serve a new model from the next batch on; windows are kept (resized if needed)."""
        old = self.model
        self.model = model
        self.errors.clear()
        self.next_maintenance = 0.0  # acquire shards right away
        for shard in self.shards.values():
            shard.store.resize(model.n_steps)
        metrics.set_model(model.version, str(model.manifest.get("arch", "")), model.n_steps)
        log.info("serving model %s (was %s)", model.version, getattr(old, "version", None))

    def _reset_all(self) -> None:
        for shard in self.shards.values():
            shard.reset()

    def _disconnected(self, exc: Exception) -> None:
        if self.connected:
            name = type(exc).__name__
            log.warning("Redis unavailable (%s: %s); retrying with backoff", name, exc)
            metrics.RECONNECTS.inc()
        self.connected = False
        self.scripts_loaded = False  # a restarted Redis has an empty script cache
        metrics.READY.set(0)
        self._reset_all()
        self.next_maintenance = 0.0

    def _flush_accuracy(self) -> None:
        total, n = self.unflushed_errors
        if n and self.model is not None:
            v = self.model.version
            pipe = self.client.pipeline(transaction=False)
            pipe.hincrbyfloat(keys.ACCURACY, f"{v}:abs_err_sum", total)
            pipe.hincrby(keys.ACCURACY, f"{v}:count", n)
            pipe.execute()
            self.unflushed_errors = [0.0, 0]
            s = sum(e[0] for e in self.errors)
            c = sum(e[1] for e in self.errors)
            if c:  # errors were cleared by a model swap
                metrics.ONLINE_MAE.labels(version=v).set(s / c)

    def _update_group_gauges(self) -> None:
        """Consumer-group lag and pending count of every owned shard's stream."""
        self.lag = 0
        for shard in self.shards.values():
            try:
                groups = self.client.xinfo_groups(shard.keys.values)
            except redis.ResponseError:  # the stream is gone; the read path re-creates it
                continue
            for group in groups:
                info = group_fields(group)
                if info[b"name"] in (self.s.group, self.s.group.encode()):
                    lag = int(info.get(b"lag") or 0)
                    self.lag += lag
                    metrics.GROUP_LAG.labels(stream=shard.keys.values).set(lag)
                    metrics.PENDING.labels(stream=shard.keys.values).set(int(info[b"pending"]))

    def _summary(self) -> None:
        """The periodic summary line: totals, rates since the last one, lag."""
        now = time.monotonic()
        elapsed = max(now - self.last_summary[0], 1e-9)
        rate = (self.totals["values"] - self.last_summary[1]) / elapsed
        self.last_summary = (now, self.totals["values"])
        self.next_summary = now + self.s.summary_interval_s
        log.info("summary", extra={**self.totals, "values_per_s": round(rate, 1), "lag": self.lag,
                                   "shards": sorted(self.shards),
                                   "model": getattr(self.model, "version", None)})

    def shutdown(self) -> None:
        """Release leases and leave the live set (best effort), then stop the watcher."""
        self.watcher.stop()
        for k, shard in list(self.shards.items()):
            try:
                if shard.inflight is not None:
                    self._settle(shard)  # the batch in hand is committed before leaving
                self.leases.release(k, shard.token)
            except (Fenced, redis.RedisError) as exc:
                log.warning("shard %d not released cleanly: %s", k, exc)
            finally:
                shard.close()
        try:
            self._flush_accuracy()
            self.leases.leave()
        except redis.RedisError as exc:
            log.warning("could not leave cleanly: %s", exc)
        log.info("stopped", extra=self.totals)
