"""Custom Keras layers baked into saved models, so an artifact maps raw values to raw forecasts.

Window normalisation: each window is shifted by its last value and divided by its mean
absolute deviation, and the forecast is mapped back (`y * scale + loc`). Dividing by the mean
absolute value alone is scale-invariant but not shift-invariant: a model trained on 0..9
then predicts ~1050-1300 for [997, 998, 999]; with the shift it predicts 1000.0, and a model
trained on some series works on others at any level and scale.

Every layer is registered under the `forecast` package and has a plain JSON config, so the
`.keras` file loads with `safe_mode=True` (no Lambda layers, no pickled code). The numpy twin
`window_stats` computes exactly what `WindowScale` computes, for preparing training targets.
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np
from keras import ops

log = logging.getLogger(__name__)

EPS = 1e-6  # relative to the window's mean absolute value, so constant windows stay finite
TINY = 1e-12
SCALING_MODES = ("window", "none")


def window_stats(windows: np.ndarray, mode: str = "window") -> tuple[np.ndarray, np.ndarray]:
    """Per-window (location, scale), each (m, 1): the numpy twin of `WindowScale`.

    Location is the last value; scale is the mean absolute deviation from the window mean
    (plus a tiny relative epsilon). With mode 'none' they are 0 and 1.

    >>> loc, scale = window_stats(np.array([[7.0, 8.0, 9.0], [997.0, 998.0, 999.0]]))
    >>> loc.ravel().tolist(), scale.ravel().round(4).tolist()
    ([9.0, 999.0], [0.6667, 0.6677])
    >>> window_stats(np.array([[7.0, 8.0, 9.0]]), mode="none")
    (array([[0.]]), array([[1.]]))
    """
    w = np.asarray(windows, dtype=np.float64).reshape(len(windows), -1)
    if mode == "none":
        return np.zeros((len(w), 1)), np.ones((len(w), 1))
    loc = w[:, -1:]
    mad = np.mean(np.abs(w - w.mean(axis=1, keepdims=True)), axis=1, keepdims=True)
    return loc, mad + EPS * np.mean(np.abs(w), axis=1, keepdims=True) + TINY


@keras.saving.register_keras_serializable(package="forecast")
class WindowScale(keras.layers.Layer):
    """(batch, n_steps, 1) raw window -> [(window - loc) / scale, loc, scale], each (batch, 1)."""

    def __init__(self, mode: str = "window", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in SCALING_MODES:
            raise ValueError(f"unknown scaling mode {mode!r}")
        self.mode = mode

    def call(self, x: Any) -> list[Any]:
        if self.mode == "none":
            return [x, ops.zeros_like(x[:, 0, :]), ops.ones_like(x[:, 0, :])]
        loc = x[:, -1, :]
        mad = ops.mean(ops.abs(x - ops.mean(x, axis=1, keepdims=True)), axis=1)
        scale = mad + EPS * ops.mean(ops.abs(x), axis=1) + TINY
        return [(x - ops.expand_dims(loc, 1)) / ops.expand_dims(scale, 1), loc, scale]

    def compute_output_shape(self, input_shape: Any) -> list[Any]:
        return [tuple(input_shape), (input_shape[0], 1), (input_shape[0], 1)]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="forecast")
class Unscale(keras.layers.Layer):
    """[scaled forecast (batch, H), loc (batch, 1), scale (batch, 1)] -> raw (batch, H)."""

    def call(self, inputs: list[Any]) -> Any:
        y, loc, scale = inputs
        return y * scale + loc

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape[0])
@keras.saving.register_keras_serializable(package="forecast")
class ConformalInterval(keras.layers.Layer):
    """[raw mean (batch, H), scale (batch, 1)] -> [mean, mean - q*scale, mean + q*scale].

    `q` holds the split-conformal half-widths per horizon step, in scaled units.
    """

    def __init__(self, q: list[float] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.q = [float(v) for v in (q or [0.0])]

    def call(self, inputs: list[Any]) -> Any:
        mean, scale = inputs
        half = ops.convert_to_tensor(np.asarray(self.q, dtype="float32")) * scale
        return ops.concatenate([mean, mean - half, mean + half], axis=-1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        batch, width = input_shape[0]
        return (batch, None if width is None else 3 * width)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "q": list(self.q)}
