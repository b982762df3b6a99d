"""A verdict on every value that had a forecast: how strange it is, and whether to flag it.

Per series the verdict keeps a few small numbers (`Calibration`, 21 bytes a series):

- `scale`, a robust EWMA of the absolute forecast error: an error enters it clipped at
  `CLIP` scales, so one outlier moves it by a few percent at most;
- `q`, the series' threshold on the error in scales, calibrated online so that on normal
  data a fraction `rate` of the values exceed it (a quantile found by stochastic
  approximation, conformal style: every value that exceeds it raises it, every other value
  lowers it a little; at equilibrium the exceedance rate is `rate`, whatever the noise);
- `level` and `spread`, the running mean of the values and of their absolute deviation
  from it (an EWMA once `1 / LEVEL_EWMA` values are seen): the error scale never falls
  below `FLOOR` spreads, so a series whose forecasts were exact for a while (a flat line,
  a quantised sensor) does not call its next small step infinitely strange;
- `n`, the values scored so far (no flag during the first `WARMUP`);
- `mode`, `since`, `calm`: the alert state machine below.

The score is the error measured against the series' own threshold, `r / (r + q)` for an
error of `r` scales: 0 for a value right on its forecast, 0.5 on the threshold (a value
that strange comes once in 1/`rate` values), towards 1 beyond it, never saturating (a
stranger value always scores higher). The thresholds are calibrated to the same rate, so
scores compare across series and noise levels.

Alert rule (no storms): a value beyond the threshold is a `spike`; the next one beyond it
in the same direction makes it a `level_shift` (one verdict), and the series stays quiet
until `SETTLE` values in a row are back inside the threshold (the forecasts caught up) or
`HOLD_MAX` values have passed (the new level is the norm). While quiet the threshold does
not move, so a shift does not teach the series to tolerate shifts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLIP = 4.0  # an error enters the scale clipped at this many scales
SCALE_EWMA = 0.02  # weight of a new error in the scale
LEVEL_EWMA = 0.001  # weight of a new value in the level and spread (after 1,000 values)
FLOOR = 1.0  # the error scale is at least this many spreads (chosen on NAB, offline)
STEP = 0.05  # relative change of the threshold per exceedance
Q0 = 5.0  # the threshold a series starts from, in scales
WARMUP = 50  # values scored before a series can be flagged (its scale settles)
SETTLE = 5  # values in a row inside the threshold that end a quiet period
HOLD_MAX = 200  # a quiet period ends after this many values at the latest
N_MAX = int(np.iinfo(np.uint16).max)  # `n` stops counting here
LOOP_RATIO = 16  # `judge` loops in Python when a series has more than 1/16 of the values
KINDS = ("", "spike", "level_shift")  # kind codes 0, 1, 2
NORMAL, SPIKED, QUIET = 0, 1, 2  # modes (times the direction: +1 up, -1 down)
STATE = np.dtype([("scale", "<f4"), ("q", "<f4"), ("level", "<f4"), ("spread", "<f4"),
                  ("n", "<u2"), ("mode", "i1"),
                  ("since", "u1"), ("calm", "u1")])  # one series' state, as checkpointed


@dataclass
class Calibration:
    """Per-series verdict state, one row per series (small plain arrays)."""

    scale: np.ndarray  # float32, NaN: no error seen yet
    q: np.ndarray  # float32, threshold in scales
    level: np.ndarray  # float32, running mean of the values (NaN: none yet)
    spread: np.ndarray  # float32, running mean absolute deviation from `level`
    n: np.ndarray  # uint16, values scored (capped)
    mode: np.ndarray  # int8, NORMAL, +-SPIKED, +-QUIET
    since: np.ndarray  # uint8, values since the quiet period began (capped)
    calm: np.ndarray  # uint8, values in a row inside the threshold while quiet

    @classmethod
    def empty(cls, rows: int) -> Calibration:
        """State of `rows` series never scored."""
        return cls(np.full(rows, np.nan, np.float32), np.full(rows, Q0, np.float32),
                   np.full(rows, np.nan, np.float32), np.zeros(rows, np.float32),
                   np.zeros(rows, np.uint16), np.zeros(rows, np.int8),
                   np.zeros(rows, np.uint8), np.zeros(rows, np.uint8))

    def snapshot(self, rows: np.ndarray) -> np.ndarray:
        """The rows' state as a `STATE` record array (what a checkpoint keeps).

        >>> cal = Calibration.empty(2); cal.q[1] = 7.5
        >>> back = Calibration.empty(2); back.restore(np.arange(2), cal.snapshot(np.arange(2)))
        >>> back.q.tolist(), STATE.itemsize
        ([5.0, 7.5], 21)
        """
        out = np.empty(len(rows), STATE)
        for name in STATE.names or ():
            out[name] = getattr(self, name)[rows]
        return out

    def restore(self, rows: np.ndarray, saved: np.ndarray) -> None:
        """Put back what `snapshot` gave."""
        for name in STATE.names or ():
            getattr(self, name)[rows] = saved[name]


@dataclass
class Verdicts:
    """Per value (the order given to `judge`): score 0..1 (NaN: nothing to judge against),
    flagged, direction (+1 up, -1 down), kind code (`KINDS`)."""

    score: np.ndarray
    flag: np.ndarray
    direction: np.ndarray
    kind: np.ndarray


def tail_score(r: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The score of errors of `r` scales against thresholds `q` (see the module docstring).

    >>> tail_score(np.array([0.0, 5.0, 15.0, 45.0]), np.full(4, 5.0)).round(3).tolist()
    [0.0, 0.5, 0.75, 0.9]
    """
    return r / (r + q)


