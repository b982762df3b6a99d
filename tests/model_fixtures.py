"""Session-scoped trained models shared by the TensorFlow tests (each is trained once).

Import the fixtures you use: `from tests.model_fixtures import tutorial_model  # noqa: F401`,
or register this module as a pytest plugin in tests/conftest.py.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from forecast.settings import Settings
from trainer.data import Dataset

FAMILIES = ("trend", "seasonal", "random_walk", "level_shift")


def plain_settings(**overrides: Any) -> Settings:
    """Settings that ignore the environment's `.env` file."""
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def family(kind: str, length: int, rng: np.random.Generator, scale: float = 1.0,
           level: float = 10.0) -> np.ndarray:
    """One generated series of a family, multiplied by `scale`."""
    t = np.arange(length, dtype=np.float64)
    noise = rng.normal(0.0, 0.3, length)
    if kind == "trend":
        values = level + rng.uniform(0.2, 0.6) * t + noise
    elif kind == "seasonal":
        period = 12
        values = level + 3.0 * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)) + noise
    elif kind == "random_walk":
        values = level + np.cumsum(rng.normal(0.0, 1.0, length))
    elif kind == "level_shift":
        steps = np.zeros(length)
        for start in rng.choice(np.arange(10, length - 10), size=3, replace=False):
            steps[start:] += rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 6.0)
        values = level + steps + noise
    else:
        raise ValueError(kind)
    return values * scale


def families(rng: np.random.Generator, per_family: int, length: int,
             scales: tuple[float, ...]) -> Dataset:
    """Series of every family at every scale (names like `seasonal-1000-0`)."""
    series = {}
    for kind in FAMILIES:
        for scale in scales:
            for i in range(per_family):
                series[f"{kind}-{scale:g}-{i}"] = family(kind, length, rng, scale)
    return Dataset("generated", series)


@functools.cache
def _tutorial() -> Any:
    from trainer import artifact, data

    return artifact.train_model(data.example(), plain_settings())


@functools.cache
def _families() -> Any:
    from trainer import artifact

    dataset = families(np.random.default_rng(11), per_family=3, length=150, scales=(1.0, 100.0))
    settings = plain_settings(n_steps=12, units=32, epochs=40, patience=8, train_batch_size=64,
                             learning_rate=0.001, val_fraction=0.3, coverage=0.9)
    return artifact.train_model(dataset, settings)


# The trainings are cached per process, so modules that import these fixtures share them.
@pytest.fixture(scope="session")
def tutorial_model() -> Any:
    """The tutorial: SimpleRNN(50, relu) on 0..9, n_steps=3, up to 200 epochs (default settings)."""
    return _tutorial()


@pytest.fixture(scope="session")
def families_model() -> Any:
    """A small model trained on every generated family at scales 1 and 100 (n_steps=12)."""
    return _families()
