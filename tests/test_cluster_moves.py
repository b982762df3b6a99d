"""The cluster path's dedicated per-node connection meets a slot that moves: a shard's hash
tag is migrated to another master while values flow (CLUSTER SETSLOT / MIGRATE). The worker
takes MOVED/ASK as an outage, refreshes the topology and carries on, exactly once."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from forecast import keys
from forecast.client import Producer
from forecast.processes import wait_until
from forecast.redis_conn import connect
from forecast.settings import Settings
from testkit.cluster import LocalCluster, cluster_available
from tests import procs
from tests.helpers import LinearModel, StaticWatcher, WorkerThreads
from worker.loop import Worker

SHARDS = 2
pytestmark = pytest.mark.skipif(not cluster_available(), reason="redis-server/redis-cli missing")


def _node_ids(cluster: LocalCluster) -> dict[int, str]:
    out = {}
    for port in cluster.ports:
        c: Any = redis.Redis(port=port, decode_responses=True)
        out[port] = c.execute_command("CLUSTER", "MYID")
        c.close()
    return out


def _owner(cluster: LocalCluster, slot: int) -> int:
    c: Any = redis.Redis(port=cluster.ports[0], decode_responses=True)
    try:
        for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
    finally:
        c.close()
    raise LookupError(slot)


def migrate_slot(cluster: LocalCluster, slot: int, to_port: int) -> None:
    """Move one slot with all its keys, the way `redis-cli --cluster reshard` does."""
    ids = _node_ids(cluster)
    src_port = _owner(cluster, slot)
    src: Any = redis.Redis(port=src_port)
    dst: Any = redis.Redis(port=to_port)
    try:
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src_port])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to_port])
        while True:
            names = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not names:
                break
            src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *names)
        for port in cluster.ports:
            c: Any = redis.Redis(port=port)
            c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[to_port])
            c.close()
    finally:
        src.close()
        dst.close()


@pytest.mark.slow
def test_a_shard_whose_slot_moves_stays_exactly_once(cluster: LocalCluster) -> None:
    cluster.flush()
    settings = Settings(_env_file=None, redis_url=cluster.url, cluster=True, shards=SHARDS,  # type: ignore[call-arg]
                        metrics_port=0, block_ms=50, lease_ttl_ms=1000, consumer="mover",
                        batch_size=200)
    client: Any = connect(settings)
    threads = WorkerThreads()
    w = threads.start(Worker(connect(settings, timeout=5), settings,
                             watcher=StaticWatcher(LinearModel())))
    producer = Producer(client, SHARDS, cluster=True)
    streams = [keys.values_stream(k, SHARDS, cluster=True) for k in range(SHARDS)]
    outs = keys.output_streams(SHARDS, True)

    def predicted() -> int:
        return sum(client.xlen(s) for s in outs)

    try:
        producer.push_many([(f"c{i % 30}", f"{i % 41}.5", None) for i in range(3000)])
        wait_until(lambda: predicted() > 500, 30, what="predictions")
        slot = client.keyslot(streams[0])
        target = next(p for p in cluster.ports if p != _owner(cluster, slot))
        migrate_slot(cluster, slot, target)  # mid-backlog
        assert _owner(cluster, slot) == target
        producer.push_many([(f"c{i % 30}", f"{i % 41}.5", None) for i in range(3000, 6000)])
        wait_until(lambda: predicted() >= 6000 - 60
                   and all(client.xpending(s, "forecast")["pending"] == 0 for s in streams),
                   60, what="everything predicted after the move")
    finally:
        threads.stop_all()
    entries = [e for s in streams for e in client.xrange(s)]
    reference = procs.reference_predictions(LinearModel(), entries)
    preds = [f for s in outs for _, f in client.xrange(s)]
    procs.assert_predicted_once(preds, reference)
    assert sum(client.xlen(s) for s in keys.deadletter_streams(SHARDS, True)) == 0
    assert w.telemetry.totals["values"] > 0
