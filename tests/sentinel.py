"""A private Redis Sentinel setup on loopback: a primary, replicas and three sentinels, all
started from the `redis-server` binary (`redis-server sentinel.conf --sentinel`), with short
timeouts so that a failover takes a few seconds. Every process is stopped by its own PID.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from forecast.local_redis import RedisServer, redis_server_binary
from forecast.processes import free_port, stop_process, wait_until

MASTER = "fc"
FAST_SYNC = ["--repl-diskless-sync-delay", "0"]  # full syncs at once, not after 5 s


def online_replicas(info: dict[str, Any]) -> int:
    """Replicas a primary's INFO replication reports in sync (state=online)."""
    return sum(1 for k, v in info.items()
               if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online")


@dataclass
class Sentinels:
    """A primary, `replicas` replicas and `n` sentinels monitoring them as MASTER."""

    replicas: int = 1
    n: int = 3
    down_after_ms: int = 1000
    servers: list[RedisServer] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="forecast-sent-")))

    @property
    def spec(self) -> str:
        """FORECAST_SENTINELS for this setup."""
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def start(self) -> Sentinels:
        primary = RedisServer(extra_args=FAST_SYNC).start()
        self.servers.append(primary)
        for _ in range(self.replicas):
            replica = RedisServer(
                extra_args=[*FAST_SYNC, "--replicaof", "127.0.0.1", str(primary.port)])
            self.servers.append(replica.start())
        for i in range(self.n):
            port = free_port()
            conf = self.dir / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} 2000\n"
                f"sentinel parallel-syncs {MASTER} 1\n")
            binary = redis_server_binary()
            assert binary is not None
            log = (self.dir / f"sentinel-{i}.log").open("wb")
            self.procs.append(subprocess.Popen([binary, str(conf), "--sentinel"], stdout=log,
                                               stderr=subprocess.STDOUT))
            self.sentinel_ports.append(port)
        wait_until(self._all_see_replicas, 20, 0.05, what="sentinels to know the replicas")
        return self

    def sentinel(self, i: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[i], socket_timeout=2, decode_responses=True)

    def _all_see_replicas(self) -> bool:
        try:
            for i in range(self.n):
                s = self.sentinel(i)
                try:
                    info = s.sentinel_master(MASTER)
                    if int(info.get("num-slaves", 0)) < self.replicas:
                        return False
                    if int(info.get("num-other-sentinels", 0)) < self.n - 1:
                        return False
                finally:
                    s.close()
        except redis.RedisError:
            return False
        return self.replicas_in_sync()

    def replicas_in_sync(self) -> bool:
        """The primary reports every replica online."""
        client: Any = redis.Redis(port=self.primary_port(), socket_timeout=2)
        try:
            info = client.info("replication")
        except redis.RedisError:
            return False
        finally:
            client.close()
        return online_replicas(info) >= self.replicas

    def primary_port(self) -> int:
        """The port the sentinels give for the primary now."""
        s = self.sentinel(0)
        try:
            _host, port = s.sentinel_get_master_addr_by_name(MASTER)
        finally:
            s.close()
        return int(port)

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def cleanup(self) -> None:
        for proc in self.procs:
            stop_process(proc, grace=5)
        for server in self.servers:
            server.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def sentinels(replicas: int = 1) -> Iterator[Sentinels]:
    setup = Sentinels(replicas=replicas)
    try:
        yield setup.start()
    finally:
        setup.cleanup()
