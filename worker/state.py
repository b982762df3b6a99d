"""Per-series rolling windows as preallocated numpy arrays, with an LRU cap.

One `SeriesStore` per owned shard. Row `slot` holds a series' last `width` values
right-aligned (newest last); `count` says how many of them are real. Beside the window, a
row keeps, per served model version (column 0 the current one, then the shadows), the
last forecast and interval that the series' next value is scored against, and the current
version's adaptive-interval factor (`aci`), and the series' anomaly-verdict state
(`worker.anomaly.Calibration`, the `cal_*` arrays, 28 bytes). Rows are encoded as checkpoint blobs
(`worker.checkpoint`) written by the per-batch commit and read back on demand.
Every write to the arrays goes through a method here: `place` (rows for a batch's series),
`accept_new` and `accept_in_order` (the seq and ts rules), `advance` (append a batch's
values), `set_window` (tests, tools), and the live-scoring state that `worker.scoring`
computes: `restart_intervals`, `keep_forecasts`, `set_scales`, `set_drift`. The step ring is
moved on by `worker.timing.observe`, given the array; the verdict state by
`worker.anomaly.judge`, given `calibration()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from worker import metrics
from worker.anomaly import Q0, Calibration
from worker.checkpoint import (
    HEAD,
    CheckpointError,
    blob_dtype,
    decode_blob,
    decode_same,
    encode_rows,
)
from worker.timing import RING

_HEAD_BYTES = HEAD.to_bytes(4, "little")
log = logging.getLogger(__name__)
_LOGGED_UNREADABLE: set[bytes] = set()  # series whose unreadable checkpoint was logged
_LOGGED_MAX = 100_000

TICK_LIMIT = 1 << 31  # `last_used` is uint32: ticks are rebased well before 2**32
COLUMNS = 3  # model versions scored per series: the current one and up to two shadows
# A store holds as many version columns as are served (1 without shadows: each column costs
# 12 bytes per series), see `RowArrays.remap`.


@dataclass
class Advance:
    """A batch's values appended to their windows, grouped by series (stream order inside).

    `order` sorts the batch by row; in that sorted order, `windows[j]` is the window right
    after value j and `filled[j]` how many of its values are real. Groups (one per series)
    start at `starts` and end at `ends`; `rows` are their store rows.
    """

    order: np.ndarray
    windows: np.ndarray
    filled: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    rows: np.ndarray
    group_of: np.ndarray  # each value's group (sorted order)


# Row arrays besides the window: name -> (dtype, per-row shape, value of an empty row).
_FIELDS: dict[str, tuple[type, tuple[int, ...], float]] = {
    "count": (np.int32, (), 0),
    "last_ts": (np.int64, (), -1),
    "seq": (np.int64, (), -1),  # the producer sequence number last accepted (-1: none)
    "steps": (np.float32, (RING,), np.nan),  # the last ts differences (worker.timing)
    "last_used": (np.uint32, (), 0),
    "aci_version": (np.int32, (), -1),  # the version number `aci` (and column 0) belong to
    "aci": (np.float64, (), 0.0),  # log width factor of the current version's interval
    "pred": (np.float32, (1,), np.nan),  # last step-1 forecast per version column
    "lo": (np.float32, (1,), np.nan),  # its interval, as the model gave it
    "hi": (np.float32, (1,), np.nan),
    "period": (np.int16, (), 0),  # seasonal period (versions with several parts: worker.routing)
    # drift only (not checkpointed): see worker.scoring
    "nscale": (np.float32, (), np.nan),  # EWMA of |y_t - y_t-1|
    "ph_n": (np.float32, (), 0.0),
    "ph_mean": (np.float32, (), 0.0),
    "ph_cum": (np.float32, (), 0.0),
    "ph_min": (np.float32, (), 0.0),
    # the verdict state (worker.anomaly.Calibration, checkpointed), as `Calibration.empty`
    "cal_scale": (np.float32, (), np.nan),
    "cal_q": (np.float32, (), Q0),
    "cal_level": (np.float32, (), np.nan),
    "cal_spread": (np.float32, (), 0.0),
    "cal_ql": (np.float32, (), Q0),
    "cal_peak": (np.float32, (), 0.0),
    "cal_n": (np.uint16, (), 0),
    "cal_mode": (np.int8, (), 0),
    "cal_since": (np.uint8, (), 0),
}


class RowArrays:
    """The row arrays of a store: allocation, growth, LRU eviction, width and column changes."""

    count: np.ndarray
    last_ts: np.ndarray
    seq: np.ndarray
    steps: np.ndarray
    last_used: np.ndarray
    aci_version: np.ndarray
    aci: np.ndarray
    pred: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    period: np.ndarray
    nscale: np.ndarray
    ph_n: np.ndarray
    ph_mean: np.ndarray
    ph_cum: np.ndarray
    ph_min: np.ndarray
    cal_scale: np.ndarray
    cal_q: np.ndarray
    cal_level: np.ndarray
    cal_spread: np.ndarray
    cal_ql: np.ndarray
    cal_peak: np.ndarray
    cal_n: np.ndarray
    cal_mode: np.ndarray
    cal_since: np.ndarray

    def __init__(self, width: int, max_series: int = 1_000_000, initial: int = 1024) -> None:
        self.width = width
        self.max_series = max_series
        cap = max(1, min(initial, max_series))
        self.index: dict[bytes, int] = {}
        self.keys: list[bytes | None] = [None] * cap
        self.vals = np.zeros((cap, width), dtype=np.float32)
        for name, (dtype, shape, empty) in _FIELDS.items():
            setattr(self, name, np.full((cap, *shape), empty, dtype=dtype))
        self.free: list[int] = list(range(cap - 1, -1, -1))
        self.tick = 1
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.index)

    def _grow(self) -> None:
        old = len(self.keys)
        new = min(old * 2, self.max_series)
        if new <= old:
            return
        self.keys.extend([None] * (new - old))
        self.vals = np.concatenate([self.vals, np.zeros((new - old, self.width), np.float32)])
        for name, (dtype, _, empty) in _FIELDS.items():
            have = getattr(self, name)
            more: np.ndarray = np.full((new - old, *have.shape[1:]), empty, dtype=dtype)
            setattr(self, name, np.concatenate([have, more]))
        self.free.extend(range(new - 1, old - 1, -1))

    def _evict(self) -> None:
        """Free the least recently used tenth of the rows not touched in this batch."""
        # Only called when every row is taken, so every row is a candidate but this batch's.
        candidates = np.flatnonzero(self.last_used < self.tick)
        n = max(1, len(self.keys) // 10)
        if len(candidates) == 0:
            raise MemoryError("series cap reached within one batch; raise max_series")
        n = min(n, len(candidates))
        oldest = candidates[np.argpartition(self.last_used[candidates], n - 1)[:n]]
        for slot in oldest.tolist():
            key = self.keys[slot]
            if key is not None:
                del self.index[key]
                self._release(slot)
        self.evicted += n
        log.debug("evicted %d series (LRU), %d held", n, len(self.index))

    def _release(self, slot: int) -> None:
        self.keys[slot] = None
        self.free.append(slot)

    def next_tick(self) -> None:
        """Start a new LRU tick (one per batch); ticks are rebased before `last_used` (uint32)
        would overflow, keeping the order of the rows used in the last 2**30 ticks."""
        self.tick += 1
        if self.tick >= TICK_LIMIT:
            shift = self.tick - TICK_LIMIT // 2
            recent = self.last_used > shift
            self.last_used[recent] -= shift
            self.last_used[~recent] = 0
            self.tick -= shift

    def keys_of(self, slots: np.ndarray) -> list[bytes]:
        """Series ids of the given rows."""
        keys = self.keys
        return [keys[s] for s in slots.tolist()]

    def resize(self, width: int) -> None:
        """Change the window width (a model with another n_steps), keeping the newest values."""
        if width == self.width:
            return
        keep = min(width, self.width)
        vals = np.zeros((len(self.keys), width), dtype=np.float32)
        vals[:, width - keep:] = self.vals[:, self.width - keep:]
        self.vals = vals
        np.minimum(self.count, width, out=self.count)
        self.width = width

    def calibration(self) -> Calibration:
        """The rows' verdict state, as views of the store's arrays (judging moves them on)."""
        return Calibration(self.cal_scale, self.cal_q, self.cal_level, self.cal_spread,
                           self.cal_ql, self.cal_peak, self.cal_n, self.cal_mode,
                           self.cal_since)

    @property
    def columns(self) -> int:
        """Version columns held (the served versions, current first)."""
        return int(self.pred.shape[1])

    def save_rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """A copy of the rows' windows and every row array, for `load_rows`."""
        saved = {name: getattr(self, name)[rows].copy() for name in _FIELDS}
        saved["vals"] = self.vals[rows].copy()
        return saved

    def load_rows(self, rows: np.ndarray, saved: dict[str, np.ndarray]) -> None:
        """Put the rows back as `save_rows` found them (same columns)."""
        for name, arr in saved.items():
            getattr(self, name)[rows] = arr

    def ensure_columns(self, cols: int) -> None:
        """At least `cols` version columns (a store made before the shadows were known)."""
        if self.columns < cols:
            self.remap([*range(self.columns), *[None] * (cols - self.columns)])

    def remap(self, columns: list[int | None]) -> None:
        """New version columns: column c takes old column `columns[c]` (None: starts empty).
        A new current version (column 0) has its own table of periods: the periods taken from
        the old one's table (positive) are looked up again (`worker.routing`)."""
        n = min(max(1, len(columns)), COLUMNS)
        if columns[:1] != [0]:
            self.period[self.period > 0] = 0
        for name in ("pred", "lo", "hi"):
            old = getattr(self, name)
            new = np.full((old.shape[0], n), np.nan, dtype=old.dtype)
            for c, was in enumerate(columns[:n]):
                if was is not None and was < old.shape[1]:
                    new[:, c] = old[:, was]
            setattr(self, name, new)


