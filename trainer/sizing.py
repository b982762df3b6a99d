"""Window sizes and seasonal periods chosen from the data (used by `trainer.auto`, the
families of a per-series version and the hybrid's filter split)."""

from __future__ import annotations

import numpy as np

from trainer import evaluate

MAX_N_STEPS = 512
# Backtests a window holds at least: weighting ~20 experts by 24 recent errors chases noise
# (measured on the quality benchmark's mixed row: 48 gave 0.808x AutoETS where 24 gave 0.815x).
MIN_BACKTESTS = 48
MIN_TRAIN_WINDOWS = 8  # per series, for the longest series of the data set


def backtest_len(n_steps: int, horizon: int, share: float = 2) -> int:
    """How many of the window's values are in-window backtest targets (the rest feed filters).

    A `share` of the window (a half by default: as many origins as the experts see values;
    selecting by a few recent errors is noisy), and at least 2H + 4, so the last step still
    has a few origins.

    >>> backtest_len(48, 1), backtest_len(40, 6), backtest_len(4, 1), backtest_len(72, 1, 3)
    (24, 20, 2, 24)
    """
    r = max(2 * horizon + 4, int(n_steps // share))
    return min(r, max(1, n_steps - 2))


def filter_len(n_steps: int, horizon: int, share: float = 2) -> int:
    """Values each expert sees: the window minus its backtest part (at least 2).

    >>> filter_len(72, 1), filter_len(40, 6), filter_len(4, 1), filter_len(72, 1, 3)
    (36, 20, 2, 48)
    """
    return max(2, n_steps - backtest_len(n_steps, horizon, share))


def filter_choices(n_steps: int, horizon: int) -> list[int]:
    """The filter lengths the trainer tries on validation: backtests on two thirds, a half
    or a third of the window.

    A longer filter estimates seasonal indices from more seasons; more backtests weight the
    experts by more errors. Which matters more depends on the data.

    >>> filter_choices(72, 1), filter_choices(8, 1)
    ([24, 36, 48], [2])
    """
    return sorted({filter_len(n_steps, horizon, share) for share in (1.5, 2, 3)})


def _window(filt: int, horizon: int, min_backtests: int = 0) -> int:
    """A filter of `filt` values plus as many backtests (at least 2H + 4 and `min_backtests`)."""
    return min(filt + max(2 * horizon + 4, filt, min_backtests), MAX_N_STEPS)


def _season_filter(period: int) -> int:
    """Three seasons, or 24 values when that is more or there is no season."""
    return max(24, 3 * period) if period >= 2 else 24


def window_for(period: int, horizon: int) -> int:
    """n_steps for a seasonal period: filter of max(24, 3 periods) plus as many backtests,
    and at least MIN_BACKTESTS of them.

    >>> window_for(1, 1), window_for(4, 1), window_for(12, 1), window_for(24, 1), window_for(12, 6)
    (72, 72, 84, 144, 84)
    """
    return _window(_season_filter(period), horizon, MIN_BACKTESTS)


def series_period(values: np.ndarray, max_lag: int = 400) -> int:
    """A series' shortest clear season: the first autocorrelation peak of at least half the best.

    `evaluate.detect_period` picks the shortest peak within 90% of the highest, which on real
    data often names a multiple (8 for a quarterly series, 168 for an hourly one); a window
    sized for the multiple is needlessly long, and the multiple's divisor is the season.

    >>> t = np.arange(400.0)
    >>> series_period(np.sin(2 * np.pi * t / 24) + 0.5 * np.sin(2 * np.pi * t / 168))
    24
    """
    lags = min(max_lag, len(values) // 3)
    if lags < 3:
        return 1
    acf = evaluate._acf(values, lags)
    negative = np.flatnonzero(acf[1:] < 0)
    if len(negative) == 0:
        return 1
    peaks = [k for k in range(int(negative[0]) + 2, lags)
             if acf[k] >= max(acf[k - 1], acf[k + 1], evaluate.ACF_THRESHOLD)]
    if not peaks:
        return 1
    best = max(acf[k] for k in peaks)
    return next(k for k in peaks if acf[k] >= 0.5 * best)


def common_period(series: list[np.ndarray]) -> int:
    """The seasonal period several series show (each detected on its own), else 1.

    A period wins (a multiple of it counts as a vote) when at least two series (one, for a
    data set of one or two) and at least a quarter of them show it; pooling the
    autocorrelations instead lets a few long or noisy series invent a season.

    >>> t = np.arange(120.0)
    >>> s4 = [np.sin(np.pi * t / 2) + 0.1 * np.cos(t * k) for k in (1, 2)]
    >>> common_period([*s4, np.random.default_rng(1).normal(size=120)])
    4
    """
    found = [series_period(v) for v in series if len(v) >= 8]
    seasonal = [p for p in found if p >= 2]
    if not seasonal:
        return 1
    # a series with a season of 8 also repeats every 4: a multiple votes for its divisors
    counts = {d: sum(1 for p in seasonal if p % d == 0) for d in set(seasonal)}
    best = max(counts.values())
    if best < (1 if len(found) <= 2 else max(2.0, len(found) / 4)):
        return 1
    return min(p for p, c in counts.items() if c == best)


def choose_window(period: int, horizon: int, longest_train: int) -> tuple[int, int]:
    """(n_steps, period) that leave the longest series at least a few training windows.

    Drops the extra backtests first, then shrinks the filter from three seasons to two,
    then drops the season, then shortens.

    >>> choose_window(12, 1, 200), choose_window(12, 1, 90), choose_window(12, 1, 70)
    ((84, 12), (72, 12), (48, 12))
    >>> choose_window(12, 1, 40), choose_window(1, 1, 70)
    ((24, 1), (48, 1))
    """
    room = longest_train - horizon - MIN_TRAIN_WINDOWS
    for n in (window_for(period, horizon), _window(_season_filter(period), horizon)):
        if n <= room:
            return n, period
    if period >= 2:
        n = _window(2 * period, horizon)
        if n <= room:
            return n, period
        period = 1
    for n in (24, 16, 12, 8):
        if n <= room and n >= horizon + 4:
            return n, period
    return max(horizon + 4, 4), period
