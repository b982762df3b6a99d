"""SeriesStore: restoring checkpoints (one by one and in bulk), resizing, LRU eviction."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.checkpoint import FLAG, FLAG3, blob_dtype, blob_version, decode_blob
from worker.scoring import Forecasts, score
from worker.state import SeriesStore


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
    c = decode_blob(store.encode([s])[0])
    assert (c.count, c.last_ts) == (3, 99) and np.allclose(c.values, [1.5, 2.5, 3.5])
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
    nan = np.nan
    fc = Forecasts(np.array([[4, nan, nan], [5, nan, nan], [nan, nan, nan]]),
                   np.full((3, 3), nan), np.full((3, 3), nan))
    scores, _ = score(store, adv, np.asarray([3, 4, 10], np.float32), fc, 0.05, 0.1)
    # only a's second value had a forecast (4) one value before it
    assert scores.forecast_n.tolist() == [1, 0, 0] and scores.abs_err[0] == 0.0


def test_accept_in_order_drops_older_timestamps_only() -> None:
    store = SeriesStore(width=2)
    slots = store.place([b"a", b"a", b"a", b"b"], lambda s: [None] * len(s))
    ok = store.accept_in_order(slots, np.asarray([5, 4, 5, -1]))
    assert ok.tolist() == [True, False, True, True]


def test_version_1_checkpoints_still_load() -> None:
    old = np.zeros(1, dtype=blob_dtype(3, version=1))
    old["count"], old["last_ts"], old["v"] = 2, 42, [0, 7, 8]
    store = SeriesStore(width=3)
    slot = store.add(b"s", old.tobytes())
    assert store.vals[slot].tolist() == [0, 7, 8] and store.count[slot] == 2
    assert store.last_ts[slot] == 42 and store.aci[slot] == 0.0
    new = store.encode([slot])[0]
    assert int.from_bytes(new[:4], "little") & FLAG and decode_blob(new).count == 2


def test_version_2_checkpoints_of_739b6de_still_load() -> None:
    """Their header is 8 bytes shorter: a width-6 version-2 blob is as long as a width-4
    current one, and must not be read as one."""
    old = np.zeros(1, dtype=blob_dtype(6, version=2))
    old["count"], old["last_ts"], old["aci"], old["v"] = 5 | FLAG, 42, 0.7, [0, 3, 4, 5, 6, 7]
    assert len(old.tobytes()) == blob_dtype(4, version=3).itemsize
    store = SeriesStore(width=4)
    slot = store.add(b"s", old.tobytes())
    assert store.vals[slot].tolist() == [4, 5, 6, 7] and store.count[slot] == 4
    assert store.last_ts[slot] == 42 and store.aci_version[slot] == -1  # starts again
    assert decode_blob(store.encode([slot])[0]).values.tolist() == [4, 5, 6, 7]


def test_version_3_checkpoints_still_load_and_the_period_is_kept_from_version_4() -> None:
    old = np.zeros(1, dtype=blob_dtype(4, version=3))
    old["count"], old["last_ts"], old["v"] = 3 | FLAG | FLAG3, 42, [0, 7, 8, 9]
    old["aci_version"], old["aci"] = 5, 0.25
    assert blob_version(old.tobytes()) == 3
    store = SeriesStore(width=4)
    slot = store.add(b"s", old.tobytes())
    assert store.vals[slot].tolist() == [0, 7, 8, 9] and store.count[slot] == 3
    assert (store.aci_version[slot], store.aci[slot], store.period[slot]) == (5, 0.25, 0)
    store.period[slot] = -12  # detected online (worker.routing)
    blob = store.encode([slot])[0]
    assert blob_version(blob) == 4 and decode_blob(blob).period == -12
    again = SeriesStore(width=4)
    again.add_many([b"s", b"t"], [blob, None])  # the same width: the bulk path
    narrow = SeriesStore(width=2)
    narrow.add(b"s", blob)  # another width: one by one
    assert again.period[again.index[b"s"]] == -12 and again.period[again.index[b"t"]] == 0
    assert narrow.period[narrow.index[b"s"]] == -12 and narrow.vals[0].tolist() == [8, 9]


def test_adaptive_intervals_widen_after_misses_and_survive_a_checkpoint() -> None:
    """Every value outside a too-narrow interval widens it; the factor is checkpointed."""
    store = SeriesStore(width=3)
    rng = np.random.default_rng(1)
    for _ in range(40):
        slots = store.place([b"s"], lambda s: [None] * len(s))
        adv = store.advance(slots, rng.normal(0, 1, 1).astype(np.float32))
        fc = Forecasts(np.array([[0.0, np.nan, np.nan]]), np.array([[-0.1, np.nan, np.nan]]),
                       np.array([[0.1, np.nan, np.nan]]))
        _, factor = score(store, adv, store.vals[slots, -1:].ravel(), fc, 0.05, 0.1)
    assert factor[0] > 2.0  # widened from +-0.1 towards the N(0,1) spread
    restored = SeriesStore(width=3)
    slot = restored.add(b"s", store.encode([store.index[b"s"]])[0])
    assert restored.aci[slot] == store.aci[store.index[b"s"]]


def test_forgotten_and_evicted_series_leave_no_unnamed_evidence() -> None:
    store = SeriesStore(width=2, max_series=4, initial=4)
    store.place([b"a", b"b", b"c", b"d"], lambda s: [None] * len(s))
    store.ev[:, 0, 0] = 1.0  # every series has evidence waiting
    assert store.forget([b"a"]) == 1
    store.place([b"e"], lambda s: [None] * len(s))  # evicts the oldest tenth (one row)
    names, sums = store.take_evidence(10)
    assert None not in names and len(names) == len(sums) == len(store) - 1  # e has none
    assert b"a" not in names and b"e" not in names


def test_version_columns_follow_the_served_versions() -> None:
    store = SeriesStore(width=2)
    row = store.set_window(b"s", [1.0, 2.0])
    assert store.columns == 1 and store.pred.shape == (1024, 1)  # no shadow: one column
    store.pred[row, 0] = 3.0
    store.remap([0, None])  # a shadow arrives
    assert store.columns == 2 and store.ev.shape[1] == 2 and store.pred[row].tolist()[0] == 3.0
    store.remap([None, None, None, None])  # never more than COLUMNS, evidence for two
    assert store.columns == 3 and store.ev.shape[1] == 2
    store.remap([1])
    assert store.columns == 1 and store.ev.shape == (1024, 1, 3)


def test_a_shadow_that_raises_does_not_stop_the_serving() -> None:
    from forecast.grammar import Limits
    from tests.helpers import LinearModel, NaiveModel
    from worker import metrics
    from worker.batch import Served, build_commit

    class Broken(NaiveModel):
        def predict(self, windows: np.ndarray) -> np.ndarray:
            raise RuntimeError("broken candidate")

    store = SeriesStore(width=3)
    served = Served(LinearModel(has_interval=True), [Broken("v9")])
    before = metrics.SHADOW_ERRORS._value.get()
    entries = [(f"{i}-0".encode(), [b"series", b"s", b"value", str(i).encode()])
               for i in range(1, 6)]
    commit = build_commit(entries, store, served, Limits(), lambda s: [None] * len(s))
    assert commit.n_predictions == 3 and not commit.deadletters  # from the third value on
    assert metrics.SHADOW_ERRORS._value.get() == before + 1


def test_a_shadow_with_the_wrong_output_shape_is_not_scored() -> None:
    from forecast.grammar import Limits
    from tests.helpers import LinearModel, NaiveModel
    from worker import metrics
    from worker.batch import Served, build_commit

    class Narrow(NaiveModel):
        def predict(self, windows: np.ndarray) -> np.ndarray:
            return super().predict(windows)[:, :1]  # declares an interval, gives none

    served = Served(LinearModel(has_interval=True), [Narrow("v8")])
    before = metrics.SHADOW_ERRORS._value.get()
    entries = [(f"{i}-0".encode(), [b"series", b"s", b"value", str(i).encode()])
               for i in range(1, 6)]
    commit = build_commit(entries, SeriesStore(width=3), served, Limits(),
                          lambda s: [None] * len(s))
    assert commit.n_predictions == 3 and not commit.deadletters
    assert metrics.SHADOW_ERRORS._value.get() == before + 1


def test_evidence_is_taken_round_robin() -> None:
    store = SeriesStore(width=2)
    store.place([b"a", b"b", b"c"], lambda s: [None] * len(s))
    store.ev[:3, 0, 0] = 1.0
    first, _ = store.take_evidence(2)
    store.ev[:3, 0, 0] = 1.0  # everyone has evidence again
    second, _ = store.take_evidence(2)
    assert len(set(first) | set(second)) == 3  # the one left out first goes first now


def test_a_final_flush_sends_every_series(monkeypatch: Any) -> None:
    import fakeredis

    from forecast import keys
    from worker import live

    monkeypatch.setattr(live, "SERIES_CAP", 2)  # 5 series: three round trips
    store = SeriesStore(width=2)
    store.place([b"a", b"b", b"c", b"d", b"e"], lambda s: [None] * len(s))
    store.ev[:5, 0] = [1.0, 0.5, 1.0]
    client = fakeredis.FakeRedis()
    live.LiveBuffer().flush(client, [store], ["v1"], final=True)
    sent = client.hgetall(keys.live_series("v1"))
    assert {k.split(b":")[0] for k in sent} == {b"a", b"b", b"c", b"d", b"e"}
