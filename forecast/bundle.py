"""A version of several parts: one model per seasonal-period family, warm-up models, a table.

The blob of such a version is a zip archive: `forecast-bundle.json` (the index, below) and
one `.keras` artifact per part, each loadable in Keras safe mode like a plain version. The
index (plain JSON):

* `families`: per seasonal period found in the training data, `period`, `n_steps` (the
  window of its full model), `full` (the part for full windows, input (None, n_steps, 1)),
  `warm` (the part for young series: the same window with its unknown past as NaN, see
  `forecast.layers.SelectByCount`; absent when the family has none), `warm_lengths`, and
  `forecaster` (what the full part is: `hybrid`, or one expert such as `snaive`), and
  `single` (a part of one expert alone, named by `single_forecaster`, e.g. `naive`, in
  every family when `single_series` is not empty: a series' period may route it anywhere);
* `series`: series id -> seasonal period, detected by the trainer on each series' history;
  a series not in it is routed by the period detected online from its own window
  (`forecast.season.detect`);
* `single_series` (optional): series served, once their window is full, by their family's
  `single` part instead of its full part: the trainer found that expert better than the
  hybrid on the series' own validation windows (young windows still go to `warm`);
* `smooth_series` and `smooth_q` (optional): series served by their own exponential
  smoothing (`forecast.smoothing.Smooth` fields and the window `n_steps` per series; on the
  values a series has while younger), with half-widths per step in units of its `sigma`;
* `width` (the longest window: what a worker keeps per series), `horizon`, `outputs`,
  `min_values` (values a series needs before its first forecast).

This module only packs, unpacks and routes (no TensorFlow); `forecast.modelio` loads it.
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

from forecast.season import family_of

INDEX = "forecast-bundle.json"
FORMAT = "forecast-bundle/1"
DATE = (2020, 1, 1, 0, 0, 0)  # fixed member timestamps: the same parts give the same bytes


def pack(index: dict[str, Any], parts: dict[str, bytes]) -> bytes:
    """The bundle blob: the index and every part, in one zip (deterministic bytes).

    >>> blob = pack({"families": []}, {"a.keras": b"x"})
    >>> is_bundle(blob), unpack(blob)[0]["format"], unpack(blob)[1]
    (True, 'forecast-bundle/1', {'a.keras': b'x'})
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(zipfile.ZipInfo(INDEX, DATE),
                   json.dumps({**index, "format": FORMAT}, sort_keys=True))
        for name in sorted(parts):
            z.writestr(zipfile.ZipInfo(name, DATE), parts[name])
    return buf.getvalue()


def is_bundle(blob: bytes) -> bool:
    """True when `blob` is a bundle (a zip with the index), not a plain `.keras` file."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            return INDEX in z.namelist()
    except zipfile.BadZipFile:
        return False


def unpack(blob: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(index, parts) of a bundle blob."""
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        index: dict[str, Any] = json.loads(z.read(INDEX))
        parts = {n: z.read(n) for n in z.namelist() if n != INDEX}
    return index, parts


def with_nan_past(windows: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Windows (m, n) whose first n - filled values are not real, with those set to NaN.

    >>> with_nan_past(np.ones((2, 3), np.float32), np.array([1, 3])).tolist()
    [[nan, nan, 1.0], [1.0, 1.0, 1.0]]
    """
    w = np.array(windows, dtype=np.float32)
    unknown = np.arange(w.shape[1])[None, :] < (w.shape[1] - np.asarray(filled))[:, None]
    w[unknown] = np.nan
    return w


def route(periods: np.ndarray, family_periods: list[int]) -> np.ndarray:
    """The family of each series from its period (0 or negative: detected, see the worker)."""
    return family_of(np.abs(np.asarray(periods, dtype=np.int64)), family_periods)
