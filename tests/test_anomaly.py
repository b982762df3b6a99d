"""The verdict rule (worker.anomaly): calibration to the chosen rate, no alert storms, state."""

from __future__ import annotations

import numpy as np

from worker import anomaly
from worker.anomaly import KINDS, Calibration, judge, judge_once


def _stream(errors: np.ndarray, rate: float, chunk: int | None = None) -> anomaly.Verdicts:
    """Judge (series, time) errors as batches of `chunk` steps (all series each step)."""
    n_series, n = errors.shape
    rows = np.tile(np.arange(n_series), n)
    flat = errors.T.ravel()
    cal = Calibration.empty(n_series)
    zeros = np.zeros(len(flat))  # the values: a flat line, the errors are the noise
    if chunk is None:
        return judge(cal, rows, zeros, flat, rate)
    parts = [judge(cal, rows[i:i + chunk], zeros[i:i + chunk], flat[i:i + chunk], rate)
             for i in range(0, len(flat), chunk)]
    return anomaly.Verdicts(*(np.concatenate([getattr(p, f) for p in parts])
                              for f in ("score", "flag", "direction", "kind")))


def test_flag_rate_is_the_chosen_rate_whatever_the_noise_level() -> None:
    rng = np.random.default_rng(7)
    scales = np.logspace(-3, 3, 12)[:, None]
    for rate, n in ((0.01, 6_000), (0.002, 20_000)):
        errors = rng.standard_normal((len(scales), n)) * scales
        v = _stream(errors, rate)
        per_series = v.flag.reshape(n, len(scales)).mean(axis=0)
        assert ((per_series >= 0.5 * rate) & (per_series <= 2.0 * rate)).all(), per_series / rate


def test_heavy_tailed_noise_is_calibrated_too() -> None:
    rng = np.random.default_rng(3)
    errors = rng.standard_t(3, size=(8, 20_000))
    v = _stream(errors, 0.005)
    per_series = v.flag.reshape(20_000, 8).mean(axis=0)
    assert ((per_series >= 0.0025) & (per_series <= 0.01)).all(), per_series


def test_a_level_shift_gives_one_level_shift_verdict_then_a_hold_then_resumes() -> None:
    rng = np.random.default_rng(1)
    e = rng.standard_normal(400) * 0.1
    e[200:206] += 5.0  # a shift the forecasts take six values to catch up with
    e[301] -= 5.0  # held: the 100th value after the level shift's verdict
    e[330] += 5.0  # a later spike: flagging has resumed
    v = judge(Calibration.empty(1), np.zeros(400, dtype=np.int64), np.zeros(400), e, 0.001)
    flagged = [(int(i), KINDS[v.kind[i]]) for i in np.flatnonzero(v.flag)]
    assert anomaly.hold_for(0.001) == 100
    assert flagged == [(200, "spike"), (201, "level_shift"), (330, "spike")]
    assert v.score[[202, 301]].tolist() == [0.5, 0.5]  # beyond, held: reported already
    assert (v.score[v.flag] > 0.5).all() and (v.score[1:][~v.flag[1:]] <= 0.5).all()
    # the level shift confirms the spike: flagged, but it is the spike that scores the event
    assert v.score[201] == anomaly.CONFIRMED and v.score[200] > 0.9 and v.score[330] > 0.9
    assert np.flatnonzero(v.score > anomaly.CONFIRMED).tolist() == [200, 330]


def test_a_level_shift_stranger_than_its_spike_keeps_its_score_and_no_flag_scores_0_5() -> None:
    """A ramp: the first step barely beyond the threshold, the next far beyond. A threshold
    on the score still meets the event; every flagged score is written above 0.5."""
    rng = np.random.default_rng(1)
    e = rng.standard_normal(300) * 0.1
    e[200], e[201] = 0.55, 5.0
    for looped in (True, False):
        v = judge(Calibration.empty(1), np.zeros(300, dtype=np.int64), np.zeros(300), e, 0.001,
                  looped=looped)
        assert [KINDS[k] for k in v.kind[v.flag]] == ["spike", "level_shift"]
        assert anomaly.CONFIRMED <= v.score[200] < 0.7 < 0.9 < v.score[201]
        assert f"{anomaly.CONFIRMED:.4g}" == "0.5001"  # how outputs write it: above 0.5


