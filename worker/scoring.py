"""Joining forecasts with the actuals that arrive later: live errors, intervals, drift.

For every value of a batch and every served version (column 0 the current one, then the
shadows), the forecast that version made one value earlier is scored against the value:
absolute error, error scaled by the series' naive-error scale (an EWMA of |y_t - y_t-1|),
the naive forecast's scaled error on the same value, and whether the interval covered it.

The current version's interval adapts per series (adaptive conformal inference, Gibbs &
Candès 2021, on a log width factor `a`): after each value, `a += gamma * (miss - alpha)`,
and the interval written with the next forecast is the model's, widened by `exp(a)` around
the point forecast. The recurrence runs value by value in stream order, so it does not
depend on batch boundaries: a restarted worker (`a` is checkpointed) writes exactly what an
uninterrupted one would. Drift: a Page-Hinkley test per series on the current version's
scaled errors (checked once per batch and series), each capped at `DRIFT_CAP`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from worker.state import Advance, SeriesStore

NAIVE_EWMA = 0.05  # weight of a new |y_t - y_t-1| in a series' naive-error scale
PH_DELTA = 0.005  # Page-Hinkley: tolerated rise of the mean scaled error
PH_THRESHOLD = 50.0  # Page-Hinkley: alarm level of the cumulative deviation
PH_MIN_VALUES = 30.0  # no alarm before this many values since the last reset
# Drift takes a value's scaled error at most this: one value is never a drift. A glitch (a
# sensor's 65535 in a series living around 20) is ~60,000 scales off and alarmed both
# detectors on its own; three such values in a row still alarm. The evidence is not capped.
DRIFT_CAP = 20.0
COUNTS = ("forecast_n", "n", "with_interval", "covered", "pair_n")  # the Scores that count


@dataclass
class Forecasts:
    """What each served version forecast at each value of a batch (sorted order of `adv`).

    (m, columns) arrays; NaN where a version made no forecast or has no interval.
    """

    point: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


@dataclass
class Scores:
    """One batch's evidence: sums per version column, and drift alarms per series."""

    forecast_n: np.ndarray  # per column: values with a forecast one value earlier
    abs_err: np.ndarray  # their absolute errors, summed
    n: np.ndarray  # per column: values with a forecast, a naive forecast and a scale
    scaled_err: np.ndarray
    scaled_naive: np.ndarray
    with_interval: np.ndarray
    covered: np.ndarray
    scaled_width: np.ndarray
    pair_n: np.ndarray  # column c against column 0: values both forecast
    pair_d: np.ndarray  # sum of scaled_err[c] - scaled_err[0]
    pair_d2: np.ndarray
    pair_a: np.ndarray  # sum of column c's scaled errors on those values
    pair_b: np.ndarray  # sum of column 0's
    naive_d: np.ndarray  # per column: sum of scaled_err - scaled naive error
    naive_d2: np.ndarray
    drift_err: np.ndarray  # per column: scaled errors capped at DRIFT_CAP, summed (drift)
    drifted: list[tuple[bytes, float]] = field(default_factory=list)  # (series, statistic)

    def plus(self, other: Scores) -> Scores:
        """The sums of two parts of one batch (its passes, see worker.gaps)."""
        summed = {f.name: getattr(self, f.name) + getattr(other, f.name)
                  for f in fields(self) if f.name != "drifted"}
        return Scores(**summed, drifted=[*self.drifted, *other.drifted])


