"""Exponential smoothing with per-series parameters, served as a linear filter of the window.

Additive exponential smoothing (simple, Holt's trend, damped trend, Holt-Winters' additive
season) with fixed parameters is linear in the values it runs over, once its initial level,
trend and season are themselves linear in the first values of the window (a line fitted to
them, and each season position's mean deviation from it). So the forecast of a window `x`
of `n` values is `x @ W` for a matrix `W` (n, horizon) that depends only on the parameters:
the trainer fits the parameters per series (`trainer.smoothing`), the version keeps them as
per-series state, and a worker computes `W` once per series when it loads the version.

`Smooth` is one series' parameters (with `log`, the filter runs on the logarithms of the
values and the forecast is the exponential of its output: multiplicative trend and season);
`weights` its filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

INIT = 6  # values the initial level and trend are fitted on (non-seasonal)
LOG_MAX = 700.0  # exp() of more overflows float64


@dataclass(frozen=True)
class Smooth:
    """One series' smoothing parameters (`trend`/`season` False: that component is off)."""

    alpha: float
    beta: float = 0.0
    phi: float = 1.0
    gamma: float = 0.0
    period: int = 1
    trend: bool = False
    season: bool = False
    sigma: float = 1.0  # mean absolute one-step error on the training part (raw units)
    log: bool = False  # run on the logarithms of the values (a positive series)

    def as_json(self) -> dict[str, Any]:
        """The bundle index's form."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Smooth:
        """From the bundle index; raises ValueError on parameters outside their ranges."""
        s = cls(float(raw["alpha"]), float(raw.get("beta", 0.0)), float(raw.get("phi", 1.0)),
                float(raw.get("gamma", 0.0)), int(raw.get("period", 1)),
                bool(raw.get("trend", False)), bool(raw.get("season", False)),
                float(raw.get("sigma", 1.0)), bool(raw.get("log", False)))
        ok = (0 < s.alpha <= 1 and 0 <= s.beta <= 1 and 0 < s.phi <= 1 and 0 <= s.gamma <= 1
              and s.period >= 1 and np.isfinite(s.sigma) and s.sigma >= 0)
        if not ok:
            raise ValueError(f"smoothing parameters out of range: {raw}")
        return s


def initial(n: int, period: int, trend: bool, season: bool
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Initial (level, trend, season (period, n)) as weights over a window of `n` values."""
    k = min(n, 2 * period if season else INIT)
    t = np.arange(k, dtype=np.float64)
    level, slope = np.zeros(n), np.zeros(n)
    if trend and k >= 2:
        inv = np.linalg.pinv(np.stack([np.ones(k), t], axis=1))
        level[:k], slope[:k] = inv[0], inv[1]
    else:
        level[:k] = 1.0 / k
    seas = np.zeros((period, n))
    if season:
        for j in range(period):
            at = np.arange(j, k, period)
            for i in at:
                seas[j, i] += 1.0 / len(at)
                seas[j] -= (level + slope * i) / len(at)
        seas -= seas.mean(axis=0, keepdims=True)
    return level - slope, slope, seas  # level "before" the first value


