"""Longer windows (n_steps=48) train, load and serve through the worker's batch path."""

from __future__ import annotations

import numpy as np
import pytest

from forecast.grammar import Limits
from tests.model_fixtures import plain_settings
from trainer import artifact
from trainer.data import Dataset
from worker.batch import build_commit
from worker.state import SeriesStore

pytestmark = pytest.mark.tf


def test_n_steps_48_trains_and_serves() -> None:
    t = np.arange(400, dtype=np.float64)
    rng = np.random.default_rng(3)
    data = Dataset("generated", {
        f"s{i}": 50 + 10 * np.sin(2 * np.pi * t / 24 + i) + rng.normal(0, 0.3, 400)
        for i in range(3)
    })
    trained = artifact.train_model(data, plain_settings(n_steps=48, units=16, epochs=3,
                                                        patience=0, horizon=2))
    model = trained.loaded
    assert (model.n_steps, model.horizon) == (48, 2)
    store = SeriesStore(width=48)
    entries = [(f"1-{i}".encode(), [b"series", b"x", b"value", str(v).encode()])
               for i, v in enumerate(data.series["s0"][:60].tolist())]
    commit = build_commit(entries, store, model, Limits(), lambda s: [None] * len(s))
    assert commit.n_predictions == 60 - 47  # one per input once 48 values are there
    out = list(commit.outputs.entries())
    preds = np.array([float(e["prediction"]) for e in out])
    assert np.isfinite(preds).all() and np.abs(preds - 50).max() < 40
    assert all("path" in e for e in out)
