"""Defaults chosen from the data (trainer.auto) and the MASE gate: no TensorFlow needed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from forecast.errors import DataError
from forecast.settings import Settings
from trainer import auto, families, sizing
from trainer.data import Dataset, check_values
from trainer.publish import decide


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


def seasonal(n: int, period: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    return 100 + 0.2 * t + 10 * np.sin(2 * np.pi * t / period) + rng.normal(0, 1, n)


def test_defaults_on_real_looking_data_pick_the_hybrid_and_the_season() -> None:
    data = Dataset("t", {f"s{i}": seasonal(200, 12, i) for i in range(3)})
    s, chosen = auto.resolve(settings(), data, explicit=set())
    assert s.forecaster == "hybrid" and s.arch == "gru" and s.per_series
    assert s.n_steps == 84 and sizing.filter_len(84, 1) == 42  # three seasons + backtests
    assert s.epochs == 100 and s.patience == 10 and chosen["n_steps"] == 84
    assert chosen["families"] == "period 12: window 84, 3 series"
    # one version for every frequency: each period found per series gets its own window
    rng = np.random.default_rng(5)
    mixed = Dataset("t", {"m": seasonal(200, 12, 0), "q": seasonal(120, 4, 1),
                          "h": seasonal(600, 24, 2), "y": 50 + rng.normal(0, 1, 90).cumsum()})
    s, chosen = auto.resolve(settings(), mixed, explicit=set())
    fams, table = families.plan(mixed, s)
    assert [(f.period, f.n_steps) for f in fams] == [(1, 48), (4, 72), (12, 84), (24, 144)]
    assert table == {"m": 12, "q": 4, "h": 24, "y": 1} and s.n_steps == 144
    # a window or a season given by the user: one window, one period, as before
    s, chosen = auto.resolve(settings(season_period=12), data, explicit={"season_period"})
    assert not s.per_series and s.season_period == 12 and s.n_steps == 84


def test_what_the_user_said_wins() -> None:
    data = Dataset("t", {"a": seasonal(200, 12, 0)})
    s, chosen = auto.resolve(settings(n_steps=20, arch="lstm", epochs=7), data,
                             explicit={"n_steps", "arch", "epochs"})
    assert (s.n_steps, s.arch, s.epochs, s.forecaster) == (20, "lstm", 7, "hybrid")
    assert not {"n_steps", "arch", "epochs"} & set(chosen)
    s, chosen = auto.resolve(settings(forecaster="rnn"), data, explicit={"forecaster"})
    assert chosen == {} and s.n_steps == 3  # the plain RNN keeps the settings' own defaults


def test_explicit_fields_default_to_what_the_settings_were_given(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORECAST_UNITS", "7")
    s, chosen = auto.resolve(settings(n_steps=16), Dataset("t", {"a": seasonal(300, 12, 1)}))
    assert s.units == 7 and s.n_steps == 16 and "units" not in chosen


def test_window_shrinks_for_short_series() -> None:
    assert sizing.choose_window(12, 1, 500) == (84, 12)
    assert sizing.choose_window(12, 1, 70) == (48, 12)  # two seasons
    assert sizing.choose_window(12, 1, 40) == (24, 1)  # no room for a season
    n, _ = sizing.choose_window(1, 1, 12)
    assert n >= 5
    short = Dataset("t", {"a": np.arange(30.0)})
    s, _ = auto.resolve(settings(), short, explicit=set())
    assert s.n_steps == 12  # 24 training values leave room for 8 windows of 12 + 1


def test_common_period_votes_and_multiples_count() -> None:
    t = np.arange(160.0)
    rng = np.random.default_rng(0)
    s4 = [np.sin(np.pi * t / 2) + 0.2 * rng.normal(size=160) for _ in range(2)]
    s8 = np.sin(np.pi * t / 2) + np.sin(np.pi * t / 4) + 0.2 * rng.normal(size=160)
    noise = [rng.normal(size=160) for _ in range(3)]
    assert sizing.common_period([*s4, s8, *noise]) == 4
    assert sizing.common_period(noise) == 1
    assert sizing.common_period([seasonal(200, 12, 3), rng.normal(size=200), rng.normal(size=200),
                               rng.normal(size=200)]) == 1  # one seasonal series of four


def test_values_beyond_float32_are_refused() -> None:
    with pytest.raises(DataError, match="runs in float32"):
        check_values(Dataset("t", {"a": np.array([1.0, -1e39])}))


class Scored:
    def __init__(self, model: float, naive: float, snaive: float | None, period: int) -> None:
        self.evaluation = {
            "model": {"mae": 10 * model, "mase": model},
            "naive": {"mae": 10 * naive, "mase": naive},
            "seasonal_naive": {"mae": 1.0, "mase": snaive},
            "season_period": period, "holdout": "validation"}


@pytest.mark.parametrize("model, naive, snaive, period, current, decision, reason", [
    (0.5, 1.0, 0.8, 12, None, "promote", "MASE 0.5 beats naive 1, seasonal naive 0.8"),
    (0.9, 1.0, 0.8, 12, None, "refuse", "does not beat seasonal naive 0.8"),
    (0.9, 1.0, 0.8, 1, None, "promote", "MASE 0.9 beats naive 1"),
    (1.1, 1.0, None, 1, None, "refuse", "MASE 1.1 does not beat naive 1"),
    (0.5, 1.0, 0.8, 12, {"version": "v1", "mae": 0.1, "new_mae": 0.2, "mase": 0.6,
                         "new_mase": 0.5}, "promote", "and current v1 0.6"),
    (0.5, 1.0, 0.8, 12, {"version": "v1", "mae": 0.3, "new_mae": 0.2, "mase": 0.4,
                         "new_mase": 0.5}, "refuse", "MASE 0.5 is worse than current v1 0.4"),
])
def test_the_gate_compares_mase(model: float, naive: float, snaive: float | None, period: int,
                                current: Any, decision: str, reason: str) -> None:
    gate = decide(Scored(model, naive, snaive, period), current, False)  # type: ignore[arg-type]
    assert gate["decision"] == decision and reason in gate["reason"], gate
    assert gate["scores"]["metric"] == "mase"
