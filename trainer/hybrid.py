"""The hybrid forecaster: statistical experts from the window, weighted per window by an RNN.

The ideas of the M4 competition's best methods, realised inside one Keras model whose only
input is the raw window the worker already keeps (so a series needs no other state, and a
series the trainer never saw works from its first full window):

* per-window normalisation: shift by the last value, divide by the window's mean absolute
  change (errors in these units read like MASE);
* a bank of classical forecasters computed from the window (`forecast.layers.ExpertBank`):
  exponential smoothing, damped Holt, Theta, drift, seasonal naive, and the same on the
  window deseasonalised by its own seasonal indices, on values and on log values;
* their in-window backtest errors, which weight them per window (selection by recent error,
  as FFORMA and the M4 combinations do), sharpened and corrected by a recurrent net trained
  across all series (`GatedCombine`);
* an ensemble of `ensemble` members with different seeds, averaged inside the model;
* prediction intervals whose width follows the window's own recent error (split-conformal
  on the validation windows in those units).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import keras
import numpy as np

from forecast import npgraph
from forecast.layers import (
    ExpertBank,
    GatedCombine,
    HybridOutput,
    SoftClip,
    WindowScale,
    calibration_mask,
    window_stats,
)
from forecast.settings import Settings
from trainer import conformal
from trainer.sizing import filter_choices, filter_len
from trainer.train import history_summary, native_stderr_filtered
from trainer.windows import WindowSet

log = logging.getLogger(__name__)

SCALING = "diff"
SHARPNESS = 5.0
SPREAD_SHRINK = 0.5  # of the median validation spread, added to every window's spread
RNN_STEPS = 24  # the recurrent net reads the last 24 scaled values (unrolled: fast on CPU)
# Initial weights of the in-window errors tried on validation before training (the untrained
# model is "each window picks its experts by their recent error" with this sharpness).
SHARPNESS_GRID = (2.0, 5.0, 10.0, 30.0)


def _recurrent(arch: str, units: int, name: str) -> keras.layers.Layer:
    # unrolled: on CPU a short recurrence is much faster as plain ops than as a while loop
    if arch == "lstm":
        return keras.layers.LSTM(units, unroll=True, name=name)
    if arch == "gru":
        return keras.layers.GRU(units, unroll=True, name=name)
    if arch == "simple_rnn":
        return keras.layers.SimpleRNN(units, activation="tanh", unroll=True, name=name)
    raise ValueError(f"unknown arch {arch!r}")


class Hybrid:
    """The layers of one hybrid model, and the Keras models built from them."""

    def __init__(self, n_steps: int, horizon: int, period: int, s: Settings,
                 filter_len_: int | None = None) -> None:
        keras.utils.set_random_seed(s.seed)
        self.n_steps, self.horizon, self.period = n_steps, horizon, period
        self.filter_len = filter_len_ or filter_len(n_steps, horizon)
        if n_steps - self.filter_len < horizon:
            raise ValueError(f"n_steps={n_steps} is too short for horizon={horizon} "
                             f"(the hybrid needs at least {horizon + 2} values per window)")
        self.members = s.ensemble
        self.raw = keras.Input((n_steps, 1), name="raw_window")
        z, self.loc, self.scale = WindowScale(mode=SCALING, name="window_scale")(self.raw)
        self.bank = ExpertBank(filter_len=self.filter_len, horizon=horizon, period=period,
                               log=True, name="experts")
        f, e = self.bank([self.raw, z, self.loc, self.scale])
        zc = SoftClip(10.0, name="soft_clip")(z)
        if n_steps > RNN_STEPS:  # the net reads the recent values; the experts see the rest
            zc = keras.layers.Cropping1D((n_steps - RNN_STEPS, 0), name="recent")(zc)
        points, spreads = [], []
        self.combiners = [GatedCombine(SHARPNESS, name=f"combine_{i}")
                          for i in range(self.members)]
        self.hidden = []  # net, then combine, member by member: the order the seeded init draws in
        for i, combine in enumerate(self.combiners):
            hidden = _recurrent(s.arch, s.units, f"rnn_{i}")(zc)
            self.hidden.append(hidden)
            p, sp = combine([f, e, hidden])
            points.append(p)
            spreads.append(sp)
        if self.members > 1:
            point = keras.layers.Average(name="point_nets")(points)
            spread = keras.layers.Average(name="spread_nets")(spreads)
            stacked = keras.layers.Concatenate(name="members")(points)
        else:
            point, spread, stacked = points[0], spreads[0], points[0]
        self.point, self.spread = point, spread
        self.features = keras.Model(self.raw, [f, e, *self.hidden], name="hybrid_features")
        self.train_model = keras.Model(self.raw, stacked, name="hybrid_train")
        self.train_model.compile(optimizer=keras.optimizers.Adam(s.learning_rate), loss="mae")
        self.scaled_model = keras.Model(
            self.raw, keras.layers.Concatenate(name="point_spread")([self.point, self.spread]),
            name="hybrid_scaled")

    def serving(self, q: list[float] | None, offset: float = 0.0) -> keras.Model:
        """Raw windows -> raw forecasts (and conformal bounds when `q` is given)."""
        out = HybridOutput(q=q, offset=offset, name="output")(
            [self.point, self.spread, self.loc, self.scale])
        return keras.Model(self.raw, out, name="forecaster")

    def scaled(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point, spread) in scaled units for raw windows (m, n_steps)."""
        out = npgraph.predict(self.scaled_model, _inputs(x))[0]  # numpy twin: no tracing
        return out[:, : self.horizon], out[:, self.horizon:]

    def set_sharpness(self, value: float) -> None:
        """The weight of the in-window errors in every member's gate."""
        raw = float(np.log(np.expm1(value)))
        for combine in self.combiners:
            combine.sharp.assign(np.full(combine.sharp.shape, raw, dtype="float32"))

    @property
    def params(self) -> int:
        """Trainable parameters."""
        return int(self.train_model.count_params())