def test_a_value_far_from_where_the_series_lives_is_flagged_though_forecast_well() -> None:
    rng = np.random.default_rng(6)
    y = rng.standard_normal(3_000)
    y[2_500:] += np.linspace(0.0, 40.0, 500)  # a slow climb the forecasts follow closely
    e = rng.standard_normal(3_000) * 0.5  # the forecasts are never far off
    v = judge(Calibration.empty(1), np.zeros(3_000, dtype=np.int64), y, e, 0.001)
    flags = np.flatnonzero(v.flag)
    before = flags[flags < 2_500]  # normal data: flagged at about the rate (0.001)
    climb = flags[(flags >= 2_500) & (flags < 2_700)]
    assert len(before) <= 5 and climb.size, flags
    assert v.direction[climb[0]] == 1 and KINDS[v.kind[climb[0]]] == "spike"


def test_the_flag_rate_holds_with_real_values_too() -> None:
    # both tests (error and distance from the level) on a stationary series: the flags stay
    # within 0.5x-2x of the rate (the holds take some, the second test adds some)
    rng = np.random.default_rng(8)
    n_series, n = 6, 30_000
    y = rng.standard_normal((n_series, n)) * np.logspace(-2, 2, n_series)[:, None]
    e = np.diff(y, axis=1, prepend=0.0)  # a naive forecast's errors
    rows = np.tile(np.arange(n_series), n)
    v = judge(Calibration.empty(n_series), rows, y.T.ravel(), e.T.ravel(), 0.002)
    per_series = v.flag.reshape(n, n_series).mean(axis=0)
    assert ((per_series >= 0.5 * 0.002) & (per_series <= 2.0 * 0.002)).all(), per_series / 0.002


def test_one_outlier_barely_moves_the_scale_and_threshold() -> None:
    cal = Calibration.empty(1)
    rows = np.zeros(300, dtype=np.int64)
    rng = np.random.default_rng(2)
    judge(cal, rows, np.zeros(300), rng.standard_normal(300), 0.001)
    scale, q = float(cal.scale[0]), float(cal.q[0])
    judge(cal, rows[:1], np.zeros(1), np.array([1e6]), 0.001)
    assert float(cal.scale[0]) <= scale * (1 + anomaly.SCALE_EWMA * anomaly.CLIP)
    assert float(cal.q[0]) <= q * (1 + anomaly.STEP)


def test_a_glitch_does_not_blind_the_series() -> None:
    # a sensor's error code, three times, in a series living around 0 +- 1
    rng = np.random.default_rng(5)
    n = 6_000
    values = rng.standard_normal(n)
    values[2_000:2_003] = 65_535.0
    later = [2_500, 3_500, 4_500, 5_500]
    values[later] += 12.0  # real spikes afterwards
    errors = np.r_[np.nan, np.diff(values)]  # a forecast that repeats the last value
    cal = Calibration.empty(1)
    v = judge(cal, np.zeros(n, dtype=np.int64), values, errors, 0.01)
    assert v.flag[2_000]
    assert v.flag[later].all(), v.score[later]
    assert float(cal.spread[0]) < 2.0 and abs(float(cal.level[0])) < 2.0


def test_verdicts_do_not_depend_on_batch_boundaries_or_restarts() -> None:
    rng = np.random.default_rng(5)
    errors = rng.standard_normal((5, 2_000))
    errors[:, 700:703] += 9.0
    whole = _stream(errors, 0.01)
    for chunk in (1, 7, 64):
        parts = _stream(errors, 0.01, chunk)
        assert np.array_equal(whole.flag, parts.flag)
        assert np.array_equal(whole.kind, parts.kind)
        np.testing.assert_array_equal(whole.score, parts.score)
    # a restart: the state as a checkpoint keeps it, restored into a fresh calibration
    rows = np.tile(np.arange(5), 2_000)
    flat = errors.T.ravel()
    cal = Calibration.empty(5)
    zeros = np.zeros(len(flat))
    first = judge(cal, rows[:4_000], zeros[:4_000], flat[:4_000], 0.01)
    saved = cal.snapshot(np.arange(5))
    fresh = Calibration.empty(5)
    fresh.restore(np.arange(5), saved)
    second = judge(fresh, rows[4_000:], zeros[4_000:], flat[4_000:], 0.01)
    assert np.array_equal(np.concatenate([first.flag, second.flag]), whole.flag)


