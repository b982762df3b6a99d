"""Loading and checking artifacts: what the worker refuses, and predict's speed contract."""

from __future__ import annotations

import hashlib
from typing import Any

import fakeredis
import keras
import numpy as np
import pytest

from forecast import registry
from forecast.errors import ModelRejected
from forecast.modelio import LoadedModel, load_bytes, load_version, sign
from tests import model_fixtures
from trainer import model as tmodel

tutorial_model = model_fixtures.tutorial_model  # the shared session fixture


def manifest_for(blob: bytes, **overrides: Any) -> dict[str, Any]:
    return {"version": "t", "n_steps": 3, "horizon": 1, "outputs": "point",
            "sha256": hashlib.sha256(blob).hexdigest(), **overrides}


def test_loads_and_predicts_like_a_plain_model_call(tutorial_model: Any) -> None:
    loaded = load_bytes(tutorial_model.blob, tutorial_model.manifest)
    assert (loaded.n_steps, loaded.horizon, loaded.has_interval) == (3, 1, True)
    rng = np.random.default_rng(0)
    windows = (rng.normal(size=(2000, 3)) * rng.uniform(0.1, 1e4, size=(2000, 1))).astype("float32")
    got = loaded.predict(windows)
    want = loaded.model(windows[..., None], training=False).numpy()
    assert got.shape == (2000, 3) and got.dtype == np.float32
    # float32 rounding, relative to the window's magnitude (the forecast is y * scale + loc)
    tol = 1e-5 + 1e-6 * np.abs(windows).max(axis=1, keepdims=True)
    assert np.all(np.abs(got - want) <= tol + 1e-5 * np.abs(want))
    mean, lower, upper = got[:, 0], got[:, 1], got[:, 2]
    assert np.all(lower <= mean) and np.all(mean <= upper)


def test_predict_traces_once_and_handles_empty_batches(tutorial_model: Any) -> None:
    loaded = load_bytes(tutorial_model.blob, tutorial_model.manifest)
    for m in (1, 7, 5000, 3):
        assert loaded.predict(np.ones((m, 3), dtype=np.float32)).shape == (m, 3)
    assert loaded._traced.experimental_get_tracing_count() == 1
    empty = loaded.predict(np.zeros((0, 3), dtype=np.float32))
    assert empty.shape == (0, 3) and empty.dtype == np.float32
    with pytest.raises(ValueError, match=r"shape \(m, 3\)"):
        loaded.predict(np.ones((2, 6), dtype=np.float32))


def test_sha_mismatch_is_rejected(tutorial_model: Any) -> None:
    bad = {**tutorial_model.manifest, "sha256": "0" * 64}
    with pytest.raises(ModelRejected, match="sha256 mismatch"):
        load_bytes(tutorial_model.blob, bad)


def test_corrupt_bytes_are_rejected() -> None:
    blob = b"PK\x03\x04 this is not a keras archive"
    with pytest.raises(ModelRejected, match=r"not a \.keras archive"):
        load_bytes(blob, manifest_for(blob))


def test_truncated_artifact_is_rejected(tutorial_model: Any) -> None:
    blob = tutorial_model.blob[: len(tutorial_model.blob) // 2]
    with pytest.raises(ModelRejected, match="Keras refused"):
        load_bytes(blob, {**tutorial_model.manifest, "sha256": hashlib.sha256(blob).hexdigest()})


def test_wrong_input_shape_and_output_width_are_rejected(tutorial_model: Any) -> None:
    with pytest.raises(ModelRejected, match=r"input shape \(None, 3, 1\) does not match"):
        load_bytes(tutorial_model.blob, {**tutorial_model.manifest, "n_steps": 4})
    with pytest.raises(ModelRejected, match="output shape"):
        load_bytes(tutorial_model.blob, {**tutorial_model.manifest, "horizon": 2})
    with pytest.raises(ModelRejected, match="output shape"):
        load_bytes(tutorial_model.blob, {**tutorial_model.manifest, "outputs": "point"})
    with pytest.raises(ModelRejected, match="outputs must be one of"):
        load_bytes(tutorial_model.blob, {**tutorial_model.manifest, "outputs": "quantiles"})


def test_nan_output_is_rejected() -> None:
    core = tmodel.build_core("simple_rnn", 3, 1, 4, 0.001, 0)
    core.set_weights([np.full(w.shape, np.nan, dtype="float32") for w in core.get_weights()])
    blob = tmodel.to_bytes(tmodel.build_serving(core, 3, "window"))
    with pytest.raises(ModelRejected, match="non-finite"):
        load_bytes(blob, manifest_for(blob))


def test_lambda_layer_is_refused_by_safe_mode() -> None:
    inputs = keras.Input((3, 1))
    outputs = keras.layers.Lambda(lambda x: x[:, -1, :] + 1.0)(inputs)
    blob = tmodel.to_bytes(keras.Model(inputs, outputs))
    with pytest.raises(ModelRejected, match=r"(?i)lambda|unsafe|safe_mode"):
        load_bytes(blob, manifest_for(blob))


def test_hmac_signatures(tutorial_model: Any) -> None:
    blob, manifest = tutorial_model.blob, dict(tutorial_model.manifest)
    manifest.pop("hmac", None)
    with pytest.raises(ModelRejected, match="unsigned"):
        load_bytes(blob, manifest, hmac_key="k1")
    with pytest.raises(ModelRejected, match="bad HMAC"):
        load_bytes(blob, {**manifest, "hmac": sign(blob, "other key")}, hmac_key="k1")
    assert isinstance(load_bytes(blob, {**manifest, "hmac": sign(blob, "k1")}, hmac_key="k1"),
                      LoadedModel)


def test_load_version_from_the_registry(tutorial_model: Any) -> None:
    client = fakeredis.FakeRedis()
    v = registry.publish(client, tutorial_model.blob, tutorial_model.manifest)
    loaded = load_version(client, v)
    assert loaded.version == v and loaded.manifest["version"] == v
    out = loaded.predict(np.array([[7.0, 8.0, 9.0]], dtype=np.float32))
    assert abs(float(out[0, 0]) - 10.0) < 1.0
    with pytest.raises(ModelRejected, match="unknown model version"):
        load_version(client, "v99")
    client.delete(f"forecast:model:{v}:blob")
    with pytest.raises(ModelRejected, match="no blob"):
        load_version(client, v)
