"""Per-series exponential smoothing: the filter is the recursion, the fit, the choice, serving."""

from __future__ import annotations

import numpy as np
import pytest

from forecast.smoothing import Smooth, SmoothTable, initial, weights
from trainer import smoothing


def recursion(x: np.ndarray, p: Smooth, horizon: int) -> np.ndarray:
    """Holt-Winters' additive recursion, one value at a time (what `weights` must equal)."""
    n, m = len(x), p.period if p.season else 1
    lw, bw, sw = initial(n, m, p.trend, p.season)
    level, slope, seas = float(lw @ x), float(bw @ x), list(sw @ x)
    phi = p.phi if p.trend else 1.0
    for t, v in enumerate(x):
        err = v - (level + phi * slope + seas[t % m])
        level, slope = level + phi * slope + p.alpha * err, phi * slope + p.beta * err
        seas[t % m] += p.gamma * err
    damp = np.cumsum(phi ** np.arange(1, horizon + 1))
    return np.asarray([level + d * slope + seas[(n + h) % m] for h, d in enumerate(damp)])


@pytest.mark.parametrize("p", [Smooth(0.3), Smooth(0.5, 0.1, 0.9, trend=True),
                               Smooth(0.2, 0.05, 0.98, 0.1, 4, trend=True, season=True),
                               Smooth(0.4, gamma=0.3, period=12, season=True)])
def test_the_filter_of_a_window_is_the_recursion_over_it(p: Smooth) -> None:
    x = np.random.default_rng(1).normal(10.0, 3.0, 40)
    assert x @ weights(40, [p], 3)[0] == pytest.approx(recursion(x, p, 3), rel=1e-9)


def test_the_fit_finds_a_trend_a_season_and_a_steady_level() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(200.0)
    line = smoothing.fit(5.0 + 0.3 * t + rng.normal(0, 0.5, 200), 1)
    seasonal = smoothing.fit(50 + 8 * np.sin(2 * np.pi * t / 4) + rng.normal(0, 0.5, 200), 4)
    steady = smoothing.fit(20 + rng.normal(0, 2.0, 200), 1)
    assert line is not None and line.trend and not line.season
    assert seasonal is not None and seasonal.season and seasonal.period == 4
    assert steady is not None and not steady.trend and steady.alpha <= 0.15
    assert steady.sigma == pytest.approx(2.0 * np.sqrt(2 / np.pi), rel=0.25)
    assert smoothing.fit(np.arange(6.0), 1) is None  # too few values


def test_a_series_is_chosen_only_where_it_beats_what_the_version_served() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(120.0)
    series = {"a": 5.0 + 0.3 * t + rng.normal(0, 0.5, 120),
              "b": 5.0 + 0.3 * t + rng.normal(0, 0.5, 120)}
    pos = np.r_[np.arange(96, 120), np.arange(96, 120)]
    sidx = np.repeat([0, 1], 24)
    y = np.concatenate([series["a"][96:], series["b"][96:]])[:, None]
    pred = y.copy()
    pred[:24] += 5.0  # the version is far off on "a" and exact on "b"
    holdout = smoothing.Holdout(["a", "b"], sidx, pos, y, pred)
    choice = smoothing.choose(series, {"a": 96, "b": 96}, {"a": 48, "b": 48}, {}, holdout,
                              frozenset(), 0.9)
    assert set(choice.fits) == {"a"} and choice.n_steps == {"a": 48}
    assert choice.q is not None and len(choice.q) == 1 and choice.q[0] > 0


def test_the_table_serves_full_windows_with_intervals_and_rejects_bad_parameters() -> None:
    raw = {"a": {**Smooth(1.0, sigma=2.0).as_json(), "n_steps": 4},
           "b": {**Smooth(0.5, 0.5, trend=True, sigma=1.0).as_json(), "n_steps": 8}}
    table = SmoothTable(raw, [1.5], 1, True)
    rows = table.rows_of([b"b", b"x", b"a"])
    assert rows.tolist() == [1, -1, 0]
    x = np.tile(np.arange(8.0), (3, 1))
    out, full = table.predict(x, np.array([0, 1, 1]), np.array([8, 8, 3]))
    assert full.tolist() == [True, True, False]  # b needs 8 values
    assert out[0].tolist() == [7.0, 4.0, 10.0]  # the last value -/+ 1.5 x sigma 2
    assert out[1, 0] == pytest.approx(8.0) and out[1, 2] - out[1, 0] == pytest.approx(1.5)
    assert out[2, 0] == pytest.approx(x[2, -3:] @ weights(3, [Smooth(0.5, 0.5, trend=True)], 1))
    with pytest.raises(ValueError, match="out of range"):
        SmoothTable({"a": {**raw["a"], "alpha": 1.5}}, [1.5], 1, True)
    with pytest.raises(ValueError, match="finite"):
        SmoothTable(raw, [float("nan")], 1, True)


def test_a_log_model_serves_positive_windows_multiplicatively_and_others_as_values() -> None:
    raw = {"g": {**Smooth(0.5, 0.5, trend=True, sigma=1.0, log=True).as_json(), "n_steps": 6}}
    table = SmoothTable(raw, [1.0, 1.0], 2, True)
    growth = 2.0 ** np.arange(6.0)
    x = np.stack([growth, np.r_[growth[:5], 0.0]])
    out, _ = table.predict(x, np.array([0, 0]), np.array([6, 6]))
    assert out[0, :2] == pytest.approx([64.0, 128.0])  # doubling goes on
    assert np.isfinite(out).all()  # a zero in the window: the filter of the values


def test_the_fit_errors_are_the_served_filter_errors() -> None:
    rng = np.random.default_rng(4)
    v = 30 + 5 * np.sin(2 * np.pi * np.arange(40) / 4) + rng.normal(0, 1, 40)
    err = smoothing.one_step_errors(v, 4)
    for c in (0, 100, 500, len(smoothing.grid(4)) - 1):
        p = smoothing.grid(4)[c]
        served = [v[t] - v[:t] @ weights(t, [p], 1)[0, :, 0] for t in (10, 25, 39)]
        assert err[c, [10 - smoothing.FIRST, 25 - smoothing.FIRST, 39 - smoothing.FIRST]] == \
            pytest.approx(served, rel=1e-9)


def test_no_fit_without_finite_values_and_no_choice_without_a_scale() -> None:
    values = np.r_[np.full(60, 5.0), np.arange(20.0)]
    assert smoothing.fit(np.r_[np.nan, np.arange(40.0)], 1) is None
    holdout = smoothing.Holdout(["c"], np.zeros(20, dtype=int), np.arange(60, 80),
                                values[60:, None], values[60:, None] + 9.0)
    choice = smoothing.choose({"c": values}, {"c": 60}, {"c": 24}, {}, holdout, frozenset(), 0.9)
    assert choice.fits == {} and choice.q is None  # constant before validation: sigma 0
