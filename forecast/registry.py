"""The model registry in Redis: versioned artifacts, the current pointer, history, announcements.

Write order: a version's blob and manifest are stored before it is listed and before the
current pointer can name it, so a reader never sees a current version without its bytes.
The switch (SET current, LPUSH the previous one onto the history, XADD the announcement) is
one MULTI/EXEC with WATCH on a single Redis. Those keys carry no hash tag, so on a Redis
Cluster they live in different slots: there the writes run one by one, history first, so a
crash between them leaves at worst a history entry equal to the current version (skipped by
rollback). This module does not import TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from redis.cluster import RedisCluster

from forecast import keys

log = logging.getLogger(__name__)

HISTORY_LEN = 100  # earlier current versions kept for rollback
ANNOUNCE_MAXLEN = 10_000
EVENTS = ("published", "promoted", "rolled_back")


class RegistryError(LookupError):
    """An unknown version, or nothing to roll back to."""


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def version_number(version: str) -> int:
    """The sequence number of a version name (0 when it has none).

    >>> version_number("v12"), version_number("local")
    (12, 0)
    """
    digits = version[1:] if version.startswith("v") else ""
    return int(digits) if digits.isdigit() else 0


def current_version(client: Any) -> str | None:
    """The version workers serve, or None before the first publish."""
    return _text(client.get(keys.MODEL_CURRENT))


def get_manifest(client: Any, version: str) -> dict[str, Any]:
    """A version's manifest; RegistryError if the version is unknown."""
    raw = client.get(keys.model_manifest(version))
    if raw is None:
        raise RegistryError(f"unknown model version {version!r}")
    data: dict[str, Any] = json.loads(raw)
    return data


def get_blob(client: Any, version: str) -> bytes:
    """A version's `.keras` bytes; RegistryError if they are missing."""
    raw = client.get(keys.model_blob(version))
    if raw is None:
        raise RegistryError(f"model version {version!r} has no blob in the registry")
    return bytes(raw)


def exists(client: Any, version: str) -> bool:
    """True when both the blob and the manifest of `version` are stored."""
    return bool(client.exists(keys.model_blob(version))) and bool(
        client.exists(keys.model_manifest(version)))


def list_versions(client: Any) -> list[dict[str, Any]]:
    """Every stored manifest, oldest first (a version without manifest shows as `missing`)."""
    entries = client.zrange(keys.MODEL_VERSIONS, 0, -1, withscores=True)
    versions = sorted(((_text(v) or "", s) for v, s in entries),
                      key=lambda vs: (vs[1], version_number(vs[0])))
    if not versions:
        return []
    pipe = client.pipeline(transaction=False)
    for v, _ in versions:
        pipe.get(keys.model_manifest(v))
    out = []
    for (v, _), raw in zip(versions, pipe.execute(), strict=True):
        out.append(json.loads(raw) if raw is not None else {"version": v, "missing": True})
    return out


def _announce_fields(event: str, version: str, sha256: str) -> dict[Any, Any]:
    return {"event": event, "version": version, "sha256": sha256}


def _switch(client: Any, version: str, event: str, sha256: str) -> str | None:
    """Make `version` current, remembering the previous one; returns the previous version."""
    if isinstance(client, RedisCluster):
        prev = current_version(client)
        if prev is not None and prev != version:
            client.lpush(keys.MODEL_HISTORY, prev)
            client.ltrim(keys.MODEL_HISTORY, 0, HISTORY_LEN - 1)
        client.set(keys.MODEL_CURRENT, version)
        client.xadd(keys.MODELS_STREAM, _announce_fields(event, version, sha256),
                    maxlen=ANNOUNCE_MAXLEN, approximate=True)
        return prev

    def txn(pipe: Any) -> str | None:
        prev = _text(pipe.get(keys.MODEL_CURRENT))
        pipe.multi()
        pipe.set(keys.MODEL_CURRENT, version)
        if prev is not None and prev != version:
            pipe.lpush(keys.MODEL_HISTORY, prev)
            pipe.ltrim(keys.MODEL_HISTORY, 0, HISTORY_LEN - 1)
        pipe.xadd(keys.MODELS_STREAM, _announce_fields(event, version, sha256),
                  maxlen=ANNOUNCE_MAXLEN, approximate=True)
        return prev

    previous: str | None = client.transaction(txn, keys.MODEL_CURRENT, value_from_callable=True)
    return previous


def publish(client: Any, blob: bytes, manifest: dict[str, Any], make_current: bool = True) -> str:
    """Store a new version ("v1", "v2", ...) and, when `make_current`, switch workers to it."""
    version = f"v{int(client.incr(keys.MODEL_SEQ))}"
    sha = hashlib.sha256(blob).hexdigest()
    if manifest.get("sha256", sha) != sha:
        raise ValueError("manifest sha256 does not match the blob")
    stored = {**manifest, "version": version, "sha256": sha}
    client.set(keys.model_blob(version), blob)
    client.set(keys.model_manifest(version), json.dumps(stored, sort_keys=True))
    client.zadd(keys.MODEL_VERSIONS, {version: int(time.time() * 1000)})
    if make_current:
        _switch(client, version, "published", sha)
    log.info("published %s (%d bytes, current=%s)", version, len(blob), make_current)
    return version


def promote(client: Any, version: str) -> bool:
    """Make a stored version current; False when it already is."""
    manifest = get_manifest(client, version)
    if not client.exists(keys.model_blob(version)):
        raise RegistryError(f"model version {version!r} has no blob in the registry")
    if current_version(client) == version:
        return False
    _switch(client, version, "promoted", str(manifest.get("sha256", "")))
    return True


def _rollback_target(client: Any, current: str | None, history: list[str]) -> int:
    for i, v in enumerate(history):
        if v != current and exists(client, v):
            return i
    raise RegistryError("nothing to roll back to: no earlier current version in the history")


def rollback(client: Any) -> str:
    """Make the previous current version current again (dropping it from the history)."""
    if isinstance(client, RedisCluster):
        current = current_version(client)
        history = [_text(v) or "" for v in client.lrange(keys.MODEL_HISTORY, 0, -1)]
        i = _rollback_target(client, current, history)
        target = history[i]
        client.set(keys.MODEL_CURRENT, target)
        client.ltrim(keys.MODEL_HISTORY, i + 1, -1)
        client.xadd(keys.MODELS_STREAM, _announce_fields(
            "rolled_back", target, str(get_manifest(client, target).get("sha256", ""))),
            maxlen=ANNOUNCE_MAXLEN, approximate=True)
        return target

    def txn(pipe: Any) -> str:
        current = _text(pipe.get(keys.MODEL_CURRENT))
        history = [_text(v) or "" for v in pipe.lrange(keys.MODEL_HISTORY, 0, -1)]
        i = _rollback_target(pipe, current, history)
        target = history[i]
        sha = str(get_manifest(pipe, target).get("sha256", ""))
        pipe.multi()
        pipe.set(keys.MODEL_CURRENT, target)
        pipe.ltrim(keys.MODEL_HISTORY, i + 1, -1)
        pipe.xadd(keys.MODELS_STREAM, _announce_fields("rolled_back", target, sha),
                  maxlen=ANNOUNCE_MAXLEN, approximate=True)
        return target

    chosen: str = client.transaction(txn, keys.MODEL_CURRENT, keys.MODEL_HISTORY,
                                     value_from_callable=True)
    return chosen
