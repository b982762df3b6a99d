"""Results files of the benchmark and the integration tests: the figures with the date of
the run and the machine it ran on (what the docs quote, see `cli.reference`)."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import redis

RESULTS_DIR = Path(__file__).resolve().parents[1] / "bench" / "results"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _installed(*packages: str) -> str | None:
    """The installed version of the first of `packages` there (without importing it)."""
    for package in packages:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return None


def machine_info(client: Any = None) -> dict[str, Any]:
    """Cores, CPU, memory, Python / TensorFlow / Redis versions, load."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": client.info("server").get("redis_version") if client is not None else None,
        "redis_py": redis.__version__,
        "numpy": np.__version__,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    # the version the workers and trainers import (tensorflow-cpu on x86_64, see pyproject)
    info["tensorflow"] = _installed("tensorflow-cpu", "tensorflow")
    try:
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0]
        info["memory_kb"] = int(mem.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return info


def write_results(name: str, figures: dict[str, Any], client: Any) -> Path:
    """Write `bench/results/<name>.json`: the figures, the date and the machine."""
    data = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(client), **figures}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
