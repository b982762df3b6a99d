"""Drift: the Page-Hinkley tests per series and over all series (`worker.scoring`,
`worker.live`), fed by the worker's own scoring of each batch."""

from __future__ import annotations

import numpy as np

from worker.batch import Commit
from worker.live import LiveBuffer
from worker.scoring import Forecasts, score
from worker.state import SeriesStore


def _alarms(y: np.ndarray, forecast: np.ndarray) -> tuple[set[bytes], list[int]]:
    """Feed row t of `y` (values of S series) as batch t, with `forecast` as what the
    current version forecast for each value; the series that alarmed and the batches at
    which the test over all series alarmed."""
    store, live = SeriesStore(width=2), LiveBuffer()
    names = [f"s{k}".encode() for k in range(y.shape[1])]
    series, overall = set(), []
    nan = np.full((y.shape[1], 1), np.nan)
    for t in range(len(y)):
        slots = store.place(names, lambda s: [None] * len(s))
        values = y[t].astype(np.float32)
        adv = store.advance(slots, values)
        ahead = forecast[min(t + 1, len(y) - 1)][adv.order][:, None]  # for the next value
        scores, _ = score(store, adv, values[adv.order], Forecasts(ahead, nan, nan), 0.05, 0.1)
        series.update(s for s, _ in scores.drifted)
        live.overall_alarms.clear()
        live.add(Commit(scores=scores, versions=["v1"]))
        if live.overall_alarms:
            overall.append(t)
    return series, overall


def test_one_glitch_is_not_a_drift_of_all_series() -> None:
    """A sensor's 65535 in one series living around 20: ~60,000 scales off, it used to alarm
    the test over all series on its own (a retrain for one bad value)."""
    y = 20 + np.random.default_rng(0).normal(size=(300, 20))
    y[150, 3] = 65535.0
    series, overall = _alarms(y, np.full_like(y, 20.0))
    assert overall == []
    assert series == set()


def test_three_glitches_in_a_row_still_alarm_their_series() -> None:
    """The cap bounds what one value adds (20): three far-off values in a row are a change."""
    y = 20 + np.random.default_rng(2).normal(size=(300, 20))
    y[150:153, 3] = 65535.0
    series, _ = _alarms(y, np.full_like(y, 20.0))
    assert series == {b"s3"}


def test_a_model_that_stops_fitting_every_series_is_a_drift_of_all_series() -> None:
    """Every level moves by 5 scales and the model does not follow: both tests alarm."""
    y = 20 + np.random.default_rng(1).normal(size=(300, 20))
    y[150:] += 5.0
    series, overall = _alarms(y, np.full_like(y, 20.0))
    assert overall and 150 <= overall[0] < 180
    assert len(series) == 20
