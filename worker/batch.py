"""Turning one read of stream entries into one commit: parse, windows, ONE model call.

Pure with respect to Redis: checkpointed windows of series not in memory come through
the `load` callback, and the result is a `Commit` that `worker.scripts` writes atomically.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from forecast.grammar import Limits, parse_fields
from worker.state import SeriesStore

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
    values: int = 0
    entries: int = 0  # entries read for this commit
    sent_at: float = 0.0  # perf_counter() when the commit was sent
    abs_err_sum: float = 0.0
    abs_err_n: int = 0
    model_seconds: float = 0.0
    lags_ms: list[int] = field(default_factory=list)


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


def build_commit(
    entries: Sequence[Entry],
    store: SeriesStore,
    model: Predictor,
    limits: Limits,
    load: Callable[[list[bytes]], list[bytes | None]],
    commit: Commit | None = None,
) -> Commit:
    """Process one batch of one shard's entries (in stream order) into a `Commit`."""
    commit = commit if commit is not None else Commit()
    commit.version = model.version
    ids: list[bytes] = []
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
        series.append(parsed[0])
        values.append(parsed[1])
        stamps.append(parsed[2])
    commit.values = len(values)
    if not values:
        return commit

    store.tick += 1
    index = store.index
    unknown = list({s for s in series if s not in index})
    if unknown:
        # Series of this batch must not be evicted to make room for the new ones.
        known = [index[s] for s in set(series) if s in index]
        store.last_used[np.asarray(known, dtype=np.int64)] = store.tick
        store.add_many(unknown, load(unknown))
    slots = [index[s] for s in series]
    _check_timestamps(commit, entries, ids, series, values, stamps, slots, store)
    if not ids:
        return commit
    _predict(commit, store, model, ids, series, values, stamps, slots)
    return commit


def _check_timestamps(
    commit: Commit, entries: Sequence[Entry], ids: list[bytes], series: list[bytes],
    values: list[float], stamps: list[int], slots: list[int], store: SeriesStore,
) -> None:
    """Dead-letter values whose ts is older than their series' newest ts (in place)."""
    if max(stamps) < 0:
        return
    fields_of = {eid: f for eid, f in entries}
    keep = []
    last_ts = store.last_ts
    for i, ts in enumerate(stamps):
        if ts >= 0:
            slot = slots[i]
            if ts < last_ts[slot]:
                dead_letter(commit, ids[i], fields_of[ids[i]] or [], "ts_out_of_order")
                continue
            last_ts[slot] = ts
        keep.append(i)
    if len(keep) < len(ids):
        ids[:] = [ids[i] for i in keep]
        series[:] = [series[i] for i in keep]
        values[:] = [values[i] for i in keep]
        stamps[:] = [stamps[i] for i in keep]
        slots[:] = [slots[i] for i in keep]
        commit.values = len(ids)


def _predict(
    commit: Commit, store: SeriesStore, model: Predictor, ids: list[bytes], series: list[bytes],
    values: list[float], stamps: list[int], slots: list[int],
) -> None:
    """Advance every window, predict all full ones in one call, fill the commit."""
    m = len(ids)
    width = store.width
    slot_arr = np.asarray(slots, dtype=np.int64)
    val_arr = np.asarray(values, dtype=np.float32)
    store.last_used[slot_arr] = store.tick

    # Group by series, keeping stream order inside each group.
    order = np.argsort(slot_arr, kind="stable")
    s_sorted = slot_arr[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    group_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, m]))
    g_slots = s_sorted[starts]
    pos = np.arange(m) - starts[group_of]  # position inside the group

    # Flat layout per group: its old window (width values) then its new values.
    flat = np.empty(len(starts) * width + m, dtype=np.float32)
    old_idx = (starts + np.arange(len(starts)) * width)[:, None] + np.arange(width)
    flat[old_idx] = store.vals[g_slots]
    flat[group_of * width + width + np.arange(m)] = val_arr[order]
    windows = sliding_window_view(flat, width)[group_of * width + np.arange(m) + 1]

    filled = np.minimum(store.count[g_slots][group_of] + pos + 1, width)
    ends = np.r_[starts[1:], m] - 1
    store.vals[g_slots] = windows[ends]
    store.count[g_slots] = filled[ends]

    ready = filled >= model.n_steps
    pred_sorted = np.full(m, np.nan, dtype=np.float32)
    out = None
    if ready.any():
        x = np.ascontiguousarray(windows[ready][:, width - model.n_steps:])
        t0 = time.perf_counter()
        out = model.predict(x)
        commit.model_seconds = time.perf_counter() - t0
        pred_sorted[ready] = out[:, 0]

    # Online accuracy: each value against the previous step-1 prediction of its series.
    prev = np.empty(m, dtype=np.float32)
    prev[1:] = pred_sorted[:-1]
    prev[starts] = store.last_pred[g_slots]
    err = np.abs(val_arr[order] - prev)
    known = ~np.isnan(err)
    commit.abs_err_n = int(known.sum())
    commit.abs_err_sum = float(err[known].sum(dtype=np.float64))
    store.last_pred[g_slots] = pred_sorted[ends]

    pairs = zip(store.keys_of(g_slots), store.encode(g_slots), strict=True)
    commit.state = [b for pair in pairs for b in pair]
    if out is not None:
        _predictions(commit, model, out, order[ready], ids, series, stamps)


def _predictions(
    commit: Commit, model: Predictor, out: np.ndarray, where: np.ndarray,
    ids: list[bytes], series: list[bytes], stamps: list[int],
) -> None:
    """Prediction arg groups in stream order: series, prediction, source_id, ts, extras."""
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
    commit.extra_fields = extra
    step = max(1, len(pos) // 100)
    now = int(time.time() * 1000)
    commit.lags_ms = [now - entry_ms(ids[pos[j]]) for j in range(0, len(pos), step)]
    if len(pos) == len(ids):  # every value predicted: pos is 0..m-1
        ser, src = series, ids
    else:
        ser, src = [series[i] for i in pos], [ids[i] for i in pos]
    if max(stamps) < 0:
        tss = [""] * len(pos)
    else:
        tss = [str(stamps[i]) if stamps[i] >= 0 else "" for i in pos]
    # The flat script args, (series, prediction, source_id, ts, extras...) per prediction,
    # filled column by column with slice assignments (no per-prediction Python work).
    columns: list[Sequence[bytes | str]] = [ser, cols[0], src, tss, *cols[1:]]
    width = len(columns)
    flat: list[bytes | str] = [b""] * (width * len(pos))
    for k, column in enumerate(columns):
        flat[k::width] = column
    commit.predictions = flat
    commit.n_predictions = len(pos)