def judge(cal: Calibration, rows: np.ndarray, values: np.ndarray, errors: np.ndarray,
          rate: float, looped: bool | None = None) -> Verdicts:
    """The verdicts on `values` of series `rows` (in stream order) whose forecast errors
    (actual - forecast; NaN: no forecast) are `errors`; the rows' state moves past them.

    Vectorised over series: step k judges every series' k-th value of the batch; a batch
    of few long series (or `looped`) runs value by value in plain Python instead, with the
    same verdicts and state, bit for bit (`_looped`).

    >>> cal = Calibration.empty(1)
    >>> e = np.r_[np.tile([1.0, -1.0], 30), 30.0, 0.5, -25.0, -25.0, -25.0, 0.2]
    >>> v = judge(cal, np.zeros(len(e), dtype=np.int64), np.zeros(len(e)), e, 0.001)
    >>> [(i, KINDS[v.kind[i]], int(v.direction[i])) for i in np.flatnonzero(v.flag).tolist()]
    [(60, 'spike', 1), (62, 'spike', -1), (63, 'level_shift', -1)]
    """
    m = len(rows)
    out = _no_verdicts(m)
    if m == 0:
        return out
    order = np.argsort(rows, kind="stable")
    g = rows[order]
    starts = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1])))
    lengths = np.diff(np.append(starts, m))
    if looped or (looped is None and int(lengths.max()) * LOOP_RATIO > m):
        _looped(cal, g, values[order], errors[order], rate, out, order)
        return out
    rank = np.arange(m) - np.repeat(starts, lengths)
    for k in range(int(rank.max()) + 1):
        at = order[rank == k]
        _step(cal, rows[at], values[at], errors[at], rate, out, at)
    return out


