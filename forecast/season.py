"""A series' seasonal period from its own values: one pure function for trainer and worker.

The trainer detects each series' period on its training history (and stores it in the
version); the worker detects it for series the trainer never saw, from their own window,
with the same function (`detect`, vectorised over windows of equal length).

Method: the autocorrelation of the changes (of log values when the window is positive:
a growing multiplicative season keeps its shape), at the common calendar periods
(`CANDIDATES`); a candidate is a season when its autocorrelation is a local peak, at least
`MIN_ACF` and above the 90% Bartlett limit of a white-noise test (the seasonality test of
the M4 Theta benchmark). The strongest wins, and a divisor of it that is a season too
with at least half its autocorrelation wins over it (24 over 168 for hourly data).
"""

from __future__ import annotations

import numpy as np

# Quarterly, business days, daily (weekly season), monthly, hourly, half-hourly, weekly
# (yearly season), 15-minute, hourly with a weekly season, 5-minute, 30-minute weekly.
CANDIDATES = (4, 5, 7, 12, 24, 48, 52, 96, 168, 288, 336)
MIN_ACF = 0.3
BARTLETT_Z = 1.645
MIN_CYCLES = 2.5  # a period needs at least this many cycles of changes in the window


def _changes(w: np.ndarray) -> np.ndarray:
    """(k, T) windows -> (k, T-1) changes, of log values for positive windows."""
    positive = np.all(w > 0, axis=1, keepdims=True)
    lw = np.log(np.where(positive, w, 1.0))
    return np.where(positive, np.diff(lw, axis=1), np.diff(w, axis=1))


def _acf(d: np.ndarray, max_lag: int) -> np.ndarray:
    """(k, n) -> (k, max_lag + 2) autocorrelations of each row (0 where a row is constant)."""
    x = d - d.mean(axis=1, keepdims=True)
    n = x.shape[1]
    var = np.einsum("ij,ij->i", x, x) / n
    out = np.zeros((len(x), max_lag + 2))
    ok = var > 1e-12 * np.maximum(1.0, np.mean(d * d, axis=1))
    for k in range(max_lag + 2):
        out[:, k] = np.einsum("ij,ij->i", x[:, : n - k], x[:, k:]) / n
    out[ok] /= var[ok, None]
    out[~ok] = 0.0
    return out


def detect(windows: np.ndarray, candidates: tuple[int, ...] = CANDIDATES) -> np.ndarray:
    """The seasonal period of each window (rows of equal length, float), 1 when none.

    >>> t = np.arange(120.0)
    >>> rng = np.random.default_rng(0)
    >>> w = np.stack([10 + np.sin(2 * np.pi * t / 12) + 0.1 * rng.normal(size=120),
    ...               10 + 0.1 * rng.normal(size=120).cumsum(), 50 + 0.5 * t])
    >>> detect(w).tolist()
    [12, 1, 1]
    """
    w = np.asarray(windows, dtype=np.float64)
    k = len(w)
    out = np.ones(k, dtype=np.int64)
    if w.ndim != 2 or k == 0 or w.shape[1] < 3:
        return out
    d = _changes(w)
    n = d.shape[1]
    usable = [m for m in candidates if MIN_CYCLES * m + 1 <= n]
    if not usable:
        return out
    acf = _acf(d, max(usable))
    cum = np.cumsum(acf[:, 1:] ** 2, axis=1)  # cum[:, j] = sum of acf(1..j+1)^2
    strength = np.full((k, len(usable)), -np.inf)
    for i, m in enumerate(usable):
        a = acf[:, m]
        limit = BARTLETT_Z * np.sqrt((1 + 2 * cum[:, m - 2]) / n)
        peak = (a >= acf[:, m - 1]) & (a >= acf[:, m + 1]) & (a >= MIN_ACF) & (a > limit)
        strength[:, i] = np.where(peak, a, -np.inf)
    best = np.argmax(strength, axis=1)
    top = strength[np.arange(k), best]
    seasonal = np.isfinite(top)
    chosen = np.asarray(usable)[best]
    for i, m in enumerate(usable):  # a divisor that is a season too wins over its multiple
        wins = seasonal & (chosen % m == 0) & (chosen > m) & (strength[:, i] >= 0.5 * top)
        chosen = np.where(wins, m, chosen)
    out[seasonal] = chosen[seasonal]
    return out


def series_period(values: np.ndarray, max_len: int = 2000) -> int:
    """The seasonal period of one series (its last `max_len` values), 1 when none.

    >>> t = np.arange(300.0)
    >>> series_period(100 + 10 * np.sin(2 * np.pi * t / 24) + 0.05 * t)
    24
    """
    v = np.asarray(values, dtype=np.float64)[-max_len:]
    if not np.all(np.isfinite(v)):
        v = v[np.isfinite(v)]
    return int(detect(v[None, :])[0])


def family_of(periods: np.ndarray, family_periods: list[int]) -> np.ndarray:
    """Index of the family serving each period: the same period, else the largest family
    period dividing it, else the non-seasonal family (period 1), else the first.

    >>> family_of(np.array([12, 24, 168, 7, 1, 0]), [1, 12, 24]).tolist()
    [1, 2, 2, 0, 0, 0]
    >>> family_of(np.array([7, 4]), [12, 4]).tolist()
    [0, 1]
    """
    p = np.maximum(np.asarray(periods, dtype=np.int64), 1)
    fam = list(family_periods)
    default = fam.index(1) if 1 in fam else 0
    out = np.full(len(p), default, dtype=np.int64)
    best = np.zeros(len(p), dtype=np.int64)
    for i, fp in enumerate(fam):
        if fp < 2:
            continue
        hit = (p % fp == 0) & (fp > best)
        out[hit] = i
        best[hit] = fp
    return out
