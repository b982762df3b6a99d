"""Sliding windows per series and a time-ordered train/validation split without leakage.

A window ending just before position `t` has inputs `values[t-n_steps:t]` and targets
`values[t:t+horizon]`. Each series is cut at `split`: training windows have every target
before `split`, validation windows have every target at or after it (their inputs may reach
back into the training part: those are past observations, not leaked targets).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from forecast.errors import DataError
from trainer.data import Dataset

log = logging.getLogger(__name__)


def make_windows(values: np.ndarray, n_steps: int, horizon: int, start: int = 0,
                 stop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows whose targets all lie in [start, stop): inputs (m, n), targets (m, H), positions.

    >>> x, y, t = make_windows(np.arange(6.0), 3, 1)
    >>> x.tolist(), y.ravel().tolist(), t.tolist()
    ([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]], [3.0, 4.0, 5.0], [3, 4, 5])
    >>> make_windows(np.arange(6.0), 2, 2, start=4)[1].tolist()
    [[4.0, 5.0]]
    """
    values = np.asarray(values, dtype=np.float64)
    stop = len(values) if stop is None else stop
    pos = np.arange(max(n_steps, start), stop - horizon + 1)
    if len(pos) == 0:
        return np.zeros((0, n_steps)), np.zeros((0, horizon)), pos
    x = np.stack([values[t - n_steps:t] for t in pos])
    y = np.stack([values[t:t + horizon] for t in pos])
    return x, y, pos


def split_index(length: int, val_fraction: float, n_steps: int, horizon: int) -> int:
    """Where validation starts: the last `val_fraction` of the series (at least `horizon` values).

    The whole series is training data when the split would leave no training window.

    >>> split_index(10, 0.2, 3, 1)
    8
    >>> split_index(10, 0.0, 3, 1), split_index(5, 0.5, 3, 1)
    (10, 5)
    """
    if val_fraction <= 0:
        return length
    n_val = max(horizon, math.ceil(length * val_fraction))
    split = length - n_val
    return split if split >= n_steps + horizon else length


@dataclass
class WindowSet:
    """Training and validation windows of a dataset, with where each validation window sits."""

    n_steps: int
    horizon: int
    names: list[str]
    series: list[np.ndarray]
    splits: list[int]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    val_series: np.ndarray  # index into names, per validation window
    val_pos: np.ndarray  # position of the first target, per validation window
    train_series: np.ndarray
    train_pos: np.ndarray

    @property
    def has_val(self) -> bool:
        """True when there is at least one validation window."""
        return len(self.x_val) > 0

    def holdout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
        """Windows to score on: validation, or the training windows when there is none."""
        if self.has_val:
            return self.x_val, self.y_val, self.val_series, self.val_pos, "validation"
        return self.x_train, self.y_train, self.train_series, self.train_pos, "training"

    def summary(self) -> dict[str, int]:
        """Window counts for the manifest."""
        return {"train_windows": len(self.x_train), "val_windows": len(self.x_val)}


def build(dataset: Dataset, n_steps: int, horizon: int, val_fraction: float) -> WindowSet:
    """Windows of every series, split in time; raises DataError when no window fits."""
    names: list[str] = []
    series: list[np.ndarray] = []
    splits: list[int] = []
    xt: list[np.ndarray] = []
    yt: list[np.ndarray] = []
    ts: list[np.ndarray] = []
    tp: list[np.ndarray] = []
    xv: list[np.ndarray] = []
    yv: list[np.ndarray] = []
    vs: list[np.ndarray] = []
    vp: list[np.ndarray] = []
    for name, values in dataset.series.items():
        if len(values) < n_steps + horizon:
            log.info("series %s: %d values, too short for a window", name, len(values))
            continue
        split = split_index(len(values), val_fraction, n_steps, horizon)
        idx = len(names)
        names.append(name)
        series.append(values)
        splits.append(split)
        x, y, pos = make_windows(values, n_steps, horizon, stop=split)
        xt.append(x)
        yt.append(y)
        ts.append(np.full(len(pos), idx))
        tp.append(pos)
        x, y, pos = make_windows(values, n_steps, horizon, start=split)
        xv.append(x)
        yv.append(y)
        vs.append(np.full(len(pos), idx))
        vp.append(pos)
    if not names:
        longest = max((len(v) for v in dataset.series.values()), default=0)
        raise DataError(f"too little data: the longest series has {longest} values, but "
                       f"n_steps={n_steps} and horizon={horizon} need at least {n_steps + horizon}")
    ws = WindowSet(n_steps, horizon, names, series, splits,
                   np.concatenate(xt), np.concatenate(yt), np.concatenate(xv),
                   np.concatenate(yv), np.concatenate(vs).astype(int),
                   np.concatenate(vp).astype(int), np.concatenate(ts).astype(int),
                   np.concatenate(tp).astype(int))
    if len(ws.x_train) == 0:
        raise DataError("too little data: no training window before the validation split; "
                       "lower --val-fraction or add data")
    return ws


def build_partial(dataset: Dataset, width: int, horizon: int, val_fraction: float,
                  min_values: int = 2) -> tuple[WindowSet, np.ndarray]:
    """Validation windows of every series with at least `min_values` values before the
    target, left-padded with zeros to `width`; and how many values of each are real.

    What a version that forecasts young series (see `forecast.bundle`) is scored on: a series
    shorter than `width` counts too. The training arrays are empty.

    >>> from trainer.data import Dataset
    >>> ws, filled = build_partial(Dataset("t", {"a": np.arange(10.0)}), 4, 1, 0.2)
    >>> ws.x_val.tolist(), ws.y_val.ravel().tolist(), filled.tolist()
    ([[4.0, 5.0, 6.0, 7.0], [5.0, 6.0, 7.0, 8.0]], [8.0, 9.0], [4, 4])
    """
    names: list[str] = []
    series: list[np.ndarray] = []
    splits: list[int] = []
    xv: list[np.ndarray] = []
    yv: list[np.ndarray] = []
    vs: list[np.ndarray] = []
    vp: list[np.ndarray] = []
    for name, values in dataset.series.items():
        if len(values) < min_values + horizon:
            continue
        split = split_index(len(values), val_fraction, min_values, horizon)
        idx = len(names)
        names.append(name)
        series.append(values)
        splits.append(split)
        pos = np.arange(max(min_values, split), len(values) - horizon + 1)
        if split >= len(values) or not len(pos):
            continue
        padded = np.concatenate([np.zeros(width), values])
        xv.append(padded[(pos + width)[:, None] + np.arange(-width, 0)[None, :]])
        yv.append(values[pos[:, None] + np.arange(horizon)[None, :]])
        vs.append(np.full(len(pos), idx))
        vp.append(pos)
    if not xv:
        longest = max((len(v) for v in dataset.series.values()), default=0)
        raise DataError(f"too little data: the longest series has {longest} values, too few "
                        f"for a validation part; lower --val-fraction or add data")
    empty = np.zeros((0, width)), np.zeros((0, horizon)), np.zeros(0, dtype=int)
    pos = np.concatenate(vp).astype(int)
    ws = WindowSet(width, horizon, names, series, splits, empty[0], empty[1],
                   np.concatenate(xv), np.concatenate(yv), np.concatenate(vs).astype(int),
                   pos, empty[2], empty[2])
    return ws, np.minimum(pos, width)