class SeriesStore(RowArrays):
    """Rolling windows of many series in one shard, bounded to `max_series` rows."""

    def add_many(self, series: list[bytes], blobs: list[bytes | None]) -> None:
        """Rows for many series at once, restoring same-width checkpoints in one numpy pass."""
        slots = []
        for s in series:
            if not self.free:
                self._grow()
            if not self.free:
                self._evict()
            slot = self.free.pop()
            self.index[s] = slot
            self.keys[slot] = s
            self.last_used[slot] = self.tick  # not evictable by the next ones of this call
            slots.append(slot)
        idx = np.asarray(slots, dtype=np.int64)
        self.vals[idx] = 0.0
        for name, (_, _, empty) in _FIELDS.items():
            getattr(self, name)[idx] = empty
        self.last_used[idx] = self.tick
        size = blob_dtype(self.width).itemsize
        same = [i for i, b in enumerate(blobs)
                if b is not None and len(b) == size and b[:4] == _HEAD_BYTES]
        done = set()
        if same:
            rows, ok = decode_same([blobs[i] for i in same], self.width)  # type: ignore[misc]
            good = [i for i, fine in zip(same, ok.tolist(), strict=True) if fine]
            rows = rows[ok]
            at = idx[good]
            self.vals[at], self.count[at], self.last_ts[at] = rows["v"], rows["count"], \
                rows["last_ts"]
            self.aci_version[at], self.aci[at] = rows["aci_version"], rows["aci"]
            self.pred[at, 0] = rows["pred"]
            self.lo[at, 0], self.hi[at, 0] = rows["lo"], rows["hi"]
            self.seq[at], self.steps[at] = rows["seq"], rows["steps"]
            self.period[at] = rows["period"]
            self.calibration().restore(at, rows["cal"])
            done = set(good)
        for i, blob in enumerate(blobs):  # other widths (a model change), older versions, errors
            if blob is not None and i not in done:
                self._restore(series[i], slots[i], blob)

    def _restore(self, series: bytes, slot: int, blob: bytes) -> None:
        try:
            c = decode_blob(blob)
        except CheckpointError as exc:  # that series starts afresh; its next commit rewrites it
            _unreadable(series, exc)
            return
        keep = min(c.count, self.width)
        if keep:
            self.vals[slot, self.width - keep:] = c.values[c.count - keep:]
        self.count[slot], self.last_ts[slot], self.seq[slot] = keep, c.last_ts, c.seq
        self.steps[slot] = c.steps
        self.aci_version[slot], self.aci[slot] = c.aci_version, c.aci
        self.pred[slot, 0], self.lo[slot, 0], self.hi[slot, 0] = c.pred, c.lo, c.hi
        self.period[slot] = c.period
        if c.cal is not None:
            self.calibration().restore(np.array([slot]), c.cal)

    def add(self, series: bytes, blob: bytes | None = None) -> int:
        """Give `series` a row (empty, or restored from a checkpoint blob) and return it."""
        self.add_many([series], [blob])
        return self.index[series]

    def place(self, series: list[bytes], load: Callable[[list[bytes]], list[bytes | None]]
              ) -> np.ndarray:
        """The rows of a batch's series (one per value), loading unknown ones from checkpoints.

        Starts a new LRU tick: rows of this batch are never evicted to make room for it.
        """
        self.next_tick()
        index = self.index
        unknown = list({s for s in series if s not in index})
        if unknown:
            known = [index[s] for s in set(series) if s in index]
            self.last_used[np.asarray(known, dtype=np.int64)] = self.tick
            self.add_many(unknown, load(unknown))
        return np.asarray([index[s] for s in series], dtype=np.int64)

    def accept_in_order(self, slots: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        """Which values keep their series' ts order (no ts: always); records the accepted ts.

        An equal ts is accepted: only an older one is out of order.
        """
        return _accept(self.last_ts, slots, stamps, strict=False)

    def accept_new(self, slots: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        """Which values carry a producer sequence number above their series' last one (no
        seq: always); records the accepted ones. Equal or lower: a duplicate."""
        return _accept(self.seq, slots, seqs, strict=True)

    def advance(self, slots: np.ndarray, values: np.ndarray,
                restart: np.ndarray | None = None) -> Advance:
        """Append each value to its series' window, for a whole batch at once.

        `restart` (stream order): the window starts again at these values (older values
        no longer count).
        """
        m, width = len(slots), self.width
        self.last_used[slots] = self.tick
        order = np.argsort(slots, kind="stable")
        s_sorted = slots[order]
        # np.r_ costs microseconds per call: in a small batch that is most of the time
        starts = np.flatnonzero(np.concatenate(([True], s_sorted[1:] != s_sorted[:-1])))
        bounds = np.append(starts, m)
        group_of = np.repeat(np.arange(len(starts)), np.diff(bounds))
        rows = s_sorted[starts]
        pos = np.arange(m) - starts[group_of]  # position inside the group

        # Flat layout per group: its old window (width values) then its new values.
        flat = np.empty(len(starts) * width + m, dtype=np.float32)
        old_idx = (starts + np.arange(len(starts)) * width)[:, None] + np.arange(width)
        flat[old_idx] = self.vals[rows]
        flat[group_of * width + width + np.arange(m)] = values[order]
        windows = sliding_window_view(flat, width)[group_of * width + np.arange(m) + 1]

        filled = np.minimum(self.count[rows][group_of] + pos + 1, width)
        if restart is not None and restart.any():
            at = np.where(restart[order], np.arange(m), -1)
            last = np.maximum.accumulate(at)  # the latest restart so far, in sorted order
            again = last >= starts[group_of]  # ... inside this group
            filled = np.where(again, np.minimum(np.arange(m) - last + 1, width), filled)
        ends = bounds[1:] - 1
        self.vals[rows] = windows[ends]
        self.count[rows] = filled[ends]
        return Advance(order, windows, filled, starts, ends, rows, group_of)

    def set_window(self, series: bytes, values: list[float] | np.ndarray,
                   last_ts: int = -1) -> int:
        """Give `series` exactly these last values (at most `width`); its row."""
        slot = self.index[series] if series in self.index else self.add(series)
        kept = np.asarray(values, dtype=np.float32)[-self.width:]
        self.vals[slot] = 0.0
        if len(kept):
            self.vals[slot, self.width - len(kept):] = kept
        self.count[slot] = len(kept)
        self.last_ts[slot] = last_ts
        return slot

    def forget(self, series: list[bytes]) -> int:
        """Drop these series' windows (their checkpoints expired); how many were held."""
        n = 0
        for s in series:
            slot = self.index.pop(s, None)
            if slot is not None:
                self._release(slot)
                n += 1
        return n

    # --- the live-scoring state of the rows (worker.scoring computes, the store keeps) ---
    def restart_intervals(self, rows: np.ndarray, version: int) -> None:
        """These rows' interval state belongs to `version` now and starts again."""
        self.aci[rows] = 0.0
        self.pred[rows, 0] = self.lo[rows, 0] = self.hi[rows, 0] = np.nan
        self.aci_version[rows] = version

    def keep_forecasts(self, rows: np.ndarray, point: np.ndarray, lo: np.ndarray,
                       hi: np.ndarray, aci: np.ndarray) -> None:
        """The newest forecasts (per version column) the next values are scored against,
        and the current version's adaptive factor."""
        cols = point.shape[1]
        self.pred[rows, :cols], self.lo[rows, :cols], self.hi[rows, :cols] = point, lo, hi
        self.aci[rows] = aci

    def set_scales(self, rows: np.ndarray, scale: np.ndarray) -> None:
        """The rows' naive-error scales (EWMA of |y_t - y_t-1|)."""
        self.nscale[rows] = scale

    def set_drift(self, rows: np.ndarray, n: np.ndarray, mean: np.ndarray, cum: np.ndarray,
                  low: np.ndarray) -> None:
        """The rows' Page-Hinkley state."""
        self.ph_n[rows], self.ph_mean[rows], self.ph_cum[rows], self.ph_min[rows] = \
            n, mean, cum, low

    def encode(self, slots: list[int] | np.ndarray) -> list[bytes]:
        """Checkpoint blobs of the given rows (one bytes object each)."""
        idx = np.asarray(slots, dtype=np.int64)
        return encode_rows(self.count[idx], self.last_ts[idx], self.aci_version[idx],
                           self.aci[idx], self.pred[idx, 0], self.lo[idx, 0], self.hi[idx, 0],
                           self.seq[idx], self.steps[idx], self.period[idx],
                           self.calibration().snapshot(idx), self.vals[idx])


def _unreadable(series: bytes, exc: CheckpointError) -> None:
    """Count an unreadable checkpoint; log it once per series (a bounded memory of them)."""
    metrics.CHECKPOINT_ERRORS.inc()
    if series in _LOGGED_UNREADABLE:
        return
    if len(_LOGGED_UNREADABLE) >= _LOGGED_MAX:
        _LOGGED_UNREADABLE.clear()
    _LOGGED_UNREADABLE.add(series)
    log.warning("checkpoint of series %r cannot be read (%s): it starts a fresh window",
                series.decode("utf-8", "replace"), exc)


def running_max_before(slots: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per value, the largest `x` of the earlier values of its slot in this batch (-1: none),
    and the order that sorts the batch by slot (the result is in that order).

    >>> before, order = running_max_before(np.array([0, 1, 0, 0]), np.array([5, 9, 3, 7]))
    >>> before.tolist(), order.tolist()
    ([-1, 5, 5, -1], [0, 2, 3, 1])
    """
    order = np.argsort(slots, kind="stable")
    g, v = slots[order], x[order].astype(np.int64)
    prev = np.full(len(v), -1, dtype=np.int64)
    if len(v) > 1:
        same = g[1:] == g[:-1]
        prev[1:] = np.where(same, v[:-1], -1)
        k = 1
        while k < len(v):  # prefix maximum inside each group, by doubling
            joined = g[k:] == g[:-k]
            prev[k:] = np.where(joined, np.maximum(prev[k:], prev[:-k]), prev[k:])
            k *= 2
    return prev, order


def _accept(last: np.ndarray, slots: np.ndarray, x: np.ndarray, strict: bool) -> np.ndarray:
    """Values whose `x` is at least (`strict`: above) the largest before it, both in `last`
    (per row) and earlier in the batch; `last` takes the new maxima. x < 0: no value."""
    ok = np.ones(len(slots), dtype=bool)
    if len(x) == 0 or x.max() < 0:
        return ok
    prev, order = running_max_before(slots, x)
    before = np.maximum(prev, last[slots[order]])
    xs = x[order]
    bad = (xs >= 0) & ((xs <= before) if strict else (xs < before))
    ok[order[bad]] = False
    np.maximum.at(last, slots[ok], x[ok])
    return ok

