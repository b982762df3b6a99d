"""`make bench-anomaly`'s pure parts (bench/anomaly_report.py, bench/anomaly.py): how the
verdicts read back are aligned to a file's values and scored, the calibration table, the
file choice and the CLI wiring. No TensorFlow, no Redis, no worker."""

from __future__ import annotations

import argparse
import dataclasses
import doctest
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from bench import anomaly, anomaly_report, anomaly_stream
from bench.anomaly_report import Verdicts, align, calibration, nab_scores
from bench.nab_data import NabFile
from bench.nab_score import PROFILES, probation_length
from cli import commands
from cli.parser import build_parser
from forecast.errors import UsageError

T0 = np.datetime64("2020-01-01T00:00:00", "s")


def make_file(n: int, windows: list[tuple[int, int]], name: str = "cat/f.csv") -> NabFile:
    """A file of n values one minute apart, with windows given as (start, end) indices."""
    stamps = T0 + np.arange(n) * np.timedelta64(60, "s")
    wins = [(stamps[a], stamps[b]) for a, b in windows]
    return NabFile(name, stamps, np.arange(n, dtype=np.float64), wins,
                   [stamps[(a + b) // 2] for a, b in windows])


def entry(i: int, score: float | None = None, flag: bool = False) -> dict[bytes, bytes]:
    """The output entry of value i (source id `i-0`), with a verdict when score is given."""
    fields = {b"series": b"cat/f.csv", b"prediction": b"1", b"source_id": f"{i}-0".encode()}
    if score is not None:
        fields |= {b"anomaly_score": f"{score:.4g}".encode(), b"anomaly": b"1" if flag else b"0"}
    return fields


def ids(n: int) -> dict[bytes, int]:
    """Value i was pushed as entry `i-0`."""
    return {f"{i}-0".encode(): i for i in range(n)}


@pytest.mark.parametrize("module", [anomaly_report, anomaly_stream])
def test_doctests(module: ModuleType) -> None:
    """The pure helpers' examples hold (pytest does not collect bench/ itself)."""
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_scores_land_on_the_value_they_judge_and_missing_ones_score_0() -> None:
    """Entries come back in any order; no entry, no verdict, or a foreign id: 0 / skipped."""
    entries = [entry(4, 0.9, flag=True), entry(1, 0.25), entry(2), {b"source_id": b"99-0"},
               entry(3, 0.5)]
    v = align(6, ids(6), entries, alerts=1)
    assert v.score.tolist() == [0.0, 0.25, 0.0, 0.5, 0.9, 0.0]
    assert v.judged.tolist() == [False, True, False, True, True, False]
    assert v.flagged.tolist() == [False, False, False, False, True, False]
    assert (v.outputs, v.flags, v.alerts, v.flag_rate) == (4, 1, 1, pytest.approx(1 / 3))
    assert align(2, ids(2), [entry(0, 1.5), entry(1, -0.1)]).score.tolist() == [1.0, 0.0]
    empty = Verdicts.empty(3)
    assert empty.score.tolist() == [0.0] * 3 and empty.flag_rate is None


def test_a_detection_in_a_window_scores_and_a_file_without_output_misses() -> None:
    """One window caught at its left edge, one file that never answered: per-file rows."""
    hit = make_file(1000, [(400, 499)], "a/hit.csv")
    silent = make_file(1000, [(500, 599)], "a/silent.csv")
    corpus = [hit, silent]
    entries = [*(entry(i, 0.1) for i in range(300, 1000) if i != 400),
               entry(400, 0.95, flag=True)]
    v = {hit.name: align(1000, ids(1000), entries), silent.name: Verdicts.empty(1000)}
    s = nab_scores(corpus, v)
    assert set(s["profiles"]) == set(PROFILES)
    assert s["profiles"]["standard"]["threshold"] == pytest.approx(0.95)
    row = s["files"][hit.name]
    assert (row["found"], row["windows"], row["flags"], row["judged"]) == (1, 1, 1, 700)
    assert row["raw"] == pytest.approx(1.0)
    assert s["files"][silent.name]["raw"] == pytest.approx(-1.0)
    assert s["files"][silent.name]["found"] == 0
    assert s["profiles"]["standard"]["score"] == pytest.approx(50.0, abs=1.0)
    assert s["categories"]["standard"]["a"] == pytest.approx(s["profiles"]["standard"]["score"])
    assert nab_scores([make_file(100, [], "n/x.csv")], {"n/x.csv": Verdicts.empty(100)}) == {
        "profiles": {}, "categories": {}, "files": {}}


def test_calibration_compares_each_rate_with_the_flags_it_gave() -> None:
    """Rates sorted; a file with no verdicts, or off by more than 2x, fails within_2x."""
    def flags(judged: int, flagged: int) -> Verdicts:
        j = np.arange(1000) < judged
        return Verdicts(np.zeros(1000), j, np.arange(1000) < flagged, judged)
    rows = calibration({0.01: {"x/b.csv": flags(1000, 12), "x/a.csv": flags(500, 4)},
                        0.001: {"x/a.csv": flags(1000, 1), "x/b.csv": flags(0, 0)}})
    assert [r["rate"] for r in rows] == [0.001, 0.01]
    low, high = rows
    assert low["files"]["x/b.csv"]["measured"] is None and not low["within_2x"]
    assert high["measured"] == pytest.approx(16 / 1500) and high["within_2x"]
    assert list(high["files"]) == ["x/a.csv", "x/b.csv"]
    assert high["files"]["x/a.csv"]["ratio"] == pytest.approx(0.8)
    assert not calibration({0.001: {"x/a.csv": flags(1000, 5)}})[0]["within_2x"]
    table = anomaly_report.format_calibration(rows)
    assert "a.csv 0.80" in table and "b.csv -" in table


def test_the_tables_put_the_worker_among_the_scoreboard_rows() -> None:
    scores = {"profiles": {p: {"score": 45.0} for p in PROFILES},
              "categories": {p: {"realTweets": 12.5} for p in PROFILES}, "files": {}}
    other = {"profiles": {p: {"score": 60.0} for p in PROFILES}}
    lines = anomaly_report.format_profiles({"us": scores, "them": other}).splitlines()
    names = [line.split("  ")[0] for line in lines[2:]]
    assert names.index("> us") == names.index("Twitter ADVec") + 1
    assert names.index("> them") == names.index("KNN CAD") - 1
    assert "ARTime" in lines[2] and lines[-1].startswith("null")
    assert "realTweets" in anomaly_report.format_categories(scores)


def test_training_rows_are_the_probationary_values_with_epoch_ms() -> None:
    f = make_file(1000, [(400, 499)])
    rows = anomaly_stream.training_rows(f)
    assert len(rows) == probation_length(1000) == 150
    assert rows[1] == ("cat/f.csv", 1_577_836_860_000, "1.0")


def test_pick_takes_full_or_short_names_and_refuses_unknown_ones() -> None:
    corpus = [make_file(10, [], "a/one.csv"), make_file(10, [], "b/two.csv")]
    assert [f.name for f in anomaly.pick(corpus, ["two.csv", "a/one.csv"], False)] == [
        "b/two.csv", "a/one.csv"]
    assert anomaly.pick(corpus, None, False) is corpus
    with pytest.raises(UsageError, match=r"no NAB file three\.csv"):
        anomaly.pick(corpus, ["three.csv"], False)


def test_forecast_bench_anomaly_runs_the_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    """`forecast bench --anomaly --only F` reaches bench.anomaly.run (before TensorFlow)."""
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(anomaly, "run", lambda args, settings: seen.append(args) or 0)
    monkeypatch.setattr(commands, "_tensorflow", lambda: pytest.fail("imported TensorFlow"))
    args = build_parser().parse_args(["bench", "--anomaly", "--quick", "--only", "x.csv"])
    assert commands.bench(args, None) == 0  # type: ignore[arg-type]
    assert seen[0].only == "x.csv" and seen[0].quick


def test_real_calibration_counts_only_the_normal_values_of_real_files() -> None:
    """Flags inside a window, in its aftermath or in probation do not count; an artificial
    file is left out; a perfect detector's expected pass count comes with the table."""
    f = make_file(1000, [(400, 449)], "realX/a.csv")
    flagged = np.zeros(1000, bool)
    flagged[[10, 420, 470, 600, 900]] = True  # probation, window, aftermath, normal, normal
    v = Verdicts(np.zeros(1000), np.ones(1000, bool), flagged, 1000)
    art = make_file(1000, [], "artificialNoAnomaly/b.csv")
    c = anomaly_report.real_calibration([f, art], {f.name: v, art.name: v}, 0.002)
    assert list(c["files"]) == ["realX/a.csv"]
    row = c["files"]["realX/a.csv"]
    assert row["judged"] == 1000 - 150 - 100 and row["flags"] == 2
    assert row["ratio"] == pytest.approx(2 / (750 * 0.002))
    assert c["within_2x"] == 1 and 0.0 < c["within_2x_if_perfect"] < 1.0
    assert "a.csv" in anomaly_report.format_real_calibration(c)


def test_a_replay_gives_the_workers_verdicts_from_the_forecasts_it_wrote() -> None:
    """bench.anomaly_replay judges again what the worker judged (no gaps): same flags, same
    scores to the written precision, from the entries' values and predictions alone."""
    from bench.anomaly_replay import replay
    from forecast.grammar import Limits
    from tests.helpers import LinearModel
    from worker.batch import Served, build_commit
    from worker.state import SeriesStore

    rng = np.random.default_rng(7)
    values = (10 + np.cumsum(rng.standard_normal(1500)) * 0.05
              + 0.1 * rng.standard_normal(1500)).round(4)
    values[[700, 1100]] += [3.0, -2.5]
    entries = [(f"{i}-0".encode(), [b"series", b"s", b"value", repr(float(v)).encode()])
               for i, v in enumerate(values, 1)]
    commit = build_commit(entries, SeriesStore(3), Served(LinearModel(), anomaly_rate=0.01),
                          Limits(), lambda names: [None] * len(names))
    read = [{k.encode(): x if isinstance(x, bytes) else str(x).encode() for k, x in e.items()}
            for e in commit.outputs.entries()]  # as XRANGE gives them back
    v = align(len(values), {f"{i + 1}-0".encode(): i for i in range(len(values))}, read)
    assert v.prediction is not None
    again = replay(values, v.prediction, 0.01)
    assert v.flags >= 2 and np.array_equal(again.flagged, v.flagged)
    assert np.array_equal(again.judged, v.judged)
    assert np.allclose(again.score, v.score, rtol=1e-3, atol=1e-6)


def test_the_saved_forecasts_come_back_per_file(tmp_path: Any) -> None:
    """What the bench saves is what a replay loads; a file without output saves NaNs."""
    from bench.anomaly_replay import load_forecasts

    a, b = make_file(5, [], "x/a.csv"), make_file(3, [], "x/b.csv")
    pred = np.array([1.0, np.nan, 3.0, 4.0, 5.0])
    v = Verdicts(np.zeros(5), np.ones(5, bool), np.zeros(5, bool), 5, 0, pred)
    anomaly.save_forecasts(tmp_path / "f.npz", [a, b], {a.name: v, b.name: Verdicts.empty(3)})
    back = load_forecasts(tmp_path / "f.npz")
    assert list(back) == ["x/a.csv", "x/b.csv"]
    assert np.array_equal(back["x/a.csv"], pred, equal_nan=True)
    assert np.isnan(back["x/b.csv"]).all() and len(back["x/b.csv"]) == 3


def test_real_calibration_at_more_rates_is_judged_again_from_the_written_forecasts() -> None:
    """A real file streamed once gets a calibration row per extra rate, from its forecasts:
    a higher rate flags more; a file the worker wrote nothing for counts as at the default
    rate (no verdicts); the docs table lists the default rate, then the others."""
    rng = np.random.default_rng(3)
    f = make_file(6000, [(3000, 3099)], "realX/a.csv")
    f = dataclasses.replace(f, values=rng.standard_normal(6000))
    v = Verdicts(np.zeros(6000), np.ones(6000, bool), np.zeros(6000, bool), 6000, 0,
                 np.zeros(6000))  # forecasts: always 0
    rows = anomaly._replayed_real_calibration(
        [f, make_file(10, [], "realX/b.csv")], {f.name: v, "realX/b.csv": Verdicts.empty(10)},
        (0.003, 0.03))
    assert [r["rate"] for r in rows] == [0.003, 0.03] and all(r["series"] == 2 for r in rows)
    assert rows[0]["files"]["realX/b.csv"]["ratio"] is None  # counted, as at the default rate
    assert 0 < rows[0]["flags"] < rows[1]["flags"]
    real = anomaly_report.real_calibration([f], {f.name: v}, 0.001)
    text = anomaly_report.format_real_rates([real, *rows])
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["0.001", "0.003", "0.03"]
    data = {"scores": {"profiles": {}, "categories": {}, "files": {}},
            "calibration_real": real, "calibration_real_replayed": rows}
    md = anomaly_report.markdown(data)
    assert "| 0.003 |" in md and "judged again from the forecasts" in md


def test_the_tradeoff_table_compares_learning_steps_and_restores_the_workers(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench.anomaly_offline --tradeoff`: one row per step, each with NAB and
    real-series calibration figures; the worker's step is back afterwards."""
    from bench import anomaly_offline
    from worker import anomaly as verdicts

    rng = np.random.default_rng(3)
    f = make_file(3000, [(2000, 2099)], "realX/a.csv")
    values = rng.standard_normal(3000)
    values[2010] += 25.0
    f = dataclasses.replace(f, values=values)
    worker_step = verdicts.STEP
    anomaly_offline.tradeoff([f], 0.001)
    assert worker_step == verdicts.STEP
    rows = capsys.readouterr().out.splitlines()[3:]
    assert [float(r.split()[0]) for r in rows] == list(anomaly_offline.STEPS)
    assert all("of 1 (perfect" in r for r in rows)
    ratios = [float(r.split()[-1]) for r in rows]  # the step is really applied: rates move
    assert len(set(ratios)) > 1, ratios
