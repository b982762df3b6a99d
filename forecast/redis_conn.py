"""Creating Redis clients from settings (single instance or cluster)."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from forecast.settings import Settings

AnyRedis = Any  # redis.Redis | RedisCluster; both expose the commands we use


def connect(settings: Settings, *, timeout: float | None = 10.0) -> AnyRedis:
    """A bytes-in/bytes-out client for `settings.redis_url` (TLS and ACL users via the URL)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
        "decode_responses": False,
        "protocol": 2,  # raw stream replies are parsed as RESP2 arrays
    }
    if settings.cluster:
        # No silent re-sends: a commit whose reply was lost must not run twice; the worker
        # recovers from the checkpoint instead (single-node clients never retry by default).
        return RedisCluster.from_url(settings.redis_url, retry=Retry(NoBackoff(), 0), **kwargs)
    return redis.Redis.from_url(settings.redis_url, **kwargs)