def _looped(cal: Calibration, rows: np.ndarray, y: np.ndarray, e: np.ndarray, rate: float,
            out: Verdicts, at: np.ndarray) -> None:
    """`_step` value by value (`rows` sorted, each series' values in stream order), in plain
    Python floats rounded to float32 wherever `_step` stores one: the same results."""
    score, flag_out, dir_out, kind_out = out.score, out.flag, out.direction, out.kind
    rows_l, y_l, e_l, at_l = rows.tolist(), y.tolist(), e.tolist(), at.tolist()
    f32, n_max = np.float32, N_MAX
    i, m = 0, len(rows_l)
    while i < m:
        r = rows_l[i]
        scale, q, level = float(cal.scale[r]), float(cal.q[r]), float(cal.level[r])
        spread, n, mode = float(cal.spread[r]), int(cal.n[r]), int(cal.mode[r])
        since, calm = int(cal.since[r]), int(cal.calm[r])
        while i < m and rows_l[i] == r:
            yi, ei, j = y_l[i], e_l[i], at_l[i]
            i += 1
            floor = FLOOR * spread
            inv = 1.0 / (n + 2.0)
            if yi == yi:  # _move_level
                if level != level:
                    level = yi
                w = max(LEVEL_EWMA, inv)
                level64 = (1.0 - w) * level + w * yi
                level = float(f32(level64))
                spread = float(f32((1.0 - w) * spread + w * abs(yi - level64)))
            if ei != ei:
                continue
            size = abs(ei)
            s = scale if scale != scale or scale > floor else floor  # np.maximum keeps NaN
            if not s > 0:  # the first error only sets the scale
                scale = float(f32(max(size, 1e-12)))
                continue
            ratio = size / s
            beyond = ratio > q
            direction = 1 if ei >= 0 else -1
            quiet = abs(mode) == QUIET
            flag = beyond and not quiet and n >= WARMUP
            shift = flag and mode == SPIKED * direction
            score[j], dir_out[j] = ratio / (ratio + q), direction
            if flag:
                flag_out[j], kind_out[j] = True, 2 if shift else 1
            since = min(since + 1, 255) if quiet else 0
            calm = calm + 1 if quiet and not beyond else 0
            if quiet and (calm >= SETTLE or since >= HOLD_MAX):
                mode = NORMAL
            if not quiet:
                mode = SPIKED * direction if flag and not shift else NORMAL
            if shift:
                mode = QUIET * direction
            if abs(mode) != QUIET:
                since = calm = 0
            if not quiet and not shift:
                q = float(f32(q * (1.0 + (STEP * (1.0 - rate) if beyond else -STEP * rate))))
            w = max(SCALE_EWMA, inv)
            scale = float(f32((1.0 - w) * s + w * min(size, CLIP * s)))
            n = min(n + 1, n_max)
        cal.scale[r], cal.q[r], cal.level[r], cal.spread[r] = scale, q, level, spread
        cal.n[r], cal.mode[r], cal.since[r], cal.calm[r] = n, mode, since, calm


def judge_once(cal: Calibration, rows: np.ndarray, values: np.ndarray, errors: np.ndarray,
               rate: float) -> Verdicts:
    """`judge` for a batch in which every series appears once (`rows` distinct): one step,
    no sort; the same verdicts and state, bit for bit (every operation is per value).

    >>> rng = np.random.default_rng(0)
    >>> e = rng.standard_normal((120, 5)); e[100, 3] = 60.0
    >>> y, rows = rng.standard_normal((120, 5)), np.array([3, 0, 4, 1, 2])
    >>> a, b = Calibration.empty(5), Calibration.empty(5)
    >>> seen = [(judge(a, rows, y[k], e[k], 0.01), judge_once(b, rows, y[k], e[k], 0.01))
    ...         for k in range(120)]
    >>> all(np.array_equal(getattr(va, f), getattr(vb, f), equal_nan=f == "score")
    ...     for va, vb in seen for f in ("score", "flag", "direction", "kind"))
    True
    >>> a.snapshot(np.arange(5)).tobytes() == b.snapshot(np.arange(5)).tobytes()
    True
    >>> [(k, i) for k, (_, v) in enumerate(seen) for i in np.flatnonzero(v.flag).tolist()]
    [(100, 3)]
    """
    m = len(rows)
    out = _no_verdicts(m)
    if m:
        _step(cal, rows, values, errors, rate, out, np.arange(m))
    return out


def _no_verdicts(m: int) -> Verdicts:
    """`m` values not judged (yet)."""
    return Verdicts(np.full(m, np.nan), np.zeros(m, bool), np.zeros(m, np.int8),
                    np.zeros(m, np.int8))


