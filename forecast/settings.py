"""Every setting of the product, read from `FORECAST_*` variables, a `.env` file and CLI flags."""

from __future__ import annotations

import os
import socket
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from forecast.secrets import mask_secrets

Arch = Literal["simple_rnn", "lstm", "gru"]

# The commands whose CLI flags a setting gets (cli.parser derives every flag from here).
CONNECTED = ("train", "models", "worker", "push", "tail", "get", "status", "plot", "replay")
WORKER = ("worker",)
TRAINER = ("train",)


def setting(default: Any, description: str, *, cli: tuple[str, ...] = (), flag: str = "",
            **constraints: Any) -> Any:
    """A settings field whose flag (default `--field-name`) exists on the `cli` commands."""
    extra: dict[str, Any] = {"cli": list(cli)}
    if flag:
        extra["flag"] = flag
    return Field(default, description=description, json_schema_extra=extra, **constraints)


class Settings(BaseSettings):
    """All settings; each field `x` is read from `FORECAST_X` (CLI flags override)."""

    model_config = SettingsConfigDict(
        env_prefix="FORECAST_", env_file=".env", extra="ignore", validate_default=True
    )

    # --- connection -------------------------------------------------------------
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis URL (redis://, rediss://, user:password@ allowed)", cli=CONNECTED,
    )
    cluster: bool = setting(
        False, "Use the Redis Cluster client (redis-py RedisCluster)", cli=CONNECTED
    )
    sentinels: str = setting(
        "", "Redis Sentinel addresses, host:port,host:port,...: ask them for the primary "
        "(FORECAST_REDIS_URL then gives only credentials, database and TLS)", cli=CONNECTED,
    )
    sentinel_master: str = setting(
        "", "The master name the sentinels monitor (with FORECAST_SENTINELS)", cli=CONNECTED,
    )
    # A secret: environment or .env only, never a flag.
    sentinel_password: str = setting("", "Password of the sentinels themselves (if they have one)")
    shards: int = setting(
        1, "Number of input shards; 1 keeps the plain forecast:values stream", cli=CONNECTED,
        ge=1, le=4096,
    )

    # --- worker -------------------------------------------------------------------
    group: str = setting(
        "forecast", "Consumer group name on the input streams", cli=(*WORKER, "status"),
        min_length=1,
    )
    consumer: str = setting("", "Consumer (worker) name; default <hostname>-<pid>", cli=WORKER)
    batch_size: int = setting(
        5000, "XREADGROUP COUNT: entries read per batch", cli=WORKER, ge=1, le=100_000
    )
    block_ms: int = setting(1000, "XREADGROUP BLOCK milliseconds when idle", cli=WORKER, ge=1)
    predictions_maxlen: int = setting(
        1_000_000, "Approximate MAXLEN of the predictions stream", cli=WORKER, ge=1
    )
    deadletter_maxlen: int = setting(
        100_000, "Approximate MAXLEN of the dead-letter stream", cli=WORKER, ge=1
    )
    input_maxlen: int = setting(
        1_000_000,
        "Committed entries kept per input stream (approximate; 0 = no limit); entries not "
        "yet committed are never trimmed", cli=WORKER, ge=0,
    )
    input_retention_ms: int = setting(
        86_400_000,
        "Committed input entries older than this are trimmed (0 = no limit)", cli=WORKER, ge=0,
    )
    series_ttl_ms: int = setting(
        604_800_000,
        "The checkpoint of a series idle longer than this is removed; it starts a fresh "
        "window (0 = never)", cli=WORKER, ge=0,
    )
    commit_replicas: int = setting(
        0, "A batch's commit counts only once this many replicas confirm it (WAIT); fewer "
        "within the timeout is an outage: the worker resets and recovers", cli=WORKER, ge=0,
    )
    wait_replicas: int = setting(
        0, "Replicas that must confirm pushed values (WAIT) before push succeeds",
        cli=("push",), ge=0,
    )
    replicas_timeout_ms: int = setting(
        1000, "How long a commit or push waits for FORECAST_COMMIT_REPLICAS / --wait-replicas",
        cli=(*WORKER, "push"), ge=1,
    )
    max_series: int = setting(
        1_000_000,
        "Series windows held in memory (LRU; evicted ones reload from the checkpoint)",
        cli=WORKER, ge=1,
    )
    max_series_bytes: int = setting(256, "Longest accepted series id, in bytes", cli=WORKER, ge=1)
    max_value_bytes: int = setting(
        64, "Longest accepted value / ts field, in bytes", cli=WORKER, ge=1
    )
    claim_min_idle_ms: int = setting(
        0, "XAUTOCLAIM min idle time for entries of a previous owner", cli=WORKER, ge=0
    )
    max_deliveries: int = setting(
        5, "Deliveries after which an entry is dead-lettered as poison", cli=WORKER, ge=1
    )
    lease_ttl_ms: int = setting(
        5000, "Shard lease time-to-live; renewed every third of it", cli=WORKER, ge=200
    )
    model_poll_s: float = setting(
        1.0, "How often the worker checks for a new current model", cli=WORKER, gt=0
    )
    heartbeat_ttl_s: int = setting(
        15, "TTL of the worker heartbeat key read by `forecast worker --check`", cli=WORKER, ge=1
    )
    metrics_port: int = setting(
        9108, "Port of /metrics, /healthz, /readyz (0 disables)", cli=WORKER, ge=0, le=65535
    )
    metrics_host: str = setting(
        "0.0.0.0", "Address the metrics/health HTTP server binds", cli=WORKER
    )
    log_json: bool = setting(False, "Log one JSON object per line", cli=(*WORKER, *TRAINER))
    log_level: str = setting("INFO", "Logging level", cli=(*WORKER, *TRAINER))
    summary_interval_s: float = setting(
        30.0, "Seconds between periodic summary log lines", cli=WORKER, gt=0
    )
    interval_gamma: float = setting(
        0.1, "Step of the adaptive intervals per series (ACI on a log width factor; 0: off)",
        cli=WORKER, ge=0.0, le=1.0,
    )
    gap_policy: Literal["carry", "fill", "reset"] = setting(
        "fill", "After missing steps of a series (learnt from its ts): fill (the model's "
        "forecasts of the missing steps enter the window, never scored; the default, chosen "
        "by make bench-gaps), carry (use the values as they come) or reset (the window starts "
        "again)", cli=WORKER,
    )
    gap_max_steps: int = setting(
        24, "A gap longer than this many steps resets the window, whatever the policy",
        cli=WORKER, ge=1, le=10_000,
    )
    anomaly_rate: float = setting(
        0.001, "Anomaly verdicts: the flags expected per value on normal data (each series' "
        "threshold calibrates itself to it online); 0 turns verdicts off (no anomaly fields, "
        "nothing written to forecast:anomalies)", cli=WORKER, ge=0.0, le=0.5,
    )
    anomaly_window: Literal["keep", "replace"] = setting(
        "keep", "What a value flagged as a spike leaves in its series' window: keep (the "
        "value itself) or replace (the forecast it was judged against, so one outlier does "
        "not pull the next forecasts; the value still reaches the output and the evidence)",
        cli=WORKER,
    )
    follow: str = setting(
        "", "Glob patterns, comma-separated, of series whose outputs also go to their own "
        "stream forecast:predictions:<series> (capped), for dashboards (empty: none)",
        cli=WORKER,
    )
    promote: Literal["auto", "manual"] = setting(
        "auto", "auto: workers promote a candidate (or roll back) on live evidence; manual: never",
        cli=WORKER,
    )
    promote_min_n: int = setting(
        500, "Joined actuals a promotion or rollback needs at least", cli=WORKER, ge=2
    )
    # A secret: environment or .env only, never a flag (it would show in `ps`).
    model_hmac_key: str = setting(
        "", "Optional HMAC-SHA256 key; when set, models must carry a valid signature"
    )

    # --- trainer ------------------------------------------------------------------
    forecaster: Literal["rnn", "hybrid"] = setting(
        "rnn", "rnn: the recurrent net alone; hybrid: statistical experts from the window "
        "weighted by a recurrent net (the default of `train --csv/--from-stream`)", cli=TRAINER,
    )
    per_series: bool = setting(
        False, "Hybrid: find each series' seasonal period and serve every period present, each "
        "with its own window, in one version; forecasts from a series' second value on (the "
        "default of `train --csv/--from-stream` without --n-steps or --season-period)",
        cli=TRAINER,
    )
    ensemble: int = setting(
        3, "Hybrid: members with different seeds, averaged in one model", cli=TRAINER,
        ge=1, le=16,
    )
    arch: Arch = setting("simple_rnn", "Recurrent layer: simple_rnn, lstm or gru", cli=TRAINER)
    n_steps: int = setting(
        3, "Window length (values the model sees)", cli=TRAINER, ge=1, le=512
    )
    units: int = setting(50, "Recurrent units", cli=TRAINER, ge=1, le=4096)
    epochs: int = setting(200, "Maximum training epochs", cli=TRAINER, ge=1)
    train_batch_size: int = setting(32, "Training batch size", cli=TRAINER, ge=1)
    learning_rate: float = setting(0.001, "Adam learning rate", cli=TRAINER, gt=0)
    seed: int = setting(42, "Random seed (reproducible training)", cli=TRAINER)
    val_fraction: float = setting(
        0.2, "Time-ordered fraction of each series held out for validation", cli=TRAINER,
        ge=0.0, lt=1.0,
    )
    patience: int = setting(
        20, "Early-stopping patience in epochs (0 disables)", cli=TRAINER, ge=0
    )
    train_budget_s: float = setting(
        0.0, "Hybrid: stop training after this many seconds (0: no limit)", cli=TRAINER, ge=0.0
    )
    horizon: int = setting(
        1, "Values predicted ahead (direct multi-output)", cli=TRAINER, ge=1, le=512
    )
    coverage: float = setting(
        0.9, "Nominal coverage of the prediction interval", cli=TRAINER, gt=0.0, lt=1.0
    )
    scaling: Literal["auto", "none", "window"] = setting(
        "auto", "Input scaling inside the model", cli=TRAINER
    )
    season_period: int = setting(
        0, "Seasonal-naive period (0 = detect)", cli=TRAINER, ge=0
    )
    model_dir: str = setting(
        "models", "Local directory the trainer writes artifacts to", cli=TRAINER
    )
    retrain_every_s: float = setting(
        3600.0, "train --watch: seconds between retrainings (drift retrains sooner)",
        cli=TRAINER, flag="--every", gt=0,
    )
    retrain_min_gap_s: float = setting(
        60.0, "train --watch: least seconds between two retrainings triggered by drift",
        cli=TRAINER, ge=0,
    )
    retrain_history: int = setting(
        2000, "train --watch: most recent values per series trained on (0: all kept)",
        cli=TRAINER, ge=0,
    )
    keep_versions: int = setting(
        10, "Versions whose blobs the registry keeps (current, candidates, rollback always)",
        cli=(*TRAINER, "models"), ge=1,
    )
    trainer_metrics_port: int = setting(
        0, "train --watch: port of the trainer's /metrics (0 disables)", cli=TRAINER,
        ge=0, le=65535,
    )

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
        data = self.model_dump(exclude=trainer_only_fields() if worker_only else None)
        data["redis_url"] = mask_secrets(self.redis_url)
        if self.model_hmac_key:
            data["model_hmac_key"] = "***"
        if self.sentinel_password:
            data["sentinel_password"] = "***"
        return data


def cli_commands(name: str) -> list[str]:
    """The commands that take a flag for setting `name`."""
    extra = Settings.model_fields[name].json_schema_extra
    return list(extra.get("cli", [])) if isinstance(extra, dict) else []  # type: ignore[arg-type]


def trainer_only_fields() -> set[str]:
    """Settings only the trainer uses (left out of the worker's start-up line)."""
    return {name for name in Settings.model_fields if cli_commands(name) == list(TRAINER)}


def load_settings(**overrides: Any) -> Settings:
    """Settings from env/.env with CLI overrides (None values are ignored)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
