"""Worker processes and waiting, for the demo (and the tests and the benchmark built on it).

`start_worker` runs `forecast worker` as a subprocess with a clean environment and its own
log file; `stop_process` stops any process we started by its PID (SIGCONT, SIGTERM, then
SIGKILL after a grace period); `wait_until` polls with a deadline; `free_port` finds a free
loopback port. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

PYTHON = sys.executable
# The usual test and demo pace: new models are seen within 0.2 s, idle waits are short.
QUICK: dict[str, Any] = {"model_poll_s": 0.2, "block_ms": 200}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02,
               what: str = "condition") -> Any:
    """Poll `cond` until it returns something truthy and return that; TimeoutError after `timeout`.

    >>> wait_until(lambda: 3, timeout=1)
    3
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any] | None, grace: float = 15.0) -> int | None:
    """Stop a process we started, by its PID: SIGCONT + SIGTERM, SIGKILL after `grace` s."""
    if proc is None:
        return None
    if proc.poll() is None:
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                break
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def kill_process(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a process we started and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def http_status(url: str) -> int:
    """The HTTP status of a GET (0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def worker_env(url: str | None = None, *, threads: int | None = 1,
               **settings: Any) -> dict[str, str]:
    """The environment of a worker: no inherited FORECAST_*, quiet TensorFlow, metrics off.

    `settings` are Settings field names (`lease_ttl_ms=1000` sets FORECAST_LEASE_TTL_MS);
    `threads` caps TensorFlow's thread pools (None leaves them alone).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1",
                "FORECAST_METRICS_PORT": "0"})
    if threads is not None:
        env.update({"TF_NUM_INTRAOP_THREADS": str(threads),
                    "TF_NUM_INTEROP_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)})
    if url is not None:
        env["FORECAST_REDIS_URL"] = url
    env.update({f"FORECAST_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class WorkerProcess(subprocess.Popen[bytes]):
    """A `forecast worker` subprocess; its stdout and stderr go to `log_path`."""

    consumer: str
    log_path: Path
    metrics_port: int

    def log(self) -> str:
        """Everything the worker has written so far."""
        return self.log_path.read_text(errors="replace")

    def readyz(self) -> int:
        """HTTP status of /readyz (0 when the server does not answer)."""
        return http_status(f"http://127.0.0.1:{self.metrics_port}/readyz")

    def pause(self) -> None:
        """SIGSTOP: the worker keeps its leases until their TTL runs out."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        os.kill(self.pid, signal.SIGCONT)

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS)."""
        match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{self.pid}/status").read_text())
        if match is None:
            raise RuntimeError(f"no VmRSS for pid {self.pid}")
        return int(match.group(1)) * 1024

    def check_alive(self) -> None:
        """Raise with the tail of the worker's log if it has exited."""
        if self.poll() is not None:
            raise RuntimeError(f"worker {self.consumer} exited with {self.returncode}:\n"
                               f"{self.log()[-2000:]}")

    def stop(self, grace: float = 20.0) -> int | None:
        """Warm stop (SIGTERM), SIGKILL after `grace` seconds."""
        return stop_process(self, grace)


def start_worker(url: str, consumer: str, *args: str, log_dir: Path | None = None,
                 metrics: bool = False, threads: int | None = 1,
                 **settings: Any) -> WorkerProcess:
    """`forecast worker --consumer NAME ARGS...` with `worker_env` (cwd `log_dir`: no `.env`).

    With `metrics`, the health server listens on a free loopback port (`.metrics_port`).
    """
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="forecast-worker-"))
    port = free_port() if metrics else 0
    log_path = log_dir / f"{consumer}-{time.monotonic_ns()}.log"
    if metrics:
        settings = {"metrics_host": "127.0.0.1", **settings, "metrics_port": port}
    cmd = [PYTHON, "-m", "cli", "worker", "--consumer", consumer, *args]
    with log_path.open("wb") as out:
        proc = WorkerProcess(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=log_dir,
                             env=worker_env(url, threads=threads, **settings))
    proc.consumer, proc.log_path, proc.metrics_port = consumer, log_path, port
    return proc
