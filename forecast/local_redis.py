"""A private `redis-server` process (the demo's, and the tests' and the benchmark's).

Each server gets a free loopback port (`free_port`) and its own temporary directory, so it never
touches another process's data; it is stopped by its own PID.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from forecast.processes import free_port, kill_process, stop_process, wait_until

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

