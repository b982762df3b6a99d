"""Split-conformal prediction intervals, calibrated on validation residuals in scaled units."""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)


def conformal_q(abs_scaled_residuals: np.ndarray, coverage: float) -> list[float]:
    """Per-horizon-step half-widths: the ceil((n+1)*coverage)-th smallest residual.

    With too few residuals for the level, the largest one is used.

    >>> conformal_q(np.arange(1.0, 11.0).reshape(-1, 1), 0.8)
    [9.0]
    >>> conformal_q(np.array([[1.0, 2.0], [3.0, 4.0]]), 0.9)
    [3.0, 4.0]
    """
    r = np.abs(np.asarray(abs_scaled_residuals, dtype=np.float64))
    if r.ndim != 2 or len(r) == 0:
        raise ValueError("need a non-empty (m, horizon) array of residuals")
    n = len(r)
    level = min(1.0, math.ceil((n + 1) * coverage) / n)
    return [float(v) for v in np.quantile(r, level, axis=0, method="inverted_cdf")]


def interval_coverage(y: np.ndarray, lower: np.ndarray | float, upper: np.ndarray | float
                      ) -> float:
    """Fraction of targets inside [lower, upper].

    >>> interval_coverage(np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4), np.full(4, 2.5))
    0.5
    """
    y = np.asarray(y)
    return float(np.mean((y >= lower) & (y <= upper)))


def mean_width(lower: np.ndarray, upper: np.ndarray) -> float:
    """Average interval width.

    >>> mean_width(np.zeros(2), np.array([1.0, 3.0]))
    2.0
    """
    return float(np.mean(np.asarray(upper) - np.asarray(lower)))
