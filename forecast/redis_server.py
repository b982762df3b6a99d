"""Start and stop private `redis-server` processes (demo, benchmark, tests).

Each server gets a free loopback port (`free_port`) and its own temporary directory, so it never
touches another process's data; it is stopped by its own PID. `LocalCluster` joins three of them
into a Redis Cluster (the tests and the benchmark use it).
"""

from __future__ import annotations

import contextlib
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

from forecast.harness import free_port, kill_process, stop_process, wait_until

log = logging.getLogger(__name__)


def redis_server_binary() -> str | None:
    """Path of `redis-server` on PATH, or None."""
    return shutil.which("redis-server")


@dataclass
class RedisServer:
    """A private redis-server process on 127.0.0.1."""

    port: int = 0
    appendonly: bool = False
    extra_args: list[str] = field(default_factory=list)
    dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (reusing its port and directory on a restart) and wait for PING."""
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        if not self.port:
            self.port = free_port()
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="forecast-redis-"))
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Poll PING until the server answers (and has loaded its data)."""
        client = redis.Redis(port=self.port, socket_timeout=1)

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {self.proc.returncode}")
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                return False

        try:
            wait_until(answers, timeout, 0.02, f"redis-server on port {self.port}")
        finally:
            client.close()

    def stop(self, kill: bool = False) -> None:
        """Stop the server by its PID (SIGKILL when `kill`)."""
        if self.proc is not None:
            if kill:
                kill_process(self.proc)
            else:
                stop_process(self.proc, grace=10)
        self.proc = None

    def cleanup(self) -> None:
        """Stop and delete the data directory."""
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_redis(appendonly: bool = False) -> Iterator[RedisServer]:
    """A private redis-server for the duration of a `with` block."""
    server = RedisServer(appendonly=appendonly).start()
    try:
        yield server
    finally:
        server.cleanup()


# --- a local Redis Cluster ------------------------------------------------------------

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
