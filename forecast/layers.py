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
SCALING_MODES = ("window", "none", "diff")


def window_stats(windows: np.ndarray, mode: str = "window") -> tuple[np.ndarray, np.ndarray]:
    """Per-window (location, scale), each (m, 1): the numpy twin of `WindowScale`.

    Location is the last value; scale is the mean absolute deviation from the window mean
    (plus a tiny relative epsilon); with mode 'diff' it is the mean absolute change between
    consecutive values (the window's own naive error, so scaled errors read like MASE). With
    mode 'none' they are 0 and 1.

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
    if mode == "diff" and w.shape[1] >= 2:
        mad = np.mean(np.abs(np.diff(w, axis=1)), axis=1, keepdims=True)
    else:
        mad = np.mean(np.abs(w - w.mean(axis=1, keepdims=True)), axis=1, keepdims=True)
    return loc, mad + EPS * np.mean(np.abs(w), axis=1, keepdims=True) + TINY


def scale_is_informative(windows: np.ndarray, mode: str = "window") -> np.ndarray:
    """(m,) bool: False where a window's scale is (almost) only its epsilon floor.

    A window without variation (`[0, 0]`, `[5, 5]`: common in short windows of counts or
    quantised values) has a scale of `EPS * mean|w| + TINY`, so any change after it is
    1e6..1e12 scaled units: such windows say nothing about errors in scaled units, and one
    in ten of them is enough to blow up a 90% conformal half-width. Calibration and
    selection in scaled units leave them out (`calibration_mask`). Always True with mode
    'none'.

    >>> w = np.array([[0.0, 0.0], [5.0, 5.0], [266.0, 145.9], [7.0, 8.0]])
    >>> scale_is_informative(w, "diff").tolist()
    [False, False, True, True]
    """
    w = np.asarray(windows, dtype=np.float64).reshape(len(windows), -1)
    if mode == "none":
        return np.ones(len(w), dtype=bool)
    _, scale = window_stats(w, mode)
    floor = EPS * np.mean(np.abs(w), axis=1, keepdims=True) + TINY
    return (scale > 2 * floor)[:, 0]


def calibration_mask(windows: np.ndarray, mode: str = "window") -> np.ndarray:
    """The windows to calibrate on in scaled units: the informative ones, or all of them when
    none is (a family of constant series).

    >>> calibration_mask(np.array([[1.0, 1.0], [1.0, 2.0]]), "diff").tolist()
    [False, True]
    >>> calibration_mask(np.zeros((2, 3)), "diff").tolist()
    [True, True]
    """
    keep = scale_is_informative(windows, mode)
    return keep if keep.any() else np.ones_like(keep)


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
        if self.mode == "diff" and x.shape[1] >= 2:
            mad = ops.mean(ops.abs(x[:, 1:, :] - x[:, :-1, :]), axis=1)
        else:
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


# --- the hybrid forecaster: statistical experts computed from the window, combined by a net --
#
# Every expert below is a fixed *linear* filter of the last `filter_len` values (exponential
# smoothing with fixed parameters, damped Holt, Theta, drift, window mean, seasonal naive, and
# the same on the window deseasonalised by its own classical seasonal indices). A linear
# filter is a matrix, so the whole bank is one convolution over the window: its last position
# is every expert's forecast from the window's end, the earlier positions are the experts'
# in-window backtests, whose mean absolute errors tell which expert suits *this* series now.
# Optionally the bank also runs on log values (multiplicative level and seasonality) for
# windows that are positive. Nothing is kept between windows: all of it is a function of the
# window, so the worker's window is the only state a series needs.

SES_ALPHAS = (0.1, 0.3, 0.6)
HOLT = ((0.3, 0.05, 0.9), (0.5, 0.1, 0.85))  # (alpha, beta, phi) of damped Holt
THETA_ALPHAS = (0.2, 0.5)
LOG_CLIP = 10.0  # log-space forecasts are clipped to exp(+-10) times the last value


def _ses(w: np.ndarray, a: float) -> float:
    level = w[0]
    for v in w[1:]:
        level = a * v + (1 - a) * level
    return float(level)


def _holt(w: np.ndarray, horizon: int, a: float, b: float, phi: float) -> np.ndarray:
    level, trend = w[0], w[1] - w[0]
    for v in w[1:]:
        new = a * v + (1 - a) * (level + phi * trend)
        trend = b * (new - level) + (1 - b) * phi * trend
        level = new
    damp = np.cumsum(phi ** np.arange(1, horizon + 1))
    return np.asarray(level + damp * trend)


def _slope(w: np.ndarray) -> float:
    t = np.arange(len(w), dtype=np.float64)
    t -= t.mean()
    return float(np.dot(t, w - w.mean()) / np.dot(t, t))


def _plain_experts(horizon: int) -> list[tuple[str, Any]]:
    h = np.arange(1, horizon + 1, dtype=np.float64)
    out: list[tuple[str, Any]] = [
        ("naive", lambda w: np.full(horizon, w[-1])),
        ("mean", lambda w: np.full(horizon, w.mean())),
        ("drift", lambda w: w[-1] + h * (w[-1] - w[0]) / (len(w) - 1)),
    ]
    for a in SES_ALPHAS:
        out.append((f"ses{a}", lambda w, a=a: np.full(horizon, _ses(w, a))))
    for a, b, phi in HOLT:
        out.append((f"holt{a}", lambda w, a=a, b=b, phi=phi: _holt(w, horizon, a, b, phi)))
    for a in THETA_ALPHAS:
        out.append((f"theta{a}", lambda w, a=a: _ses(w, a) + 0.5 * _slope(w) * (h - 1 + 1 / a)))
    return out


def seasonal_indices(w: np.ndarray, period: int) -> np.ndarray:
    """Additive classical-decomposition indices of a window, by phase relative to its end.

    Phase p holds positions i with (i - len(w)) % period == p; the indices sum to zero.

    >>> w = np.tile([1.0, -1.0], 4) + np.arange(8.0)
    >>> seasonal_indices(w, 2).round(3).tolist()
    [1.0, -1.0]
    """
    n, m = len(w), period
    kernel = np.full(m, 1.0 / m) if m % 2 else np.r_[0.5, np.ones(m - 1), 0.5] / m
    trend = np.convolve(w, kernel, mode="valid")  # centred: position i + len(kernel)//2
    first = len(kernel) // 2
    detr = w[first: first + len(trend)] - trend
    phase = (np.arange(first, first + len(trend)) - n) % m
    idx = np.array([detr[phase == p].mean() for p in range(m)])
    return idx - idx.mean()


def expert_names(filter_len: int, horizon: int, period: int) -> list[str]:
    """Names of the experts of a bank (the seasonal ones need two seasons in the filter)."""
    plain = [n for n, _ in _plain_experts(horizon)]
    if period < 2 or filter_len < 2 * period:
        return plain
    return [*plain, "snaive", *[f"s_{n}" for n in plain]]


def expert_matrix(filter_len: int, horizon: int, period: int) -> np.ndarray:
    """(filter_len, experts * horizon): each expert's H forecasts as weights on the window.

    >>> m = expert_matrix(8, 2, 1)
    >>> m.shape, np.allclose(m.sum(axis=0), 1.0)  # every expert maps a constant to itself
    ((8, 20), True)
    """
    experts = _plain_experts(horizon)
    seasonal = period >= 2 and filter_len >= 2 * period
    cols = []
    for i in range(filter_len):
        e = np.zeros(filter_len)
        e[i] = 1.0
        row = [f(e) for _, f in experts]
        if seasonal:
            s = seasonal_indices(e, period)
            phase = (np.arange(filter_len) - filter_len) % period
            ahead = s[np.arange(horizon) % period]
            row.append(np.asarray([e[filter_len - period + (k % period)]
                                   for k in range(horizon)]))
            des = e - s[phase]
            row.extend(f(des) + ahead for _, f in experts)
        cols.append(np.concatenate(row))
    return np.asarray(cols)


@keras.saving.register_keras_serializable(package="forecast")
class ExpertBank(keras.layers.Layer):
    """[raw window, scaled window] -> [forecasts (batch, K, H), in-window MAE (batch, K, H)].

    Both in the scaled units of the window (`WindowScale` mode 'diff'). The scaled window has
    n_steps values; each expert sees `filter_len` of them, so there are n_steps - filter_len
    backtest origins per window (step h uses the n_steps - filter_len - h + 1 whose target is
    inside the window). With `log`, the bank runs a second time on log values (for windows
    whose values are all positive; otherwise those experts repeat the additive ones).
    """

    def __init__(self, filter_len: int = 8, horizon: int = 1, period: int = 1,
                 log: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filter_len, self.horizon, self.period, self.log = (
            int(filter_len), int(horizon), int(period), bool(log))
        self.names = expert_names(self.filter_len, self.horizon, self.period)
        w = expert_matrix(self.filter_len, self.horizon, self.period)
        self._kernel = w.reshape(self.filter_len, 1, -1).astype("float32")

    @property
    def n_experts(self) -> int:
        """Experts in the output (twice the names with `log`)."""
        return len(self.names) * (2 if self.log else 1)

    def _bank(self, z: Any) -> Any:
        out = ops.conv(z, ops.convert_to_tensor(self._kernel), strides=1, padding="valid")
        return ops.reshape(out, (-1, out.shape[1], len(self.names), self.horizon))

    def _errors(self, f: Any, z: Any) -> Any:
        n, L = z.shape[1], self.filter_len
        errs = []
        for h in range(1, self.horizon + 1):
            m = n - L - h + 1
            target = z[:, L + h - 1:, :]  # (batch, m, 1)
            errs.append(ops.mean(ops.abs(f[:, :m, :, h - 1] - target), axis=1))
        return ops.stack(errs, axis=-1)  # (batch, K, H)

    def call(self, inputs: list[Any]) -> list[Any]:
        x, z, loc, scale = inputs
        f = self._bank(z)
        forecasts, errors = [f[:, -1]], [self._errors(f, z)]
        if self.log:
            positive = ops.min(x[:, :, 0], axis=1, keepdims=True) > 0  # (batch, 1)
            safe = ops.where(ops.expand_dims(positive, 1), x, ops.ones_like(x))
            last = safe[:, -1:, :]
            u = ops.log(safe / last)
            g = ops.clip(self._bank(u), -LOG_CLIP, LOG_CLIP)
            # back to the scaled units: (last * exp(g) - loc) / scale, with loc = last value
            s4 = ops.reshape(scale, (-1, 1, 1, 1))
            l4 = ops.reshape(last[:, 0, :], (-1, 1, 1, 1))
            gz = (l4 * ops.exp(g) - ops.reshape(loc, (-1, 1, 1, 1))) / s4
            p4 = ops.reshape(positive, (-1, 1, 1, 1))
            gz = ops.where(p4, gz, f)
            forecasts.append(gz[:, -1])
            errors.append(self._errors(gz, z))
        return [ops.concatenate(forecasts, axis=1), ops.concatenate(errors, axis=1)]

    def compute_output_shape(self, input_shape: Any) -> list[Any]:
        shape = (input_shape[0][0], self.n_experts, self.horizon)
        return [shape, shape]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filter_len": self.filter_len,
                "horizon": self.horizon, "period": self.period, "log": self.log}


@keras.saving.register_keras_serializable(package="forecast")
class GatedCombine(keras.layers.Layer):
    """[forecasts (b, K, H), errors (b, K, H), features (b, U)] -> [point (b, H), spread (b, H)].

    Weights per window and step: softmax over experts of a learned prior, minus a learned
    multiple of each expert's in-window error, plus a linear function of the features (the
    recurrent summary of the window); plus a learned correction from the features, in units
    of the combination's in-window error. Starts as
    "weight the experts by their recent error" (the correction and feature terms are zero).
    `spread` is the weighted in-window error: the unit of the prediction interval.
    """

    def __init__(self, sharpness: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sharpness = float(sharpness)  # initial weight of the in-window errors

    def build(self, input_shape: Any) -> None:
        _, k, h = input_shape[0]
        units = input_shape[2][-1]
        self.prior = self.add_weight(shape=(k, h), initializer="zeros", name="prior")
        start = float(np.log(np.expm1(self.sharpness)))  # softplus(start) == sharpness
        self.sharp = self.add_weight(shape=(h,), initializer=keras.initializers.Constant(start),
                                     name="sharpness")
        self.gate = self.add_weight(shape=(units, k * h), initializer="zeros", name="gate")
        self.corr = self.add_weight(shape=(units, h), initializer="zeros", name="correction")
        self.corr_bias = self.add_weight(shape=(h,), initializer="zeros", name="correction_bias")
        self._k, self._h = int(k), int(h)

    def call(self, inputs: list[Any]) -> list[Any]:
        f, e, feat = inputs
        sharp = ops.softplus(self.sharp)
        logits = self.prior - sharp * e + ops.reshape(ops.matmul(feat, self.gate),
                                                      (-1, self._k, self._h))
        w = ops.softmax(logits, axis=1)
        spread = ops.sum(w * e, axis=1)
        # the correction is in units of the window's recent error: a smooth series (small
        # in-window errors) is not moved by the net's noise
        point = ops.sum(w * f, axis=1) + spread * (ops.matmul(feat, self.corr) + self.corr_bias)
        return [point, spread]

    def compute_output_shape(self, input_shape: Any) -> list[Any]:
        shape = (input_shape[0][0], input_shape[0][2])
        return [shape, shape]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "sharpness": self.sharpness}


@keras.saving.register_keras_serializable(package="forecast")
class HybridOutput(keras.layers.Layer):
    """[point, spread (b, H) scaled; loc, scale (b, 1)] -> raw point, or [point, lower, upper].

    The interval half-width of step h is q[h] times the spread (the window's own recent
    error, plus `offset`, its typical value) times the window's scale: split-conformal on the
    validation residuals in those units.
    """

    def __init__(self, q: list[float] | None = None, min_spread: float = 0.05,
                 offset: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.q = None if q is None else [float(v) for v in q]
        self.min_spread = float(min_spread)
        self.offset = float(offset)  # added to the spread: shrinks a noisy spread to typical

    def call(self, inputs: list[Any]) -> Any:
        point, spread, loc, scale = inputs
        mean = point * scale + loc
        if self.q is None:
            return mean
        q = ops.convert_to_tensor(np.asarray(self.q, dtype="float32"))
        half = q * (ops.maximum(spread, self.min_spread) + self.offset) * scale
        return ops.concatenate([mean, mean - half, mean + half], axis=-1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        batch, width = input_shape[0]
        if self.q is None:
            return (batch, width)
        return (batch, None if width is None else 3 * width)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "q": self.q, "min_spread": self.min_spread,
                "offset": self.offset}


@keras.saving.register_keras_serializable(package="forecast")
class SoftClip(keras.layers.Layer):
    """x -> limit * tanh(x / limit): keeps outlying scaled values from saturating an RNN."""

    def __init__(self, limit: float = 10.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limit = float(limit)

    def call(self, x: Any) -> Any:
        return self.limit * ops.tanh(x / self.limit)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "limit": self.limit}


# --- partial windows: a series with fewer values than the window (warm-up) -----------------
#
# A warm-up model reads the window with its unknown past as NaN (the worker's window of a
# young series), forecasts from the last L values at every length L of a ladder, and keeps,
# per window, the longest L that holds only real values.


@keras.saving.register_keras_serializable(package="forecast")
class FillMissing(keras.layers.Layer):
    """(batch, n, 1) window with NaN for unknown values -> [window with 0 there, count (b, 1)]."""

    def call(self, x: Any) -> list[Any]:
        known = ops.logical_not(ops.isnan(x))
        count = ops.sum(ops.cast(known, x.dtype), axis=1)
        return [ops.where(known, x, ops.zeros_like(x)), count]

    def compute_output_shape(self, input_shape: Any) -> list[Any]:
        return [tuple(input_shape), (input_shape[0], 1)]


@keras.saving.register_keras_serializable(package="forecast")
class NaiveExpert(keras.layers.Layer):
    """Scaled window (b, n, 1) -> [point 0 (b, H), spread 1 (b, H)]: the last value, in units
    of the window's scale (for windows too short for in-window backtests)."""

    def __init__(self, horizon: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.horizon = int(horizon)

    def call(self, z: Any) -> list[Any]:
        zero = ops.zeros_like(z[:, :1, 0])
        point = ops.tile(zero, (1, self.horizon))
        return [point, point + 1.0]

    def compute_output_shape(self, input_shape: Any) -> list[Any]:
        shape = (input_shape[0], self.horizon)
        return [shape, shape]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "horizon": self.horizon}


@keras.saving.register_keras_serializable(package="forecast")
class SelectByCount(keras.layers.Layer):
    """[count (b, 1), out_1 .. out_k (b, w)] -> (b, w): per row the output of the longest
    length in `lengths` (ascending) that is at most `count` (the first when none is)."""

    def __init__(self, lengths: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lengths = [int(v) for v in (lengths or [1])]

    def call(self, inputs: list[Any]) -> Any:
        count, outs = inputs[0], inputs[1:]
        chosen = outs[0]
        for length, out in zip(self.lengths[1:], outs[1:], strict=True):
            chosen = ops.where(count >= float(length), out, chosen)
        return chosen

    def compute_output_shape(self, input_shape: Any) -> Any:
        return tuple(input_shape[1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "lengths": list(self.lengths)}