def build(ws: WindowSet, s: Settings, period: int
          ) -> tuple[Hybrid, dict[int, float], dict[str, Any]]:
    """The hybrid whose untrained expert selection does best on validation, among the
    filter lengths of `filter_choices`; each length's validation loss; the chosen start
    (see `_best_start`, empty when nothing was compared)."""
    choices = filter_choices(s.n_steps, s.horizon)
    if len(choices) == 1 or not ws.has_val:
        return Hybrid(s.n_steps, s.horizon, period, s), {}, {}
    losses: dict[int, float] = {}
    best: tuple[Hybrid, dict[str, Any]] | None = None
    for length in choices:
        h = Hybrid(s.n_steps, s.horizon, period, s, filter_len_=length)
        start = _best_start(h, (_inputs(ws.x_val), _targets(ws.x_val, ws.y_val, h.members),
                                series_weights(ws.val_series)))
        losses[length] = start["val_loss"]
        if best is None or start["val_loss"] < best[1]["val_loss"]:
            best = (h, start)
    assert best is not None
    log.info("hybrid: filter of %d values (validation losses %s)", best[0].filter_len, losses)
    return best[0], losses, best[1]


def _inputs(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).reshape(len(x), -1, 1)


def series_weights(which: np.ndarray) -> np.ndarray:
    """Per-window weights (mean 1) under which every series counts the same, however many
    windows it has: one long series would otherwise decide for a family of short ones.

    >>> series_weights(np.array([0, 0, 0, 1])).tolist()
    [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
    """
    if not len(which):
        return np.ones(0)
    counts = np.bincount(which)
    w = 1.0 / counts[which]
    return w * (len(w) / w.sum())


def _targets(x: np.ndarray, y: np.ndarray, members: int) -> np.ndarray:
    loc, scale = window_stats(x, SCALING)
    ys = ((y - loc) / scale).astype(np.float32)
    return np.tile(ys, (1, members))


