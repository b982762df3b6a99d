"""A private `redis-server` process (the demo's, and the tests' and the benchmark's).

Each server gets a free loopback port (`free_port`) and its own temporary directory, so it never
touches another process's data; it is stopped by its own PID.
"""

from __future__ import annotations

import contextlib
import logging
import re
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


def _command_end(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """(name, end) of the RESP command at `pos`; None when the data ends inside it.

    >>> _command_end(b"*1\\r\\n$5\\r\\nMULTI\\r\\n*2", 0)
    (b'MULTI', 15)
    >>> _command_end(b"*1\\r\\n$5\\r\\nMU", 0) is None
    True
    """
    def number(at: int, marker: bytes) -> tuple[int, int] | None:
        # the integer after `marker` on the line at `at`, and where the next line starts
        stop = data.find(b"\r\n", at)
        if stop < 0:
            return None
        if data[at:at + 1] != marker:
            raise ValueError(f"expected {marker!r} at byte {at}")
        return int(data[at + 1:stop]), stop + 2

    head = number(pos, b"*")
    if head is None:
        return None
    argc, at = head
    name = b""
    for _ in range(argc):
        size = number(at, b"$")
        if size is None:
            return None
        n, at = size
        if at + n + 2 > len(data):
            return None
        if data[at + n:at + n + 2] != b"\r\n":
            raise ValueError(f"an argument of the wrong length at byte {at}")
        name = name or data[at:at + n].upper()
        at += n + 2
    return name, at


def cut_by_a_kill(tail: bytes) -> bool:
    """Whether `tail` (an AOF from the first byte `redis-check-aof` could not accept) is only
    what a kill cuts: one incomplete command, or a MULTI block that never got its EXEC.

    >>> cut_by_a_kill(b"*1\\r\\n$5\\r\\nMULTI\\r\\n*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\na")
    True
    >>> cut_by_a_kill(b"*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nX\\r\\n$1\\r\\n1\\r\\n*1\\r\\n")
    False
    """
    names, pos = [], 0
    try:
        while pos < len(tail):
            found = _command_end(tail, pos)
            if found is None:
                break
            names.append(found[0])
            pos = found[1]
    except ValueError:
        return False  # damaged, not cut: left for an operator
    if not names:
        return True
    return names[0] == b"MULTI" and b"EXEC" not in names


def repair_aof(data_dir: Path) -> bool:
    """Cut off what a hard kill left half-written at the end of the AOF in `data_dir`, as an
    operator does before restarting a crashed Redis; whether there was an AOF to check.

    A SIGKILL can stop Redis half-way through writing a script's effects (a MULTI block).
    Redis 7 then loads the file without them (`aof-load-truncated yes`) but leaves the
    incomplete block on disk, and the next restart runs its first part after all (a batch's
    outputs twice): valkey fixed this in 2026 (valkey-io/valkey#4342). `redis-check-aof
    --fix` cuts the file before that MULTI. It also cuts everything after damage anywhere
    else in the file, so it runs only when what it would cut is such a cut-off end
    (`cut_by_a_kill`); other damage raises, and the file is left as it is.
    """
    manifest = data_dir / "appendonlydir" / "appendonly.aof.manifest"
    if not manifest.exists():
        return False
    server = redis_server_binary()
    tool = shutil.which("redis-check-aof") or (
        str(Path(server).with_name("redis-check-aof")) if server else None)
    if tool is None or not Path(tool).exists():
        raise RuntimeError("redis-check-aof is not on PATH (it ships with redis-server)")
    check = subprocess.run([tool, str(manifest)], capture_output=True, timeout=120, check=False)
    report = check.stdout.decode(errors="replace")
    if check.returncode == 0 and "All AOF files and manifest are valid" in report:
        return True
    found = re.findall(r"filename=(\S+), size=\d+, ok_up_to=(\d+),", report)
    if not found:
        raise RuntimeError(f"redis-check-aof could not read {manifest}: {report[-500:]}")
    name, ok_up_to = found[-1]
    tail = (manifest.parent / name).read_bytes()[int(ok_up_to):]
    if not cut_by_a_kill(tail):
        raise RuntimeError(f"the AOF in {data_dir} is damaged at byte {ok_up_to} of {name}, "
                           f"not cut at its end: left for an operator")
    subprocess.run([tool, "--fix", str(manifest)], input=b"y\n", capture_output=True,
                   timeout=120, check=True)
    log.warning("cut %d bytes a kill left half-written off %s", len(tail), name)
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

