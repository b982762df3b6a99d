"""Defaults for real data: what `forecast train --csv FILE` (or --from-stream) uses when not told.

The settings' own defaults are the tutorial's (SimpleRNN(50), n_steps=3, 200 epochs), and
`--example` keeps them exactly. On a user's data every trainer setting the user did not give
(flag, `FORECAST_*` variable or `.env`) is chosen here from the data:

* the hybrid forecaster (statistical experts weighted by a GRU(16), 3 seeds averaged);
* the seasonal period most series show (autocorrelation, each series on its own);
* the window: three seasons for the experts to see (at least 24 values) plus as many values
  (at least 2H + 4) for their in-window backtests, shrunk when the series are too short;
  how the window splits between the two (backtests on a half or a third) is chosen on
  validation by the trainer (`filter_choices`, `trainer.hybrid.build`);
* epochs with early stopping on validation (100, patience 10, and a 6-minute budget), the
  starting sharpness of the expert selection picked on validation, and the untrained
  selection kept when training does not beat it; a batch size that grows with the data.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from forecast.settings import Settings
from trainer import evaluate
from trainer.data import Dataset

log = logging.getLogger(__name__)

MAX_N_STEPS = 512
MIN_TRAIN_WINDOWS = 8  # per series, for the longest series of the data set
TRAIN_BUDGET_S = 180.0  # fitting stops (best weights kept) after this, over all families


def backtest_len(n_steps: int, horizon: int, share: int = 2) -> int:
    """How many of the window's values are in-window backtest targets (the rest feed filters).

    A `share` of the window (a half by default: as many origins as the experts see values;
    selecting by a few recent errors is noisy), and at least 2H + 4, so the last step still
    has a few origins.

    >>> backtest_len(48, 1), backtest_len(40, 6), backtest_len(4, 1), backtest_len(72, 1, 3)
    (24, 20, 2, 24)
    """
    r = max(2 * horizon + 4, n_steps // share)
    return min(r, max(1, n_steps - 2))


def filter_len(n_steps: int, horizon: int, share: int = 2) -> int:
    """Values each expert sees: the window minus its backtest part (at least 2).

    >>> filter_len(72, 1), filter_len(40, 6), filter_len(4, 1), filter_len(72, 1, 3)
    (36, 20, 2, 48)
    """
    return max(2, n_steps - backtest_len(n_steps, horizon, share))


def filter_choices(n_steps: int, horizon: int) -> list[int]:
    """The filter lengths the trainer tries on validation: backtests on a half or a third.

    A longer filter estimates seasonal indices from more seasons; more backtests weight the
    experts by more errors. Which matters more depends on the data.

    >>> filter_choices(72, 1), filter_choices(8, 1)
    ([36, 48], [2])
    """
    return sorted({filter_len(n_steps, horizon, share) for share in (2, 3)})


def window_for(period: int, horizon: int) -> int:
    """n_steps for a seasonal period: filter of max(24, 3 periods) plus as many backtests.

    >>> window_for(1, 1), window_for(4, 1), window_for(12, 1), window_for(24, 1), window_for(12, 6)
    (48, 48, 72, 144, 72)
    """
    filt = max(24, 3 * period) if period >= 2 else 24
    n = filt + max(2 * horizon + 4, filt)
    return min(n, MAX_N_STEPS)


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


def _train_lengths(dataset: Dataset, val_fraction: float) -> list[int]:
    return [int(len(v) * (1 - val_fraction)) for v in dataset.series.values()]


def choose_window(period: int, horizon: int, longest_train: int) -> tuple[int, int]:
    """(n_steps, period) that leave the longest series at least a few training windows.

    Shrinks the filter from three seasons to two, then drops the season, then shortens.

    >>> choose_window(12, 1, 200), choose_window(12, 1, 70), choose_window(12, 1, 40)
    ((72, 12), (48, 12), (24, 1))
    """
    room = longest_train - horizon - MIN_TRAIN_WINDOWS
    n = window_for(period, horizon)
    if n <= room:
        return n, period
    if period >= 2:
        filt = 2 * period
        n = filt + max(2 * horizon + 4, filt)
        if n <= room:
            return n, period
        period = 1
    for n in (24, 16, 12, 8):
        if n <= room and n >= horizon + 4:
            return n, period
    return max(horizon + 4, 4), period


def _pick_fit(settings: Settings, pick: Any, dataset: Dataset, lengths: list[int],
              n_steps: int, horizon: int) -> None:
    """The net and fitting choices (the same for one window or a family of windows)."""
    del settings, dataset
    pick("arch", "gru")
    pick("units", 16)
    pick("epochs", 100)
    pick("patience", 10)
    pick("train_budget_s", TRAIN_BUDGET_S)
    windows = sum(max(0, n - n_steps - horizon + 1) for n in lengths)
    pick("train_batch_size", int(np.clip(windows // 50, 32, 256)))


def resolve(settings: Settings, dataset: Dataset, explicit: set[str] | None = None
            ) -> tuple[Settings, dict[str, Any]]:
    """Settings with every trainer field not in `explicit` chosen for `dataset`; and the choices.

    `explicit` defaults to the fields the settings were given (flags, environment, `.env`).
    """
    given = set(settings.model_fields_set if explicit is None else explicit)
    chosen: dict[str, Any] = {}

    def pick(name: str, value: Any) -> None:
        if name not in given:
            chosen[name] = value

    pick("forecaster", "hybrid")
    forecaster = chosen.get("forecaster", settings.forecaster)
    if forecaster != "hybrid":
        return settings, chosen
    horizon = settings.horizon
    lengths = _train_lengths(dataset, settings.val_fraction)
    per_series = settings.per_series if "per_series" in given else not (
        {"n_steps", "season_period"} & given)
    if per_series:
        from trainer import families

        pick("per_series", True)
        fams, _ = families.plan(dataset, settings.model_copy(update=chosen))
        # each family has its own window; a worker keeps the widest
        pick("n_steps", max(f.n_steps for f in fams))
        described = families.describe(fams)
        log.info("families: %s", described)
        _pick_fit(settings, pick, dataset, lengths, settings.n_steps if "n_steps" in given
                  else chosen["n_steps"], horizon)
        return settings.model_copy(update=chosen), {**chosen, "families": described}
    period = settings.season_period
    if period == 0:
        parts = [v[: int(len(v) * (1 - settings.val_fraction))] for v in dataset.series.values()]
        period = common_period(parts)
    if "n_steps" in given:
        n_steps = settings.n_steps
        if filter_len(n_steps, horizon) < 2 * period:
            log.info("window of %d too short for season %d: no seasonal experts", n_steps, period)
    else:
        n_steps, period = choose_window(period, horizon, max(lengths, default=0))
        chosen["n_steps"] = n_steps
    pick("season_period", period)
    _pick_fit(settings, pick, dataset, lengths, n_steps, horizon)
    if chosen:
        log.debug("chosen for this data: %s", ", ".join(f"{k}={v}" for k, v in chosen.items()))
    return settings.model_copy(update=chosen), chosen
