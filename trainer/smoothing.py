"""Fitting per-series exponential smoothing (`forecast.smoothing`) on a series' history.

Every candidate of a grid (simple, Holt's trend, damped trend, each with or without an
additive season of the series' period) is run once over the series from its first values,
vectorised over the candidates; the one with the lowest AICc of its one-step errors is the
series' model, as AutoETS chooses among ETS models. `choose` keeps it for the series whose
validation windows it forecasts better, as served (the filter of the window), than the
version did.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from forecast.smoothing import Smooth, apply, coefficients, initial, weights
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
MAX_VALUES = 2000  # a fit looks at the last this many values
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


def _n_params(p: Smooth) -> int:
    """Smoothing parameters and initial states, for AICc."""
    return (1 + 1 + (2 if p.trend else 0) + (p.phi < 1) + ((1 + p.period) if p.season else 0))


def one_step_errors(values: np.ndarray, period: int) -> np.ndarray:
    """(candidates, len(values) - FIRST): each candidate's one-step errors, the recursion
    run once over the whole series from its first values (vectorised over candidates)."""
    params = grid(period)
    n = len(values)
    m = period if period >= 2 and n >= 2 * period else 1
    c = len(params)
    level, slope = np.empty(c), np.empty(c)
    seas = np.zeros((c, m))
    for trend, season in itertools.product((False, True), repeat=2):
        at = [i for i, p in enumerate(params) if p.trend == trend and p.season == season]
        if at:
            lw, bw, sw = initial(n, m if season and m > 1 else 1, trend, season and m > 1)
            level[at], slope[at] = lw @ values, bw @ values
            if season and m > 1:
                seas[at] = sw @ values
    alpha, beta, phi, gamma = coefficients(params, m > 1)
    out = np.empty((c, max(0, n - FIRST)))
    for t in range(n):
        j = t % m
        err = values[t] - (level + phi * slope + seas[:, j])
        if t >= FIRST:
            out[:, t - FIRST] = err
        level = level + phi * slope + alpha * err
        slope = phi * slope + beta * err
        seas[:, j] += gamma * err
    return out


def _aicc(err: np.ndarray, k: np.ndarray) -> np.ndarray:
    count = err.shape[1]
    sse = np.maximum((err ** 2).sum(axis=1), 1e-300)
    aicc = count * np.log(sse / count) + 2 * k + 2 * k * (k + 1) / np.maximum(count - k - 1, 1)
    return np.where(np.isfinite(aicc), aicc, np.inf)


def fit(values: np.ndarray, period: int) -> Smooth | None:
    """The best candidate by the AICc of its one-step errors over `values`, on the values or,
    for a positive series, on their logarithms (AICc in the values' units: + 2 sum(log y));
    None: too few values or not finite."""
    values = np.asarray(values, dtype=np.float64)[-MAX_VALUES:]
    if not np.isfinite(values).all() or len(values) - FIRST < MIN_ERRORS:
        return None
    k = np.asarray([_n_params(p) for p in grid(period)], dtype=np.float64)
    err = one_step_errors(values, period)
    aicc = _aicc(err, k)
    best, log = int(np.argmin(aicc)), False
    raw_err = err[best]
    if (values > 0).all():
        logs = np.log(values)
        err_log = one_step_errors(logs, period)
        aicc_log = _aicc(err_log, k) + 2 * logs[FIRST:].sum()
        j = int(np.argmin(aicc_log))
        if aicc_log[j] < aicc[best]:
            best, log = j, True
            raw_err = values[FIRST:] - np.exp(logs[FIRST:] - err_log[j])
    p = grid(period)[best]
    return Smooth(p.alpha, p.beta, p.phi, p.gamma, p.period, p.trend, p.season,
                  float(np.mean(np.abs(raw_err))), log)


def forecasts(values: np.ndarray, n: int, p: Smooth, positions: np.ndarray, horizon: int
              ) -> np.ndarray:
    """(len(positions), horizon): `p`'s forecasts from the (at most `n`) values before each,
    as a worker serves them (`forecast.smoothing.apply`)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty((len(positions), horizon))
    lengths = np.minimum(positions, n)
    for length in np.unique(lengths).tolist():
        at = np.flatnonzero(lengths == length)
        idx = positions[at][:, None] + np.arange(-length, 0)[None, :]
        out[at] = apply(values[idx], weights(int(length), [p], horizon)[0], p.log)
    return out


# A series is served by its own smoothing when, on at least SMOOTH_WINDOWS of its validation
# windows, its mean absolute error is below (1 - SMOOTH_MARGIN) x the version's (and naive's
# when naive alone was chosen for it).
SMOOTH_WINDOWS = 12
SMOOTH_MARGIN = 0.0


@dataclass
class Choice:
    """The series served by their own smoothing: fitted on all their training data, their
    filter's window, and the interval half-widths (in units of each series' `sigma`); and
    the fits on their training part alone, which the version is scored with (`scored`)."""

    fits: dict[str, Smooth]
    n_steps: dict[str, int]
    q: list[float] | None
    before: dict[str, Smooth] = field(default_factory=dict)

    def scored(self) -> Choice:
        """The same choice with the fits that never saw the validation windows."""
        return Choice({n: self.before.get(n, p) for n, p in self.fits.items()}, self.n_steps,
                      self.q)


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
        p = fit(values[: splits[name]], period)
        if p is None or not p.sigma > 0:  # a constant training part: no scale for an interval
            continue
        if p.alpha == 1.0 and not (p.trend or p.season):  # the last value: naive's rule decides
            continue
        y = holdout.y[at]
        f = forecasts(values, n, p, holdout.pos[at], horizon)
        if not np.isfinite(f).all():
            continue
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
        p = fit(series[name], periods.get(name, 1))
        if p is not None and p.sigma > 0:
            fits[name] = p
    q = conformal_q(np.concatenate(scaled), coverage) if coverage and scaled else None
    return Choice(fits, {name: n_steps[name] for name in fits}, q,
                  {name: chosen[name] for name in fits})
