"""A local Redis Cluster of private redis-servers (three masters), for tests and the benchmark."""

from __future__ import annotations

import logging
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from forecast.local_redis import RedisServer, redis_server_binary

log = logging.getLogger(__name__)

BUS_OFFSET = 10_000  # a node's cluster bus listens on its port + 10000


def cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too (both must be < 65536)."""
    for _ in range(200):
        port = random.randint(20_000, 55_000)
        if all(_free(p) for p in (port, port + BUS_OFFSET)):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_available() -> bool:
    """Whether `redis-server` and `redis-cli` are both on PATH."""
    return redis_server_binary() is not None and shutil.which("redis-cli") is not None


@dataclass
class LocalCluster:
    """Three cluster-enabled redis-servers (masters only), each with its own temp dir."""

    masters: int = 3
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def ports(self) -> list[int]:
        """Ports of the nodes."""
        return [n.port for n in self.nodes]

    @property
    def url(self) -> str:
        """A redis:// URL of one node (the cluster client discovers the others)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Start the nodes, join them with `redis-cli --cluster create`, wait for state ok."""
        try:
            for _ in range(self.masters):
                tmp = Path(tempfile.mkdtemp(prefix="forecast-cluster-"))
                node = RedisServer(port=cluster_port(), dir=tmp, extra_args=[
                    "--cluster-enabled", "yes", "--cluster-config-file", str(tmp / "nodes.conf"),
                    "--cluster-node-timeout", "5000"])
                self.nodes.append(node)  # before start(): a failed start is still cleaned up
                node.start()
            self._create(timeout)
            self._wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self, timeout: float) -> None:
        addrs = [f"127.0.0.1:{p}" for p in self.ports]
        cmd = ["redis-cli", "--cluster", "create", *addrs, "--cluster-replicas", "0",
               "--cluster-yes"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")

    def _wait_ok(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for port in self.ports:
            client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
            try:
                while "cluster_state:ok" not in str(client.execute_command("CLUSTER", "INFO")):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"cluster node {port} never reached cluster_state:ok")
                    time.sleep(0.05)
            finally:
                client.close()

    def flush(self) -> None:
        """Empty every node (FLUSHALL on each master)."""
        for port in self.ports:
            client = redis.Redis(port=port)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        """Stop every node by its PID and delete its directory (nodes.conf included)."""
        for node in self.nodes:
            node.cleanup()
        self.nodes.clear()


@contextmanager
def local_cluster(masters: int = 3) -> Iterator[LocalCluster]:
    """A running `LocalCluster` for the duration of a `with` block."""
    cluster = LocalCluster(masters).start()
    try:
        yield cluster
    finally:
        cluster.stop()
