"""The model registry: versions, current pointer, history, announcements (no TensorFlow)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fakeredis
import pytest
import redis
from redis.cluster import RedisCluster

from forecast import keys, registry
from forecast.errors import ModelRejected


def blob_and_manifest(tag: str) -> tuple[bytes, dict[str, Any]]:
    blob = f"model bytes {tag}".encode()
    return blob, {"sha256": hashlib.sha256(blob).hexdigest(), "arch": "gru", "n_steps": 3,
                  "horizon": 1, "tag": tag}


def announcements(client: Any) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()}
            for _, fields in client.xrange(keys.MODELS_STREAM)]


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_publish_stores_blob_manifest_and_switches(client: fakeredis.FakeRedis) -> None:
    assert registry.current_version(client) is None
    blob, manifest = blob_and_manifest("a")
    v = registry.publish(client, blob, manifest)
    assert v == "v1"
    assert registry.current_version(client) == "v1"
    assert registry.get_blob(client, "v1") == blob
    stored = registry.get_manifest(client, "v1")
    assert stored["version"] == "v1" and stored["tag"] == "a"
    assert stored["sha256"] == hashlib.sha256(blob).hexdigest()
    assert client.zscore(keys.MODEL_VERSIONS, "v1") is not None
    assert announcements(client) == [{"event": "published", "version": "v1",
                                      "sha256": manifest["sha256"]}]
    assert client.llen(keys.MODEL_HISTORY) == 0


def test_versions_history_promote_rollback(client: fakeredis.FakeRedis) -> None:
    for tag in "abc":
        registry.publish(client, *blob_and_manifest(tag))
    assert registry.current_version(client) == "v3"
    assert client.lrange(keys.MODEL_HISTORY, 0, -1) == [b"v2", b"v1"]
    assert [m["version"] for m in registry.list_versions(client)] == ["v1", "v2", "v3"]

    assert registry.rollback(client) == "v2"
    assert registry.current_version(client) == "v2"
    assert client.lrange(keys.MODEL_HISTORY, 0, -1) == [b"v1"]
    assert registry.rollback(client) == "v1"
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback(client)
    assert registry.current_version(client) == "v1"

    assert registry.promote(client, "v3") is True
    assert registry.promote(client, "v3") is False  # already current: no new announcement
    assert registry.current_version(client) == "v3"
    assert client.lrange(keys.MODEL_HISTORY, 0, -1) == [b"v1"]
    events = [(a["event"], a["version"]) for a in announcements(client)]
    assert events == [("published", "v1"), ("published", "v2"), ("published", "v3"),
                      ("rolled_back", "v2"), ("rolled_back", "v1"), ("promoted", "v3")]


def test_publish_without_switch_and_unknown_versions(client: fakeredis.FakeRedis) -> None:
    registry.publish(client, *blob_and_manifest("a"))
    v = registry.publish(client, *blob_and_manifest("b"), make_current=False)
    assert v == "v2"
    assert registry.current_version(client) == "v1"
    assert registry.exists(client, "v2")
    assert [a["version"] for a in announcements(client)] == ["v1"]
    with pytest.raises(registry.RegistryError, match="unknown model version 'v9'"):
        registry.promote(client, "v9")
    with pytest.raises(registry.RegistryError):
        registry.get_blob(client, "v9")


def test_publish_rejects_a_manifest_for_other_bytes(client: fakeredis.FakeRedis) -> None:
    _, manifest = blob_and_manifest("a")
    with pytest.raises(ModelRejected, match="sha256"):
        registry.publish(client, b"other bytes", manifest)
    assert registry.current_version(client) is None


def test_rollback_skips_entries_without_blob_or_equal_to_current(
        client: fakeredis.FakeRedis) -> None:
    for tag in "abc":
        registry.publish(client, *blob_and_manifest(tag))
    client.delete(keys.model_blob("v2"))
    client.lpush(keys.MODEL_HISTORY, "v3")  # as a crash between cluster writes could leave
    assert registry.rollback(client) == "v1"
    assert client.llen(keys.MODEL_HISTORY) == 0


def test_list_versions_orders_numerically_and_marks_missing(client: fakeredis.FakeRedis) -> None:
    for i in range(1, 12):
        client.zadd(keys.MODEL_VERSIONS, {f"v{i}": 1000})
        client.set(keys.model_manifest(f"v{i}"), json.dumps({"version": f"v{i}"}))
    client.delete(keys.model_manifest("v11"))
    rows = registry.list_versions(client)
    assert [r["version"] for r in rows] == [f"v{i}" for i in range(1, 12)]
    assert rows[-1] == {"version": "v11", "missing": True}


def test_registry_does_not_import_tensorflow() -> None:
    import subprocess
    import sys

    code = "import sys, forecast.registry; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_switch_is_one_transaction_on_real_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    monitor_client = redis.Redis.from_url(redis_url)
    registry.publish(client, *blob_and_manifest("a"))
    with monitor_client.monitor() as monitor:
        registry.publish(client, *blob_and_manifest("b"))
        commands: list[str] = []
        while not commands or commands[-1] != "EXEC":
            commands.append(" ".join(monitor.next_command()["command"].split()[:2]))
    # blob and manifest are written before the version is listed and before the switch
    assert commands[:4] == ["INCRBY forecast:model:seq", "SET forecast:model:v2:blob",
                            "SET forecast:model:v2:manifest", "ZADD forecast:model:versions"]
    assert commands[4:] == ["WATCH forecast:model:current", "GET forecast:model:current",
                            "HGETALL forecast:model:states", "MULTI",
                            "LPUSH forecast:model:history", "LTRIM forecast:model:history",
                            "SET forecast:model:current", "HDEL forecast:model:states",
                            "DEL forecast:live:v1:vs:v2", "HSET forecast:model:states",
                            "XADD forecast:models", "EXEC"]
    assert registry.current_version(client) == "v2"
    assert client.lrange(keys.MODEL_HISTORY, 0, -1) == [b"v1"]
    assert registry.rollback(client) == "v1"
    client.close()
    monitor_client.close()


class FakeCluster(RedisCluster):
    """A RedisCluster that forwards to fakeredis, and fails on MULTI/EXEC."""

    def __init__(self, inner: fakeredis.FakeRedis) -> None:  # no cluster discovery
        self._inner = inner

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.execute_command(*args, **kwargs)

    def exists(self, *names: Any) -> Any:
        return self._inner.exists(*names)

    def delete(self, *names: Any) -> Any:
        return self._inner.delete(*names)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        return self._inner.pipeline(transaction=False)

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("keys in different slots: no MULTI/EXEC on a cluster")

    def close(self) -> None:
        pass

    def __del__(self) -> None:
        pass


def test_cluster_clients_use_sequential_writes() -> None:
    inner = fakeredis.FakeRedis()
    client = FakeCluster(inner)
    for tag in "abc":
        registry.publish(client, *blob_and_manifest(tag))
    assert registry.current_version(client) == "v3"
    assert registry.rollback(client) == "v2"
    assert registry.promote(client, "v3") is True
    assert inner.lrange(keys.MODEL_HISTORY, 0, -1) == [b"v2", b"v1"]
    assert [a["event"] for a in announcements(inner)] == [
        "published", "published", "published", "rolled_back", "promoted"]


def test_on_a_cluster_a_switch_happens_once_when_two_race() -> None:
    """Two workers decide the same promotion at once: the compare-and-set lets one win."""
    inner = fakeredis.FakeRedis()

    class Racing(FakeCluster):
        raced = False

        def eval(self, *args: Any) -> Any:  # the other worker's switch lands first
            if not self.raced:
                self.raced = True
                assert registry.promote(FakeCluster(inner), "v3", expect="v2") is True
            return inner.eval(*args)

    plain = FakeCluster(inner)
    for tag in "abc":
        registry.publish(plain, *blob_and_manifest(tag))
    registry.rollback(plain)  # v2 current, v3 stored
    assert registry.promote(Racing(inner), "v3", expect="v2") is False
    events = [a["event"] for a in announcements(inner)]
    assert events.count("promoted") == 1 and registry.current_version(plain) == "v3"
    assert inner.lrange(keys.MODEL_HISTORY, 0, -1)[:1] == [b"v2"]


def test_rollback_goes_to_the_version_it_is_handed(client: fakeredis.FakeRedis) -> None:
    for tag in "abc":
        registry.publish(client, *blob_and_manifest(tag))  # history: v2, v1
    with pytest.raises(registry.RegistryError, match="v9 is not an earlier current version"):
        registry.rollback(client, to="v9")
    assert registry.rollback(client, to="v1") == "v1"
    assert registry.current_version(client) == "v1"
    assert registry.states(client)["v3"] == "rejected"
