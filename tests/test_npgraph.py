"""Numpy twins of the serving graph (forecast.npgraph): the same outputs as the Keras model
for every model shape the trainer builds, and a TensorFlow fallback for anything else."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

from forecast import npgraph
from forecast.modelio import LoadedModel, probe_windows
from forecast.settings import Settings
from trainer import model as tmodel
from trainer import warmup
from trainer.hybrid import Hybrid

pytestmark = pytest.mark.tf


def _same(model: Any, n_steps: int, partial: bool = False) -> None:
    x = probe_windows(n_steps, partial, rows=200)
    want = np.asarray(model(x, training=False))
    got = np.asarray(npgraph.compile_model(model)(x))
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5 * float(np.nanmax(np.abs(x))))


def _perturb(model: Any, seed: int = 3) -> None:
    """Random weights everywhere (zero-initialised gates and biases would hide mistakes)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))


@pytest.mark.parametrize("arch", ["simple_rnn", "lstm", "gru"])
@pytest.mark.parametrize("scaling", ["window", "diff", "none"])
def test_plain_recurrent_models_match(arch: str, scaling: str) -> None:
    core = tmodel.build_core(arch, 6, 2, 8, 0.001, 0)
    _perturb(core)
    _same(tmodel.build_serving(core, 6, scaling, q=[1.5, 2.5]), 6)
    _same(tmodel.build_serving(core, 6, scaling), 6)


@pytest.mark.parametrize("arch", ["simple_rnn", "gru"])
def test_hybrid_ensembles_match(arch: str) -> None:
    s = Settings(_env_file=None, arch=arch, units=8, ensemble=2, n_steps=40, horizon=2)  # type: ignore[call-arg]
    h = Hybrid(40, 2, 12, s)
    _perturb(h.train_model)
    _same(h.serving([1.2, 1.8], 0.3), 40)
    _same(h.serving(None), 40)


def test_expert_banks_copied_a_few_windows_at_a_time_match(monkeypatch: Any) -> None:
    monkeypatch.setattr(npgraph, "BANK_COPY_BYTES", 3_000)  # 200 windows, 2 at a time
    s = Settings(_env_file=None, units=8, n_steps=40, horizon=2)  # type: ignore[call-arg]
    _same(Hybrid(40, 2, 12, s).serving([1.2, 1.8], 0.3), 40)


def test_warm_up_ladders_with_an_unknown_past_match() -> None:
    levels = [warmup.Level(2, 0, 1, 1.0, [1.3], 0.1, 1.0),
              warmup.Level(6, 4, 1, 2.0, [1.4], 0.2, 1.0,
                           pooled=((4, 1, True, 5.0), (3, 1, False, 1e-3))),
              warmup.Level(12, 8, 2, 3.0, [1.6], 0.0, 1.0, comb=True)]
    _same(warmup.warm_model(12, levels, 1), 12, partial=True)


def test_a_warm_up_part_is_served_by_numpy_alone_without_a_tensorflow_trace() -> None:
    levels = [warmup.Level(2, 0, 1, 1.0, [1.3], 0.1, 1.0),
              warmup.Level(6, 4, 1, 2.0, [1.4], 0.2, 1.0, pooled=((4, 1, True, 5.0),))]
    model = warmup.warm_model(12, levels, 1)
    manifest = {"n_steps": 12, "horizon": 1, "outputs": "interval", "partial": True}
    loaded = LoadedModel("v", manifest, model, numpy=False)
    assert loaded.engine == "numpy" and loaded._traced is None  # no trace at load
    x = probe_windows(12, True, rows=3000)[..., 0]  # more than any timed batch size
    np.testing.assert_allclose(loaded.predict(x), model(x[..., None]).numpy(), rtol=2e-5,
                               atol=1e-5 * float(np.nanmax(np.abs(x))))
    assert loaded._traced is None


def test_a_layer_without_a_twin_is_served_by_tensorflow() -> None:
    raw = keras.Input((4, 1))
    hidden = keras.layers.Flatten()(raw)
    model = keras.Model(raw, keras.layers.Dense(1, activation="softplus")(hidden))
    with pytest.raises(npgraph.Unsupported, match="Flatten"):
        npgraph.compile_model(model)
    loaded = LoadedModel("v", {"n_steps": 4, "horizon": 1}, model)
    assert loaded.engine == "tensorflow"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(loaded.predict(x), model(x[..., None]).numpy(), rtol=1e-6)


def test_the_tutorial_model_is_served_by_numpy_with_the_same_predictions() -> None:
    core = tmodel.build_core("simple_rnn", 3, 1, 50, 0.001, 0)
    _perturb(core)
    model = tmodel.build_serving(core, 3, "window", q=[2.0])
    loaded = LoadedModel("v", {"n_steps": 3, "horizon": 1, "outputs": "interval"}, model)
    x = np.array([[7, 8, 9], [997, 998, 999], [5, 5, 5]], dtype=np.float32)
    assert loaded.numpy_rows in (0, 40, 256, 2048)  # the faster engine serves, by batch size
    np.testing.assert_allclose(loaded.predict(x), model(x[..., None]).numpy(), rtol=1e-6)
    np.testing.assert_allclose(npgraph.compile_model(model)(x[..., None]),
                               model(x[..., None]).numpy(), rtol=1e-6)
