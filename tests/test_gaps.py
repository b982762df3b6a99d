"""Time-aware outputs: target_ts, the step learnt per series, and the gap policies."""

from __future__ import annotations

import pytest

from forecast.grammar import Limits
from tests.helpers import LinearModel
from worker.batch import Commit, Served, build_commit
from worker.checkpoint import decode_blob
from worker.state import SeriesStore


def _run(rows: list[tuple[str, float, int]], policy: str = "carry", max_steps: int = 24,
         store: SeriesStore | None = None, h: int = 1) -> tuple[Commit, SeriesStore]:
    store = store or SeriesStore(width=3)
    entries = [(f"{i}-0".encode(), [b"series", s.encode(), b"value", repr(v).encode(), b"ts",
                                    str(t).encode()]) for i, (s, v, t) in enumerate(rows, 1)]
    served = Served(LinearModel(horizon=h), gap_policy=policy, gap_max_steps=max_steps)
    return build_commit(entries, store, served, Limits(), lambda n: [None] * len(n)), store


def _entries(commit: Commit) -> list[dict]:
    return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in e.items()}
            for e in commit.outputs.entries()]


def test_target_ts_is_the_input_ts_plus_the_learnt_step() -> None:
    commit, _ = _run([("a", v, 1000 + 60_000 * v) for v in range(5)], h=2)
    got = [(e["ts"], e["target_ts"], e["path_ts"]) for e in _entries(commit)]
    assert got == [(str(1000 + 60_000 * v), str(1000 + 60_000 * (v + 1)),
                    f"{1000 + 60_000 * (v + 1)},{1000 + 60_000 * (v + 2)}") for v in (2, 3, 4)]
    # the step survives a checkpoint
    blob = dict(zip(commit.state[0::2], commit.state[1::2], strict=True))[b"a"]
    assert decode_blob(blob).steps == (60_000.0, 60_000.0, 60_000.0)


def _with_gap(policy: str, max_steps: int = 24) -> list[dict]:
    rows = [("a", float(v), 10 * v) for v in range(5)] + [("a", 8.0, 80), ("a", 9.0, 90)]
    return _entries(_run(rows, policy, max_steps)[0])


def test_carry_uses_the_values_as_they_come_and_says_there_was_a_gap() -> None:
    after = _with_gap("carry")[-2:]
    assert after[0]["gap_steps"] == "3" and "gap_steps" not in after[1]
    assert float(after[0]["prediction"]) == 12.0  # [3, 4, 8]: the hole looks like a jump


def test_fill_puts_the_models_forecasts_of_the_missing_steps_in_the_window() -> None:
    after = _with_gap("fill")[-2:]
    assert after[0]["gap_steps"] == "3"
    assert float(after[0]["prediction"]) == 9.0  # fills 5, 6, 7, then [6, 7, 8]
    assert float(after[1]["prediction"]) == 10.0
    assert len(_with_gap("fill")) == 5  # the fills are never outputs


@pytest.mark.parametrize("policy, max_steps", [("reset", 24), ("carry", 2), ("fill", 2)])
def test_reset_and_gaps_beyond_the_limit_start_the_window_again(policy: str,
                                                                max_steps: int) -> None:
    out = _with_gap(policy, max_steps)
    # [8] then [8, 9]: not full (n_steps=3) until the next value
    assert [e["source_id"] for e in out] == ["3-0", "4-0", "5-0"]


def test_a_fill_in_the_middle_of_a_batch_uses_the_window_right_before_the_gap() -> None:
    """Two series, a gap in one of them mid-batch: the batch runs in two passes; the fills
    are not scored as actuals and every real value is written once, in order."""
    rows = []
    for v in range(6):
        rows += [("a", float(v), 10 * v), ("b", 100.0 + v, 10 * v)]
    rows += [("b", 108.0, 80), ("a", 6.0, 60), ("b", 109.0, 90)]
    commit, store = _run(rows, "fill")
    b = [e for e in _entries(commit) if e["series"] == "b"]
    assert [float(e["prediction"]) for e in b][-2:] == [109.0, 110.0]
    assert [e["source_id"] for e in _entries(commit)] == sorted(
        (e["source_id"] for e in _entries(commit)), key=lambda s: int(s.split("-")[0]))
    assert commit.n_predictions == 4 + 4 + 1 + 2
    assert commit.scores is not None and commit.scores.forecast_n[0] == 3 + 3 + 1 + 1 + 1
    row = store.index[b"b"]
    assert store.vals[row].tolist() == [107.0, 108.0, 109.0]
    assert store.steps[row].tolist() == [10.0, 30.0, 10.0]  # the gap's difference is outvoted
