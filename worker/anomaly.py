"""A verdict on every value that had a forecast: how strange it is, and whether to flag it.

Per series the verdict keeps a few small numbers (`Calibration`, 28 bytes a series):

- `scale`, a robust EWMA of the absolute error (`closer`: against the forecast or the value
  before, whichever is nearer): an error enters it clipped at
  `CLIP` scales, so one outlier moves it by a few percent at most;
- `level` and `spread`, a slow running mean of the values and of their absolute deviation
  from it (an EWMA once `1 / LEVEL_EWMA` values are seen): the error scale never falls
  below `FLOOR` spreads, so a series whose forecasts were exact for a while (a flat line,
  a quantised sensor) does not call its next small step infinitely strange; a value
  enters them clipped at `LEVEL_CLIP` spreads from the level, so a brief glitch (a
  sensor's 65535 a few times) cannot inflate the spread, and through `FLOOR` the error
  scale, enough to blind both tests for tens of thousands of values;
- `q` and `ql`, the series' two thresholds, calibrated online so that on normal data a
  fraction `rate` of the values exceed each (a quantile found by stochastic approximation,
  conformal style: every value that exceeds it raises it, every other value lowers it a
  little; at equilibrium the exceedance rate is `rate`, whatever the noise; both start
  from `start_threshold(rate)` at the series' first error): `q` on the
  forecast error in scales (the value is not what its forecast said), `ql` on the value's
  distance from `level` in spreads (the value is far from where the series has lived for
  the last ten thousand values or so, even if the forecasts followed it there);
- `n`, the values scored so far (no flag during the first `WARMUP`);
- `mode`, `since`, `peak`: the alert state machine below.

The score is the stranger of the two tests, each measured against its own threshold:
`r / (r + q)` for an error of `r` scales (and the same for the distance): 0 for a value right
on its forecast, 0.5 on the threshold (a value that strange comes once in 1/`rate` values),
towards 1 beyond it, never saturating (a stranger value always scores higher). The
thresholds are calibrated to the same rate, so scores compare across series and noise
levels. A flagged value scores above 0.5 and every other value at most 0.5: a value beyond
a threshold that is not flagged (the first `WARMUP` values, or a value during a hold) scores
0.5, since the event it belongs to has been reported. For the same reason a `level_shift`
verdict, which confirms the spike flagged with the value just before, scores `CONFIRMED`
(just above 0.5, the least a flagged value scores) unless it is stranger than that spike:
it is flagged and alerted, but the event is not news, so a threshold on the score does not
count the same news twice.

Alert rule (no storms): a value beyond a threshold is a `spike`; if the very next value is
beyond one in the same direction it is a `level_shift` (one verdict); after a verdict the
series holds its alerts for `hold_for(rate)` values (100 at the default rate 0.001: a tenth
of the values between two alerts on normal data), then flagging resumes. A value scoring
above `ESCAPE` (four times as far as the threshold) and above the strangeness of the verdict
that started the hold (`peak`: its tail score, for a level shift too, whatever it reported) is a
new `spike` even while held. Thresholds keep
learning through a hold, so a series that settles at a new level or noise stops being
strange after a while instead of paging again when the hold ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CLIP = 4.0  # an error enters the scale clipped at this many scales
SCALE_EWMA = 0.02  # weight of a new error in the scale
LEVEL_EWMA = 0.0001  # weight of a new value in the level and spread (after 10,000 values)
LEVEL_CLIP = 512.0  # a value enters the level and spread at most this many spreads away
FLOOR = 1.0  # the error scale is at least this many spreads (chosen on NAB, offline)
STEP = 0.05  # relative change of a threshold per exceedance
Q0 = 5.0  # the thresholds of a series not scored yet (`start_threshold` once it is)
WARMUP = 50  # values scored before a series can be flagged (its scale settles)
HOLD_SHARE = 0.1  # a hold lasts this share of the values between two alerts on normal data
ESCAPE = 0.8  # a value scoring above this (4 thresholds away) is flagged even while held
CONFIRMED = 0.5001  # the least a flagged value scores (written as `%.4g`: still above 0.5)
N_MAX = int(np.iinfo(np.uint16).max)  # `n` stops counting here
LOOP_RATIO = 16  # `judge` loops in Python when a series has more than 1/16 of the values
KINDS = ("", "spike", "level_shift")  # kind codes 0, 1, 2
NORMAL, SPIKED, QUIET = 0, 1, 2  # modes (times the direction: +1 up, -1 down)
STATE = np.dtype([("scale", "<f4"), ("q", "<f4"), ("level", "<f4"), ("spread", "<f4"),
                  ("ql", "<f4"), ("peak", "<f4"), ("n", "<u2"), ("mode", "i1"),
                  ("since", "u1")])  # one series' state, as checkpointed


def start_threshold(rate: float) -> float:
    """The thresholds a series starts calibrating from, at flag rate `rate`: what Gaussian
    errors would need. Heavier tails exceed it more often and raise it quickly (every
    exceedance adds `STEP`); lighter tails would bring it down only over many thousands of
    values, so it starts at the low end of what real errors need.

    >>> [round(start_threshold(r), 2) for r in (0.001, 0.01, 0.03)]
    [4.12, 3.23, 2.72]
    """
    return NormalDist().inv_cdf(1.0 - rate / 2.0) / math.sqrt(2.0 / math.pi)


def hold_for(rate: float) -> int:
    """How many values a series holds its alerts after a verdict, at flag rate `rate`.

    >>> hold_for(0.001), hold_for(0.01), hold_for(0.5), hold_for(1e-6)
    (100, 10, 1, 255)
    """
    return int(min(max(round(HOLD_SHARE / rate), 1), 255))


@dataclass
class Calibration:
    """Per-series verdict state, one row per series (small plain arrays)."""

    scale: np.ndarray  # float32, NaN: no error seen yet
    q: np.ndarray  # float32, threshold on the error, in scales
    level: np.ndarray  # float32, running mean of the values (NaN: none yet)
    spread: np.ndarray  # float32, running mean absolute deviation from `level`
    ql: np.ndarray  # float32, threshold on the distance from `level`, in spreads
    peak: np.ndarray  # float32, while held: the score of the last verdict (else 0)
    n: np.ndarray  # uint16, values scored (capped)
    mode: np.ndarray  # int8, NORMAL, +-SPIKED, +-QUIET
    since: np.ndarray  # uint8, values since the last verdict while held (capped)

    @classmethod
    def empty(cls, rows: int) -> Calibration:
        """State of `rows` series never scored."""
        return cls(np.full(rows, np.nan, np.float32), np.full(rows, Q0, np.float32),
                   np.full(rows, np.nan, np.float32), np.zeros(rows, np.float32),
                   np.full(rows, Q0, np.float32), np.zeros(rows, np.float32),
                   np.zeros(rows, np.uint16),
                   np.zeros(rows, np.int8), np.zeros(rows, np.uint8))

    def snapshot(self, rows: np.ndarray) -> np.ndarray:
        """The rows' state as a `STATE` record array (what a checkpoint keeps).

        >>> cal = Calibration.empty(2); cal.q[1] = 7.5
        >>> back = Calibration.empty(2); back.restore(np.arange(2), cal.snapshot(np.arange(2)))
        >>> back.q.tolist(), STATE.itemsize
        ([5.0, 7.5], 28)
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


