"""Turning one read of stream entries into one commit: parse, windows, ONE model call.

Pure with respect to Redis: checkpointed windows of series not in memory come through
the `load` callback, and the result is a `Commit` that `worker.scripts` writes atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from forecast.grammar import Limits, parse_fields
from forecast.registry import version_number
from worker import gaps, metrics, outputs, routing
from worker.anomaly import Calibration, closer, judge, judge_once
from worker.scoring import Forecasts, Joined, Scores, adapt, evaluate
from worker.state import COLUMNS, SeriesStore
from worker.timing import Timing, observe
from worker.wire import Outputs

log = logging.getLogger(__name__)
_FAILED_SHADOWS: set[str] = set()  # versions whose failure was logged

Entry = tuple[bytes, list[bytes] | None]  # (entry id, flat fields); None = deleted entry
DEADLETTER_FIELD_MAX = 1024  # bytes kept of each field of a dead letter (the input keeps all)
DEADLETTER_PAIRS_MAX = 16  # field pairs kept of a dead letter
LAG_SAMPLES = 8  # predictions per batch whose end-to-end lag is observed (the metric)


class Predictor(Protocol):
    """What the batch needs of a loaded model (see forecast.modelio.LoadedModel)."""

    version: str
    n_steps: int
    horizon: int
    has_interval: bool

    def predict(self, windows: np.ndarray) -> np.ndarray: ...


@dataclass
class Served:
    """The models a batch runs: the current one (its forecasts are written), then shadows.

    Shadows see the same windows (one more model call each) and are only scored. `gamma`
    is the adaptive-interval step (0: the model's intervals as they are).
    """

    current: Predictor
    shadows: list[Predictor] = field(default_factory=list)
    gamma: float = 0.1
    follow: outputs.Follow | None = None  # FORECAST_FOLLOW: series copied to their own stream
    gap_policy: str = "fill"  # FORECAST_GAP_POLICY (worker.gaps)
    gap_max_steps: int = 24
    anomaly_rate: float = 0.0  # FORECAST_ANOMALY_RATE (worker.anomaly); 0: no verdicts
    replace_spikes: bool = False  # FORECAST_ANOMALY_WINDOW=replace

    @property
    def models(self) -> list[Predictor]:
        """Current first, then the shadows that fit in the store's columns."""
        return [self.current, *self.shadows][:COLUMNS]

    @property
    def replaces(self) -> bool:
        """Spikes are judged and replaced in the windows (FORECAST_ANOMALY_WINDOW=replace)."""
        return self.replace_spikes and self.anomaly_rate > 0

    @property
    def alpha(self) -> float:
        """The current model's nominal miscoverage."""
        manifest = getattr(self.current, "manifest", {}) or {}
        return 1.0 - float(manifest.get("coverage") or 0.9)


@dataclass
class Commit:
    """Everything one atomic commit writes for one shard."""

    version: str = ""  # the model version that made the predictions
    ack_ids: list[bytes] = field(default_factory=list)
    outputs: Outputs = field(default_factory=Outputs)  # the output entries (worker.wire)
    n_predictions: int = 0
    latest: list[bytes | str] = field(default_factory=list)  # series/JSON pairs, forecast:latest
    follow_series: list[bytes] = field(default_factory=list)  # FORECAST_FOLLOW matches
    follow: list[int] = field(default_factory=list)  # (entry, follow_series index) pairs
    deadletters: list[list[bytes | str]] = field(default_factory=list)  # flat field/value pairs
    alerts: list[list[bytes | str]] = field(default_factory=list)  # forecast:anomalies entries
    anomalies: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, direction): n
    state: list[bytes] = field(default_factory=list)  # flat series/blob pairs
    reasons: dict[str, int] = field(default_factory=dict)
    n_values: int = 0  # valid values in the batch
    entries: int = 0  # entries read for this commit
    sent_at: float = 0.0  # perf_counter() when the commit was sent
    abs_err_sum: float = 0.0
    abs_err_n: int = 0
    model_seconds: float = 0.0
    lags_ms: list[int] = field(default_factory=list)
    scores: Scores | None = None  # the live evidence of this batch (worker.scoring)
    pending: list[tuple[SeriesStore, Joined]] = field(default_factory=list)  # finish_scores
    versions: tuple[str, ...] = ()  # the versions of the score columns


