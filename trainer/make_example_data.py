"""Generate `data/example.csv`: a few hourly series of very different scales (run once).

Usage: `python -m trainer.make_example_data [PATH ...]` (default: data/example.csv).
Deterministic: the same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
STEP_MS = 3_600_000  # hourly
LENGTH = 120
PERIOD = 24
# name: (level, trend per step, seasonal amplitude, noise sd), all relative to the level
SERIES = {
    "sensor-a": (10.0, 0.002, 0.20, 0.02),
    "sensor-b": (1_000.0, 0.001, 0.10, 0.01),
    "sales": (50_000.0, 0.003, 0.30, 0.03),
    "ratio": (0.5, -0.001, 0.15, 0.02),
}


def make_series(level: float, trend: float, amplitude: float, noise: float, length: int,
                rng: np.random.Generator) -> np.ndarray:
    """Level * (1 + trend*t + amplitude*sin(2*pi*t/24) + noise).

    >>> s = make_series(10.0, 0.0, 0.0, 0.0, 5, np.random.default_rng(0))
    >>> s.tolist()
    [10.0, 10.0, 10.0, 10.0, 10.0]
    """
    t = np.arange(length)
    shape = 1 + trend * t + amplitude * np.sin(2 * np.pi * t / PERIOD)
    return level * (shape + noise * rng.standard_normal(length))


def rows(seed: int = 7) -> list[tuple[str, int, str]]:
    """All rows (series, timestamp ms, value as text with 6 significant digits)."""
    rng = np.random.default_rng(seed)
    out = []
    for name, params in SERIES.items():
        values = make_series(*params, LENGTH, rng)
        out += [(name, START_MS + i * STEP_MS, f"{v:.6g}") for i, v in enumerate(values)]
    return out


def write(path: Path, seed: int = 7) -> Path:
    """Write the CSV with a `series,timestamp,value` header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["series", "timestamp", "value"])
        w.writerows(rows(seed))
    return path


def main(argv: list[str] | None = None) -> int:
    """Write the example CSV to each given path (or the two default places)."""
    targets = argv if argv else ["data/example.csv"]
    for target in targets:
        print(f"wrote {write(Path(target))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
