"""What the parts of the quality benchmark share: the split, the origins, the peers, the
scores, and a version served with its forecasts (`bench.quality` runs it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_FRACTION = 0.8
ALPHA = 0.1  # 90% intervals
PEERS = ("AutoETS", "AutoTheta", "AutoARIMA", "Comb", "Naive", "SeasonalNaive")
COMBINED = ("AutoETS", "AutoTheta", "AutoARIMA")  # Comb: the mean of their forecasts (M4)
PROJECT = "forecast"
RESULTS = Path("bench/results")


@dataclass
class Forecasts:
    """Forecasts of one method on one series: per origin (index of the last value seen)."""

    point: dict[int, np.ndarray] = field(default_factory=dict)  # origin -> (H,)
    lower: dict[int, np.ndarray] = field(default_factory=dict)
    upper: dict[int, np.ndarray] = field(default_factory=dict)
    warm: set[int] = field(default_factory=set)  # origins forecast from a window not yet full


@dataclass
class Served:
    """A served artifact (what the bench's throughput fleet publishes)."""

    blob: bytes
    manifest: dict[str, Any]


def split(n: int) -> int:
    """Index of the first test value: the first 80% of a series is training data.

    >>> split(100), split(144)
    (80, 115)
    """
    return n * 4 // 5  # TRAIN_FRACTION, in integers


def origins(n: int, horizon: int, short: bool = False) -> list[int]:
    """Forecast origins (index of the last observed value) whose H targets all lie in the test
    part: the last 20%, or for a short series everything from its second value on.

    >>> origins(10, 1), origins(10, 2), origins(5, 1, short=True)
    ([7, 8], [7], [1, 2, 3])
    """
    return list(range(1 if short else split(n) - 1, n - horizon))


def mase_scale(values: np.ndarray, short: bool = False) -> float:
    """In-sample one-step naive MAE of the training part (the MASE denominator); of the
    whole series for a short one (it has no training part; every method shares the scale).

    >>> mase_scale(np.array([1.0, 2.0, 4.0, 7.0, 11.0]))  # diffs of 1, 2, 4, 7
    2.0
    """
    d = np.abs(np.diff(values if short else values[: split(len(values))]))
    return float(d.mean()) if len(d) and d.mean() > 0 else 1.0


def msis(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, scale: float, alpha: float = ALPHA
         ) -> float:
    """Mean scaled interval score (M4): width plus 2/alpha times each miss, over `scale`.

    >>> msis(np.array([1.0, 5.0]), np.array([0.0, 0.0]), np.array([2.0, 4.0]), 2.0)
    6.5
    """
    score = (hi - lo) + 2 / alpha * (lo - y) * (y < lo) + 2 / alpha * (y - hi) * (y > hi)
    return float(np.mean(score) / scale)


def geo_mean_ratio(a: list[float], b: list[float]) -> float:
    """Geometric mean of a_i / b_i (pairs where either is 0 or missing are skipped).

    >>> round(geo_mean_ratio([1.0, 8.0], [2.0, 2.0]), 6)
    1.414214
    """
    r = [math.log(x / y) for x, y in zip(a, b, strict=True)
         if x is not None and y is not None and x > 0 and y > 0]
    return math.exp(sum(r) / len(r)) if r else float("nan")
