"""The Keras models: a core RNN trained on normalised windows, and the raw-in/raw-out artifact."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import keras

from forecast.layers import ConformalInterval, Unscale, WindowScale

log = logging.getLogger(__name__)


def resolve_scaling(scaling: str, n_steps: int) -> str:
    """The scaling mode baked into the model: 'auto' is 'window' unless a window has one value.

    >>> resolve_scaling("auto", 3), resolve_scaling("auto", 1), resolve_scaling("none", 3)
    ('window', 'none', 'none')
    """
    if scaling == "auto":
        # One value has no spread: window normalisation would erase the whole input.
        return "window" if n_steps >= 2 else "none"
    return scaling


def build_core(arch: str, n_steps: int, horizon: int, units: int, learning_rate: float,
               seed: int) -> keras.Model:
    """Recurrent layer + Dense(horizon), compiled with Adam and MSE; seeded for reproducibility."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((n_steps, 1), name="window")
    if arch == "simple_rnn":
        hidden = keras.layers.SimpleRNN(units, activation="relu", name="rnn")(inputs)
    elif arch == "lstm":
        hidden = keras.layers.LSTM(units, name="rnn")(inputs)
    elif arch == "gru":
        hidden = keras.layers.GRU(units, name="rnn")(inputs)
    else:
        raise ValueError(f"unknown arch {arch!r}")
    outputs = keras.layers.Dense(horizon, name="forecast")(hidden)
    core = keras.Model(inputs, outputs, name="core")
    core.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    return core


def build_serving(core: keras.Model, n_steps: int, scaling: str,
                  q: list[float] | None = None) -> keras.Model:
    """Raw windows (batch, n_steps, 1) -> raw forecasts, with conformal bounds when `q` is given.

    The core is copied without its optimizer, so the artifact holds weights only.
    """
    inference = keras.models.clone_model(core)
    inference.set_weights(core.get_weights())
    raw = keras.Input((n_steps, 1), name="raw_window")
    scaled, loc, scale = WindowScale(mode=scaling, name="window_scale")(raw)
    mean = Unscale(name="unscale")([inference(scaled), loc, scale])
    if q is not None:
        mean = ConformalInterval(q=q, name="interval")([mean, scale])
    return keras.Model(raw, mean, name="forecaster")


def to_bytes(model: keras.Model) -> bytes:
    """The model as `.keras` bytes (written to a temporary file and read back)."""
    fd, name = tempfile.mkstemp(suffix=".keras")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # Keras 3.15 + numpy 2 warn about tf variables' __array__ while saving; harmless.
            warnings.filterwarnings("ignore", message=r"__array__ implementation",
                                    category=DeprecationWarning)
            model.save(name)
        return Path(name).read_bytes()
    finally:
        os.unlink(name)
