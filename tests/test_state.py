"""SeriesStore: restoring checkpoints (one by one and in bulk), resizing, LRU eviction."""

from __future__ import annotations

import numpy as np

from worker.state import SeriesStore, decode_blob


def test_add_many_restores_checkpoints_of_any_width() -> None:
    old = SeriesStore(width=3)
    a = old.add(b"a")
    old.vals[a], old.count[a], old.last_ts[a] = [1, 2, 3], 3, 7
    wide = SeriesStore(width=5)
    b = wide.add(b"b")
    wide.vals[b], wide.count[b] = [0, 4, 5, 6, 8], 4
    blobs = [old.encode([a])[0], wide.encode([b])[0], None]

    store = SeriesStore(width=3)
    store.add_many([b"a", b"b", b"c"], blobs)
    rows = {s: (store.vals[store.index[s]].tolist(), int(store.count[store.index[s]]))
            for s in (b"a", b"b", b"c")}
    assert rows == {b"a": ([1, 2, 3], 3), b"b": ([5, 6, 8], 3), b"c": ([0, 0, 0], 0)}
    assert store.last_ts[store.index[b"a"]] == 7 and store.last_ts[store.index[b"c"]] == -1


def test_bulk_restore_evicts_only_rows_of_earlier_batches() -> None:
    store = SeriesStore(width=2, max_series=4, initial=4)
    store.add_many([b"x", b"y", b"z", b"w"], [None] * 4)
    store.tick += 1
    store.add_many([b"p", b"q"], [None, None])  # evicts from the previous batch only
    assert {b"p", b"q"} <= set(store.index) and len(store) <= 4 and store.evicted >= 2


def test_encode_decode_round_trip_and_resize() -> None:
    store = SeriesStore(width=4)
    s = store.add(b"s")
    store.vals[s], store.count[s], store.last_ts[s] = [0, 1.5, 2.5, 3.5], 3, 99
    count, last_ts, values = decode_blob(store.encode([s])[0])
    assert (count, last_ts) == (3, 99) and np.allclose(values, [1.5, 2.5, 3.5])
    store.resize(2)
    assert store.vals[s].tolist() == [2.5, 3.5] and store.count[s] == 2
