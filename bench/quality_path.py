"""The quality benchmark's project side, through the real path.

`forecast train --csv FILE` with the defaults (plus `--horizon H`), the registry of a private
redis-server, a real `forecast worker` process reading every value from `forecast:values`,
predictions read back from `forecast:predictions`. Short series are not in the training CSV:
they reach the worker as new series.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality_base import Forecasts, Served, split
from bench.quality_data import RealSeries
from bench.util import start_worker
from forecast import keys, registry
from forecast.local_redis import RedisServer
from forecast.processes import wait_until

OK_EXITS = (0, 3, 5)  # trained: current / stored only / the fallback made current


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"})
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    return env


def write_training_csv(path: Path, group: list[RealSeries]) -> None:
    """The training parts (first 80%) in the long CSV format `forecast train --csv` reads."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["series", "timestamp", "value"])
        for s in group:
            if s.short:  # a new series: the worker meets it first
                continue
            for i, v in enumerate(s.values[: split(len(s.values))]):
                w.writerow([s.name, i, repr(float(v))])


def train_group(url: str, csv_path: Path, workdir: Path, horizon: int) -> dict[str, Any]:
    """`forecast train --csv FILE` (plus --horizon H when H > 1): wall time, exit code, output,
    and the gate's verdict on stderr."""
    cmd = [sys.executable, "-m", "cli", "train", "--csv", str(csv_path),
           "--redis-url", url, "--out", str(workdir / "models")]
    if horizon > 1:
        cmd += ["--horizon", str(horizon)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=_env(workdir), capture_output=True, text=True,
                          check=False)
    took = time.perf_counter() - t0
    if proc.returncode not in OK_EXITS:
        raise RuntimeError(f"forecast train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"seconds": round(took, 1), "rc": proc.returncode,
            "stdout": proc.stdout.strip().splitlines()[-8:],
            "gate": [line for line in proc.stderr.splitlines() if "gate:" in line][-2:]}


def _floats(text: bytes | None) -> np.ndarray | None:
    if not text:
        return None
    return np.asarray([float(x) for x in text.decode().split(",")], dtype=np.float64)


def serve_group(server: RedisServer, client: Any, group: list[RealSeries], horizon: int,
                workdir: Path, tag: str) -> tuple[dict[str, Forecasts], dict[str, Any]]:
    """Run a `forecast worker` on the current model over the whole series; read predictions."""
    version = registry.current_version(client)
    manifest = registry.get_manifest(client, version or "")
    n_steps = int(manifest["n_steps"])
    worker = start_worker(server.url, f"quality-{tag}", workdir, model_poll_s=0.2, block_ms=100)
    try:
        def ready() -> bool:
            worker.check_alive()
            raw = client.get(keys.heartbeat(worker.consumer))
            return bool(raw and json.loads(raw).get("model_version") == version
                        and json.loads(raw).get("ready"))
        wait_until(ready, 180, 0.1, "the worker to serve the model")
        where: dict[bytes, tuple[str, int]] = {}
        for s in group:
            pipe = client.pipeline(transaction=False)
            for i, v in enumerate(s.values):
                pipe.xadd(keys.VALUES, {"series": s.name, "value": repr(float(v)), "ts": i})
            for i, eid in enumerate(pipe.execute()):
                where[eid] = (s.name, i)
        first = int(manifest.get("min_values", n_steps))  # a bundle forecasts young series
        expected = sum(max(0, len(s.values) - first + 1) for s in group)

        def done() -> bool:
            worker.check_alive()
            return int(client.xlen(keys.PREDICTIONS)) >= expected
        wait_until(done, 600, 0.05, f"{expected} predictions")
    finally:
        worker.stop()
    out = {s.name: Forecasts() for s in group}
    for _eid, f in client.xrange(keys.PREDICTIONS, "-", "+"):
        name, t = where[f[b"source_id"]]
        fc = out[name]
        if horizon > 1:
            fc.point[t] = _floats(f[b"path"])  # type: ignore[assignment]
            if b"lower_path" in f:
                fc.lower[t] = _floats(f[b"lower_path"])  # type: ignore[assignment]
                fc.upper[t] = _floats(f[b"upper_path"])  # type: ignore[assignment]
        else:
            fc.point[t] = np.asarray([float(f[b"prediction"])])
            if b"lower" in f:
                fc.lower[t] = np.asarray([float(f[b"lower"])])
                fc.upper[t] = np.asarray([float(f[b"upper"])])
        if f.get(b"warmup") == b"1":
            fc.warm.add(t)
    families = [{k: f.get(k) for k in ("period", "n_steps", "series", "forecaster")}
                for f in manifest.get("families", [])]
    info = {"version": version, "n_steps": n_steps, "arch": manifest.get("arch"),
            "families": families, "fallback": manifest.get("fallback"),
            "forecaster": manifest.get("forecaster", "rnn"),
            "season_period": manifest.get("metrics", {}).get("season_period"),
            "params": manifest.get("train", {}).get("params"),
            "epochs_run": manifest.get("train", {}).get("epochs_run"),
            "gate": manifest.get("gate", {}).get("reason")}
    return out, info


def project_forecasts(group: list[RealSeries], horizon: int, workdir: Path, tag: str
                      ) -> tuple[dict[str, Forecasts], dict[str, Any]]:
    """Train on the group's training parts, publish, serve, and read the forecasts back."""
    import redis

    gdir = workdir / tag
    gdir.mkdir(parents=True, exist_ok=True)
    csv_path = gdir / "train.csv"
    write_training_csv(csv_path, group)
    server = RedisServer(dir=gdir / "redis")
    server.dir.mkdir()  # type: ignore[union-attr]
    server.start()
    client = redis.Redis(port=server.port, socket_timeout=60)
    try:
        trained = train_group(server.url, csv_path, gdir, horizon)
        if trained["rc"] == 3:  # stored but nothing current: score the latest anyway, say so
            latest = registry.list_versions(client)[-1]["version"]
            registry.promote(client, latest)
        fc, info = serve_group(server, client, group, horizon, gdir, tag)
        version = registry.current_version(client) or ""
        artifact = Served(registry.get_blob(client, version),
                          registry.get_manifest(client, version))
        return fc, {**info, "train": trained, "artifact": artifact}
    finally:
        client.close()
        server.cleanup()


