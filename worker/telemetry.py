"""The worker's numbers: totals, Prometheus metrics, online accuracy, group lag, summary lines."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import redis

from forecast import keys
from forecast.redis_conn import group_info
from worker import metrics
from worker.batch import Commit

log = logging.getLogger(__name__)


class Telemetry:
    """Counters of one worker and what it reports about them."""

    def __init__(self, summary_interval_s: float) -> None:
        self.summary_interval_s = summary_interval_s
        self.totals = {"values": 0, "predictions": 0, "deadletters": 0, "batches": 0}
        self.errors: deque[tuple[float, int]] = deque(maxlen=200)  # (abs err sum, n) per batch
        self.unflushed = [0.0, 0]  # online errors not yet added to forecast:accuracy
        self.next_summary = time.monotonic() + summary_interval_s
        self.last_summary = (time.monotonic(), 0)  # (when, values) of the last summary line
        self.lag = 0  # entries not yet delivered, over the owned shards

    def account(self, commit: Commit, n_entries: int) -> None:
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
        for (kind, direction), n in commit.anomalies.items():
            metrics.ANOMALIES.labels(kind=kind, direction=direction).inc(n)
        if commit.model_seconds:
            metrics.MODEL_LATENCY.observe(commit.model_seconds)
        for lag in commit.lags_ms:
            metrics.E2E_LAG.observe(max(lag, 0) / 1000)
        if commit.abs_err_n:
            self.errors.append((commit.abs_err_sum, commit.abs_err_n))
            self.unflushed[0] += commit.abs_err_sum
            self.unflushed[1] += int(commit.abs_err_n)

    def new_model(self) -> None:
        """Forget the rolling errors of the previous model."""
        self.errors.clear()

    def flush_accuracy(self, client: Any, version: str | None) -> None:
        """Add the online errors since the last flush to forecast:accuracy; update the gauge."""
        total, n = self.unflushed
        if not n or version is None:
            return
        pipe = client.pipeline(transaction=False)
        pipe.hincrbyfloat(keys.ACCURACY, f"{version}:abs_err_sum", total)
        pipe.hincrby(keys.ACCURACY, f"{version}:count", n)
        pipe.execute()
        self.unflushed = [0.0, 0]
        s = sum(e[0] for e in self.errors)
        c = sum(e[1] for e in self.errors)
        if c:  # errors were cleared by a model swap
            metrics.ONLINE_MAE.labels(version=version).set(s / c)

    def group_gauges(self, client: Any, streams: list[str], group: str) -> None:
        """Consumer-group lag and pending count of every owned shard's stream."""
        self.lag = 0
        for stream in streams:
            try:
                info = group_info(client, stream, group)
            except redis.ResponseError:  # the stream is gone; the read path re-creates it
                continue
            if info:
                lag = int(info.get("lag") or 0)
                self.lag += lag
                metrics.GROUP_LAG.labels(stream=stream).set(lag)
                metrics.PENDING.labels(stream=stream).set(int(info["pending"]))

    def summary_due(self, now: float) -> bool:
        """Whether the periodic summary line is due."""
        return now >= self.next_summary

    def summary(self, shards: list[int], model: str | None) -> None:
        """The periodic summary line: totals, rates since the last one, lag."""
        now = time.monotonic()
        elapsed = max(now - self.last_summary[0], 1e-9)
        rate = (self.totals["values"] - self.last_summary[1]) / elapsed
        self.last_summary = (now, self.totals["values"])
        self.next_summary = now + self.summary_interval_s
        log.info("summary", extra={**self.totals, "values_per_s": round(rate, 1), "lag": self.lag,
                                   "shards": shards, "model": model})
