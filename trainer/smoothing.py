"""Fitting per-series exponential smoothing (`forecast.smoothing`) on a series' history.

Every candidate of a grid (simple, Holt's trend, damped trend, each with or without an
additive season of the family's period) is run, as the worker will run it, on windows of
the family's length ending at each value of the training part (shorter windows while the
series is young); the candidate with the lowest AICc of its one-step errors is the series'
model, as AutoETS chooses among ETS models. Candidates' filters are computed once per window
length and period and shared by every series (`Filters`).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from forecast.smoothing import Smooth, weights
from trainer.conformal import conformal_q

log = logging.getLogger(__name__)

ALPHAS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BETAS = (0.01, 0.03, 0.1, 0.2, 0.3)
PHIS = (1.0, 0.98, 0.9, 0.8)
GAMMAS = (0.02, 0.05, 0.1, 0.2, 0.3)


@dataclass
class Holdout:
    """What the version forecast on its validation windows: per window its series (index
    into `names`), the position of its first target, the targets and the forecasts."""

    names: list[str]
    sidx: np.ndarray
    pos: np.ndarray
    y: np.ndarray  # (m, horizon)
    pred: np.ndarray  # (m, horizon)


MIN_ERRORS = 8  # one-step errors a fit needs
FULL_ERRORS = 100  # fitted on full windows alone when there are this many
FIRST = 4  # values before the first one-step error counted


@lru_cache(maxsize=8)
def grid(period: int) -> tuple[Smooth, ...]:
    """The candidates for a series of `period` (seasonal ones only when period >= 2).

    >>> len(grid(1)), all(not p.season for p in grid(1))
    (225, True)
    """
    out = []
    for season in (False, True) if period >= 2 else (False,):
        for trend in (False, True):
            for a in ALPHAS:
                betas = [b for b in BETAS if b <= a] if trend else [0.0]
                phis = PHIS if trend else (1.0,)
                gammas = [g for g in GAMMAS if g <= 1 - a] if season else [0.0]
                for b, f, g in itertools.product(betas, phis, gammas):
                    out.append(Smooth(a, b, f, g, period, trend, season))
    return tuple(out)


@lru_cache(maxsize=256)
def _filters(n: int, period: int, horizon: int) -> np.ndarray:
    """(candidates, n, horizon) filters of `grid(period)` for windows of `n` values."""
    return weights(n, list(grid(period)), horizon).astype(np.float64)


def _n_params(p: Smooth) -> int:
    """Smoothing parameters and initial states, for AICc."""
    return (1 + 1 + (2 if p.trend else 0) + (p.phi < 1) + ((1 + p.period) if p.season else 0))


def candidate_forecasts(values: np.ndarray, n: int, period: int, positions: np.ndarray,
                        horizon: int) -> np.ndarray:
    """(candidates, len(positions), horizon): each candidate's forecast of the values from
    `positions[i]` on, from the (at most `n`) values before it."""
    out = np.empty((len(grid(period)), len(positions), horizon))
    lengths = np.minimum(positions, n)
    for length in np.unique(lengths).tolist():
        at = np.flatnonzero(lengths == length)
        idx = positions[at][:, None] + np.arange(-length, 0)[None, :]
        f = _filters(int(length), period, horizon)  # (C, L, H)
        out[:, at, :] = np.einsum("wl,clh->cwh", values[idx], f)
    return out


def fit(values: np.ndarray, n: int, period: int) -> Smooth | None:
    """The best candidate on the one-step errors over `values` (None: too few values)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        return None
    positions = np.arange(max(n, FIRST), len(values))
    if len(positions) < FULL_ERRORS:  # a young series: windows as long as it had
        positions = np.arange(max(FIRST, 2 * period if period >= 2 else FIRST), len(values))
    if len(positions) < MIN_ERRORS:
        return None
    err = values[positions][None, :] - candidate_forecasts(values, n, period, positions, 1)[..., 0]
    count = err.shape[1]
    sse = np.maximum((err ** 2).sum(axis=1), 1e-300)
    k = np.asarray([_n_params(p) for p in grid(period)], dtype=np.float64)
    aicc = count * np.log(sse / count) + 2 * k + 2 * k * (k + 1) / np.maximum(count - k - 1, 1)
    aicc[~np.isfinite(aicc)] = np.inf
    best = int(np.argmin(aicc))
    sigma = float(np.mean(np.abs(err[best])))
    p = grid(period)[best]
    return Smooth(p.alpha, p.beta, p.phi, p.gamma, p.period, p.trend, p.season, sigma)


def forecasts(values: np.ndarray, n: int, p: Smooth, positions: np.ndarray, horizon: int
              ) -> np.ndarray:
    """(len(positions), horizon): `p`'s forecasts from the (at most `n`) values before each."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty((len(positions), horizon))
    lengths = np.minimum(positions, n)
    for length in np.unique(lengths).tolist():
        at = np.flatnonzero(lengths == length)
        idx = positions[at][:, None] + np.arange(-length, 0)[None, :]
        out[at] = values[idx] @ weights(int(length), [p], horizon)[0]
    return out


# A series is served by its own smoothing when, on at least SMOOTH_WINDOWS of its validation
# windows, its mean absolute error is below (1 - SMOOTH_MARGIN) x the version's (and naive's
# when naive alone was chosen for it).
SMOOTH_WINDOWS = 12
SMOOTH_MARGIN = 0.0


@dataclass
class Choice:
    """The series served by their own smoothing: fitted on all their training data, their
    filter's window, and the interval half-widths (in units of each series' `sigma`)."""

    fits: dict[str, Smooth]
    n_steps: dict[str, int]
    q: list[float] | None


def choose(series: dict[str, np.ndarray], splits: dict[str, int], n_steps: dict[str, int],
           periods: dict[str, int], holdout: Holdout, naive: frozenset[str],
           coverage: float | None) -> Choice:
    """Fit every series on its training part, score it on its validation windows against
    what the version served there (`holdout`), keep the better ones, refit those on all
    their values."""
    horizon = holdout.y.shape[1]
    chosen: dict[str, Smooth] = {}
    scaled: list[np.ndarray] = []
    for i, name in enumerate(holdout.names):
        at = np.flatnonzero(holdout.sidx == i)
        n, period = n_steps.get(name), periods.get(name, 1)
        if n is None or len(at) < SMOOTH_WINDOWS:
            continue
        values = series[name]
        p = fit(values[: splits[name]], n, period)
        if p is None or not p.sigma > 0:  # a constant training part: no scale for an interval
            continue
        y = holdout.y[at]
        f = forecasts(values, n, p, holdout.pos[at], horizon)
        scaled.append(np.abs(y - f) / max(p.sigma, 1e-12))
        own = float(np.abs(y - f).mean())
        rival = float(np.abs(y - holdout.pred[at]).mean())
        if name in naive:
            last = values[holdout.pos[at] - 1][:, None]
            rival = min(rival, float(np.abs(y - last).mean()))
        if own < (1.0 - SMOOTH_MARGIN) * rival:
            chosen[name] = p
    fits = {}
    for name in chosen:
        p = fit(series[name], n_steps[name], periods.get(name, 1))
        if p is not None and p.sigma > 0:
            fits[name] = p
    q = conformal_q(np.concatenate(scaled), coverage) if coverage and scaled else None
    _filters.cache_clear()
    return Choice(fits, {name: n_steps[name] for name in fits}, q)
