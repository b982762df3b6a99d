"""Serving versions with several parts (`forecast.bundle`): each series' period, young windows.

A plain version forecasts a series once its window is full. A bundle forecasts from a
series' second value on, with the part of its seasonal-period family, and says which
forecasts come from a window that is not full yet (`warmup=1` in the output). A version may
serve some series it was trained on by one expert alone (`BundleModel.single_of`) or by their
own exponential smoothing (`BundleModel.smooth_of`), looked up by series id for each batch.

Each series' period is per-series state (`SeriesStore.period`, checkpointed): positive when
it comes from the version's table (the trainer detected it on the series' history), negative
when detected online from the series' own window (`forecast.season.detect`, the trainer's
function) for a series the trainer never saw, 0 before the first look. An online period is
detected again whenever the window grows to one of `DETECT_AT` values, so it firms up as the
window fills; a table period is kept. Each value's forecast uses the period known from its
series' values up to it (never a later one of the same batch), so batch boundaries and
restarts change nothing. All of it is vectorised over the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from forecast import season
from worker.state import Advance, SeriesStore

DETECT_AT = np.array([16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512])


def is_bundle(model: Any) -> bool:
    """True for a version with several parts (it has `predict_rows`)."""
    return hasattr(model, "predict_rows")


def min_values(model: Any) -> int:
    """Values a series needs before this version forecasts it."""
    return int(getattr(model, "min_values", model.n_steps))


class Route:
    """The per-value inputs of a batch's bundle calls (periods worked out once per batch)."""

    def __init__(self, store: SeriesStore, adv: Advance, models: list[Any]) -> None:
        self.adv = adv
        self.store = store
        self.keys: list[bytes] | None = None  # the batch's series ids, when a version needs them
        self.periods: np.ndarray | None = None
        bundles = [m for m in models if is_bundle(m)]
        if bundles:
            self.periods = value_periods(bundles[0], store, adv)

    def predict(self, model: Any, x: np.ndarray, ok: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Forecasts of the rows `ok` (windows `x`); and, for a bundle, which are warm-up."""
        if self.periods is None or not is_bundle(model):
            return model.predict(x), None
        n = model.n_steps
        if x.shape[1] != n:  # the store keeps a wider window for another served version
            x = x[:, x.shape[1] - n:]
        singles, smooth = getattr(model, "singles", None), getattr(model, "smooth", None)
        if singles or smooth:
            by: dict[str, np.ndarray] = {"smooth": self.smooth(model)[ok]} if smooth else {}
            single = self.single(model)[ok] if singles else None
            out, full = model.predict_rows(x, self.adv.filled[ok], self.periods[ok], single,
                                           **by)
        else:
            out, full = model.predict_rows(x, self.adv.filled[ok], self.periods[ok])
        return out, ~full

    def single(self, model: Any) -> np.ndarray:
        """Per value: whether `model` serves its series by a single expert when full."""
        return np.asarray(model.single_of(self._keys()))[self.adv.group_of]

    def smooth(self, model: Any) -> np.ndarray:
        """Per value: its series' row in `model`'s smoothing table (-1: none)."""
        return np.asarray(model.smooth_of(self._keys()))[self.adv.group_of]

    def _keys(self) -> list[bytes]:
        if self.keys is None:
            self.keys = self.store.keys_of(self.adv.rows)
        return self.keys


def value_periods(model: Any, store: SeriesStore, adv: Advance) -> np.ndarray:
    """The period in force at each value of the batch (sorted order), from what its series
    had up to that value (see the module docstring); each series' last one is stored."""
    rows, group, filled = adv.rows, adv.group_of, adv.filled
    m = len(group)
    start = store.period[rows].astype(np.int64)
    new = start == 0
    if new.any():
        start[new] = model.periods_of(store.keys_of(rows[new]))
    online = start[group] <= 0
    before = np.empty(m, dtype=filled.dtype)  # values the window held before each value
    before[1:] = filled[:-1]
    before[adv.starts] = filled[adv.starts] - 1
    grown = filled > before
    first = np.zeros(m, dtype=bool)
    first[adv.starts] = True
    event = online & ((grown & np.isin(filled, DETECT_AT)) | (first & (start[group] == 0)))
    found = np.zeros(m, dtype=np.int64)
    at = np.flatnonzero(event)
    if len(at):
        width = adv.windows.shape[1]
        for n in np.unique(filled[at]).tolist():
            sel = at[filled[at] == n]
            found[sel] = -season.detect(adv.windows[sel, width - int(n):])
    last = np.maximum.accumulate(np.where(event, np.arange(m), -1))
    mine = last >= adv.starts[group]  # an event of this series at or before the value
    periods = np.where(mine, found[np.maximum(last, 0)], start[group])
    store.period[rows] = periods[adv.ends]
    return periods
