"""Checkpoint blobs: every layout still read, anything unreadable refused (never misread),
and a series with an unreadable checkpoint starts afresh without touching its batch-mates."""

from __future__ import annotations

import numpy as np
import pytest

from forecast.grammar import Limits
from tests.helpers import LinearModel
from worker import metrics
from worker.batch import build_commit
from worker.checkpoint import (
    CURRENT,
    FLAG,
    FLAG3,
    FLAG4,
    CheckpointError,
    blob_dtype,
    blob_version,
    decode_blob,
    head_of,
)
from worker.state import SeriesStore


def _old(version: int, width: int, count: int, values: list[float]) -> bytes:
    row = np.zeros(1, dtype=blob_dtype(width, version=version))
    if version >= 4:
        row["head"], row["count"], row["seq"] = head_of(version), count, -1
    else:
        row["count"] = count | {1: 0, 2: FLAG, 3: FLAG | FLAG3}[version]
    row["last_ts"], row["v"] = 42, values
    if version >= 2:
        row["aci"] = 0.7
    if version >= 5:
        row["cal"]["q"] = 5.0  # a threshold is positive
    return row.tobytes()


def test_version_1_checkpoints_still_load() -> None:
    store = SeriesStore(width=3)
    slot = store.add(b"s", _old(1, 3, 2, [0, 7, 8]))
    assert store.vals[slot].tolist() == [0, 7, 8] and store.count[slot] == 2
    assert store.last_ts[slot] == 42 and store.aci[slot] == 0.0
    assert blob_version(store.encode([slot])[0]) == CURRENT
    assert decode_blob(store.encode([slot])[0]).count == 2


@pytest.mark.parametrize("version, width", [(2, 20), (3, 18), (4, 11), (5, 5)])
def test_older_layouts_as_long_as_a_current_blob_are_read_by_their_layout(
        version: int, width: int) -> None:
    """A width-20 version-2 blob, a width-18 version-3 blob, a width-11 version-4 blob and a
    width-5 version-5 blob are exactly as long as a width-4 current one: each must be read
    by its own layout, never as the current one."""
    blob = _old(version, width, 5, [0.0] * (width - 5) + [3, 4, 5, 6, 7])
    assert len(blob) == blob_dtype(4).itemsize
    store = SeriesStore(width=4)
    slot = store.add(b"s", blob)
    assert store.vals[slot].tolist() == [4, 5, 6, 7] and store.count[slot] == 4
    assert store.last_ts[slot] == 42
    assert decode_blob(store.encode([slot])[0]).values.tolist() == [4, 5, 6, 7]


def _current(width: int = 3) -> bytes:
    store = SeriesStore(width=width)
    return store.encode([store.set_window(b"s", [1, 2, 3][-width:], last_ts=5)])[0]


def _with_count(blob: bytes, count: int) -> bytes:
    return blob[:4] + count.to_bytes(4, "little", signed=True) + blob[8:]


@pytest.mark.parametrize("blob, reason", [
    (b"xyz", "no header"),
    (b"\x00" * 7, "not a 12-byte header"),
    (_current()[:-2], "whole float32 values"),
    (_with_count(_current(), 4), "counts 4 values in a window of 3"),
    (_with_count(_current(), -1), "counts -1 values"),
    (_current()[:-4] + np.float32(np.nan).tobytes(), "not finite"),
    ((FLAG | FLAG3 | FLAG4 | (9 << 20)).to_bytes(4, "little") + _current()[4:],
     "unknown checkpoint layout version 9"),
    ((FLAG | FLAG3 | FLAG4 | (4 << 20) | 1).to_bytes(4, "little") + _current()[4:],
     "unknown flags"),
])
def test_unreadable_blobs_are_refused_with_a_reason(blob: bytes, reason: str) -> None:
    with pytest.raises(CheckpointError, match=reason):
        decode_blob(blob)


def test_an_unreadable_checkpoint_starts_that_series_afresh_and_no_other() -> None:
    good = SeriesStore(width=3)
    blobs = {s: good.encode([good.set_window(s, [1, 2, 3])])[0] for s in (b"a", b"c")}
    blobs[b"b"] = b"xyz"  # garbage
    blobs[b"d"] = _with_count(blobs[b"a"], 99)  # right length, impossible count
    before = metrics.CHECKPOINT_ERRORS._value.get()
    store = SeriesStore(width=3)
    entries = [(f"{i}-0".encode(), [b"series", s, b"value", b"4"])
               for i, s in enumerate([b"a", b"b", b"c", b"d"], start=1)]
    commit = build_commit(entries, store, LinearModel(), Limits(),
                          lambda names: [blobs[n] for n in names])
    assert metrics.CHECKPOINT_ERRORS._value.get() == before + 2
    assert commit.n_predictions == 2 and not commit.deadletters  # a and c: [2, 3, 4]
    written = dict(zip(commit.state[0::2], commit.state[1::2], strict=True))
    assert decode_blob(written[b"b"]).values.tolist() == [4.0]  # rewritten, fresh window
    assert decode_blob(written[b"d"]).values.tolist() == [4.0]
    assert decode_blob(written[b"a"]).values.tolist() == [2.0, 3.0, 4.0]


