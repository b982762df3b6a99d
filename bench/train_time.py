"""How long `forecast train --csv` takes with the defaults on 100 series x 1,000 values.

The series are generated (deterministic): a quarter each hourly-like (season 24), daily-like
(season 7), monthly-like (season 12) and non-seasonal (random walks with drift), at scales
from 1 to 10^4, the mix one deployment gets. The trainer runs through the real path (a
private redis-server, publishing) and its progress lines are printed as they come.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from forecast.local_redis import RedisServer

LIMIT_S = 300.0
PERIODS = (24, 7, 12, 1)


def generate(n_series: int = 100, length: int = 1000, seed: int = 11) -> dict[str, np.ndarray]:
    """`n_series` series of `length` values, a quarter of each kind.

    >>> data = generate(8, 50)
    >>> len(data), {len(v) for v in data.values()}, sorted(data)[:2]
    (8, {50}, ['p1-003', 'p1-007'])
    """
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64)
    out = {}
    for i in range(n_series):
        p = PERIODS[i % len(PERIODS)]
        level = 10.0 ** rng.uniform(0, 4)
        walk = np.cumsum(rng.normal(0.002, 0.02, length))
        season = 0.0 if p == 1 else 0.2 * np.sin(2 * np.pi * t / p + rng.uniform(0, 6.3))
        noise = rng.normal(0, 0.03, length)
        out[f"p{p}-{i:03d}"] = level * (1.5 + walk + season + noise)
    return out


def write_csv(path: Path, data: dict[str, np.ndarray]) -> None:
    """The long CSV `forecast train --csv` reads."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["series", "timestamp", "value"])
        for name, values in data.items():
            for i, v in enumerate(values):
                w.writerow([name, i, f"{v:.6g}"])


def measure_training(quick: bool = False) -> dict[str, Any]:
    """Wall time of `forecast train --csv` with the defaults, printing its progress lines."""
    from bench.quality_path import _env

    n, length = (20, 500) if quick else (100, 1000)
    with tempfile.TemporaryDirectory(prefix="forecast-train-time-") as tmp:
        work = Path(tmp)
        path = work / "train.csv"
        write_csv(path, generate(n, length))
        server = RedisServer(dir=work / "redis")
        server.dir.mkdir()  # type: ignore[union-attr]
        server.start()
        try:
            cmd = [sys.executable, "-m", "cli", "train", "--csv", str(path),
                   "--redis-url", server.url, "--model-dir", str(work / "models")]
            print(f"[train-time] forecast train --csv ({n} series x {length} values)", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=work, env=_env(work), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:
                if "WARNING" in line or "absl" in line or not line.strip():
                    continue
                lines.append(line.rstrip())
                print(f"[train-time] {time.perf_counter() - t0:6.1f}s  {line.rstrip()}",
                      flush=True)
            rc = proc.wait()
            seconds = time.perf_counter() - t0
        finally:
            server.cleanup()
    return {"series": n, "length": length, "seconds": round(seconds, 1), "rc": rc,
            "output": lines[-12:]}
