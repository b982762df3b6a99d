"""Creating Redis clients from settings (single instance or cluster), and reading group info."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ResponseError
from redis.retry import Retry
from redis.sentinel import Sentinel

from forecast.errors import UsageError
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
        # No silent re-sends, on every kind of client: a command whose reply was lost (an
        # XADD, a commit, a claim) must not run twice behind the caller's back. Whoever
        # retries does so on purpose: the worker's and trainer's except ladders (the worker
        # recovers from the checkpoint), the Producer with its sequence numbers.
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.sentinels:
        return _sentinel_master(settings, kwargs)
    if settings.cluster:
        return RedisCluster.from_url(settings.redis_url, **kwargs)
    return redis.Redis.from_url(settings.redis_url, **kwargs)


def sentinel_addresses(spec: str) -> list[tuple[str, int]]:
    """`host:port,host:port` as a list of pairs (UsageError when malformed).

    >>> sentinel_addresses("10.0.0.1:26379, s2:26380")
    [('10.0.0.1', 26379), ('s2', 26380)]
    >>> sentinel_addresses("[::1]:26379")
    [('::1', 26379)]
    """
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"FORECAST_SENTINELS: {part!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise UsageError("FORECAST_SENTINELS names no sentinel")
    return out


def _sentinel_master(settings: Settings, kwargs: dict[str, Any]) -> redis.Redis:
    """A client of the current primary of `sentinel_master`, as the sentinels say.

    FORECAST_REDIS_URL gives only the credentials, the database and TLS (rediss://); its
    host and port are not used. redis-py's SentinelManagedConnection asks the sentinels on
    every (re)connect, and turns a READONLY reply (a demoted primary) into a ConnectionError:
    the worker's outage path, which rebuilds from the new primary.
    """
    if settings.cluster:
        raise UsageError("FORECAST_SENTINELS and FORECAST_CLUSTER cannot be used together")
    if not settings.sentinel_master:
        raise UsageError("FORECAST_SENTINELS needs FORECAST_SENTINEL_MASTER (the master name)")
    url = parse_url(settings.redis_url)
    tls = url.pop("connection_class", None) is SSLConnection
    url.pop("host", None)
    url.pop("port", None)
    url.pop("path", None)
    ssl = {k: v for k, v in url.items() if k.startswith("ssl")}
    if tls:
        ssl["ssl"] = True
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": kwargs["socket_connect_timeout"],
        "socket_connect_timeout": kwargs["socket_connect_timeout"],
        **ssl,
    }
    if settings.sentinel_password:
        sentinel_kwargs["password"] = settings.sentinel_password
    sentinel = Sentinel(sentinel_addresses(settings.sentinels), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(settings.sentinel_master, **kwargs, **url, **ssl)


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
