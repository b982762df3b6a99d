"""Real worker processes for the robustness tests: start, signal, stop (by PID), read logs.

Also a tiny TensorFlow model trained once per test process and published on demand, and
the offline reference replay that says what an uninterrupted worker would have predicted.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import redis

from forecast import keys
from forecast.redis_server import free_port
from tests.helpers import wait_for
from worker.parse import Limits, parse_fields

PYTHON = sys.executable
LOG_DIR = Path(tempfile.mkdtemp(prefix="forecast-procs-"))


class WorkerProc(subprocess.Popen[bytes]):
    """A `forecast worker` subprocess; stderr/stdout go to `log_path`."""

    consumer: str
    log_path: Path
    metrics_port: int

    def log(self) -> str:
        """Everything the worker has written so far."""
        return self.log_path.read_text(errors="replace")

    def readyz(self) -> int:
        """HTTP status of /readyz (0 when the server does not answer)."""
        return http_status(f"http://127.0.0.1:{self.metrics_port}/readyz")


def worker_env(**env: Any) -> dict[str, str]:
    """The environment of a worker process: no inherited FORECAST_*, one TF thread."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
    base.update({
        "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1",
        "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1",
        "FORECAST_MODEL_POLL_S": "0.2", "FORECAST_BLOCK_MS": "200",
    })
    base.update({k if not k.islower() else f"FORECAST_{k.upper()}": str(v) for k, v in env.items()})
    return base


def start_worker(url: str, consumer: str, *args: str, metrics: bool = False,
                 **env: Any) -> WorkerProc:
    """`forecast worker` as a subprocess; lower-case `env` names are FORECAST_ settings.

    With `metrics`, the health server listens on a free port (`proc.metrics_port`).
    """
    port = free_port() if metrics else 0
    log_path = LOG_DIR / f"{consumer}-{os.getpid()}-{len(list(LOG_DIR.iterdir()))}.log"
    cmd = [PYTHON, "-m", "forecast.cli", "worker", "--redis-url", url, "--consumer", consumer,
           "--metrics-port", str(port), *args]
    with open(log_path, "wb") as out:
        proc = WorkerProc(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=LOG_DIR,
                          env=worker_env(metrics_host="127.0.0.1", **env))
    proc.consumer = consumer
    proc.log_path = log_path
    proc.metrics_port = port
    return proc


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> int | None:
    """Stop a process we started, by its PID: SIGCONT + SIGTERM, then SIGKILL."""
    if proc is None:
        return None
    if proc.poll() is None:
        for sig in (signal.SIGCONT, signal.SIGTERM):
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                break
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def kill(proc: subprocess.Popen[Any]) -> None:
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


def heartbeat(client: Any, consumer: str) -> dict[str, Any] | None:
    """A worker's heartbeat body, or None."""
    raw = client.get(keys.heartbeat(consumer))
    return json.loads(raw) if raw else None


def wait_serving(client: Any, consumer: str, version: str, timeout: float = 60.0,
                 proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until the worker's heartbeat says it is ready with `version` (from `proc`'s PID).

    Pass `proc` when a dead worker of the same name may have left a fresh heartbeat.
    """
    def ok() -> bool:
        hb = heartbeat(client, consumer)
        return bool(hb and hb.get("ready") and hb.get("model_version") == version
                    and (proc is None or hb.get("pid") == proc.pid))
    wait_for(ok, timeout, interval=0.1, what=f"worker {consumer} serving {version}")


# --- the tiny model ---------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def tiny_model() -> tuple[bytes, dict[str, Any]]:
    """A small SimpleRNN (n_steps=3) trained for a few epochs on 0..9: (blob, manifest)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from forecast.settings import Settings
    from trainer import artifact, data

    settings = Settings(_env_file=None, n_steps=3, units=8, epochs=5, patience=0,  # type: ignore[call-arg]
                        model_hmac_key="")
    trained = artifact.train_model(data.example(), settings)
    return trained.blob, dict(trained.manifest)


def publish_tiny_model(url: str) -> str:
    """Publish the tiny model to the Redis at `url`; its version."""
    from forecast import registry

    blob, manifest = tiny_model()
    client = redis.Redis.from_url(url)
    try:
        return registry.publish(client, blob, manifest)
    finally:
        client.close()


def reference_predictions(model: Any, entries: list[tuple[bytes, dict[bytes, bytes]]],
                          limits: Limits = Limits()) -> dict[tuple[bytes, bytes], float]:  # noqa: B008
    """What an uninterrupted worker predicts: (series, source_id) -> prediction.

    `entries` are (id, fields) in stream order per shard (the shards' streams one after the
    other is fine: a series never spans shards). Ids repeat across streams, so the key holds
    the series too. Bad entries are skipped, as the worker dead-letters them.
    """
    windows: dict[bytes, list[float]] = {}
    ids: list[tuple[bytes, bytes]] = []
    rows: list[list[float]] = []
    n = model.n_steps
    for eid, fields in entries:
        flat = [b for kv in fields.items() for b in kv]
        parsed = parse_fields(flat, limits)
        if isinstance(parsed, str):
            continue
        window = windows.setdefault(parsed[0], [])
        window.append(float(np.float32(parsed[1])))
        del window[:-n]
        if len(window) == n:
            ids.append((parsed[0], eid))
            rows.append(list(window))
    if not rows:
        return {}
    out = model.predict(np.asarray(rows, dtype=np.float32))
    return {eid: float(v) for eid, v in zip(ids, out[:, 0].tolist(), strict=True)}
