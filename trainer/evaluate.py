"""Accuracy on the time-ordered holdout: the model against naive and seasonal-naive baselines."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from trainer.windows import WindowSet

log = logging.getLogger(__name__)

ACF_THRESHOLD = 0.3  # a season must explain at least this much autocorrelation


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def metrics(y: np.ndarray, pred: np.ndarray, mase_scale: np.ndarray | None = None
            ) -> dict[str, float | None]:
    """MAE, RMSE, MASE (errors over `mase_scale` per window) and sMAPE in percent.

    >>> metrics(np.array([[1.0], [3.0]]), np.array([[2.0], [3.0]]), np.array([2.0, 2.0]))
    {'mae': 0.5, 'rmse': 0.707107, 'mase': 0.25, 'smape': 33.333333}
    """
    y = np.asarray(y, dtype=np.float64)
    err = np.abs(np.asarray(pred, dtype=np.float64) - y)
    if err.size == 0:
        return {"mae": None, "rmse": None, "mase": None, "smape": None}
    denom = np.abs(y) + np.abs(pred)
    smape = np.where(denom > 0, 2 * err / np.where(denom > 0, denom, 1), 0.0)
    mase = None
    if mase_scale is not None:
        s = np.asarray(mase_scale, dtype=np.float64).reshape(-1, 1)
        ok = np.broadcast_to(s > 0, err.shape)
        if ok.any():
            mase = float(np.mean((err / np.where(s > 0, s, 1))[ok]))
    return {"mae": _num(err.mean()), "rmse": _num(math.sqrt(np.mean(err**2))),
            "mase": _num(mase) if mase is not None else None, "smape": _num(100 * smape.mean())}


def _acf(values: np.ndarray, max_lag: int) -> np.ndarray:
    """Autocorrelation (lags 0..max_lag) of the series minus its least-squares line."""
    v = np.asarray(values, dtype=np.float64)
    t = np.arange(len(v))
    resid = v - np.polyval(np.polyfit(t, v, 1), t)
    var = float(np.dot(resid, resid)) / len(v)
    out = np.zeros(max_lag + 1)
    if var <= 1e-12 * max(1.0, float(np.mean(v**2))):
        return out
    for k in range(max_lag + 1):
        out[k] = np.dot(resid[: len(v) - k], resid[k:]) / (len(v) - k) / var
    return out


def detect_period(series: list[np.ndarray], max_lag: int = 400) -> int:
    """The seasonal period from the autocorrelation of the detrended series, else 1.

    Candidates are local peaks after the autocorrelation first turns negative; the shortest
    one within 90% of the highest wins (a season, not its multiple).

    >>> t = np.arange(240.0)
    >>> detect_period([np.sin(2 * np.pi * t / 24) + 0.01 * t])
    24
    >>> detect_period([np.arange(10.0)]), detect_period([np.random.default_rng(0).normal(size=300)])
    (1, 1)
    """
    total = np.zeros(max_lag + 1)
    weight = np.zeros(max_lag + 1)
    for values in series:
        lags = min(max_lag, len(values) // 3)
        if lags < 3:
            continue
        total[: lags + 1] += _acf(values, lags) * len(values)
        weight[: lags + 1] += len(values)
    acf = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
    top = int(np.flatnonzero(weight > 0)[-1]) if weight.any() else 0
    negative = np.flatnonzero(acf[1 : top + 1] < 0)
    if len(negative) == 0:
        return 1
    peaks = [k for k in range(int(negative[0]) + 2, top)
             if acf[k] >= acf[k - 1] and acf[k] >= acf[k + 1] and acf[k] >= ACF_THRESHOLD]
    if not peaks:
        return 1
    best = max(acf[k] for k in peaks)
    return next(k for k in peaks if acf[k] >= 0.9 * best)


def naive(x: np.ndarray, horizon: int) -> np.ndarray:
    """Last value repeated over the horizon.

    >>> naive(np.array([[1.0, 2.0, 3.0]]), 2).tolist()
    [[3.0, 3.0]]
    """
    return np.repeat(np.asarray(x)[:, -1:], horizon, axis=1)


def seasonal_naive(ws: WindowSet, series_idx: np.ndarray, pos: np.ndarray,
                   period: int | np.ndarray) -> np.ndarray:
    """The value one season before each target (from the series' past), else the last value.

    `period` is one for every window, or one per window (series of different periods).
    """
    periods = np.broadcast_to(np.asarray(period, dtype=np.int64), (len(pos),))
    out = np.empty((len(pos), ws.horizon))
    for i, (s, t, p) in enumerate(zip(series_idx, pos, periods, strict=True)):
        values = ws.series[s]
        p = max(1, int(p))
        for h in range(ws.horizon):
            src = t + h - p * (h // p + 1)
            out[i, h] = values[src] if src >= 0 else values[t - 1]
    return out


def mase_scales(ws: WindowSet, series_idx: np.ndarray) -> np.ndarray:
    """Per window: the in-sample one-step naive MAE of its series' training part."""
    per_series = []
    for values, split in zip(ws.series, ws.splits, strict=True):
        d = np.abs(np.diff(values[:split]))
        per_series.append(float(d.mean()) if len(d) else 0.0)
    return np.asarray(per_series)[series_idx] if len(series_idx) else np.zeros(0)


def evaluate(ws: WindowSet, pred: np.ndarray, period: int | np.ndarray = 0) -> dict[str, Any]:
    """Metrics of `pred` (holdout windows, (m, H)) and of the baselines on the same windows
    (`period`: the seasonal naive's, one for all or one per window)."""
    x, y, sidx, pos, label = ws.holdout()
    if np.ndim(period) == 0 and int(period) <= 0:
        period = detect_period([v[:sp] for v, sp in zip(ws.series, ws.splits, strict=True)])
    scale = mase_scales(ws, sidx)
    pred = np.asarray(pred, dtype=np.float64)
    result: dict[str, Any] = {
        "holdout": label,
        "windows": len(y),
        "season_period": period if np.ndim(period) == 0 else int(np.max(period, initial=1)),
        "model": metrics(y, pred, scale),
        "naive": metrics(y, naive(x, ws.horizon), scale),
        "seasonal_naive": metrics(y, seasonal_naive(ws, sidx, pos, period), scale),
        "model_mae_per_step": [_num(v) for v in np.abs(pred - y).mean(axis=0)] if len(y) else [],
    }
    return result
