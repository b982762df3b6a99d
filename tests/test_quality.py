"""Forecast quality on generated families: scale generalisation, baselines, interval coverage."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests import model_fixtures
from tests.model_fixtures import FAMILIES, family
from trainer.conformal import interval_coverage
from trainer.evaluate import detect_period
from trainer.windows import make_windows

families_model = model_fixtures.families_model  # the shared session fixture
N_STEPS = 12
# Upper bounds of model MAE / naive MAE per family: the model must clearly beat naive where the
# future is predictable and stay close to it where naive is optimal (random walk, level shifts).
MAX_RATIO = {"trend": 0.9, "seasonal": 0.8, "random_walk": 1.25, "level_shift": 1.2}


def holdout(kind: str, scale: float, seed: int, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n):
        x, y, _ = make_windows(family(kind, 150, rng, scale), N_STEPS, 1)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def test_predictions_follow_shift_and_scale(families_model: Any) -> None:
    loaded = families_model.loaded
    x, _ = holdout("seasonal", 1.0, seed=5, n=2)
    base = loaded.predict(x).astype(np.float64)
    for c, a in ((1e-3, 0.0), (1e4, 0.0), (1.0, 1000.0), (50.0, -20000.0)):
        moved = loaded.predict((a + c * x).astype(np.float32)).astype(np.float64)
        np.testing.assert_allclose(moved, a + c * base, rtol=1e-3, atol=2e-3 * c * 10)


@pytest.mark.parametrize("scale", [0.01, 1e4, 1e6])
def test_generalises_to_unseen_scales(families_model: Any, scale: float) -> None:
    ratios = {}
    for i, kind in enumerate(FAMILIES):
        x, y = holdout(kind, scale, seed=100 * i + int(np.log10(scale)) + 2)
        pred = families_model.loaded.predict(x.astype(np.float32))[:, :1]
        ratios[kind] = float(np.abs(pred - y).mean() / np.abs(x[:, -1:] - y).mean())
    assert all(ratios[k] < MAX_RATIO[k] for k in FAMILIES), ratios


def test_beats_naive_on_its_validation_holdout(families_model: Any) -> None:
    metrics = families_model.manifest["metrics"]
    assert metrics["holdout"] == "validation" and metrics["windows"] > 500
    assert metrics["model"]["mae"] < metrics["naive"]["mae"]
    assert metrics["model"]["mase"] < metrics["naive"]["mase"]


def test_conformal_coverage_on_a_fresh_holdout(families_model: Any) -> None:
    loaded = families_model.loaded
    assert loaded.has_interval and families_model.manifest["coverage"] == 0.9
    inside, total = 0.0, 0
    for kind in FAMILIES:
        x, y = holdout(kind, 1000.0, seed=1234 + FAMILIES.index(kind), n=8)
        out = loaded.predict(x.astype(np.float32))
        inside += interval_coverage(y[:, 0], out[:, 1], out[:, 2]) * len(y)
        total += len(y)
    coverage = inside / total
    assert total > 4000
    assert abs(coverage - 0.9) <= 0.05, coverage


def test_detects_the_season_of_the_seasonal_family() -> None:
    rng = np.random.default_rng(8)
    assert detect_period([family("seasonal", 150, rng) for _ in range(3)]) == 12
    assert detect_period([family("random_walk", 150, rng) for _ in range(3)]) == 1
