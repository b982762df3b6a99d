"""Live scoring (worker.scoring) against glitches: evidence and drift stay about the model."""

from __future__ import annotations

import numpy as np

from worker.scoring import Forecasts, score
from worker.state import SeriesStore

WIDTH = 3


def _stream(y: np.ndarray, bias_from: int | None = None) -> tuple[list[int], float]:
    """One series, one value per batch: column 0 repeats the last value (from `bias_from`
    on, 5 too high: a model gone bad), column 1 moves it a tenth towards the window mean
    (about 3% better on noise). Returns the values at which drift alarmed and column 1's
    summed scaled errors over column 0's."""
    store = SeriesStore(width=WIDTH)
    alarms: list[int] = []
    a = b = 0.0
    for i, v in enumerate(y.astype(np.float32)):
        slots = store.place([b"s"], lambda s: [None] * len(s))
        adv = store.advance(slots, np.array([v]))
        win = adv.windows.astype(np.float64)
        last = win[:, -1] + (5.0 if bias_from is not None and i >= bias_from else 0.0)
        point = np.stack([last, win[:, -1] + 0.1 * (win.mean(axis=1) - win[:, -1])], axis=1)
        if adv.filled[0] < WIDTH:
            point[:] = np.nan
        fc = Forecasts(point, point - 3.0, point + 3.0)
        scores, _ = score(store, adv, np.array([v], dtype=np.float32), fc, 0.05, 0.1)
        alarms += [i] * len(scores.drifted)
        a, b = a + float(scores.pair_a[1]), b + float(scores.pair_b[1])
    return alarms, a / b


def test_a_glitch_neither_raises_drift_nor_outweighs_the_evidence() -> None:
    rng = np.random.default_rng(4)
    y = 20.0 + rng.standard_normal(5_000)
    clean_alarms, clean_ratio = _stream(y)
    y[2_000:2_003] = 65_535.0  # a sensor's error code, three times
    alarms, ratio = _stream(y)
    assert clean_alarms == [] and alarms == []
    assert clean_ratio < 0.98 and ratio < 0.98  # the better candidate still shows


def test_a_model_gone_bad_still_raises_drift() -> None:
    rng = np.random.default_rng(5)
    alarms, _ = _stream(20.0 + rng.standard_normal(3_000), bias_from=2_000)
    assert alarms and 2_000 <= alarms[0] < 2_100