def closer(model: np.ndarray, persistence: np.ndarray) -> np.ndarray:
    """The error a value is judged by: the smaller in size of its error against its forecast
    (`model`) and against the value before it (`persistence`; NaN: none, or no forecast).

    A value is strange only when it is far from both: what the model expected, and where
    the series just was. A value that merely continues where the series went while the
    model lagged behind (after a level shift, in a regime the model never saw) is not.

    >>> closer(np.array([5.0, -1.0, 3.0, np.nan]), np.array([0.5, -4.0, np.nan, 2.0])).tolist()
    [0.5, -1.0, 3.0, nan]
    """
    with np.errstate(invalid="ignore"):
        take = np.abs(persistence) < np.abs(model)
    return np.where(take, persistence, model)


def judge(cal: Calibration, rows: np.ndarray, values: np.ndarray, errors: np.ndarray,
          rate: float, looped: bool | None = None) -> Verdicts:
    """The verdicts on `values` of series `rows` (in stream order) whose forecast errors
    (actual - forecast; NaN: no forecast) are `errors`; the rows' state moves past them.

    Vectorised over series: step k judges every series' k-th value of the batch; a batch
    of few long series (or `looped`) runs value by value in plain Python instead, with the
    same verdicts and state, bit for bit (`_looped`).

    >>> cal = Calibration.empty(1)
    >>> e = np.r_[np.tile([1.0, -1.0], 30), 30.0, -12.0, -60.0, -60.0, 0.2]
    >>> v = judge(cal, np.zeros(len(e), dtype=np.int64), np.zeros(len(e)), e, 0.001)
    >>> [(i, KINDS[v.kind[i]], int(v.direction[i])) for i in np.flatnonzero(v.flag).tolist()]
    [(60, 'spike', 1), (62, 'spike', -1), (63, 'level_shift', -1)]
    >>> float(v.score[61])  # beyond the threshold, held (not stranger than 60): reported
    0.5
    >>> float(v.score[62]) > 0.75, float(v.score[63])  # a new spike; its level shift confirms it
    (True, 0.5001)
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
    f32, n_max, hold, start = np.float32, N_MAX, hold_for(rate), start_threshold(rate)
    up, down = STEP * (1.0 - rate), -STEP * rate
    i, m = 0, len(rows_l)
    while i < m:
        r = rows_l[i]
        scale, q, level = float(cal.scale[r]), float(cal.q[r]), float(cal.level[r])
        spread, ql, n = float(cal.spread[r]), float(cal.ql[r]), int(cal.n[r])
        mode, since, peak = int(cal.mode[r]), int(cal.since[r]), float(cal.peak[r])
        while i < m and rows_l[i] == r:
            yi, ei, j = y_l[i], e_l[i], at_l[i]
            i += 1
            spread0, floor = spread, FLOOR * spread
            inv = 1.0 / (n + 2.0)
            dist = yi - level  # NaN when either is
            known_l = spread0 > 0 and dist == dist
            if yi == yi:  # _move_level
                if level != level:
                    level = yi
                if spread > 0:
                    lim = LEVEL_CLIP * spread
                    yi = min(max(yi, level - lim), level + lim)
                w = max(LEVEL_EWMA, inv)
                level64 = (1.0 - w) * level + w * yi
                level = float(f32(level64))
                spread = float(f32((1.0 - w) * spread + w * abs(yi - level64)))
            if ei != ei:
                continue
            size = abs(ei)
            s = scale if scale != scale or scale > floor else floor  # np.maximum keeps NaN
            if not s > 0:  # the first error only sets the scale and the thresholds
                scale = float(f32(max(size, 1e-12)))
                q = ql = float(f32(start))
                continue
            ratio = size / s
            far = abs(dist) / spread0 if known_l else 0.0
            beyond_e, beyond_l = ratio > q, known_l and far > ql
            beyond = beyond_e or beyond_l
            direction = (1 if ei >= 0 else -1) if beyond_e or not beyond_l else (
                1 if dist >= 0 else -1)
            s_now = max(ratio / (ratio + q), far / (far + ql))
            flag = beyond and n >= WARMUP and (mode == NORMAL or mode == SPIKED * direction
                                               or s_now > max(ESCAPE, peak))
            shift = flag and mode == SPIKED * direction
            score[j] = (CONFIRMED if shift and s_now <= peak else max(s_now, CONFIRMED)
                        ) if flag else min(s_now, 0.5)
            dir_out[j] = direction
            if flag:
                flag_out[j], kind_out[j] = True, 2 if shift else 1
                mode, since = (QUIET if shift else SPIKED) * direction, 0
                peak = float(f32(s_now))
            elif mode != NORMAL:
                since = min(since + 1, 255)
                mode = NORMAL if since >= hold else QUIET * (1 if mode > 0 else -1)
                since, peak = (since, peak) if mode != NORMAL else (0, 0.0)
            q = float(f32(q * (1.0 + (up if beyond_e else down))))
            if known_l:
                ql = float(f32(ql * (1.0 + (up if beyond_l else down))))
            w = max(SCALE_EWMA, inv)
            scale = float(f32((1.0 - w) * s + w * min(size, CLIP * s)))
            n = min(n + 1, n_max)
        cal.scale[r], cal.q[r], cal.level[r], cal.spread[r] = scale, q, level, spread
        cal.ql[r], cal.n[r], cal.mode[r], cal.since[r] = ql, n, mode, since
        cal.peak[r] = peak


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
    [(54, 0), (60, 3), (72, 0), (76, 2), (90, 1), (91, 4), (94, 0), (95, 3), (100, 3)]
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
    # The `.any()` / `.all()` checks skip work that would change nothing (a batch where
    # every value has a forecast and no series is flagged or held is the common case).
    spread = cal.spread[rows].astype(np.float64)  # from the values before this one
    dist = y - cal.level[rows]
    n = cal.n[rows]
    inv = 1.0 / (n + 2.0)
    _move_level(cal, rows, y, inv)
    missing = np.isnan(e)
    if missing.any():
        ok = ~missing
        rows, e, at, spread, dist, n, inv = (rows[ok], e[ok], at[ok], spread[ok], dist[ok],
                                             n[ok], inv[ok])
    scale = np.maximum(cal.scale[rows].astype(np.float64), FLOOR * spread)
    known = scale > 0  # else NaN or 0: the first error only sets the scale and thresholds
    if not known.all():
        first = ~known
        cal.scale[rows[first]] = np.maximum(np.abs(e[first]), 1e-12)
        cal.q[rows[first]] = cal.ql[rows[first]] = start_threshold(rate)
        k = known
        rows, e, at, scale, spread, dist, n, inv = (rows[k], e[k], at[k], scale[k], spread[k],
                                                   dist[k], n[k], inv[k])
    if not len(rows):
        return
    q, ql = cal.q[rows].astype(np.float64), cal.ql[rows].astype(np.float64)
    size = np.abs(e)
    r = size / scale
    known_l = (spread > 0) & ~np.isnan(dist)
    every_l = bool(known_l.all())  # the common case: no masks needed below
    with np.errstate(divide="ignore", invalid="ignore"):
        far = np.abs(dist) / spread
    if not every_l:
        far[~known_l] = 0.0
    beyond_e, beyond_l = r > q, far > ql  # NaN and 0 are never beyond
    direction = (e >= 0) * 2 - 1
    any_l = bool(beyond_l.any())
    if any_l:
        direction = np.where(beyond_l & ~beyond_e, (dist >= 0) * 2 - 1, direction)
    score = np.maximum(tail_score(r, q), tail_score(far, ql))
    out.direction[at] = direction
    beyond = beyond_e | beyond_l if any_l else beyond_e
    mode = cal.mode[rows]
    if beyond.any() or mode.any():
        score = _flag_and_hold(cal, rows, score, mode.astype(np.int64), beyond, direction, n,
                               rate, out, at)
    out.score[at] = score
    up, down = STEP * (1.0 - rate), -STEP * rate
    cal.q[rows] = q * (1.0 + np.where(beyond_e, up, down)) if beyond_e.any() else q * (
        1.0 + down)
    if every_l and not any_l:
        cal.ql[rows] = ql * (1.0 + down)
    elif known_l.any():
        cal.ql[rows] = np.where(known_l, ql * (1.0 + np.where(beyond_l, up, down)), ql)
    clipped = np.minimum(size, CLIP * scale)
    weight = np.maximum(SCALE_EWMA, inv)  # a running mean at first
    cal.scale[rows] = (1.0 - weight) * scale + weight * clipped
    cal.n[rows] = np.minimum(n.astype(np.int64) + 1, N_MAX)


def _flag_and_hold(cal: Calibration, rows: np.ndarray, score: np.ndarray, mode: np.ndarray,
                   beyond: np.ndarray, direction: np.ndarray, n: np.ndarray, rate: float,
                   out: Verdicts, at: np.ndarray) -> np.ndarray:
    """The flags and kinds of one step and the alert state machine (module docstring):
    normal -> spiked -> (level shift) -> held -> normal. Returns the scores: those of
    values not flagged capped at 0.5, flagged ones at least `CONFIRMED`, and a level shift
    not stranger than its spike (`peak`) `CONFIRMED`."""
    peak = cal.peak[rows].astype(np.float64)
    flag = beyond & (n >= WARMUP) & ((mode == NORMAL) | (mode == SPIKED * direction)
                                     | (score > np.maximum(ESCAPE, peak)))
    shift = flag & (mode == SPIKED * direction)
    if flag.any():
        out.flag[at] = flag
        out.kind[at] = np.where(shift, 2, np.where(flag, 1, 0))
    since = np.where(flag, 0, np.minimum(cal.since[rows].astype(np.int64) + 1, 255))
    held = np.where(since >= hold_for(rate), NORMAL, QUIET * np.sign(mode))
    mode = np.where(flag, np.where(shift, QUIET, SPIKED) * direction,
                    np.where(mode == NORMAL, NORMAL, held))
    cal.mode[rows] = mode
    cal.since[rows] = np.where(mode == NORMAL, 0, since)
    cal.peak[rows] = np.where(flag, score, np.where(mode == NORMAL, 0.0, peak))
    capped = np.minimum(score, 0.5)
    if not flag.any():  # the common case here: series held, none flagged
        return capped
    reported = np.where(shift & (score <= peak), CONFIRMED, np.maximum(score, CONFIRMED))
    return np.where(flag, reported, capped)


def _move_level(cal: Calibration, rows: np.ndarray, y: np.ndarray, inv: np.ndarray) -> None:
    """The rows' level and spread take in the values `y` (NaN: none), each clipped at
    `LEVEL_CLIP` spreads from the level; `inv`: 1 / (n + 2)."""
    missing = np.isnan(y)
    if missing.any():
        ok = ~missing
        rows, y, inv = rows[ok], y[ok], inv[ok]
    level = cal.level[rows].astype(np.float64)
    new = np.isnan(level)
    if new.any():
        level[new] = y[new]
    spread = cal.spread[rows].astype(np.float64)
    lim = np.where(spread > 0, LEVEL_CLIP * spread, np.inf)
    y = np.fmin(np.fmax(y, level - lim), level + lim)  # as `min` / `max` of floats: NaN ignored
    weight = np.maximum(LEVEL_EWMA, inv)
    level = (1.0 - weight) * level + weight * y
    cal.level[rows] = level
    cal.spread[rows] = (1.0 - weight) * spread + weight * np.abs(y - level)