def _step(cal: Calibration, rows: np.ndarray, y: np.ndarray, e: np.ndarray, rate: float,
          out: Verdicts, at: np.ndarray) -> None:
    """One value of each of the (distinct) series `rows`: its verdict, then the state."""
    # The `.all()` / `.any()` checks skip work that would change nothing (a batch where
    # every value has a forecast and no series is flagged or quiet is the common case).
    floor = FLOOR * cal.spread[rows].astype(np.float64)  # from the values before this one
    n = cal.n[rows]
    inv = 1.0 / (n + 2.0)
    _move_level(cal, rows, y, inv)
    missing = np.isnan(e)
    if missing.any():
        ok = ~missing
        rows, e, at, floor, n, inv = rows[ok], e[ok], at[ok], floor[ok], n[ok], inv[ok]
    scale = np.maximum(cal.scale[rows].astype(np.float64), floor)
    known = scale > 0  # else NaN or 0: the first error only sets the scale
    if not known.all():
        first = ~known
        cal.scale[rows[first]] = np.maximum(np.abs(e[first]), 1e-12)
        k = known
        rows, e, at, scale, n, inv = rows[k], e[k], at[k], scale[k], n[k], inv[k]
    if not len(rows):
        return
    q, mode = cal.q[rows].astype(np.float64), cal.mode[rows].astype(np.int64)
    size = np.abs(e)
    r = size / scale
    beyond = r > q
    direction = (e >= 0) * 2 - 1  # +1 up, -1 down
    out.score[at] = tail_score(r, q)
    out.direction[at] = direction
    if beyond.any() or mode.any():
        _flag_and_learn(cal, rows, q, mode, beyond, direction, n, rate, out, at)
    else:  # nothing beyond, no series spiked or quiet: modes stay, every threshold goes down
        cal.q[rows] = q * (1.0 + (-STEP * rate))
    clipped = np.minimum(size, CLIP * scale)
    weight = np.maximum(SCALE_EWMA, inv)  # a running mean at first
    cal.scale[rows] = (1.0 - weight) * scale + weight * clipped
    cal.n[rows] = np.minimum(n.astype(np.int64) + 1, N_MAX)


def _flag_and_learn(cal: Calibration, rows: np.ndarray, q: np.ndarray, mode: np.ndarray,
                    beyond: np.ndarray, direction: np.ndarray, n: np.ndarray, rate: float,
                    out: Verdicts, at: np.ndarray) -> None:
    """The flags and kinds of one step, the alert state machine, and the thresholds."""
    quiet = np.abs(mode) == QUIET
    flag = beyond & ~quiet & (n >= WARMUP)
    shift = flag & (mode == SPIKED * direction)
    flagged = flag.any()
    if flagged:
        out.flag[at] = flag
        out.kind[at] = np.where(shift, 2, np.where(flag, 1, 0))
    if flagged or mode.any():  # else every mode stays NORMAL, `since` and `calm` 0
        _advance_modes(cal, rows, beyond, flag, shift, direction, quiet)
    learn = ~quiet & ~shift  # a level shift's values teach the threshold nothing
    step = np.where(beyond, STEP * (1.0 - rate), -STEP * rate)
    cal.q[rows] = np.where(learn, q * (1.0 + step), q)


def _move_level(cal: Calibration, rows: np.ndarray, y: np.ndarray, inv: np.ndarray) -> None:
    """The rows' level and spread take in the values `y` (NaN: none); `inv`: 1 / (n + 2)."""
    missing = np.isnan(y)
    if missing.any():
        ok = ~missing
        rows, y, inv = rows[ok], y[ok], inv[ok]
    level = cal.level[rows].astype(np.float64)
    new = np.isnan(level)
    if new.any():
        level[new] = y[new]
    weight = np.maximum(LEVEL_EWMA, inv)
    level = (1.0 - weight) * level + weight * y
    cal.level[rows] = level
    cal.spread[rows] = (1.0 - weight) * cal.spread[rows] + weight * np.abs(y - level)


def _advance_modes(cal: Calibration, rows: np.ndarray, beyond: np.ndarray, flag: np.ndarray,
                   shift: np.ndarray, direction: np.ndarray, quiet: np.ndarray) -> None:
    """The alert state machine (module docstring): spiked -> level shift -> quiet -> normal."""
    since = np.where(quiet, np.minimum(cal.since[rows].astype(np.int64) + 1, 255), 0)
    calm = np.where(quiet & ~beyond, cal.calm[rows].astype(np.int64) + 1, 0)
    mode = cal.mode[rows].astype(np.int64)
    ended = quiet & ((calm >= SETTLE) | (since >= HOLD_MAX))
    mode = np.where(ended, NORMAL, mode)
    mode = np.where(~quiet, np.where(flag & ~shift, SPIKED * direction, NORMAL), mode)
    mode = np.where(shift, QUIET * direction, mode)
    cal.mode[rows] = mode
    cal.since[rows] = np.where(np.abs(mode) == QUIET, since, 0)
    cal.calm[rows] = np.where(np.abs(mode) == QUIET, calm, 0)
