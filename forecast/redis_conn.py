"""Creating Redis clients from settings (single instance or cluster), and reading group info."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError
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


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def group_info(client: Any, stream: str, group: str) -> dict[str, Any]:
    """XINFO GROUPS of one group as a str-keyed dict ({} when the stream or group is missing).

    Accepts the parsed replies (dicts) and the raw flat arrays of the worker's client.

    >>> class C:
    ...     def xinfo_groups(self, stream): return [[b"name", b"g", b"pending", 2]]
    >>> group_info(C(), "s", "g")
    {'name': 'g', 'pending': 2}
    """
    try:
        groups = client.xinfo_groups(stream)
    except ResponseError:  # no such stream
        return {}
    for g in groups:
        pairs = g.items() if isinstance(g, dict) else zip(g[::2], g[1::2], strict=False)
        info = {_text(k): v for k, v in pairs}
        info["name"] = _text(info.get("name"))
        if info["name"] == group:
            return info
    return {}