def aci_factors(rho: np.ndarray, starts: np.ndarray, a0: np.ndarray, gamma: float,
                alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The ACI factor in force when each value is scored, and after it (per value).

    `rho[j]` is the log distance of value j from the previous forecast, in units of that
    forecast's interval half-width (NaN: nothing to score). Value j is a miss when
    `rho[j] > a`; then `a += gamma * (miss - alpha)`.

    >>> before, after = aci_factors(np.log([2.0, 0.5]), np.array([0]), np.zeros(1), 0.1, 0.1)
    >>> before.round(2).tolist(), after.round(2).tolist()
    ([0.0, 0.09], [0.09, 0.08])
    """
    m = len(rho)
    bounds = np.append(starts, m)
    lengths = np.diff(bounds)
    before = np.empty(m)
    after = np.empty(m)
    a = np.asarray(a0, dtype=np.float64).copy()
    if m and lengths.max() * 64 < m:  # many short groups: vectorise across groups
        for k in range(int(lengths.max())):
            g = np.flatnonzero(lengths > k)
            at = starts[g] + k
            before[at] = a[g]
            r = rho[at]
            step = np.where(np.isnan(r), 0.0, gamma * ((r > a[g]) - alpha))
            a[g] += step
            after[at] = a[g]
        return before, after
    rho_l, b = rho.tolist(), bounds.tolist()
    for grp in range(len(starts)):  # few long groups: a plain loop is faster
        x = float(a[grp])
        for j in range(b[grp], b[grp + 1]):
            before[j] = x
            rj = rho_l[j]
            if rj == rj:  # not NaN
                x += gamma * ((1.0 if rj > x else 0.0) - alpha)
            after[j] = x
        a[grp] = x
    return before, after


def _previous(stored: np.ndarray, adv: Advance, current: np.ndarray) -> np.ndarray:
    """For each value (sorted order), what its series had one value earlier."""
    prev = np.empty(current.shape, dtype=np.float64)
    prev[1:] = current[:-1]
    prev[adv.starts] = stored[adv.rows]
    return prev


def _per_group(x: np.ndarray, adv: Advance) -> np.ndarray:
    """Sums of `x` (sorted order; (m,) or (m, c), zeros where nothing counts) per group."""
    # the values of a group are contiguous (sorted order) and no group is empty
    return np.add.reduceat(np.asarray(x, dtype=np.float64), adv.starts, axis=0)


@dataclass
class Joined:
    """A batch's values next to the forecasts made one value earlier, waiting to be scored."""

    adv: Advance
    y: np.ndarray  # (m, 1) values, float64
    prev_pt: np.ndarray  # (m, columns)
    prev_lo: np.ndarray
    prev_hi: np.ndarray
    rho: np.ndarray  # log distance from the previous forecast in half-widths
    a_before: np.ndarray  # the current version's adaptive factor in force at each value
    actual: np.ndarray  # False: a fill (worker.gaps), never scored as an actual


def adapt(store: SeriesStore, adv: Advance, values: np.ndarray, fc: Forecasts,
          gamma: float, alpha: float, version: int = -1,
          actual: np.ndarray | None = None) -> tuple[Joined, np.ndarray]:
    """Join the batch with the previous forecasts, adapt the current version's intervals and
    keep the new forecasts: what the commit needs. `evaluate` does the rest, later.

    `fc` has one column per served version. Returns the joined batch and, per value, the
    factor the current forecast's interval made at that value is widened by (sorted order).
    `version` is the current version's number: a series whose interval state belongs to
    another version starts again (factor 0, no previous interval to score).
    """
    rows = adv.rows
    cols = fc.point.shape[1]
    store.ensure_columns(cols)
    stale = store.aci_version[rows] != version
    if stale.any():
        store.restart_intervals(rows[stale], version)
    y = values.astype(np.float64)[:, None]
    prev_pt = _previous(store.pred[:, :cols], adv, fc.point)
    prev_lo = _previous(store.lo[:, :cols], adv, fc.lo)
    prev_hi = _previous(store.hi[:, :cols], adv, fc.hi)
    with np.errstate(invalid="ignore", divide="ignore"):
        below = y < prev_pt
        dist = np.where(below, prev_pt - y, y - prev_pt) / np.where(below, prev_pt - prev_lo,
                                                                    prev_hi - prev_pt)
        rho = np.log(dist)
    actual = np.ones(len(y), dtype=bool) if actual is None else actual
    if not actual.all():  # a fill is not an actual: nothing is scored against it
        rho[~actual] = np.nan
    a_before, a_after = aci_factors(rho[:, 0], adv.starts, store.aci[rows], gamma, alpha)
    # the newest raw forecasts (and the factor) for the next values of each series
    store.keep_forecasts(rows, fc.point[adv.ends], fc.lo[adv.ends], fc.hi[adv.ends],
                         a_after[adv.ends])
    return Joined(adv, y, prev_pt, prev_lo, prev_hi, rho, a_before, actual), np.exp(a_after)


def evaluate(store: SeriesStore, j: Joined) -> Scores:
    """Score a joined batch: sums per version, and drift per series.

    Off the commit path (the worker runs it once the commit is sent), but before the next
    batch of the same store: the naive-error scales and drift state are per series.
    """
    adv = j.adv
    naive_err = np.abs(j.y[:, 0] - np.where(adv.filled >= 2, adv.windows[:, -2], np.nan))
    if not j.actual.all():  # fills, and the value right after them (its naive was a fill)
        scored = j.actual & np.concatenate(([True], j.actual[:-1])) | _first_of_group(adv)
        naive_err[~(scored & j.actual)] = np.nan
    scale = _scales(store, adv, naive_err)
    with np.errstate(invalid="ignore", divide="ignore"):
        err = np.abs(j.y - j.prev_pt)
        if not j.actual.all():
            err[~j.actual] = np.nan
        scaled = err / scale[:, None]
        scaled_naive = naive_err / scale
    joined = ~np.isnan(scaled) & (~np.isnan(scaled_naive) & (scale > 0))[:, None] \
        & j.actual[:, None]
    has_iv = ~np.isnan(j.rho)
    threshold = np.zeros_like(j.rho)
    threshold[:, 0] = j.a_before  # the current version's interval was the adaptive one
    with np.errstate(invalid="ignore", divide="ignore"):
        covered = has_iv & (j.rho <= threshold)
        scaled_width = (j.prev_hi - j.prev_lo) * np.exp(threshold) / scale[:, None]
    z = np.where(joined, scaled, 0.0)
    zn = np.where(joined, scaled_naive[:, None], 0.0)
    capped = np.minimum(z, DRIFT_CAP)
    scores = _sums(err, z, zn, capped, joined, has_iv, covered, scaled_width)
    # per series: the current version's joined values and their capped scaled errors (drift)
    per_series = _per_group(np.stack([joined[:, 0], capped[:, 0]], axis=1), adv)
    scores.drifted = _page_hinkley(store, adv, per_series[:, 1], per_series[:, 0])
    return scores


def score(store: SeriesStore, adv: Advance, values: np.ndarray, fc: Forecasts,
          gamma: float, alpha: float, version: int = -1) -> tuple[Scores, np.ndarray]:
    """`adapt` then `evaluate` at once: the scores and the interval factors."""
    joined, factor = adapt(store, adv, values, fc, gamma, alpha, version)
    return evaluate(store, joined), factor


def _first_of_group(adv: Advance) -> np.ndarray:
    first = np.zeros(len(adv.order), dtype=bool)
    first[adv.starts] = True
    return first


def _scales(store: SeriesStore, adv: Advance, naive_err: np.ndarray) -> np.ndarray:
    """Each value's naive-error scale: its series' EWMA at the batch start (then updated)."""
    before = store.nscale[adv.rows][adv.group_of].astype(np.float64)
    ok = ~np.isnan(naive_err)
    n = _per_group(ok * 1.0, adv)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = _per_group(np.where(ok, naive_err, 0.0), adv) / n
    old = store.nscale[adv.rows]
    # a series seen for the first time takes this batch's mean as its scale
    before = np.where(np.isnan(before), mean[adv.group_of], before)
    kept = (1.0 - NAIVE_EWMA) ** n
    new = np.where(np.isnan(old), mean, kept * old + (1.0 - kept) * np.where(n > 0, mean, 0.0))
    store.set_scales(adv.rows, np.where(n > 0, new, old))
    return before


def _sums(err: np.ndarray, z: np.ndarray, zn: np.ndarray, capped: np.ndarray,
          joined: np.ndarray, has_iv: np.ndarray, covered: np.ndarray,
          width: np.ndarray) -> Scores:
    known = ~np.isnan(err)
    both = joined & joined[:, :1]
    d = np.where(both, z - z[:, :1], 0.0)
    dn = z - zn  # both zero where not joined
    # one reduction over all the columns: on a small batch each numpy call costs about 1 us
    parts = {"forecast_n": known, "abs_err": np.where(known, err, 0.0), "n": joined,
             "scaled_err": z, "scaled_naive": zn, "with_interval": has_iv, "covered": covered,
             "scaled_width": np.where(has_iv & joined, width, 0.0), "pair_n": both,
             "pair_d": d, "pair_d2": d * d, "pair_a": np.where(both, z, 0.0),
             "pair_b": np.where(both, z[:, :1], 0.0), "naive_d": dn, "naive_d2": dn * dn,
             "drift_err": capped}
    sums = np.concatenate(list(parts.values()), axis=1, dtype=np.float64).sum(axis=0)
    c = z.shape[1]
    named = {name: sums[i * c:(i + 1) * c] for i, name in enumerate(parts)}
    for name in COUNTS:
        named[name] = named[name].astype(np.int64)
    return Scores(**named)


def _page_hinkley(store: SeriesStore, adv: Advance, total: np.ndarray, cnt: np.ndarray
                  ) -> list[tuple[bytes, float]]:
    """Update each series' Page-Hinkley state with the sum and count of its batch's scaled
    errors (current version); the series that alarm."""
    rows = adv.rows
    n0 = store.ph_n[rows].astype(np.float64)
    n1 = n0 + cnt
    with np.errstate(invalid="ignore", divide="ignore"):
        mean1 = np.where(n1 > 0, (store.ph_mean[rows] * n0 + total) / n1, 0.0)
    # the cumulative deviation, the batch's values measured against the new mean
    cum1 = store.ph_cum[rows] + total - cnt * (mean1 + PH_DELTA)
    low1 = np.minimum(store.ph_min[rows], cum1)
    stat = cum1 - low1
    alarm = (n1 >= PH_MIN_VALUES) & (stat > PH_THRESHOLD)
    keep = ~alarm
    store.set_drift(rows, n1 * keep, mean1 * keep, cum1 * keep, low1 * keep)
    if not alarm.any():
        return []
    hit = np.flatnonzero(alarm)
    return list(zip(store.keys_of(rows[hit]), stat[hit].tolist(), strict=True))
