"""The quality benchmark's scoring (bench/quality.py): split, MASE, MSIS, ratios, targets."""

from __future__ import annotations

import math

import numpy as np

from bench import quality as q
from bench.quality_data import RealSeries
from forecast.cli import build_parser


def series(name: str, values: np.ndarray) -> RealSeries:
    return RealSeries(name, "monthly", 12, "test", values)


def forecasts(values: np.ndarray, horizon: int, bias: float, width: float) -> q.Forecasts:
    fc = q.Forecasts()
    for t in q.origins(len(values), horizon):
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


def test_summary_ratios_and_targets() -> None:
    rng = np.random.default_rng(0)
    ss = [series(f"s{i}", 10 + rng.normal(size=120).cumsum()) for i in range(3)]
    result: dict = {"horizon": 1, "scores": {}}
    for i, s in enumerate(ss):
        v = s.values
        result["scores"][s.name] = {
            q.PROJECT: q.score(s, forecasts(v, 1, 0.5, 2.0), 1),
            **{p: q.score(s, forecasts(v, 1, 1.0 + i, 2.0), 1) for p in q.PEERS}}
    summ = q.summary(ss, result)
    assert summ["ratio"]["AutoETS"] < 1.0 and summ["worst_vs_best_classic"][0] <= 0.5 + 1e-9
    checks = q.targets([(result, summ)])
    assert checks[0][2] and checks[2][2]
    assert "forecast" in q.format_table(ss, result, summ)


def test_cli_routes_bench_quality() -> None:
    args = build_parser().parse_args(["bench", "--quality", "--only", "lynx"])
    assert args.quality and args.only == "lynx"


def test_markdown_table_from_results() -> None:
    rng = np.random.default_rng(1)
    ss = [series(f"s{i}", 10 + rng.normal(size=120).cumsum()) for i in range(2)]
    result: dict = {"horizon": 1, "scores": {}}
    for s in ss:
        result["scores"][s.name] = {m: q.score(s, forecasts(s.values, 1, 0.3, 1.0), 1)
                                    for m in (q.PROJECT, *q.PEERS)}
    summ = q.summary(ss, result)
    data = {"series": [{"name": s.name, "freq": s.freq, "length": len(s.values)} for s in ss],
            "passes": [{**result, "summary": summ}],
            "targets": [{"target": w, "figure": f, "met": ok}
                        for w, f, ok in q.targets([(result, summ)])]}
    md = q.markdown(data)
    assert md.count("\n| s") == 2 and "geo-mean ratio forecast / peer" in md and "| met |" in md
