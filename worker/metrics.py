"""Prometheus metrics of the worker, registered once in the default registry.

The worker imports these module-level objects and updates them; `worker.health` serves
them on `/metrics`. Names are part of the product contract (dashboards, alerts).
"""

from __future__ import annotations

import contextlib
import logging

from prometheus_client import Counter, Gauge, Histogram, Info

from forecast.registry import version_number

log = logging.getLogger(__name__)

# Entries per XREADGROUP batch: 1 .. 100000, roughly log-spaced (1-2-5 steps).
BATCH_BUCKETS = (
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
)
# Seconds from the input entry's time to the committed prediction: 0.5 ms .. 60 s.
LAG_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
# Seconds of one model call / one commit script: 0.1 ms .. 10 s.
CALL_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

VALUES_READ = Counter("forecast_values_read_total", "Input stream entries read")
PREDICTIONS = Counter(
    "forecast_predictions_written_total", "Predictions written to the output stream"
)
DEADLETTERED = Counter(
    "forecast_deadletter_total", "Input entries sent to the dead-letter stream", ["reason"]
)
BATCH_SIZE = Histogram(
    "forecast_batch_size", "Entries per batch read from the input streams", buckets=BATCH_BUCKETS
)
MODEL_LATENCY = Histogram(
    "forecast_model_call_seconds", "Seconds per batched model call", buckets=CALL_BUCKETS
)
COMMIT_LATENCY = Histogram(
    "forecast_commit_seconds", "Seconds per atomic batch commit", buckets=CALL_BUCKETS
)
E2E_LAG = Histogram(
    "forecast_end_to_end_lag_seconds",
    "Seconds from the input entry's id time to its committed prediction (up to 8 sampled "
    "predictions per batch)",
    buckets=LAG_BUCKETS,
)
GROUP_LAG = Gauge("forecast_group_lag", "Entries not yet delivered to the group", ["stream"])
PENDING = Gauge("forecast_pending", "Entries delivered but not acknowledged", ["stream"])
MODEL_INFO = Info("forecast_model", "The model version the worker serves")
MODEL_VERSION = Gauge(
    "forecast_model_version_number", "Numeric part of the served model version (v12 -> 12)"
)
RELOADS = Counter("forecast_model_reloads_total", "Successful model (re)loads")
RELOAD_FAILURES = Counter(
    "forecast_model_reload_failures_total", "Model loads that failed or were rejected"
)
SERIES_EXPIRED = Counter(
    "forecast_series_expired_total",
    "Series checkpoints removed after FORECAST_SERIES_TTL_MS without a value",
)
REPLICA_TIMEOUTS = Counter(
    "forecast_commit_replica_timeouts_total",
    "Commits that fewer than FORECAST_COMMIT_REPLICAS replicas confirmed in time",
)
ANOMALIES = Counter(
    "forecast_anomalies_total",
    "Values flagged anomalous (FORECAST_ANOMALY_RATE), written to forecast:anomalies",
    ["kind", "direction"],
)
GAPS = Counter("forecast_gaps_total",
               "Values that came after missing steps of their series (worker.timing)")
CHECKPOINT_ERRORS = Counter(
    "forecast_checkpoint_errors_total",
    "Series checkpoints that could not be read (the series started a fresh window)",
)
RECONNECTS = Counter("forecast_redis_reconnects_total", "Reconnections to Redis after an error")
ONLINE_MAE = Gauge(
    "forecast_online_mae", "Mean absolute error of served predictions, per version", ["version"]
)
SHARDS_OWNED = Gauge("forecast_shards_owned", "Input shards this worker holds the lease of")
READY = Gauge("forecast_ready", "1 when the worker has a model and owns its work, else 0")

def set_model(version: str, arch: str, n_steps: int) -> None:
    """Record the served model in `forecast_model_info` and `forecast_model_version_number`."""
    MODEL_INFO.info({"version": version, "arch": arch, "n_steps": str(n_steps)})
    MODEL_VERSION.set(version_number(version))

DRIFT = Counter("forecast_drift_events_total", "Drift alarms on the live error stream", ["scope"])
LIVE_MASE = Gauge("forecast_live_mase",
                  "Live MASE of a served version (scaled error over naive's, all workers)",
                  ["version"])
LIVE_COVERAGE = Gauge("forecast_live_coverage",
                      "Share of actuals inside the version's live interval", ["version"])
LIVE_WIDTH = Gauge("forecast_live_interval_width",
                   "Mean live interval width of a version, in naive-error units", ["version"])
MODEL_EVENTS = Counter("forecast_model_events_total",
                       "Promotions and rollbacks decided by this worker", ["event"])
SHADOWS = Gauge("forecast_shadow_models", "Model versions this worker runs in shadow")
SHADOW_ERRORS = Counter("forecast_shadow_errors_total",
                        "Batches a shadowed version raised on (its forecasts are not scored)")


def drop_version(version: str) -> None:
    """Forget the per-version series of a version no longer served (bounded label sets)."""
    for gauge in (LIVE_MASE, LIVE_COVERAGE, LIVE_WIDTH, ONLINE_MAE):
        with contextlib.suppress(KeyError):  # never set for this version
            gauge.remove(version)
