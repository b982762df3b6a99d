"""The model registry in Redis: versioned artifacts, the current pointer, history, announcements.

Write order: a version's blob and manifest are stored before it is listed and before the
current pointer can name it, so a reader never sees a current version without its bytes.
A switch (SET current, push the previous one onto the history, XADD the announcement) is
one MULTI/EXEC under WATCH on a single Redis. Those keys carry no hash tag, so on a Redis
Cluster they live in different slots: there the switch itself is a compare-and-set script on
`forecast:model:current` (so of two workers deciding the same switch, one wins, once), and
only its winner makes the other writes, one by one; a crash between them leaves at worst a
history entry equal to the current version (skipped by rollback) or a stale state.
This module does not import TensorFlow.
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
from forecast.states import KEPT, STORED, State, allowed, parse

log = logging.getLogger(__name__)

__all__ = ["RegistryError", "current_version", "get_blob", "get_manifest", "list_versions",
           "promote", "publish", "rollback", "verify_sha256", "version_number"]

HISTORY_LEN = 100  # earlier current versions kept for rollback
ANNOUNCE_MAXLEN = 10_000
_NUMBER = re.compile(r"(\d+)")

# A switch reads the registry, then returns its steps: the writes to make before setting
# the current version (harmless if another switch wins), the version to make current (None:
# no switch), the writes after it, and its result.
Write = Callable[[Any], Any]
Steps = tuple[list[Write], str | None, list[Write], Any]
Plan = Callable[[Any], Steps]
# KEYS: current. ARGV: the version seen as current ('' for none), the new one.
_CAS_CURRENT = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


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


def _announce(event: str, version: str, sha256: str, reason: str = "",
              evidence: dict[str, Any] | None = None) -> Write:
    fields: dict[str, Any] = {"event": event, "version": version, "sha256": sha256}
    if reason:
        fields["reason"] = reason
    for k, v in (evidence or {}).items():
        fields[k] = v if isinstance(v, str) else json.dumps(v)
    return lambda c: c.xadd(keys.MODELS_STREAM, fields, maxlen=ANNOUNCE_MAXLEN, approximate=True)


def _apply(client: Any, watched: tuple[str, ...], plan: Plan, failed: Any) -> Any:
    """Read with `plan`, then make its writes and set the current version: in one MULTI/EXEC
    under WATCH, or (a cluster) around a compare-and-set of the current version; `failed` is
    the result when another switch came first."""
    if isinstance(client, RedisCluster):
        seen = current_version(client) or ""
        before, target, after, result = plan(client)
        for write in before:
            write(client)
        if target is not None and not client.eval(_CAS_CURRENT, 1, keys.MODEL_CURRENT, seen,
                                                  target):
            return failed
        for write in after:
            write(client)
        return result

    def txn(pipe: Any) -> Any:
        before, target, after, result = plan(pipe)
        pipe.multi()
        for write in before:
            write(pipe)
        if target is not None:
            pipe.set(keys.MODEL_CURRENT, target)
        for write in after:
            write(pipe)
        return result

    return client.transaction(txn, *watched, value_from_callable=True)


def _switch(client: Any, version: str, event: str, sha256: str, reason: str = "",
            evidence: dict[str, Any] | None = None, expect: str | None = None) -> bool:
    """Make `version` current; the previous one becomes `previous` (shadowed for rollback).

    With `expect`, only if the current version is still `expect` (False otherwise).
    """

    def plan(reader: Any) -> Steps:
        prev = current_version(reader)
        if expect is not None and prev != expect:
            return [], None, [], False
        states = _states(reader)
        before: list[Write] = []
        after: list[Write] = [lambda c: c.hdel(keys.MODEL_STATES, version)]
        stale = [v for v, state in states.items() if state == State.PREVIOUS and v != version]
        if stale:
            after.append(lambda c: c.hdel(keys.MODEL_STATES, *stale))
        if prev is not None and prev != version:
            before += [lambda c: c.lpush(keys.MODEL_HISTORY, prev),
                       lambda c: c.ltrim(keys.MODEL_HISTORY, 0, HISTORY_LEN - 1)]
            after += [lambda c: c.delete(keys.live_pair(prev, version)),  # fresh evidence
                      lambda c: c.hset(keys.MODEL_STATES, prev, str(State.PREVIOUS))]
        after.append(_announce(event, version, sha256, reason, evidence))
        return before, version, after, True

    done: bool = _apply(client, (keys.MODEL_CURRENT, keys.MODEL_STATES), plan, False)
    return done


def _states(reader: Any) -> dict[str, State]:
    raw = reader.hgetall(keys.MODEL_STATES).items()
    return {_text(k) or "": state for k, v in raw if (state := parse(v)) is not None}


def states(client: Any) -> dict[str, State]:
    """Version -> state for the versions that have one (candidate, previous, rejected, retired)."""
    return _states(client)


def shadowed(client: Any, limit: int = 2) -> list[str]:
    """The versions workers run in shadow: candidates (newest first), then the previous one."""
    st = _states(client)
    current = current_version(client)
    cands = sorted((v for v, s in st.items() if s == State.CANDIDATE and v != current),
                   key=version_number, reverse=True)
    prev = [v for v, s in st.items() if s == State.PREVIOUS and v != current]
    return [*cands, *prev][:limit]


def unshadow(client: Any, version: str) -> None:
    """Stop running a version in shadow (it stays stored; the rollback history keeps it)."""
    client.hdel(keys.MODEL_STATES, version)


def shadow(client: Any, version: str, reason: str = "manual") -> None:
    """Run a stored version in shadow as a candidate (scored live, never written)."""
    manifest = get_manifest(client, version)
    verify_sha256(get_blob(client, version), manifest)
    if current_version(client) == version:
        raise RegistryError(f"{version} is the current version")
    current = current_version(client)
    if current is not None:  # evidence starts afresh: no old pair sums decide for it
        client.delete(keys.live_pair(version, current))
    state = _states(client).get(version) or STORED
    if not allowed(state, State.CANDIDATE):
        raise RegistryError(f"{version} is {state}: it cannot be shadowed")
    client.hset(keys.MODEL_STATES, version, str(State.CANDIDATE))
    _announce("candidate", version, str(manifest.get("sha256", "")), reason)(client)


def publish(client: Any, blob: bytes, manifest: dict[str, Any], make_current: bool = True,
            candidate: bool = False) -> str:
    """Store a new version ("v1", "v2", ...): current, a candidate in shadow, or stored only."""
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
    elif candidate:  # a newer candidate replaces the ones still waiting
        older = [v for v, state in _states(client).items() if state == State.CANDIDATE]
        if older:
            client.hdel(keys.MODEL_STATES, *older)
        client.hset(keys.MODEL_STATES, version, str(State.CANDIDATE))
        _announce("candidate", version, sha, "trained")(client)
    log.info("published %s (%d bytes, current=%s, candidate=%s)", version, len(blob),
             make_current, candidate and not make_current)
    return version


def promote(client: Any, version: str, reason: str = "manual",
            evidence: dict[str, Any] | None = None, expect: str | None = None) -> bool:
    """Make a stored version current (its bytes checked first); False when it already is,
    or when `expect` is given and another version is current by now."""
    manifest = get_manifest(client, version)
    sha = verify_sha256(get_blob(client, version), manifest)
    if current_version(client) == version:
        return False
    return _switch(client, version, "promoted", sha, reason, evidence, expect)


def rollback(client: Any, reason: str = "manual", evidence: dict[str, Any] | None = None,
             expect: str | None = None, to: str | None = None) -> str:
    """Make the previous current version (or `to`, an earlier current version in the history)
    current again; the one rolled back is `rejected`. Returns the version now current, or ""
    when `expect` is given and another version is current by now."""

    def plan(reader: Any) -> Steps:
        current = current_version(reader)
        if expect is not None and current != expect:
            return [], None, [], ""
        history = [_text(v) or "" for v in reader.lrange(keys.MODEL_HISTORY, 0, -1)]
        found = [i for i, v in enumerate(history) if v != current and exists(reader, v)
                 and (to is None or v == to)]
        if not found:
            raise RegistryError(
                f"nothing to roll back to: {to} is not an earlier current version with its blob"
                if to else "nothing to roll back to: no earlier current version in the history")
        i, target = found[0], history[found[0]]
        sha = str(get_manifest(reader, target).get("sha256", ""))
        writes: list[Write] = [lambda c: c.ltrim(keys.MODEL_HISTORY, i + 1, -1),
                               lambda c: c.hdel(keys.MODEL_STATES, target)]
        if current is not None:
            writes.append(lambda c: c.hset(keys.MODEL_STATES, current, str(State.REJECTED)))
        return [], target, [*writes, _announce("rolled_back", target, sha, reason, evidence)], \
            target

    chosen: str = _apply(client, (keys.MODEL_CURRENT, keys.MODEL_HISTORY, keys.MODEL_STATES),
                         plan, "")
    return chosen


def retire(client: Any, keep: int) -> list[str]:
    """Remove the blobs of all but the newest `keep` versions; the current one, candidates,
    the previous one and the rollback target always stay. Manifests stay; returns the retired."""
    versions = sorted((_text(v) or "" for v in client.zrange(keys.MODEL_VERSIONS, 0, -1)),
                      key=version_number)
    st = _states(client)
    current = current_version(client)
    history = [_text(v) or "" for v in client.lrange(keys.MODEL_HISTORY, 0, -1)]
    target = next((v for v in history if v != current and st.get(v) != State.RETIRED), None)
    protected = {current, target, *(v for v, s in st.items() if s in KEPT)}
    gone = []
    for v in versions[:max(0, len(versions) - keep)]:
        if v in protected or st.get(v) == State.RETIRED:
            continue
        client.delete(keys.model_blob(v), keys.live(v), keys.live_series(v),
                      *(keys.live_pair(v, w) for w in versions if w != v),
                      *(keys.live_pair(w, v) for w in versions if w != v))
        client.hset(keys.MODEL_STATES, v, str(State.RETIRED))
        _announce("retired", v, "", "keep_versions")(client)
        gone.append(v)
    if gone:
        log.info("retired %s (blobs removed, manifests kept)", ", ".join(gone))
    return gone
