"""Prometheus metrics of the watching trainer (served when FORECAST_TRAINER_METRICS_PORT > 0)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, start_http_server

log = logging.getLogger(__name__)

TRAININGS = Counter("forecast_trainer_trainings_total",
                    "Trainings of the watching trainer, by result", ["result"])
FIRST_MODEL_REFUSED = Gauge("forecast_trainer_first_model_refused",
                            "1 while the first model was refused by the gate (nothing current)")
NEXT_TRAINING = Gauge("forecast_trainer_next_training_timestamp_seconds",
                      "When the next training is due (Unix time)")
REDIS_ERRORS = Counter("forecast_trainer_redis_errors_total",
                       "Redis errors the watching trainer waited out")


def serve(port: int) -> None:
    """Serve /metrics on `port` (0: not at all); a port in use is logged, not fatal."""
    if port <= 0:
        return
    try:
        start_http_server(port)
        log.info("trainer metrics on :%d/metrics", port)
    except OSError as exc:
        log.warning("trainer metrics not served on port %d: %s", port, exc)