class BestOnValidation(keras.callbacks.Callback):
    """Early stopping with a time budget: stop after `patience` epochs without a better
    validation loss, or once `budget_s` seconds have passed; end with the best weights."""

    def __init__(self, patience: int, budget_s: float) -> None:
        super().__init__()
        self.patience, self.budget_s = patience, budget_s
        self.best = float("inf")
        self.best_weights: list[Any] | None = None
        self.wait = 0
        self.started = time.monotonic()
        self.out_of_time = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        loss = float((logs or {}).get("val_loss", float("nan")))
        if np.isfinite(loss) and loss < self.best:
            self.best, self.wait = loss, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
        if self.patience > 0 and self.wait >= self.patience:
            self.model.stop_training = True
        if self.budget_s > 0 and time.monotonic() - self.started > self.budget_s:
            self.out_of_time = True
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def fit(h: Hybrid, ws: WindowSet, s: Settings, verbose: int = 0,
        start: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train every member on the scaled targets (MAE), early stopping on validation.

    `start`: the untrained selection `build` already picked (else it is picked here).
    """
    xs, ys = _inputs(ws.x_train), _targets(ws.x_train, ws.y_train, h.members)
    weights = series_weights(ws.train_series).astype(np.float32)
    callbacks: list[keras.callbacks.Callback] = []
    val = None
    stopper = None
    if ws.has_val:
        val = (_inputs(ws.x_val), _targets(ws.x_val, ws.y_val, h.members),
               series_weights(ws.val_series).astype(np.float32))
        stopper = BestOnValidation(s.patience, s.train_budget_s)
        callbacks.append(stopper)
    started = time.monotonic()
    if val is None:
        start = {}
    elif not start:
        start = _best_start(h, val)
    with native_stderr_filtered():
        hist = h.train_model.fit(xs, ys, sample_weight=weights, validation_data=val,
                                 epochs=s.epochs,
                                 batch_size=s.train_batch_size, shuffle=True,
                                 callbacks=callbacks, verbose=verbose)
    losses = hist.history.get("loss", [])
    val_losses = hist.history.get("val_loss", [])
    finite = [v for v in losses if np.isfinite(v)]
    if not finite:
        raise FloatingPointError("training diverged (the loss is not finite)")
    best = int(np.nanargmin(val_losses)) if val_losses else len(losses) - 1
    kept_start = False
    if start and val_losses and not float(np.nanmin(val_losses)) < start["val_loss"]:
        # training did not improve on the untrained selection on validation: keep that
        h.train_model.set_weights(start["weights"])
        kept_start = True
        log.info("hybrid: the untrained expert selection is better on validation; kept it")
    summary = {
        "start_sharpness": start.get("sharpness"),
        "start_val_loss": start.get("val_loss"),
        "kept_start": kept_start,
        "out_of_time": bool(stopper and stopper.out_of_time),
        **history_summary(losses, val_losses, best, started),
    }
    log.info("hybrid: trained %d epochs (best %d) in %.1fs", summary["epochs_run"], best + 1,
             summary["seconds"])
    return summary


def _best_start(h: Hybrid, val: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Pick the starting sharpness by validation loss (the training loss, MAE of every
    member); the start's weights and loss. The experts and nets run once (numpy twins),
    only the members' combines per sharpness."""
    f, e, *hidden = npgraph.predict(h.features, val[0])
    best: dict[str, Any] = {}
    for value in SHARPNESS_GRID:
        h.set_sharpness(value)
        points = [npgraph.twin(c)([f, e, z])[0] for c, z in zip(h.combiners, hidden, strict=True)]
        err = np.mean(np.abs(np.concatenate(points, axis=1) - val[1]), axis=1)
        loss = float(np.average(err, weights=val[2]))
        if not best or loss < best["val_loss"]:
            best = {"sharpness": value, "val_loss": loss}
    h.set_sharpness(best["sharpness"])
    best["weights"] = h.train_model.get_weights()
    return best


def calibrate(h: Hybrid, ws: WindowSet, coverage: float, min_spread: float = 0.05
              ) -> tuple[list[float] | None, float]:
    """Conformal multipliers per step and the spread offset, from the validation windows.

    The in-window spread is estimated from a few backtest errors, so it is noisy; adding its
    median over the validation windows (`offset`) before scaling keeps a window whose spread
    happens to be small from getting a uselessly narrow interval.
    """
    if not ws.has_val:
        return None, 0.0
    keep = calibration_mask(ws.x_val, SCALING)  # constant windows: no scaled errors
    point, spread = h.scaled(ws.x_val[keep])
    loc, scale = window_stats(ws.x_val[keep], SCALING)
    yz = (ws.y_val[keep] - loc) / scale
    offset = float(np.median(np.maximum(spread, min_spread))) * SPREAD_SHRINK
    r = np.abs(yz - point) / (np.maximum(spread, min_spread) + offset)
    return conformal.conformal_q(r, coverage), offset
