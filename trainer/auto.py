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
* epochs with early stopping on validation (100, patience 10, and a 3-minute budget shared
  by the families by training windows, at least 20 s each), the starting sharpness of the
  expert selection picked on validation, and the untrained selection kept when training
  does not beat it; a batch size that grows with the data.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from forecast.settings import Settings
from trainer.data import Dataset
from trainer.sizing import choose_window, common_period, filter_len

log = logging.getLogger(__name__)

TRAIN_BUDGET_S = 180.0  # fitting stops (best weights kept) after this, shared by the families


def _train_lengths(dataset: Dataset, val_fraction: float) -> list[int]:
    return [int(len(v) * (1 - val_fraction)) for v in dataset.series.values()]


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
