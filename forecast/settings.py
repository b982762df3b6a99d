"""Every setting of the product, read from `FORECAST_*` variables, a `.env` file and CLI flags."""

from __future__ import annotations

import os
import socket
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Arch = Literal["simple_rnn", "lstm", "gru"]


class Settings(BaseSettings):
    """All settings; each field `x` is read from `FORECAST_X` (CLI flags override)."""

    model_config = SettingsConfigDict(
        env_prefix="FORECAST_", env_file=".env", extra="ignore", validate_default=True
    )

    # --- connection -------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL (redis://, rediss://, user:password@ allowed)",
    )
    cluster: bool = Field(False, description="Use the Redis Cluster client (redis-py RedisCluster)")
    shards: int = Field(
        1,
        ge=1,
        le=4096,
        description="Number of input shards; 1 keeps the plain forecast:values stream",
    )

    # --- worker -------------------------------------------------------------------
    group: str = Field(
        "forecast", min_length=1, description="Consumer group name on the input streams"
    )
    consumer: str = Field("", description="Consumer (worker) name; default <hostname>-<pid>")
    batch_size: int = Field(
        5000, ge=1, le=100_000, description="XREADGROUP COUNT: entries read per batch"
    )
    block_ms: int = Field(1000, ge=1, description="XREADGROUP BLOCK milliseconds when idle")
    predictions_maxlen: int = Field(
        1_000_000, ge=1, description="Approximate MAXLEN of the predictions stream"
    )
    deadletter_maxlen: int = Field(
        100_000, ge=1, description="Approximate MAXLEN of the dead-letter stream"
    )
    max_series: int = Field(
        1_000_000,
        ge=1,
        description="Series windows held in memory (LRU; evicted ones reload from the checkpoint)",
    )
    max_series_bytes: int = Field(256, ge=1, description="Longest accepted series id, in bytes")
    max_value_bytes: int = Field(
        64, ge=1, description="Longest accepted value / ts field, in bytes"
    )
    claim_min_idle_ms: int = Field(
        0, ge=0, description="XAUTOCLAIM min idle time for entries of a previous owner"
    )
    max_deliveries: int = Field(
        5, ge=1, description="Deliveries after which an entry is dead-lettered as poison"
    )
    lease_ttl_ms: int = Field(
        5000, ge=200, description="Shard lease time-to-live; renewed every third of it"
    )
    model_poll_s: float = Field(
        1.0, gt=0, description="How often the worker checks for a new current model"
    )
    heartbeat_ttl_s: int = Field(
        15, ge=1, description="TTL of the worker heartbeat key read by `forecast worker --check`"
    )
    metrics_port: int = Field(
        9108, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz (0 disables)"
    )
    metrics_host: str = Field("0.0.0.0", description="Address the metrics/health HTTP server binds")
    log_json: bool = Field(False, description="Log one JSON object per line")
    log_level: str = Field("INFO", description="Logging level")
    summary_interval_s: float = Field(
        30.0, gt=0, description="Seconds between periodic summary log lines"
    )
    model_hmac_key: str = Field(
        "", description="Optional HMAC-SHA256 key; when set, models must carry a valid signature"
    )

    # --- trainer ------------------------------------------------------------------
    forecaster: Literal["rnn", "hybrid"] = Field(
        "rnn",
        description="rnn: the recurrent net alone; hybrid: statistical experts from the window "
        "weighted by a recurrent net (the default of `train --csv/--from-stream`)",
    )
    ensemble: int = Field(
        3, ge=1, le=16, description="Hybrid: members with different seeds, averaged in one model"
    )
    arch: Arch = Field("simple_rnn", description="Recurrent layer: simple_rnn, lstm or gru")
    n_steps: int = Field(3, ge=1, le=512, description="Window length (values the model sees)")
    units: int = Field(50, ge=1, le=4096, description="Recurrent units")
    epochs: int = Field(200, ge=1, description="Maximum training epochs")
    train_batch_size: int = Field(32, ge=1, description="Training batch size")
    learning_rate: float = Field(0.001, gt=0, description="Adam learning rate")
    seed: int = Field(42, description="Random seed (reproducible training)")
    val_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Time-ordered fraction of each series held out for validation",
    )
    patience: int = Field(20, ge=0, description="Early-stopping patience in epochs (0 disables)")
    train_budget_s: float = Field(
        0.0, ge=0.0, description="Hybrid: stop training after this many seconds (0: no limit)"
    )
    horizon: int = Field(
        1, ge=1, le=512, description="Values predicted ahead (direct multi-output)"
    )
    coverage: float = Field(
        0.9, gt=0.0, lt=1.0, description="Nominal coverage of the prediction interval"
    )
    scaling: Literal["auto", "none", "window"] = Field(
        "auto", description="Input scaling inside the model"
    )
    season_period: int = Field(0, ge=0, description="Seasonal-naive period (0 = detect)")
    model_dir: str = Field("models", description="Local directory the trainer writes artifacts to")

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        scheme = urlsplit(v).scheme
        if scheme not in ("redis", "rediss", "unix"):
            got = scheme or "no scheme"
            raise ValueError(
                f"redis_url must start with redis://, rediss:// or unix:// (got {got!r})"
            )
        return v

    def consumer_name(self) -> str:
        """The consumer name, defaulting to <hostname>-<pid>."""
        return self.consumer or f"{socket.gethostname()}-{os.getpid()}"

    def safe_dump(self, *, worker_only: bool = False) -> dict[str, Any]:
        """Settings as a dict with secrets masked, for the start-up log line."""
        data = self.model_dump(exclude=TRAINER_FIELDS if worker_only else None)
        data["redis_url"] = mask_url(self.redis_url)
        if self.model_hmac_key:
            data["model_hmac_key"] = "***"
        return data


TRAINER_FIELDS = {
    "forecaster",
    "ensemble",
    "arch",
    "n_steps",
    "units",
    "epochs",
    "train_batch_size",
    "learning_rate",
    "seed",
    "val_fraction",
    "patience",
    "train_budget_s",
    "horizon",
    "coverage",
    "scaling",
    "season_period",
    "model_dir",
}


def mask_url(url: str) -> str:
    """Hide the password in a Redis URL.

    >>> mask_url("redis://worker:s3cret@host:6379/0")
    'redis://worker:***@host:6379/0'
    >>> mask_url("redis://127.0.0.1:6379")
    'redis://127.0.0.1:6379'
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/.env with CLI overrides (None values are ignored)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
