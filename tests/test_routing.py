"""Versions with several parts in the worker: periods per series, young windows, warmup=1.

A numpy stand-in for a bundle (`forecast.modelio.BundleModel`), no TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import redis

from forecast import keys
from forecast.grammar import Limits
from forecast.processes import wait_until
from forecast.season import detect, family_of, series_period
from tests.helpers import WorkerThreads, make_worker
from worker import routing
from worker.batch import Served, build_commit
from worker.state import SeriesStore

LIMITS = Limits(256, 64)


class FakeBundle:
    """Families of periods 1 and 12 (windows 4 and 64): the forecast is the family's period,
    the lower bound the number of real values it saw, the upper one the row's period."""

    def __init__(self, table: dict[bytes, int] | None = None, version: str = "v1") -> None:
        self.version, self.n_steps, self.horizon, self.has_interval = version, 64, 1, True
        self.min_values = 2
        self.manifest: dict[str, Any] = {"coverage": 0.9}
        self.table = table or {}
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def periods_of(self, names: list[bytes]) -> np.ndarray:
        return np.asarray([self.table.get(n, 0) for n in names], dtype=np.int64)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        raise AssertionError("a bundle is called through predict_rows")

    def predict_rows(self, windows: np.ndarray, filled: np.ndarray, periods: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((filled.copy(), periods.copy()))
        fam = np.asarray([1, 12])[family_of(np.abs(periods), [1, 12])]
        n = np.where(fam == 12, 64, 4)
        out = np.stack([fam, np.minimum(filled, n), periods], axis=1).astype(np.float32)
        return out, filled >= n


class FakeSingleBundle(FakeBundle):
    """FakeBundle that serves the series in `singles` by a single expert once full: the
    forecast is then -1."""

    def __init__(self, singles: set[bytes]) -> None:
        super().__init__()
        self.singles = singles

    def single_of(self, names: list[bytes]) -> np.ndarray:
        return np.asarray([n in self.singles for n in names], dtype=bool)

    def predict_rows(self, windows: np.ndarray, filled: np.ndarray, periods: np.ndarray,
                     single: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        out, full = super().predict_rows(windows, filled, periods)
        assert single is not None and len(single) == len(out)
        out[single & full, 0] = -1.0
        return out, full


def entries(series: str, values: list[float], start: int = 1) -> list[Any]:
    return [(f"{start + i}-0".encode(), [b"series", series.encode(), b"value", repr(v).encode()])
            for i, v in enumerate(values)]


def rows(commit: Any) -> list[dict[str, Any]]:
    out = []
    for e in commit.outputs.entries():
        row: dict[str, Any] = {"series": e["series"], "prediction": float(e["prediction"]),
                               "warmup": e.get("warmup", "")}
        for k in ("lower", "upper"):
            if k in e:
                row[k] = float(e[k])
        out.append(row)
    return out


def seasonal(n: int, period: int = 12) -> list[float]:
    t = np.arange(n)
    return (100 + 10 * np.sin(2 * np.pi * t / period)).tolist()


def test_detect_matches_the_per_series_function_and_routes_to_divisors() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(96.0)
    w = np.stack([50 + 5 * np.sin(2 * np.pi * t / p) + rng.normal(0, 0.3, 96) for p in (4, 12)]
                 + [100 + rng.normal(0, 1, 96).cumsum()])
    assert detect(w).tolist() == [4, 12, 1]
    assert [series_period(v) for v in w] == [4, 12, 1]
    assert family_of(np.array([24, 8, 5]), [1, 4, 12]).tolist() == [2, 1, 0]


def test_young_series_are_forecast_from_their_second_value_and_say_so() -> None:
    model = FakeBundle()
    store = SeriesStore(model.n_steps)
    commit = build_commit(entries("new", [1.0, 2.0, 4.0, 3.0, 5.0, 6.0]), store, Served(model),
                          LIMITS, lambda s: [None] * len(s))
    out = rows(commit)
    assert len(out) == 5  # from the second value on
    assert [r["lower"] for r in out] == [2, 3, 4, 4, 4]  # values seen, up to the window of 4
    assert [r.get("warmup") for r in out] == ["1", "1", "", "", ""]  # full at 4 values
    assert "warmup" in commit.outputs.columns


def test_the_table_routes_known_series_and_others_are_detected_without_look_ahead() -> None:
    model = FakeBundle({b"known": 12})
    values = seasonal(60)
    one = SeriesStore(model.n_steps)
    batch = entries("known", values[:30]) + entries("fresh", values, start=100)
    whole = rows(build_commit(batch, one, Served(model), LIMITS, lambda s: [None] * len(s)))
    known = [r for r in whole if r["series"] == b"known"]
    fresh = [r for r in whole if r["series"] == b"fresh"]
    assert {r["upper"] for r in known} == {12}  # from the table, from the start
    # the fresh series' period: none until its window holds enough seasons, then detected
    # from what it had at the first size of DETECT_AT that shows them; never from values
    # later in the same batch
    by_value = [int(r["upper"]) for r in fresh]
    seen = next(int(n) for n in routing.DETECT_AT if detect(np.array([values[:n]]))[0] == 12)
    k = seen - 2  # its forecast follows value `seen` (the first forecast follows the second)
    assert set(by_value[:k]) == {-1} and set(by_value[k:]) == {-12}, (seen, by_value)
    assert one.period[one.index[b"fresh"]] == -12 and one.period[one.index[b"known"]] == 12
    # the same values in small batches give the same periods (and the checkpoint keeps them)
    got: list[int] = []
    saved: dict[bytes, bytes] = {}
    for i in range(0, 60, 7):
        store = SeriesStore(model.n_steps)  # a restart between every batch
        commit = build_commit(entries("fresh", values[i:i + 7], start=100 + i), store,
                              Served(model), LIMITS, lambda s: [saved.get(x) for x in s])
        got += [int(r["upper"]) for r in rows(commit)]
        saved.update(zip(commit.state[::2], commit.state[1::2], strict=True))
    assert got == by_value


def test_plain_versions_keep_their_full_windows() -> None:
    from tests.helpers import LinearModel

    store = SeriesStore(3)
    commit = build_commit(entries("s", [1.0, 2.0, 3.0, 4.0]), store, Served(LinearModel()),
                          LIMITS, lambda s: [None] * len(s))
    assert [r["prediction"] for r in rows(commit)] == [4.0, 5.0]
    assert "warmup" not in commit.outputs.columns
    assert routing.min_values(LinearModel()) == 3 and routing.min_values(FakeBundle()) == 2


def test_the_worker_writes_warmup_only_on_young_windows(r: redis.Redis, redis_url: str) -> None:
    threads = WorkerThreads()
    try:
        threads.start(make_worker(redis_url, model=FakeBundle()))
        for v in (1.0, 2.0, 3.0, 4.0, 5.0):
            r.xadd(keys.VALUES, {"series": "s", "value": str(v)})
        preds = wait_until(lambda: [dict(f) for _, f in r.xrange(keys.PREDICTIONS)]
                           if r.xlen(keys.PREDICTIONS) >= 4 else None, what="4 predictions")
    finally:
        threads.stop_all()
    assert [p.get(b"warmup") for p in preds] == [b"1", b"1", None, None]
    assert all(b"lower" in p and b"upper" in p for p in preds)


def test_series_the_version_serves_by_one_expert_get_it_once_their_window_is_full() -> None:
    model = FakeSingleBundle({b"walk"})
    store = SeriesStore(model.n_steps)
    batch = [e for pair in zip(entries("walk", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                               entries("other", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], start=50),
                               strict=True) for e in pair]
    out = rows(build_commit(batch, store, Served(model), LIMITS, lambda s: [None] * len(s)))
    walk = [r for r in out if r["series"] == b"walk"]
    other = [r for r in out if r["series"] == b"other"]
    assert [r["prediction"] for r in walk] == [1.0, 1.0, -1.0, -1.0, -1.0]  # full at 4
    assert [r["warmup"] for r in walk] == ["1", "1", "", "", ""]
    assert {r["prediction"] for r in other} == {1.0}


def test_a_new_current_version_routes_by_its_own_table() -> None:
    old, new = FakeBundle({b"s": 12}, "v1"), FakeBundle({b"s": 1}, "v2")
    store = SeriesStore(old.n_steps)
    first = rows(build_commit(entries("s", seasonal(8)), store, Served(old), LIMITS,
                              lambda s: [None] * len(s)))
    assert {r["upper"] for r in first} == {12}
    store.remap([None])  # v2 replaces v1 as current (a shadow's column would also be new)
    later = rows(build_commit(entries("s", seasonal(4), start=20), store, Served(new), LIMITS,
                              lambda s: [None] * len(s)))
    assert {r["upper"] for r in later} == {1}
    store.remap([0])  # the same current version: its periods stay
    assert store.period[store.index[b"s"]] == 1
