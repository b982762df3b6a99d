"""A series' time step, learnt from the `ts` of its values, and the gaps in it.

Each series keeps its last three positive `ts` differences (`SeriesStore.steps`, in the
checkpoint); its step is their median (robust to jitter and to one gap). A value whose
difference from the previous one is more than `GAP_FACTOR` steps follows a gap of
`round(diff / step) - 1` missing steps, once the step is known from three differences. The
time a forecast is for (`target_ts`) is the input's `ts` plus the step (known from the first
difference on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RING = 3  # differences kept per series
GAP_FACTOR = 1.5  # a difference this many steps long (or more) is a gap


@dataclass
class Timing:
    """Per value of a batch (stream order): the step in force before it (NaN: unknown), the
    step after it (for `target_ts`), and the missing steps before it (0: no gap)."""

    step_before: np.ndarray
    step_after: np.ndarray
    gap: np.ndarray


def median3(ring: np.ndarray) -> np.ndarray:
    """Row-wise median of up to three values (NaN: missing; all NaN gives NaN). With two
    values, the smaller one (a gap inflates a difference, it never shrinks one).

    >>> median3(np.array([[1.0, 9.0, 2.0], [np.nan, 5.0, 3.0], [np.nan] * 3]))
    array([ 2.,  3., nan])
    """
    s = np.sort(ring, axis=1)  # NaN last
    known = (~np.isnan(ring)).sum(axis=1)
    out = np.full(len(ring), np.nan)
    out[known == 1] = s[known == 1, 0]
    out[known == 2] = s[known == 2, 0]
    out[known == 3] = s[known == 3, 1]
    return out


def observe(ring: np.ndarray, slots: np.ndarray, stamps: np.ndarray, last_ts: np.ndarray
            ) -> Timing:
    """The timing of a batch's values; each series' `ring` (the store's (rows, RING) array)
    moves past them, in place.

    `last_ts[i]` is the newest ts of value i's series before this batch (-1: none). Values
    without ts (-1) change nothing and get NaN steps. Vectorised: per series, its ring and
    then its batch's positive differences form one sequence, and the step at each value is
    the median of the three entries of that sequence ending at it.

    >>> ring = np.full((1, RING), np.nan)
    >>> t = observe(ring, np.zeros(6, dtype=np.int64), np.array([0, 10, 20, 30, 70, 80]),
    ...             np.full(6, -1))
    >>> t.step_after.tolist()[1:], t.gap.tolist(), ring.tolist()
    ([10.0, 10.0, 10.0, 10.0, 10.0], [0, 0, 0, 0, 3, 0], [[10.0, 40.0, 10.0]])
    """
    m = len(slots)
    out = Timing(np.full(m, np.nan), np.full(m, np.nan), np.zeros(m, dtype=np.int64))
    if m == 0 or stamps.max() < 0:
        return out
    with_ts = np.flatnonzero(stamps >= 0)
    order = with_ts[np.argsort(slots[with_ts], kind="stable")]
    g, ts = slots[order], stamps[order].astype(np.int64)
    first = np.concatenate(([True], g[1:] != g[:-1]))
    prev = np.where(first, last_ts[order], np.concatenate(([0], ts[:-1])))
    diff = np.where(prev >= 0, ts - prev, 0).astype(np.float64)
    valid = diff > 0
    starts = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    n_valid = np.add.reduceat(valid.astype(np.int64), starts)
    base = np.concatenate(([0], np.cumsum(RING + n_valid)[:-1]))  # each group's sequence
    seq = np.empty(int(base[-1] + RING + n_valid[-1]))
    rows = g[starts]
    seq[(base[:, None] + np.arange(RING)).ravel()] = ring[rows].ravel()
    running: np.ndarray = np.cumsum(valid)
    before_valid = running - np.repeat(running[starts] - valid[starts],
                                       np.diff(np.append(starts, len(g))))
    count: np.ndarray = before_valid - valid  # valid differences of the group before this value
    seq[base[group[valid]] + RING + count[valid]] = diff[valid]
    window = (base[group] + count)[:, None] + np.arange(RING)
    step_before = median3(seq[window])
    step_after = median3(seq[window + valid[:, None]])
    known = (~np.isnan(seq[window])).sum(axis=1)
    is_gap = valid & (known == RING) & (diff >= GAP_FACTOR * step_before)
    gap = np.zeros(len(g), dtype=np.int64)
    gap[is_gap] = np.maximum(1, np.rint(diff[is_gap] / step_before[is_gap]).astype(np.int64) - 1)
    out.step_before[order], out.step_after[order], out.gap[order] = step_before, step_after, gap
    ring[rows] = seq[(base + n_valid)[:, None] + np.arange(RING)]
    return out
