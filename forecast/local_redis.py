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


def repair_aof(data_dir: Path) -> bool:
    """Cut a partial transaction a hard kill left at the end of the AOF in `data_dir`, as an
    operator does before restarting a crashed Redis; whether there was an AOF to check.

    A SIGKILL can stop Redis half-way through writing a script's effects (a MULTI block).
    Redis 7 then loads the file without them (`aof-load-truncated yes`) but leaves the
    incomplete block on disk, and the next restart runs its first part after all (a batch's
    outputs twice): valkey fixed this in 2026 (valkey-io/valkey#4342). `redis-check-aof
    --fix` cuts the file before that MULTI, so it must run before every restart.
    """
    manifest = data_dir / "appendonlydir" / "appendonly.aof.manifest"
    if not manifest.exists():
        return False
    server = redis_server_binary()
    tool = shutil.which("redis-check-aof") or (
        str(Path(server).with_name("redis-check-aof")) if server else None)
    if tool is None or not Path(tool).exists():
        raise RuntimeError("redis-check-aof is not on PATH (it ships with redis-server)")
    done = subprocess.run([tool, "--fix", str(manifest)], input=b"y\n", capture_output=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"redis-check-aof --fix failed on {manifest}: "
                           f"{done.stdout.decode(errors='replace')[-500:]}")
    if b"truncated" in done.stdout:
        log.warning("cut a partial write off the AOF in %s (redis-check-aof --fix)", data_dir)
    return True


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
        """Start the server (reusing its port and directory on a restart, its AOF repaired: see
        `repair_aof`) and wait for PING."""
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        if not self.port:
            self.port = free_port()
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="forecast-redis-"))
        elif self.appendonly:
            repair_aof(self.dir)  # a restart after a SIGKILL
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