def coefficients(params: Sequence[Smooth], seasonal: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(alpha, beta, phi, gamma) per candidate, with the components a candidate lacks (or a
    season the window is too short for) turned off."""
    trend = np.asarray([p.trend for p in params])
    season = np.asarray([p.season and seasonal for p in params])
    alpha = np.asarray([p.alpha for p in params], dtype=np.float64)
    beta = np.where(trend, [p.beta for p in params], 0.0)
    phi = np.where(trend, [p.phi for p in params], 1.0)
    gamma = np.where(season, [p.gamma for p in params], 0.0)
    return alpha, beta, phi, gamma


def weights(n: int, params: list[Smooth], horizon: int) -> np.ndarray:
    """The filters (len(params), n, horizon): a window of `n` values times one is its forecast.

    >>> x = np.arange(1.0, 9.0)
    >>> w = weights(8, [Smooth(1.0), Smooth(0.5, 0.1, trend=True)], 2)
    >>> np.round(x @ w, 6).tolist()  # alpha 1: the last value; a trend: the line goes on
    [[8.0, 8.0], [9.0, 10.0]]
    """
    c = len(params)
    periods = {p.period for p in params if p.season and n >= 2 * p.period}
    if len(periods) > 1:
        raise ValueError(f"one seasonal period per call, got {sorted(periods)}")
    m = periods.pop() if periods else 1
    level, slope = np.zeros((c, n)), np.zeros((c, n))
    seas = np.zeros((c, m, n))
    for i, p in enumerate(params):
        season = p.season and m > 1
        level[i], slope[i], s0 = initial(n, m if season else 1, p.trend, season)
        if season:
            seas[i] = s0
    alpha, beta, phi, gamma = (a[:, None] for a in coefficients(params, m > 1))
    for t in range(n):
        j = t % m
        err = -(level + phi * slope + seas[:, j])
        err[:, t] += 1.0
        level = level + phi * slope + alpha * err
        slope = phi * slope + beta * err
        seas[:, j] += gamma * err
    out = np.empty((c, n, horizon))
    damp = np.zeros((c, 1))
    for h in range(1, horizon + 1):
        damp = damp + phi ** h
        out[:, :, h - 1] = level + damp * slope + seas[:, (n + h - 1) % m]
    return out


def apply(x: np.ndarray, w: np.ndarray, log: bool) -> np.ndarray:
    """Windows `x` (m, n) through filter `w` (n, horizon); with `log`, on the logarithms of a
    window whose values are all positive (else, for that window, on the values themselves).

    >>> w = weights(3, [Smooth(1.0)], 1)[0]
    >>> apply(np.array([[1.0, 2.0, 4.0], [-1.0, 0.0, 3.0]]), w, True).ravel().tolist()
    [4.0, 3.0]
    """
    x = np.asarray(x, dtype=np.float64)
    out = x @ w
    if log:
        positive = (x > 0).all(axis=1)
        if positive.any():
            out[positive] = np.exp(np.minimum(np.log(x[positive]) @ w, LOG_MAX))
    return out


class SmoothTable:
    """The series a version serves by their own smoothing: their parameters (filters shared
    by series with the same parameters and window), intervals of `q` x each series' `sigma`.
    A young series runs the filter of the values it has (`warmup=1` until its window is full).
    """

    def __init__(self, raw: dict[str, Any], q: list[float], horizon: int, interval: bool
                 ) -> None:
        if not isinstance(raw, dict):
            raise ValueError("smooth_series is not an object")
        self.rows = {str(k).encode(): i for i, k in enumerate(raw)}
        params = [Smooth.from_json(v) for v in raw.values()]
        self.n_steps = np.asarray([int(v["n_steps"]) for v in raw.values()], dtype=np.int64)
        self.sigma = np.asarray([p.sigma for p in params], dtype=np.float64)
        self.horizon = horizon
        keys = [(replace(p, sigma=0.0), int(k)) for p, k in zip(params, self.n_steps,
                                                               strict=True)]
        index: dict[tuple[Smooth, int], int] = {}
        self.filter_of = np.asarray([index.setdefault(k, len(index)) for k in keys],
                                    dtype=np.int64)
        self.unique = list(index)
        self._filters: dict[tuple[int, int], np.ndarray] = {}
        self._ensure([(f, n) for f, (_, n) in enumerate(self.unique)])
        self.q = np.asarray(q, dtype=np.float64) if interval else None
        if self.q is not None and self.rows and (
                len(self.q) != horizon or not (np.isfinite(self.q).all() and (self.q >= 0).all())):
            raise ValueError(f"smooth_q must be {horizon} finite half-widths, got {q}")

    def __bool__(self) -> bool:
        return bool(self.rows)

    def rows_of(self, names: list[bytes]) -> np.ndarray:
        """Each name's row (-1: none)."""
        rows = self.rows
        return np.fromiter((rows.get(n, -1) for n in names), dtype=np.int64, count=len(names))

    def _ensure(self, pairs: list[tuple[int, int]]) -> None:
        """Compute the missing (filter, window length) pairs, one `weights` call per length
        and seasonal period."""
        groups: dict[tuple[int, int], list[int]] = {}
        for f, n in pairs:
            if (f, n) not in self._filters:
                groups.setdefault((n, self.unique[f][0].period), []).append(f)
        for (n, _), fs in groups.items():
            for f, w in zip(fs, weights(n, [self.unique[f][0] for f in fs], self.horizon),
                            strict=True):
                self._filters[(f, n)] = w

    def predict(self, windows: np.ndarray, rows: np.ndarray, filled: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """Forecasts (m, horizon, or 3 x horizon with intervals) of windows (m, width) whose
        last `filled` values are real, table row `rows[i]` each; and which windows were full."""
        width = windows.shape[1]
        need = self.n_steps[rows]
        length = np.maximum(np.minimum(filled, need), 1)
        which = self.filter_of[rows]
        keys, group = np.unique(which * (width + 1) + length, return_inverse=True)
        pairs = [(int(k) // (width + 1), int(k) % (width + 1)) for k in keys]
        self._ensure(pairs)
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(len(keys) + 1))
        point = np.empty((len(windows), self.horizon), dtype=np.float64)
        for g, (f, n) in enumerate(pairs):
            at = order[bounds[g]:bounds[g + 1]]
            point[at] = apply(windows[at][:, width - n:], self._filters[(f, n)],
                              self.unique[f][0].log)
        full = filled >= need
        if self.q is None:
            return point, full
        half = self.q[None, :] * self.sigma[rows][:, None]
        return np.concatenate([point, point - half, point + half], axis=1), full