def test_the_period_is_kept_from_version_4_and_starts_at_0_from_older_ones() -> None:
    store = SeriesStore(width=4)
    slot = store.add(b"s", _old(3, 4, 3, [0, 7, 8, 9]))
    assert store.vals[slot].tolist() == [0, 7, 8, 9] and store.period[slot] == 0
    store.period[slot] = -12  # detected online (worker.routing)
    blob = store.encode([slot])[0]
    assert blob_version(blob) == CURRENT and decode_blob(blob).period == -12
    again = SeriesStore(width=4)
    again.add_many([b"s", b"t"], [blob, None])  # the same width: the bulk path
    narrow = SeriesStore(width=2)
    narrow.add(b"s", blob)  # another width: one by one
    assert again.period[again.index[b"s"]] == -12 and again.period[again.index[b"t"]] == 0
    assert narrow.period[narrow.index[b"s"]] == -12 and narrow.vals[0].tolist() == [8, 9]


def _judged_store() -> tuple[SeriesStore, int]:
    """A store whose series `s` has a verdict state that is not the empty one."""
    from worker.anomaly import judge

    store = SeriesStore(width=3)
    slot = store.set_window(b"s", [1, 2, 3])
    rng = np.random.default_rng(0)
    judge(store.calibration(), np.full(80, slot), rng.standard_normal(80),
          rng.standard_normal(80), 0.01)
    return store, slot


def test_the_verdict_state_is_kept_from_version_5_and_starts_empty_from_older_ones() -> None:
    store, slot = _judged_store()
    saved = store.calibration().snapshot(np.array([slot]))
    assert saved["n"][0] >= 50 and saved["q"][0] != 5.0
    blob = store.encode([slot])[0]
    same, other = SeriesStore(width=3), SeriesStore(width=5)
    same.add_many([b"s", b"t"], [blob, None])  # the bulk path
    other.add(b"s", blob)  # another width: one by one
    for back in (same, other):
        got = back.calibration().snapshot(np.array([back.index[b"s"]]))
        assert got.tobytes() == saved.tobytes()
    empty = SeriesStore(width=3).calibration().snapshot(np.array([0]))
    assert same.calibration().snapshot(np.array([same.index[b"t"]])).tobytes() == empty.tobytes()
    old = SeriesStore(width=4)
    old.add(b"s", _old(4, 4, 3, [0, 7, 8, 9]))
    assert old.vals[0].tolist() == [0, 7, 8, 9]
    assert old.calibration().snapshot(np.array([0])).tobytes() == empty.tobytes()


def test_an_impossible_verdict_state_is_refused() -> None:
    store, slot = _judged_store()
    store.cal_q[slot] = np.nan
    blob = store.encode([slot])[0]
    with pytest.raises(CheckpointError, match="impossible verdict state"):
        decode_blob(blob)
    fresh = SeriesStore(width=3)
    fresh.add(b"s", blob)  # the bulk path refuses it too: the series starts afresh
    assert fresh.count[0] == 0 and fresh.cal_q[0] == 5.0


def test_a_version_5_verdict_state_carries_its_scale_thresholds_and_level_over() -> None:
    store, slot = _judged_store()
    saved = store.calibration().snapshot(np.array([slot]))
    row = np.zeros(1, dtype=blob_dtype(3, version=5))
    row["head"], row["count"], row["seq"], row["v"] = head_of(5), 3, -1, [1, 2, 3]
    for name in ("scale", "q", "level", "spread", "n"):
        row["cal"][name] = saved[name]
    row["cal"]["mode"], row["cal"]["since"], row["cal"]["calm"] = 2, 7, 3  # held, then
    back = SeriesStore(width=3)
    back.add(b"s", row.tobytes())
    got = back.calibration().snapshot(np.array([back.index[b"s"]]))
    for name in ("scale", "q", "level", "spread", "n"):
        assert got[name][0] == saved[name][0], name
    assert got["ql"][0] == 5.0 and got["mode"][0] == 0 and got["since"][0] == 0
    assert back.vals[0].tolist() == [1, 2, 3]
