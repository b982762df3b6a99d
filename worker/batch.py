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
from worker import metrics, routing
from worker.scoring import Forecasts, Joined, Scores, adapt, evaluate
from worker.state import COLUMNS, SeriesStore

log = logging.getLogger(__name__)
_FAILED_SHADOWS: set[str] = set()  # versions whose failure was logged

Entry = tuple[bytes, list[bytes] | None]  # (entry id, flat fields); None = deleted entry
DEADLETTER_FIELD_MAX = 1024  # bytes kept of each field of a dead letter (the input keeps all)
DEADLETTER_PAIRS_MAX = 16  # field pairs kept of a dead letter


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

    @property
    def models(self) -> list[Predictor]:
        """Current first, then the shadows that fit in the store's columns."""
        return [self.current, *self.shadows][:COLUMNS]

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
    predictions: list[bytes | str] = field(default_factory=list)  # flat args, see _predictions
    n_predictions: int = 0
    extra_fields: tuple[str, ...] = ()
    deadletters: list[list[bytes | str]] = field(default_factory=list)  # flat field/value pairs
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
    pending: tuple[SeriesStore, Joined] | None = None  # scored by `finish_scores`
    versions: tuple[str, ...] = ()  # the versions of the score columns


def id_key(entry_id: bytes) -> tuple[int, int]:
    """A stream entry id as (ms, seq), which orders ids as Redis does (bytes do not).

    >>> sorted([b"5-10", b"5-9", b"40-0"], key=id_key)
    [b'5-9', b'5-10', b'40-0']
    """
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


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


def _fmt(values: Sequence[float]) -> list[str]:
    return [f"{v:.7g}" for v in values]


@dataclass
class Batch:
    """The valid values of one read, in stream order: one row per value."""

    ids: list[bytes]
    fields: list[list[bytes]]  # the raw entries (for dead letters)
    series: list[bytes]
    values: np.ndarray  # float32, what the windows hold
    stamps: np.ndarray  # int64 epoch ms, -1 without ts
    slots: np.ndarray  # int64 store rows (set by `SeriesStore.place`)

    def __len__(self) -> int:
        return len(self.ids)

    def where(self, keep: np.ndarray) -> Batch:
        """The values where `keep` is True (all of them: this batch itself)."""
        if keep.all():
            return self
        idx = np.flatnonzero(keep).tolist()
        return Batch([self.ids[i] for i in idx], [self.fields[i] for i in idx],
                     [self.series[i] for i in idx], self.values[keep], self.stamps[keep],
                     self.slots[keep])


def parse_batch(entries: Sequence[Entry], limits: Limits, commit: Commit) -> Batch:
    """Parse every entry: good ones into a Batch, bad ones into the commit's dead letters."""
    ids: list[bytes] = []
    kept: list[list[bytes]] = []
    series: list[bytes] = []
    values: list[float] = []
    stamps: list[int] = []
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
    return Batch(ids, kept, series, np.asarray(values, dtype=np.float32),
                 np.asarray(stamps, dtype=np.int64), np.zeros(len(ids), dtype=np.int64))


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
    in_order = store.accept_in_order(batch.slots, batch.stamps)
    if not in_order.all():
        for i in np.flatnonzero(~in_order).tolist():
            dead_letter(commit, batch.ids[i], batch.fields[i], "ts_out_of_order")
        batch = batch.where(in_order)
        commit.n_values = len(batch)
    if batch:
        _predict(commit, store, served, batch)
    if not defer:
        finish_scores(commit)
    return commit


def finish_scores(commit: Commit) -> None:
    """Score the batch of a commit built with `defer` (no-op when done or nothing to score)."""
    if commit.pending is None:
        return
    store, joined = commit.pending
    commit.pending = None
    scores = evaluate(store, joined)
    commit.scores = scores
    commit.abs_err_sum, commit.abs_err_n = float(scores.abs_err[0]), int(scores.forecast_n[0])


def _predict(commit: Commit, store: SeriesStore, served: Served, batch: Batch) -> None:
    """Advance every window, one model call per served version, score, fill the commit."""
    adv = store.advance(batch.slots, batch.values)
    m = len(batch)
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
            commit.model_seconds = time.perf_counter() - t0
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
                           version_number(served.current.version))
    commit.pending = (store, joined)
    pairs = zip(store.keys_of(adv.rows), store.encode(adv.rows), strict=True)
    commit.state = [b for pair in pairs for b in pair]
    if out is not None and len(out):
        if served.current.has_interval:
            out = _widen(out, served.current.horizon, factor[ready])
        _predictions(commit, served.current, out, adv.order[ready], batch, warm)


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
        dead_letter(commit, batch.ids[pos], batch.fields[pos], "prediction_not_finite")
    ready[rows[~finite]] = False
    return out[finite]


def _predictions(commit: Commit, model: Predictor, out: np.ndarray, where: np.ndarray,
                 batch: Batch, warm: np.ndarray | None = None) -> None:
    """Prediction arg groups in stream order: series, prediction, source_id, ts, extras
    (`warmup=1` where `warm`: the series' window is not full yet)."""
    ids, series, stamps = batch.ids, batch.series, batch.stamps
    back = np.argsort(where, kind="stable")
    rows = out[back]
    pos = where[back].tolist()
    h = model.horizon
    cols = [_fmt(rows[:, 0].tolist())]
    extra: tuple[str, ...] = ()
    if model.has_interval:
        cols += [_fmt(rows[:, h].tolist()), _fmt(rows[:, 2 * h].tolist())]
        extra += ("lower", "upper")
    if h > 1:
        cols.append([",".join(_fmt(r)) for r in rows[:, :h].tolist()])
        extra += ("path",)
        if model.has_interval:
            cols.append([",".join(_fmt(r)) for r in rows[:, h:2 * h].tolist()])
            cols.append([",".join(_fmt(r)) for r in rows[:, 2 * h:3 * h].tolist()])
            extra += ("lower_path", "upper_path")
    if warm is not None and warm.any():  # an empty value is left out of the entry
        cols.append(np.where(warm[back], "1", "").tolist())
        extra += ("warmup",)
    commit.extra_fields = extra
    step = max(1, len(pos) // 100)
    now = int(time.time() * 1000)
    commit.lags_ms = [now - entry_ms(ids[pos[j]]) for j in range(0, len(pos), step)]
    if len(pos) == len(ids):  # every value predicted: pos is 0..m-1
        ser, src = series, ids
    else:
        ser, src = [series[i] for i in pos], [ids[i] for i in pos]
    if stamps.max() < 0:
        tss = [""] * len(pos)
    else:
        stamp_list = stamps.tolist()
        tss = [str(stamp_list[i]) if stamp_list[i] >= 0 else "" for i in pos]
    # The flat script args, (series, prediction, source_id, ts, extras...) per prediction,
    # filled column by column with slice assignments (no per-prediction Python work).
    columns: list[Sequence[bytes | str]] = [ser, cols[0], src, tss, *cols[1:]]
    width = len(columns)
    flat: list[bytes | str] = [b""] * (width * len(pos))
    for k, column in enumerate(columns):
        flat[k::width] = column
    commit.predictions = flat
    commit.n_predictions = len(pos)