def test_scores_are_comparable_across_noise_levels() -> None:
    rng = np.random.default_rng(9)
    base = rng.standard_normal(3_000)
    rows, values = np.zeros(3_000, dtype=np.int64), np.cumsum(base)
    small = judge(Calibration.empty(1), rows, values * 1e-3, base * 1e-3, 0.001)
    big = judge(Calibration.empty(1), rows, values * 1e3, base * 1e3, 0.001)
    np.testing.assert_allclose(small.score[1:], big.score[1:], rtol=1e-4, atol=1e-6)
    assert np.nanmax(small.score) <= 1.0 and np.nanmin(small.score) >= 0.0


def test_values_without_a_forecast_get_no_verdict() -> None:
    v = judge(Calibration.empty(2), np.array([0, 1, 0]), np.ones(3),
              np.array([np.nan, 1.0, np.nan]), 0.01)
    assert np.isnan(v.score[[0, 2]]).all() and not v.flag.any()


def test_a_flat_line_does_not_make_its_next_small_step_infinitely_strange() -> None:
    rng = np.random.default_rng(4)
    y = np.r_[rng.standard_normal(500), np.zeros(500), 0.3]  # noise, then exact forecasts
    v = judge(Calibration.empty(1), np.zeros(len(y), dtype=np.int64), y,
              np.r_[y[:500], np.zeros(500), 0.3], 0.001)
    assert not v.flag[-1] and v.score[-1] < 0.5


def test_the_one_value_per_series_fast_path_is_judge_bit_for_bit() -> None:
    rng = np.random.default_rng(11)
    n_series, steps = 40, 600
    a, b = Calibration.empty(n_series), Calibration.empty(n_series)
    flagged = 0
    for k in range(steps):
        rows = rng.permutation(n_series)[:rng.integers(1, n_series + 1)]
        errors = rng.standard_t(3, len(rows)) * np.logspace(-2, 2, n_series)[rows]
        errors[rng.random(len(rows)) < 0.05] = np.nan  # no forecast
        if k in (300, 301):
            errors[:3] += 1e4  # spikes and level shifts
        values = rng.standard_normal(len(rows))
        if k in (400, 401):
            values[:2] += 1e6  # glitches: clipped into the level
        values[rng.random(len(rows)) < 0.02] = np.nan  # a fill
        va = judge(a, rows, values, errors, 0.01)
        vb = judge_once(b, rows, values, errors, 0.01)
        for name in ("flag", "direction", "kind"):
            assert np.array_equal(getattr(va, name), getattr(vb, name)), (k, name)
        assert np.array_equal(va.score, vb.score, equal_nan=True), k
        flagged += int(va.flag.sum())
    every = np.arange(n_series)
    assert a.snapshot(every).tobytes() == b.snapshot(every).tobytes()
    assert flagged > 0


def test_the_python_loop_is_the_vectorised_steps_bit_for_bit() -> None:
    rng = np.random.default_rng(12)
    n_series, m = 6, 3_000
    rows = rng.integers(0, n_series, m)
    errors = rng.standard_t(3, m) * np.logspace(-3, 3, n_series)[rows]
    errors[rng.random(m) < 0.03] = np.nan
    errors[1_500:1_510] += 1e5  # spikes, level shifts and quiet periods
    values = np.cumsum(rng.standard_normal(m))
    values[2_000:2_004] += 1e7  # glitches: clipped into the level
    values[rng.random(m) < 0.01] = np.nan
    out = []
    for looped in (True, False):
        cal = Calibration.empty(n_series)
        parts = [judge(cal, rows[i:i + 250], values[i:i + 250], errors[i:i + 250], 0.01,
                       looped=looped) for i in range(0, m, 250)]
        out.append((parts, cal.snapshot(np.arange(n_series)).tobytes()))
    (loop, loop_state), (vec, vec_state) = out
    for a, b in zip(loop, vec, strict=True):
        for name in ("flag", "direction", "kind"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.array_equal(a.score, b.score, equal_nan=True)
    assert loop_state == vec_state
    assert sum(int(p.flag.sum()) for p in loop) > 0
    assert {int(k) for p in loop for k in p.kind} >= {1, 2}
