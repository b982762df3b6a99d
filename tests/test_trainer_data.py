"""Trainer data handling without TensorFlow: CSV, streams, windows, metrics, conformal q."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fakeredis
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecast import keys
from forecast.errors import DataError
from forecast.settings import Settings
from trainer import data, make_example_data, windows
from trainer.conformal import conformal_q, interval_coverage
from trainer.evaluate import metrics, naive

ROOT = Path(__file__).resolve().parents[1]


def test_csv_orders_by_timestamp_and_allows_no_timestamp(tmp_path: Path) -> None:
    p = tmp_path / "a.csv"
    p.write_text("series,timestamp,value\nx,3,30\nx,1,10\ny,5,-1.5\nx,2,20\n")
    ds = data.read_csv(p)
    assert ds.series["x"].tolist() == [10.0, 20.0, 30.0] and ds.series["y"].tolist() == [-1.5]
    p.write_text("value,series\n1,a\n2,a\n")
    assert data.read_csv(p).series["a"].tolist() == [1.0, 2.0]
    p.write_text("series,timestamp,value\nx,1,inf\n")
    with pytest.raises(DataError, match="finite"):
        data.read_csv(p)


def test_example_csv_is_reproducible(tmp_path: Path) -> None:
    shipped = (ROOT / "data/example.csv").read_bytes()
    assert make_example_data.write(tmp_path / "e.csv").read_bytes() == shipped
    assert len(shipped) < 200_000
    ds = data.read_csv(ROOT / "data/example.csv")
    assert len(ds.series) == 4 and ds.n_values >= 400
    levels = sorted(float(np.mean(np.abs(v))) for v in ds.series.values())
    assert levels[-1] / levels[0] > 1e4  # very different scales


def test_from_stream_reads_every_shard_in_pages() -> None:
    client = fakeredis.FakeRedis()
    s = Settings(_env_file=None, shards=3)  # type: ignore[call-arg]
    for i in range(25):
        for name in ("a", "b", "c", "d"):
            stream = keys.values_stream(keys.shard_of(name, 3), 3)
            client.xadd(stream, {"series": name, "value": str(i)})
    client.xadd(keys.values_stream(0, 3), {"series": "a", "value": "1e999"})
    client.xadd(keys.values_stream(1, 3), {"value": "1"})
    ds = data.from_stream(client, s, page=7)
    assert sorted(ds.series) == ["a", "b", "c", "d"]
    assert all(v.tolist() == [float(i) for i in range(25)] for v in ds.series.values())
    assert ds.skipped == 2 and ds.summary()["streams"] == 3
    with pytest.raises(DataError, match="no valid entries"):
        data.from_stream(fakeredis.FakeRedis(), s)


def test_windows_split_in_time_without_leakage() -> None:
    ds = data.Dataset("t", {"a": np.arange(50.0), "b": np.arange(100.0, 130.0),
                            "short": np.arange(3.0)})
    ws = windows.build(ds, n_steps=5, horizon=3, val_fraction=0.2)
    assert ws.names == ["a", "b"]
    for s, split in enumerate(ws.splits):
        train_pos = ws.train_pos[ws.train_series == s]
        val_pos = ws.val_pos[ws.val_series == s]
        assert (train_pos + ws.horizon <= split).all()  # every training target before the split
        assert (val_pos >= split).all() and len(val_pos) > 0
    # targets really are the values after the window
    np.testing.assert_array_equal(ws.y_val[:, 0] - ws.x_val[:, -1], np.ones(len(ws.y_val)))


def test_too_little_data_is_a_data_error() -> None:
    with pytest.raises(DataError, match="too little data"):
        windows.build(data.Dataset("t", {"a": np.arange(4.0)}), 4, 1, 0.2)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 300), st.floats(0.0, 0.9), st.integers(1, 10), st.integers(1, 5))
def test_split_index_properties(length: int, frac: float, n_steps: int, horizon: int) -> None:
    split = windows.split_index(length, frac, n_steps, horizon)
    assert split == length or (split >= n_steps + horizon and length - split >= horizon)


def test_metrics_and_conformal_helpers() -> None:
    y = np.array([[10.0], [12.0]])
    m = metrics(y, naive(np.array([[9.0], [10.0]]), 1), np.array([2.0, 2.0]))
    assert m["mae"] == 1.5 and m["mase"] == 0.75
    rng = np.random.default_rng(0)
    resid = np.abs(rng.normal(size=(2000, 2)))
    q = conformal_q(resid, 0.9)
    fresh = rng.normal(size=(20000, 2))
    for h in range(2):
        cov = interval_coverage(fresh[:, h], -q[h], q[h])
        assert abs(cov - 0.9) < 0.02


class Scored:
    """What the gate reads of a trained model."""

    def __init__(self, model_mae: float, naive_mae: float) -> None:
        self.evaluation = {"model": {"mae": model_mae}, "naive": {"mae": naive_mae},
                           "holdout": "validation"}


@pytest.mark.parametrize("model_mae, naive_mae, current, force, decision, reason", [
    (0.5, 1.0, None, False, "promote", "beats naive"),
    (1.5, 1.0, None, False, "refuse", "does not beat naive"),
    (1.5, 1.0, None, True, "promote", "forced despite"),
    (0.5, 1.0, {"version": "v1", "mae": 0.2, "new_mae": 0.5}, False, "refuse",
     "worse than current v1"),
    (0.5, 1.0, {"version": "v1", "mae": 0.5, "new_mae": 0.5}, False, "promote", "and current v1"),
    (0.5, 1.0, {"version": "v1", "mae": None, "comparable": False, "note": "needs 24"}, False,
     "refuse", "cannot be scored"),
    (0.5, 1.0, {"version": "v1", "mae": None, "note": "unloadable: bad HMAC"}, False,
     "promote", "beats naive"),
])
def test_gate_decisions(model_mae: float, naive_mae: float, current: Any, force: bool,
                        decision: str, reason: str) -> None:
    from trainer.publish import decide

    gate = decide(Scored(model_mae, naive_mae), current, force)  # type: ignore[arg-type]
    assert gate["decision"] == decision and reason in gate["reason"]
    assert gate["forced"] == (force and "forced" in gate["reason"])
