"""Warm-up ladder intervals (trainer.warmup): sane for young series whatever the family holds.

A family trained on an intermittent count series (many `[0, 0]` and `[1, 1]` windows, whose
scale is only the epsilon floor) used to calibrate its 2- and 3-value levels to half-widths
of ~1e12 scaled units, so every young series routed there got intervals 1e12 times its
scale (the quality bench's MSIS of 2.35e11 for shampoo, 1.63e11 for usaccdeaths).
"""

from __future__ import annotations

import numpy as np
import pytest

from forecast.bundle import with_nan_past
from forecast.layers import calibration_mask, scale_is_informative
from trainer import warmup
from trainer.hybrid import SCALING

pytestmark = pytest.mark.tf


def _counts(n: int = 240, seed: int = 0) -> np.ndarray:
    """Monthly counts like PBS's A10 scripts: about half of the values are 0."""
    return np.random.default_rng(seed).poisson(0.8, n).astype(np.float64)


def _windows(v: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(length, len(v))[:, None] + np.arange(-length, 1)[None, :]
    w = v[idx]
    return w[:, :length], w[:, length:]


def test_constant_windows_are_not_informative() -> None:
    x, _ = _windows(_counts(), 2)
    flat = ~scale_is_informative(x, SCALING)
    assert flat.mean() > 0.1  # enough to decide a 90% quantile
    assert np.all(x[flat, 0] == x[flat, 1]) and np.all(x[~flat, 0] != x[~flat, 1])
    assert calibration_mask(np.full((3, 2), 7.0), SCALING).all()  # nothing else to use


@pytest.mark.parametrize("length", [2, 3])
def test_short_levels_of_a_count_family_have_sane_half_widths(length: int) -> None:
    x, y = _windows(_counts(), length)
    lv = warmup.fit_level(length, 1, x, y, 1, 0.9)
    assert lv.q is not None and np.isfinite(lv.q).all()
    assert 0.1 < lv.q[0] < 20.0, lv.q  # was ~1e11..1e12
    assert lv.val_loss < 10.0, lv.val_loss  # the selection loss too (was ~1e11)


def test_a_young_series_in_a_count_family_gets_a_naive_sized_interval() -> None:
    v = _counts()
    n_steps = 8
    levels = warmup.fit_ladder(n_steps, 1, [v], [len(v) // 2], 1, 0.9)
    model = warmup.warm_model(n_steps, levels, 1)
    young = np.zeros((3, n_steps), np.float32)
    young[0, -2:] = [266.0, 145.9]  # shampoo's first two months
    young[1, -3:] = [266.0, 145.9, 183.1]
    young[2, -4:] = [9007.0, 8106.0, 8928.0, 9137.0]  # usaccdeaths
    x = with_nan_past(young, np.array([2, 3, 4]))
    out = np.asarray(model.predict(x[..., None], verbose=0))
    point, lower, upper = out[:, 0], out[:, 1], out[:, 2]
    step = np.array([120.1, 77.6, 725.3])  # mean absolute change of each window
    assert np.all(lower < point) and np.all(point < upper)
    assert np.all(upper - lower < 20 * step), (upper - lower) / step
    assert np.all(upper - lower > 0.5 * step), (upper - lower) / step
