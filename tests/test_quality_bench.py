"""The quality benchmark's scoring (bench/quality.py): split, MASE, MSIS, ratios, targets."""

from __future__ import annotations

import math

import numpy as np

from bench import quality as q
from bench import quality_report
from bench.quality_data import RealSeries
from cli.parser import build_parser


def series(name: str, values: np.ndarray, short: bool = False, freq: str = "monthly"
           ) -> RealSeries:
    return RealSeries(name, freq, 12, "test", values, short)


def forecasts(values: np.ndarray, horizon: int, bias: float, width: float,
              short: bool = False) -> q.Forecasts:
    fc = q.Forecasts()
    for t in q.origins(len(values), horizon, short):
        y = values[t + 1: t + 1 + horizon]
        fc.point[t] = y + bias
        fc.lower[t] = y + bias - width
        fc.upper[t] = y + bias + width
    return fc


def test_split_and_origins_cover_the_last_fifth() -> None:
    assert q.split(100) == 80 and q.origins(100, 1) == list(range(79, 99))
    assert len(q.origins(100, 6)) == 15  # every target of every origin in the test part


def test_scores_of_a_known_forecast() -> None:
    v = np.arange(100.0) * 2  # training naive MAE 2
    s = series("a", v)
    sc = q.score(s, forecasts(v, 1, bias=1.0, width=0.5), 1)
    assert sc["n"] == 20 and math.isclose(sc["mase"], 0.5)
    assert sc["coverage"] == 0.0  # the interval misses by 0.5 everywhere
    assert math.isclose(sc["msis"], (1.0 + 20 * 0.5) / 2)
    sc6 = q.score(s, forecasts(v, 6, bias=0.0, width=1.0), 6)
    assert sc6["mase_per_step"] == [0.0] * 6 and sc6["coverage"] == 1.0


def test_a_short_series_is_scored_from_its_second_value() -> None:
    v = np.arange(12.0) * 3  # naive MAE 3 over the whole series
    s = series("new", v, short=True)
    assert q.origins(12, 1, short=True) == list(range(1, 11))
    sc = q.score(s, forecasts(v, 1, bias=1.5, width=2.0, short=True), 1)
    assert sc["n"] == 10 and sc["missing"] == 0 and math.isclose(sc["mase"], 0.5)
    partial = forecasts(v, 1, 0.0, 1.0, short=True)
    del partial.point[1]
    assert q.score(s, partial, 1)["missing"] == 1


def result_of(ss: list[RealSeries], project_bias: float) -> dict:
    result: dict = {"horizon": 1, "setup": "mixed", "scores": {}}
    for i, s in enumerate(ss):
        v = s.values
        result["scores"][s.name] = {
            q.PROJECT: q.score(s, forecasts(v, 1, project_bias, 2.0, s.short), 1),
            **{p: q.score(s, forecasts(v, 1, 1.0 + i, 2.0, s.short), 1) for p in q.PEERS}}
    return result


def test_summary_ratios_and_targets() -> None:
    rng = np.random.default_rng(0)
    ss = [series(f"s{i}", 10 + rng.normal(size=120).cumsum(), freq=f) for i, f in
          enumerate(("monthly", "quarterly", "monthly"))]
    ss.append(series("young", 10 + rng.normal(size=20).cumsum(), short=True))
    result = result_of(ss, 0.5)
    summ = q.summary(ss, result)
    assert summ["ratio"]["AutoETS"] < 1.0 and summ["worst_vs_best_classic"][0] <= 0.5 + 1e-9
    assert set(summ["per_freq"]) == {"monthly", "quarterly"}
    assert summ["origins"]["short_series"] == 1 and summ["origins"]["short_scored"] == 18
    checks = {what: ok for what, _, ok in q.targets(result, summ)}
    assert all(checks.values()), checks
    assert "forecast" in quality_report.format_table(ss, result, summ)
    worse = q.summary(ss, result_of(ss, 5.0))
    assert not all(ok for _, _, ok in q.targets(result_of(ss, 5.0), worse))


def test_cli_routes_bench_quality() -> None:
    args = build_parser().parse_args(["bench", "--quality", "--only", "lynx"])
    assert args.quality and args.only == "lynx"


def test_markdown_table_from_results() -> None:
    rng = np.random.default_rng(1)
    ss = [series(f"s{i}", 10 + rng.normal(size=120).cumsum()) for i in range(2)]
    result = result_of(ss, 0.3)
    summ = q.summary(ss, result)
    data = {"series": [{"name": s.name, "freq": s.freq, "length": len(s.values)} for s in ss],
            "passes": [{**result, "summary": summ}],
            "targets": [{"target": w, "figure": f, "met": ok}
                        for w, f, ok in q.targets(result, summ)]}
    md = quality_report.markdown(data)
    assert md.count("\n| s") == 3 and "geo-mean ratio forecast / peer" in md and "| met |" in md