def id_key(entry_id: bytes) -> tuple[int, int]:
    """A stream entry id as (ms, seq), which orders ids as Redis does (bytes do not).

    >>> sorted([b"5-10", b"5-9", b"40-0"], key=id_key)
    [b'5-9', b'5-10', b'40-0']
    """
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def lag_sample(n: int) -> range:
    """Which of a batch's `n` predictions (stream order) have their lag observed: at most
    `LAG_SAMPLES`, evenly spaced from the first (the oldest input), so a big batch costs the
    metric no more than a small one.

    >>> list(lag_sample(3)), list(lag_sample(40))
    ([0, 1, 2], [0, 5, 10, 15, 20, 25, 30, 35])
    """
    return range(0, n, max(1, -(-n // LAG_SAMPLES)))


def entry_ms(entry_id: bytes) -> int:
    """Milliseconds part of a stream entry id.

    >>> entry_ms(b"1700000000123-7")
    1700000000123
    """
    return int(entry_id.split(b"-", 1)[0])


def dead_letter(
    commit: Commit, entry_id: bytes, fields: list[bytes], reason: str, **extra: str
) -> None:
    """Add one dead letter: the original fields (huge ones truncated), reason and source_id."""
    out: list[bytes | str] = []
    for i in range(0, min(len(fields) - 1, 2 * DEADLETTER_PAIRS_MAX), 2):
        value = fields[i + 1]
        if len(value) > DEADLETTER_FIELD_MAX:
            value = value[:DEADLETTER_FIELD_MAX] + b"...(truncated %d bytes)" % len(value)
        out += [fields[i][:DEADLETTER_FIELD_MAX], value]
    out += ["reason", reason, "source_id", entry_id]
    for k, v in extra.items():
        out += [k, v]
    commit.deadletters.append(out)
    commit.reasons[reason] = commit.reasons.get(reason, 0) + 1


@dataclass
class Batch:
    """The valid values of one read, in stream order: one row per value."""

    ids: list[bytes]
    fields: list[list[bytes]]  # the raw entries (for dead letters)
    series: list[bytes]
    values: np.ndarray  # float32, what the windows hold
    stamps: np.ndarray  # int64 epoch ms, -1 without ts
    seqs: np.ndarray  # int64 producer sequence numbers, -1 without seq
    slots: np.ndarray  # int64 store rows (set by `SeriesStore.place`)
    pos: np.ndarray | None = None  # each value's index in the whole batch (-1: a fill)

    def __len__(self) -> int:
        return len(self.ids)

    def where(self, keep: np.ndarray) -> Batch:
        """The values where `keep` is True (all of them: this batch itself)."""
        if keep.all():
            return self
        return self.take(np.flatnonzero(keep))

    def take(self, idx: np.ndarray) -> Batch:
        """The values at `idx` (in that order)."""
        at = idx.tolist()
        return Batch([self.ids[i] for i in at], [self.fields[i] for i in at],
                     [self.series[i] for i in at], self.values[idx], self.stamps[idx],
                     self.seqs[idx], self.slots[idx], self.positions()[idx])

    def positions(self) -> np.ndarray:
        """Each value's index in the whole batch."""
        return np.arange(len(self)) if self.pos is None else self.pos

    def after(self, series: list[bytes], slots: np.ndarray, values: list[float]) -> Batch:
        """This batch with fills (values that are not inputs: no id, no output) before it;
        a series' fills come before its values (the windows take values sorted by row,
        stable)."""
        n = len(values)
        none = np.full(n, -1, dtype=np.int64)
        return Batch([b""] * n + self.ids, [[] for _ in range(n)] + self.fields,
                     series + self.series,
                     np.concatenate([np.asarray(values, dtype=np.float32), self.values]),
                     np.concatenate([none, self.stamps]), np.concatenate([none, self.seqs]),
                     np.concatenate([slots, self.slots]),
                     np.concatenate([none, self.positions()]))


def parse_batch(entries: Sequence[Entry], limits: Limits, commit: Commit) -> Batch:
    """Parse every entry: good ones into a Batch, bad ones into the commit's dead letters."""
    ids: list[bytes] = []
    kept: list[list[bytes]] = []
    series: list[bytes] = []
    values: list[float] = []
    stamps: list[int] = []
    seqs: list[int] = []
    for eid, fields in entries:
        commit.ack_ids.append(eid)
        if fields is None:  # deleted from the stream while pending: nothing to predict
            continue
        parsed = parse_fields(fields, limits)
        if isinstance(parsed, str):
            dead_letter(commit, eid, fields, parsed)
            continue
        ids.append(eid)
        kept.append(fields)
        series.append(parsed[0])
        values.append(parsed[1])
        stamps.append(parsed[2])
        seqs.append(parsed[3])
    return Batch(ids, kept, series, np.asarray(values, dtype=np.float32),
                 np.asarray(stamps, dtype=np.int64), np.asarray(seqs, dtype=np.int64),
                 np.zeros(len(ids), dtype=np.int64))


def build_commit(
    entries: Sequence[Entry],
    store: SeriesStore,
    model: Predictor | Served,
    limits: Limits,
    load: Callable[[list[bytes]], list[bytes | None]],
    commit: Commit | None = None,
    defer: bool = False,
) -> Commit:
    """Process one batch of one shard's entries (in stream order) into a `Commit`.

    With `defer`, the live scores are left to `finish_scores` (call it before the next batch
    of the same store): the worker sends the commit first, then scores.
    """
    served = model if isinstance(model, Served) else Served(model)
    commit = commit if commit is not None else Commit()
    commit.version = served.current.version
    commit.versions = tuple(m.version for m in served.models)
    batch = parse_batch(entries, limits, commit)
    commit.n_values = len(batch)
    if not batch:
        return commit
    batch.slots = store.place(batch.series, load)
    batch = _keep(commit, batch, store.accept_new(batch.slots, batch.seqs), "duplicate")
    prev_ts = store.last_ts[batch.slots]  # a copy: accept_in_order moves it on
    in_order = store.accept_in_order(batch.slots, batch.stamps)
    batch = _keep(commit, batch, in_order, "ts_out_of_order")
    if batch:
        batch.pos = None  # positions count from here: this is the batch predicted
        timing = observe(store.steps, batch.slots, batch.stamps, prev_ts[in_order])
        _passes(commit, store, served, batch, timing)
    if not defer:
        finish_scores(commit)
    return commit


def _passes(commit: Commit, store: SeriesStore, served: Served, batch: Batch,
            timing: Timing) -> None:
    """Predict the batch (in passes when it has gaps to fill), then fill the commit."""
    if timing.gap.any():
        metrics.GAPS.inc(int((timing.gap > 0).sum()))
        parts = _gapped(commit, store, served, batch, timing)
        rows = np.unique(np.concatenate([p.rows for p in parts]))
    else:  # the common case: one pass, nothing to fill or restart
        parts = _run(commit, store, served, batch, None, None)
        rows = parts[0].rows if len(parts) == 1 else np.unique(
            np.concatenate([p.rows for p in parts]))  # sorted and unique
    pairs = zip(store.keys_of(rows), store.encode(rows), strict=True)
    commit.state = [b for pair in pairs for b in pair]
    commit.pending = [(store, p.joined) for p in parts]
    done = [p for p in parts if p.out is not None and len(p.out)]
    if done:
        out = np.concatenate([p.out for p in done if p.out is not None])
        pos = np.concatenate([p.pos for p in done])
        warm = None
        if any(p.warm is not None for p in done):
            warm = np.concatenate([p.warm if p.warm is not None else np.zeros(len(p.pos), bool)
                                   for p in done])
        judged = [p.verdicts for p in done if p.verdicts is not None]
        verdicts = np.concatenate(judged) if len(judged) == len(done) else None
        _outputs(commit, served, out, pos, batch, timing, warm, verdicts)


def _gapped(commit: Commit, store: SeriesStore, served: Served, batch: Batch,
            timing: Timing) -> list[Part]:
    """The passes of a batch with gaps (`worker.gaps.plan`), fills and restarts applied."""
    plan = gaps.plan(served.gap_policy, timing.gap, batch.slots, served.gap_max_steps)
    parts: list[Part] = []
    for idx in plan.passes:
        part = batch if len(plan.passes) == 1 else batch.take(idx)
        wanted = [(i, plan.fills[int(p)]) for i, p in enumerate(part.positions().tolist())
                  if int(p) in plan.fills]
        if wanted:
            part = _with_fills(store, served, part, wanted)
        at = part.positions()
        restart = np.where(at >= 0, plan.restart[np.maximum(at, 0)], False)
        parts += _run(commit, store, served, part, restart, timing.gap)
    return parts


def _run(commit: Commit, store: SeriesStore, served: Served, part: Batch,
         restart: np.ndarray | None, gap: np.ndarray | None) -> list[Part]:
    """`_predict` the part. Where spikes are replaced (FORECAST_ANOMALY_WINDOW=replace), a
    spike's replacement must be in its window before the next value of its series is
    forecast: `_predict` replaces the first value of each series in a pass ahead of its
    verdict, so a pass in which a later value turns out to be a spike is undone and run
    again as two, split just before that value (rare: spikes are)."""
    if not served.replaces:
        return [_predict(commit, store, served, part, restart, gap)]
    store.ensure_columns(len(served.models))  # as `adapt` will: before the snapshot
    rows = np.unique(part.slots)
    saved, letters, reasons = store.save_rows(rows), len(commit.deadletters), dict(commit.reasons)
    done = _predict(commit, store, served, part, restart, gap)
    cut = _late_spike(part, done)
    if cut is None:
        return [done]
    store.load_rows(rows, saved)
    del commit.deadletters[letters:]
    commit.reasons = reasons
    head, tail = np.arange(cut), np.arange(cut, len(part))
    return [*_run(commit, store, served, part.take(head),
                  None if restart is None else restart[head], gap),
            *_run(commit, store, served, part.take(tail),
                  None if restart is None else restart[tail], gap)]


def _late_spike(part: Batch, done: Part) -> int | None:
    """The index in `part` of the first value flagged as a spike that is not its series'
    first value in the part (None: there is none)."""
    if done.verdicts is None:
        return None
    spike = (done.verdicts[:, outputs.FLAG] > 0) & (done.verdicts[:, outputs.KIND] == 1)
    if not spike.any():
        return None
    at = np.flatnonzero(np.isin(part.positions(), done.pos[spike]))
    first = np.unique(part.slots, return_index=True)[1]
    late = np.setdiff1d(at, first)
    return int(late.min()) if len(late) else None


def _with_fills(store: SeriesStore, served: Served, part: Batch,
                wanted: list[tuple[int, int]]) -> Batch:
    """`part` with the model's forecasts of the missing steps before each gapped value."""
    at = np.asarray([i for i, _ in wanted], dtype=np.int64)
    rows = part.slots[at]
    filled = gaps.forecasts(served.current, store.vals[rows], store.count[rows],
                            np.asarray([g for _, g in wanted], dtype=np.int64))
    series: list[bytes] = []
    slots: list[int] = []
    values: list[float] = []
    for i, fills in zip(at.tolist(), filled, strict=True):
        series += [part.series[i]] * len(fills)
        slots += [int(part.slots[i])] * len(fills)
        values += fills
    if not values:
        return part
    return part.after(series, np.asarray(slots, dtype=np.int64), values)


def _keep(commit: Commit, batch: Batch, ok: np.ndarray, reason: str) -> Batch:
    """The values where `ok`; the others are dead-lettered with `reason`."""
    if ok.all():
        return batch
    for i in np.flatnonzero(~ok).tolist():
        dead_letter(commit, batch.ids[i], batch.fields[i], reason)
    batch = batch.where(ok)
    commit.n_values = len(batch)
    return batch


def finish_scores(commit: Commit) -> None:
    """Score the batch of a commit built with `defer` (no-op when done or nothing to score)."""
    if not commit.pending:
        return
    pending, commit.pending = commit.pending, []
    scores = None
    for store, joined in pending:  # the passes in order: per-series state moves on
        part = evaluate(store, joined)
        scores = part if scores is None else scores.plus(part)
    assert scores is not None
    commit.scores = scores
    commit.abs_err_sum, commit.abs_err_n = float(scores.abs_err[0]), int(scores.forecast_n[0])


@dataclass
class Part:
    """One pass of a batch: the current version's forecast rows (interval widened) for the
    values at batch positions `pos`, the joined values to score, the store rows touched."""

    out: np.ndarray | None
    pos: np.ndarray
    joined: Joined
    rows: np.ndarray
    warm: np.ndarray | None = None  # per row of `out`: from a window not full yet
    verdicts: np.ndarray | None = None  # per row of `out`: its verdict (worker.outputs.SCORE...)


def _predict(commit: Commit, store: SeriesStore, served: Served, batch: Batch,
             restart: np.ndarray | None, gap: np.ndarray | None) -> Part:
    """Advance every window, one model call per served version, adapt the intervals, judge
    the values (`gap`: missing steps before each value of the whole batch; None: none)."""
    kept = batch.values
    if served.replaces:
        kept = _spikes_replaced(store, served, batch, gap)
    adv = store.advance(batch.slots, kept, restart)
    m = len(batch)
    pos = batch.positions()[adv.order]  # sorted order; -1: a fill
    fc = Forecasts(*(np.full((m, len(served.models)), np.nan) for _ in range(3)))
    ready = np.zeros(m, dtype=bool)
    out = warm = None
    route = routing.Route(store, adv, served.models)
    for c, model in enumerate(served.models):
        ok = adv.filled >= routing.min_values(model)
        if not ok.any():
            continue
        x = np.ascontiguousarray(adv.windows[ok][:, store.width - model.n_steps:])
        if c == 0:
            t0 = time.perf_counter()
            rows, warm = route.predict(model, x, ok)
            commit.model_seconds += time.perf_counter() - t0
            asked = ok.copy()
            rows = _drop_non_finite(commit, batch, adv.order, ok, rows)
            if warm is not None:
                warm = warm[ok[asked]]
            ready, out = ok, rows
        else:
            shadow = _shadow_forecasts(model, x, route, ok)
            if shadow is None:
                continue
            rows = shadow
        fc.point[ok, c] = rows[:, 0]
        if model.has_interval:
            fc.lo[ok, c], fc.hi[ok, c] = rows[:, model.horizon], rows[:, 2 * model.horizon]
    joined, factor = adapt(store, adv, batch.values[adv.order], fc, served.gamma, served.alpha,
                           version_number(served.current.version), actual=pos >= 0)
    verdicts = None
    if served.anomaly_rate > 0:
        verdicts = _judge(store, joined, ready, served.anomaly_rate, _after_gap(joined, pos, gap))
    if out is None or not len(out):
        return Part(None, pos[:0], joined, adv.rows)
    if served.current.has_interval:
        out = _widen(out, served.current.horizon, factor[ready])
    real = pos[ready] >= 0  # a fill is never an output
    return Part(out[real], pos[ready][real], joined, adv.rows,
                None if warm is None else warm[real],
                None if verdicts is None else verdicts[ready][real])


def _spikes_replaced(store: SeriesStore, served: Served, batch: Batch,
                     gap: np.ndarray | None) -> np.ndarray:
    """The values the windows take (FORECAST_ANOMALY_WINDOW=replace): the first value of a
    series in the pass that its verdict will call a spike is replaced by the forecast it is
    judged against (later ones: `_run`).

    The verdict is worked out ahead, on a copy of the state, for each value that is its
    series' first in the pass and has a held forecast of the current version, as `_judge`
    will from the same state: the same flags. A fill, and a value after missing steps,
    stays as it is.
    """
    pos = batch.positions()
    first = np.unique(batch.slots, return_index=True)[1]
    first = first[pos[first] >= 0]
    if gap is not None:
        first = first[gap[pos[first]] == 0]
    current = store.aci_version[batch.slots[first]] == version_number(served.current.version)
    at = first[current]
    rows = batch.slots[at]
    if not len(at):
        return batch.values
    y = batch.values[at].astype(np.float64)
    point = store.pred[rows, 0].astype(np.float64)
    before = np.where(store.count[rows] >= 1, store.vals[rows, -1], np.nan)
    ahead = Calibration.empty(len(rows))
    ahead.restore(np.arange(len(rows)), store.calibration().snapshot(rows))
    v = judge_once(ahead, np.arange(len(rows)), y, closer(y - point, y - before),
                   served.anomaly_rate)
    spike = v.flag & (v.kind == 1)
    if not spike.any():
        return batch.values
    kept = batch.values.copy()
    kept[at[spike]] = point[spike]
    return kept


def _after_gap(joined: Joined, pos: np.ndarray, gap: np.ndarray | None) -> np.ndarray | None:
    """Values (sorted order) that follow missing steps not filled: the forecast their series
    holds was made for an earlier step, so they are not judged (None: no such value)."""
    if gap is None:
        return None
    missing = np.where(pos >= 0, gap[np.maximum(pos, 0)], 0) > 0
    group = joined.adv.group_of
    after_fill = np.zeros(len(pos), dtype=bool)
    after_fill[1:] = ~joined.actual[:-1] & (group[1:] == group[:-1])
    return missing & ~after_fill


def _judge(store: SeriesStore, joined: Joined, ready: np.ndarray, rate: float,
           after_gap: np.ndarray | None) -> np.ndarray:
    """The verdict on every value of a pass (sorted order) as rows of `outputs.VERDICT`
    columns, judged against its series' previous forecast and the interval written with it,
    and against the value before it (`worker.anomaly.closer`).

    Judged: actual values with a forecast one value earlier whose own forecast is written
    (a dead-lettered input gets no verdict); every actual value moves its series' level.
    """
    adv = joined.adv
    y = joined.y[:, 0]
    point = joined.prev_pt[:, 0]
    judged = joined.actual & ready & ~np.isnan(point)
    if after_gap is not None:
        judged &= ~after_gap
    before = np.where(adv.filled >= 2, adv.windows[:, -2], np.nan)  # the value before
    errors = np.where(judged, closer(y - point, y - before), np.nan)
    values = y if joined.actual.all() else np.where(joined.actual, y, np.nan)
    cal = store.calibration()
    if len(adv.starts) == len(y):  # every series once: one step, no sort
        v = judge_once(cal, adv.rows, values, errors, rate)
    else:
        v = judge(cal, adv.rows[adv.group_of], values, errors, rate)
    res = np.empty((len(y), len(outputs.VERDICT)))
    res[:, outputs.SCORE], res[:, outputs.FLAG] = v.score, v.flag
    res[:, outputs.DIRECTION], res[:, outputs.KIND] = v.direction, v.kind
    if v.flag.any():  # what the alerts say they were judged against
        widen = np.exp(joined.a_before)  # the factor the written interval was widened by
        res[:, outputs.POINT] = point
        res[:, outputs.LOWER] = point - (point - joined.prev_lo[:, 0]) * widen
        res[:, outputs.UPPER] = point + (joined.prev_hi[:, 0] - point) * widen
    else:
        res[:, outputs.POINT:] = np.nan
    return res


def _shadow_forecasts(model: Predictor, x: np.ndarray, route: routing.Route, ok: np.ndarray
                      ) -> np.ndarray | None:
    """A shadow's forecasts, NaN where not finite (not scored); None when it raised or gave
    another shape than it declares."""
    width = model.horizon * (3 if model.has_interval else 1)
    try:
        rows = np.asarray(route.predict(model, x, ok)[0], dtype=np.float64)
        if rows.shape != (len(x), width):
            raise ValueError(f"output shape {rows.shape}, expected {(len(x), width)}")
    except Exception as exc:  # a broken candidate must not stop the serving
        metrics.SHADOW_ERRORS.inc()
        if model.version not in _FAILED_SHADOWS:  # once per version: it fails every batch
            _FAILED_SHADOWS.add(model.version)
            log.warning("shadow %s failed on a batch (not scored while it fails): %s: %s",
                        model.version, type(exc).__name__, exc)
        return None
    return np.where(np.isfinite(rows).all(axis=1, keepdims=True), rows, np.nan)


def _widen(out: np.ndarray, h: int, factor: np.ndarray) -> np.ndarray:
    """Intervals of every step widened (or narrowed) by each row's adaptive factor."""
    out = out.astype(np.float64)
    point, f = out[:, :h], factor[:, None]
    out[:, h:2 * h] = point - (point - out[:, h:2 * h]) * f
    out[:, 2 * h:] = point + (out[:, 2 * h:] - point) * f
    return out


def _drop_non_finite(commit: Commit, batch: Batch, order: np.ndarray, ready: np.ndarray,
                     out: np.ndarray) -> np.ndarray:
    """Dead-letter the inputs whose forecast is not finite; `ready` and `out` lose them."""
    finite = np.isfinite(out).all(axis=1)
    if finite.all():
        return out
    rows = np.flatnonzero(ready)
    for pos in order[rows[~finite]].tolist():
        if batch.ids[pos]:  # not a fill
            dead_letter(commit, batch.ids[pos], batch.fields[pos], "prediction_not_finite")
    ready[rows[~finite]] = False
    return out[finite]


def _outputs(commit: Commit, served: Served, out: np.ndarray, where: np.ndarray,
             batch: Batch, timing: Timing, warm: np.ndarray | None = None,
             verdicts: np.ndarray | None = None) -> None:
    """The output entries of the values at batch positions `where`, in stream order
    (`warmup=1` where `warm`: the series' window is not full yet; the anomaly fields from
    `verdicts`), and the alerts of the flagged ones."""
    back = np.argsort(where, kind="stable")
    pos = where[back].tolist()
    model = served.current
    judged = None if verdicts is None else verdicts[back]
    written = outputs.build(model.version, model.horizon, model.has_interval, out[back], pos,
                            batch.ids, batch.series, batch.stamps, served.follow, timing,
                            None if warm is None else warm[back], judged)
    commit.outputs, commit.latest, commit.follow = written.outputs, written.latest, written.follow
    commit.follow_series = written.follow_series
    if judged is not None and (judged[:, outputs.FLAG] > 0).any():
        commit.alerts = outputs.alerts(model.version, judged, pos, batch.ids, batch.series,
                                       batch.stamps, batch.values)
        commit.anomalies = outputs.tally(judged)
    commit.n_predictions = len(pos)
    now = int(time.time() * 1000)
    commit.lags_ms = [now - entry_ms(batch.ids[pos[j]]) for j in lag_sample(len(pos))]
