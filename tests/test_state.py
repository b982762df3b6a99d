"""SeriesStore: restoring checkpoints (one by one and in bulk), resizing, LRU eviction."""

from __future__ import annotations

import numpy as np

from worker.state import SeriesStore, decode_blob


def test_add_many_restores_checkpoints_of_any_width() -> None:
    old = SeriesStore(width=3)
    a = old.set_window(b"a", [1, 2, 3], last_ts=7)
    wide = SeriesStore(width=5)
    b = wide.set_window(b"b", [4, 5, 6, 8])
    blobs = [old.encode([a])[0], wide.encode([b])[0], None]

    store = SeriesStore(width=3)
    store.add_many([b"a", b"b", b"c"], blobs)
    rows = {s: (store.vals[store.index[s]].tolist(), int(store.count[store.index[s]]))
            for s in (b"a", b"b", b"c")}
    assert rows == {b"a": ([1, 2, 3], 3), b"b": ([5, 6, 8], 3), b"c": ([0, 0, 0], 0)}
    assert store.last_ts[store.index[b"a"]] == 7 and store.last_ts[store.index[b"c"]] == -1


def test_bulk_restore_evicts_only_rows_of_earlier_batches() -> None:
    store = SeriesStore(width=2, max_series=4, initial=4)
    store.place([b"x", b"y", b"z", b"w"], lambda s: [None] * len(s))
    store.place([b"p", b"q"], lambda s: [None] * len(s))  # evicts from the previous batch only
    assert {b"p", b"q"} <= set(store.index) and len(store) <= 4 and store.evicted >= 2


def test_encode_decode_round_trip_and_resize() -> None:
    store = SeriesStore(width=4)
    s = store.set_window(b"s", [1.5, 2.5, 3.5], last_ts=99)
    count, last_ts, values = decode_blob(store.encode([s])[0])
    assert (count, last_ts) == (3, 99) and np.allclose(values, [1.5, 2.5, 3.5])
    store.resize(2)
    assert store.vals[s].tolist() == [2.5, 3.5] and store.count[s] == 2


def test_advance_groups_by_series_and_keeps_stream_order() -> None:
    store = SeriesStore(width=3)
    store.set_window(b"a", [1, 2])
    slots = store.place([b"a", b"b", b"a"], lambda s: [None] * len(s))
    adv = store.advance(slots, np.asarray([3, 10, 4], dtype=np.float32))
    windows = {int(j): adv.windows[k].tolist() for k, j in enumerate(adv.order)}
    assert windows == {0: [1, 2, 3], 2: [2, 3, 4], 1: [0, 0, 10]}
    assert adv.filled.tolist() == [3, 3, 1]  # sorted by row: a, a, b
    errs = store.remember(adv, np.asarray([3, 4, 10], np.float32),
                          np.asarray([4, 5, np.nan], np.float32))
    assert errs == (0.0, 1)  # only a's second value had a prediction (4) before it


def test_accept_in_order_drops_older_timestamps_only() -> None:
    store = SeriesStore(width=2)
    slots = store.place([b"a", b"a", b"a", b"b"], lambda s: [None] * len(s))
    ok = store.accept_in_order(slots, np.asarray([5, 4, 5, -1]))
    assert ok.tolist() == [True, False, True, True]
