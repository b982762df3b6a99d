"""The model registry in Redis: versioned artifacts, the current pointer, history, announcements.

Write order: a version's blob and manifest are stored before it is listed and before the
current pointer can name it, so a reader never sees a current version without its bytes.
A switch (SET current, push the previous one onto the history, XADD the announcement) is
one MULTI/EXEC under WATCH on a single Redis. Those keys carry no hash tag, so on a Redis
Cluster they live in different slots: there the same writes run one by one, history first, so
a crash between them leaves at worst a history entry equal to the current version (skipped
by rollback). This module does not import TensorFlow.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from redis.cluster import RedisCluster

from forecast import keys
from forecast.errors import ModelRejected, RegistryError

log = logging.getLogger(__name__)

__all__ = ["RegistryError", "current_version", "get_blob", "get_manifest", "list_versions",
           "promote", "publish", "rollback", "verify_sha256", "version_number"]

HISTORY_LEN = 100  # earlier current versions kept for rollback
ANNOUNCE_MAXLEN = 10_000
_NUMBER = re.compile(r"(\d+)")

# A switch reads the registry, then returns the writes to make and its result.
Write = Callable[[Any], Any]
Plan = Callable[[Any], tuple[list[Write], Any]]


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


def version_number(version: str) -> int:
    """The numeric part of a version name, -1 when it has none.

    >>> version_number("v12"), version_number("v0003"), version_number("local")
    (12, 3, -1)
    """
    match = _NUMBER.search(version)
    return int(match.group(1)) if match else -1


def verify_sha256(blob: bytes, manifest: dict[str, Any]) -> str:
    """The blob's sha256; ModelRejected unless it is the one the manifest records.

    >>> verify_sha256(b"x", {"sha256": hashlib.sha256(b"x").hexdigest()})[:8]
    '2d711642'
    """
    digest = hashlib.sha256(blob).hexdigest()
    recorded = manifest.get("sha256")
    if not isinstance(recorded, str):
        raise ModelRejected("manifest has no sha256")
    if not hmac.compare_digest(digest, recorded):
        raise ModelRejected(f"sha256 mismatch: bytes {digest[:12]}..., manifest {recorded[:12]}...")
    return digest


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


def _announce(event: str, version: str, sha256: str) -> Write:
    fields = {"event": event, "version": version, "sha256": sha256}
    return lambda c: c.xadd(keys.MODELS_STREAM, fields, maxlen=ANNOUNCE_MAXLEN, approximate=True)


def _apply(client: Any, watched: tuple[str, ...], plan: Plan) -> Any:
    """Read with `plan`, then make its writes: in one MULTI/EXEC under WATCH, or one by one."""
    if isinstance(client, RedisCluster):
        writes, result = plan(client)
        for write in writes:
            write(client)
        return result

    def txn(pipe: Any) -> Any:
        writes, result = plan(pipe)
        pipe.multi()
        for write in writes:
            write(pipe)
        return result

    return client.transaction(txn, *watched, value_from_callable=True)


def _switch(client: Any, version: str, event: str, sha256: str) -> str | None:
    """Make `version` current, remembering the previous one; returns the previous version."""

    def plan(reader: Any) -> tuple[list[Write], str | None]:
        prev = current_version(reader)
        writes: list[Write] = []
        if prev is not None and prev != version:
            writes += [lambda c: c.lpush(keys.MODEL_HISTORY, prev),
                       lambda c: c.ltrim(keys.MODEL_HISTORY, 0, HISTORY_LEN - 1)]
        writes += [lambda c: c.set(keys.MODEL_CURRENT, version), _announce(event, version, sha256)]
        return writes, prev

    previous: str | None = _apply(client, (keys.MODEL_CURRENT,), plan)
    return previous


def publish(client: Any, blob: bytes, manifest: dict[str, Any], make_current: bool = True) -> str:
    """Store a new version ("v1", "v2", ...) and, when `make_current`, switch workers to it."""
    sha = hashlib.sha256(blob).hexdigest()
    if "sha256" in manifest:
        verify_sha256(blob, manifest)
    version = f"v{int(client.incr(keys.MODEL_SEQ))}"
    stored = {**manifest, "version": version, "sha256": sha}
    client.set(keys.model_blob(version), blob)
    client.set(keys.model_manifest(version), json.dumps(stored, sort_keys=True))
    client.zadd(keys.MODEL_VERSIONS, {version: int(time.time() * 1000)})
    if make_current:
        _switch(client, version, "published", sha)
    log.info("published %s (%d bytes, current=%s)", version, len(blob), make_current)
    return version


def promote(client: Any, version: str) -> bool:
    """Make a stored version current (its bytes checked first); False when it already is."""
    manifest = get_manifest(client, version)
    sha = verify_sha256(get_blob(client, version), manifest)
    if current_version(client) == version:
        return False
    _switch(client, version, "promoted", sha)
    return True


def rollback(client: Any) -> str:
    """Make the previous current version current again (dropping it from the history)."""

    def plan(reader: Any) -> tuple[list[Write], str]:
        current = current_version(reader)
        history = [_text(v) or "" for v in reader.lrange(keys.MODEL_HISTORY, 0, -1)]
        found = [i for i, v in enumerate(history) if v != current and exists(reader, v)]
        if not found:
            raise RegistryError(
                "nothing to roll back to: no earlier current version in the history")
        i, target = found[0], history[found[0]]
        sha = str(get_manifest(reader, target).get("sha256", ""))
        return [lambda c: c.set(keys.MODEL_CURRENT, target),
                lambda c: c.ltrim(keys.MODEL_HISTORY, i + 1, -1),
                _announce("rolled_back", target, sha)], target

    chosen: str = _apply(client, (keys.MODEL_CURRENT, keys.MODEL_HISTORY), plan)
    return chosen
