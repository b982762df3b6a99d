"""Every Redis key name the product uses, in one place (the public contract).

Shards: with `shards == 1` (and no cluster) the plain names are used, so `redis-cli`
users can `XADD forecast:values ...` and `XREAD ... forecast:predictions`. With more
shards, shard `k` reads `forecast:values:{k}`; every key the per-batch commit touches
carries the shard's hash tag so that the commit is one atomic script on a Redis Cluster.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

VALUES = "forecast:values"
PREDICTIONS = "forecast:predictions"
LATEST = "forecast:latest"  # hash: series -> its newest forecast (JSON); per shard on a cluster
DEADLETTER = "forecast:deadletter"
ANOMALIES = "forecast:anomalies"  # stream: the flagged values; per shard on a cluster

# Model registry.
MODELS_STREAM = "forecast:models"  # announcements of published / promoted versions
MODEL_CURRENT = "forecast:model:current"  # string: the version workers serve
MODEL_VERSIONS = "forecast:model:versions"  # sorted set: version -> created_at (ms)
MODEL_SEQ = "forecast:model:seq"  # counter for new version numbers
MODEL_HISTORY = "forecast:model:history"  # list: earlier current versions, newest first (rollback)
MODEL_STATES = "forecast:model:states"  # hash: version -> candidate, previous, rejected, retired
EVENTS = "forecast:events"  # stream: drift events (event=drift, series, detector, statistic)
TRAINER = "forecast:trainer"  # string: the watching trainer's JSON status (with a TTL)

# Workers.
WORKERS = "forecast:workers"  # sorted set: consumer -> last heartbeat (ms)
WORKER_FORGET_MS = 60_000  # a worker silent this long is dropped from WORKERS
ACCURACY = "forecast:accuracy"  # hash: "<version>:abs_err_sum" / "<version>:count" (online errors)


def model_blob(version: str) -> str:
    """Key of a version's `.keras` bytes."""
    return f"forecast:model:{version}:blob"


def model_manifest(version: str) -> str:
    """Key of a version's JSON manifest."""
    return f"forecast:model:{version}:manifest"


def live(version: str) -> str:
    """Hash of a version's live evidence: sums over the actuals joined with its forecasts."""
    return f"forecast:live:{version}"


def live_pair(version: str, against: str) -> str:
    """Hash of paired evidence: `version` against `against` on the actuals both forecast."""
    return f"forecast:live:{version}:vs:{against}"


def live_series(version: str) -> str:
    """Hash of a version's live evidence per series (`<series>:n`, `:err`, `:naive`)."""
    return f"forecast:live:{version}:series"


def replay(version: str) -> str:
    """The default output stream of `forecast replay --version V`."""
    return f"forecast:replay:{version}"


def heartbeat(consumer: str) -> str:
    """Key of a worker's heartbeat (a JSON status with a TTL)."""
    return f"forecast:heartbeat:{consumer}"


def shard_of(series: bytes | str, shards: int) -> int:
    """The shard a series belongs to: crc32(utf-8 series id) mod shards.

    >>> shard_of("s1", 1)
    0
    >>> shard_of("a", 8), shard_of(b"a", 8)
    (3, 3)
    """
    if shards <= 1:
        return 0
    raw = series.encode() if isinstance(series, str) else series
    return zlib.crc32(raw) % shards


def values_stream(shard: int, shards: int, cluster: bool = False) -> str:
    """The input stream of a shard.

    >>> values_stream(0, 1)
    'forecast:values'
    >>> values_stream(3, 8)
    'forecast:values:{3}'
    >>> values_stream(0, 1, cluster=True)
    'forecast:values:{0}'
    """
    if shards == 1 and not cluster:
        return VALUES
    return f"forecast:values:{{{shard}}}"


@dataclass(frozen=True)
class ShardKeys:
    """The keys one shard's worker reads and commits to."""

    shard: int
    values: str
    predictions: str
    deadletter: str
    state: str  # hash: series -> checkpointed window blob
    lease: str  # string "<token>:<consumer>" with a PX ttl
    epoch: str  # counter: fencing tokens
    fence: str  # touched when a zombie tries to read: aborts its WATCHed read (see worker)
    seen: str = ""  # sorted set: series -> last commit time (ms), for FORECAST_SERIES_TTL_MS
    latest: str = ""  # hash: series -> its newest forecast (JSON)
    anomalies: str = ""  # stream: the flagged values (worker.anomaly)

    @property
    def commit_keys(self) -> list[str]:
        """KEYS of the commit script, in its order (then the followed series' streams)."""
        return [self.values, self.predictions, self.deadletter, self.state, self.lease,
                self.seen, self.latest, self.anomalies]

    def follow_stream(self, series: bytes) -> bytes:
        """The output stream of one followed series (FORECAST_FOLLOW), beside this shard's.

        >>> shard_keys(0, 1).follow_stream(b"pump-1"), shard_keys(3, 4, True).follow_stream(b"a")
        (b'forecast:predictions:pump-1', b'forecast:predictions:{3}:a')
        """
        return self.predictions.encode() + b":" + series


def shard_keys(shard: int, shards: int, cluster: bool = False) -> ShardKeys:
    """All keys of a shard.

    >>> k = shard_keys(0, 1)
    >>> k.values, k.predictions, k.state
    ('forecast:values', 'forecast:predictions', 'forecast:state')
    >>> k = shard_keys(2, 4, cluster=True)
    >>> k.values, k.predictions, k.lease, k.anomalies
    ('forecast:values:{2}', 'forecast:predictions:{2}', 'forecast:lease:{2}', \
'forecast:anomalies:{2}')
    """
    values = values_stream(shard, shards, cluster)
    tag = "" if shards == 1 and not cluster else f":{{{shard}}}"
    # On one Redis all shards share the plain output streams; a cluster needs them per shard.
    out_tag = tag if cluster else ""
    return ShardKeys(
        shard=shard,
        values=values,
        predictions=PREDICTIONS + out_tag,
        deadletter=DEADLETTER + out_tag,
        state=f"forecast:state{tag}",
        lease=f"forecast:lease{tag}",
        epoch=f"forecast:epoch{tag}",
        fence=f"forecast:fence{tag}",
        seen=f"forecast:seen{tag}",
        latest=LATEST + out_tag,
        anomalies=ANOMALIES + out_tag,
    )


def output_streams(shards: int, cluster: bool) -> list[str]:
    """Every predictions stream a reader should follow."""
    if not cluster:
        return [PREDICTIONS]
    return [shard_keys(k, shards, cluster).predictions for k in range(shards)]


def latest_hashes(shards: int, cluster: bool) -> list[str]:
    """Every `forecast:latest` hash (one per shard on a cluster)."""
    if not cluster:
        return [LATEST]
    return [shard_keys(k, shards, cluster).latest for k in range(shards)]


def deadletter_streams(shards: int, cluster: bool) -> list[str]:
    """Every dead-letter stream."""
    if not cluster:
        return [DEADLETTER]
    return [shard_keys(k, shards, cluster).deadletter for k in range(shards)]


def anomaly_streams(shards: int, cluster: bool) -> list[str]:
    """Every stream of flagged values (`forecast:anomalies`, one per shard on a cluster).

    >>> anomaly_streams(4, False), anomaly_streams(2, True)
    (['forecast:anomalies'], ['forecast:anomalies:{0}', 'forecast:anomalies:{1}'])
    """
    if not cluster:
        return [ANOMALIES]
    return [shard_keys(k, shards, cluster).anomalies for k in range(shards)]
