"""Exponential smoothing with per-series parameters, served as a linear filter of the window.

Additive exponential smoothing (simple, Holt's trend, damped trend, Holt-Winters' additive
season) with fixed parameters is linear in the values it runs over, once its initial level,
trend and season are themselves linear in the first values of the window (a line fitted to
them, and each season position's mean deviation from it). So the forecast of a window `x`
of `n` values is `x @ W` for a matrix `W` (n, horizon) that depends only on the parameters:
the trainer fits the parameters per series (`trainer.smoothing`), the version keeps them as
per-series state, and a worker computes `W` once per series when it loads the version.

`Smooth` is one series' parameters; `weights` its filter; `forecast` runs the recursion on
data directly (what the trainer fits with, vectorised over candidate parameters).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

INIT = 6  # values the initial level and trend are fitted on (non-seasonal)


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

    def as_json(self) -> dict[str, Any]:
        """The bundle index's form."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Smooth:
        """From the bundle index; raises ValueError on parameters outside their ranges."""
        s = cls(float(raw["alpha"]), float(raw.get("beta", 0.0)), float(raw.get("phi", 1.0)),
                float(raw.get("gamma", 0.0)), int(raw.get("period", 1)),
                bool(raw.get("trend", False)), bool(raw.get("season", False)),
                float(raw.get("sigma", 1.0)))
        ok = (0 < s.alpha <= 1 and 0 <= s.beta <= 1 and 0 < s.phi <= 1 and 0 <= s.gamma <= 1
              and s.period >= 1 and np.isfinite(s.sigma) and s.sigma >= 0)
        if not ok:
            raise ValueError(f"smoothing parameters out of range: {raw}")
        return s


def _initial(n: int, period: int, trend: bool, season: bool
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
    alpha, beta, phi, gamma = (np.zeros((c, 1)) for _ in range(4))
    for i, p in enumerate(params):
        season = p.season and n >= 2 * p.period
        level[i], slope[i], s0 = _initial(n, m if season else 1, p.trend, season)
        if season:
            seas[i] = s0
        alpha[i], beta[i] = p.alpha, p.beta if p.trend else 0.0
        phi[i], gamma[i] = (p.phi if p.trend else 1.0), (p.gamma if season else 0.0)
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


def forecast(windows: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Row i of `windows` (m, n) through filter i of `filters` (m, n, horizon)."""
    return np.einsum("mn,mnh->mh", windows, filters)
