"""The verdict rule (worker.anomaly) on NAB, offline: forecasts from simple experts, no worker.

A first look at what the verdicts can score before they run inside the worker (the real
`make bench-anomaly` streams the corpus through the worker with a trained model). Each file
is one series; the forecast of each value is made from the values before it.

`python -m bench.anomaly_offline` prints the three profile scores per forecaster and the
flag rate on the anomaly-free files; `--tradeoff` prints what the thresholds' learning step
(`worker.anomaly.STEP`) trades between NAB and calibration on the real series (naive
forecasts): a larger step calibrates each series sooner, and finds fewer NAB windows.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from unittest.mock import patch

import numpy as np

from bench import anomaly_report as report
from bench.anomaly_replay import replay
from bench.nab import load_corpus, score_detector
from bench.nab_data import NabFile
from worker import anomaly

STEPS = (0.025, 0.05, 0.1, 0.2)  # `--tradeoff`: learning steps compared (0.05: the worker's)

Forecaster = Callable[[np.ndarray], np.ndarray]


def naive(x: np.ndarray) -> np.ndarray:
    """Each value's forecast is the value before it (NaN for the first).

    >>> naive(np.array([1.0, 2.0, 4.0])).tolist()
    [nan, 1.0, 2.0]
    """
    out = np.empty_like(x)
    out[0], out[1:] = np.nan, x[:-1]
    return out


def ewma(alpha: float = 0.3) -> Forecaster:
    """Exponentially weighted level of the values before each one."""
    def forecast(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        level = float("nan")
        for i, v in enumerate(x.tolist()):
            out[i] = level
            level = v if level != level else level + alpha * (v - level)
        return out
    return forecast


def verdict_scores(x: np.ndarray, forecaster: Forecaster, rate: float) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """Per value: the anomaly score (0 where none) and whether it was flagged, judged as the
    worker judges (`bench.anomaly_replay.replay`: the nearer of the forecast and the value
    before)."""
    point = forecaster(x)  # each value's forecast; `replay` takes the one written before it
    v = replay(x, np.r_[point[1:], np.nan], rate)
    return v.score, v.flagged


def evaluate(corpus: list[NabFile], forecaster: Forecaster, rate: float
             ) -> tuple[dict[str, float], float]:
    """NAB scores of the verdicts, and the flag rate on the anomaly-free files."""
    scores: dict[str, np.ndarray] = {}
    flags, values = 0, 0
    for f in corpus:
        s, flag = verdict_scores(np.asarray(f.values, dtype=np.float64), forecaster, rate)
        scores[f.name] = s
        if not f.windows:
            flags, values = flags + int(flag.sum()), values + len(flag)
    return score_detector(scores, corpus), flags / max(values, 1)


def tradeoff(corpus: list[NabFile], rate: float) -> None:
    """Print NAB standard and real-series calibration at `rate` for each of `STEPS`."""
    print(f"learning step vs NAB and calibration (rate {rate}, naive forecasts)")
    print("(windows hit and values detected outside them: at NAB's optimised threshold; "
          "calibration: the worker's flags)")
    print(f"{'STEP':>6} {'standard':>9} {'windows hit':>12} {'FP at NAB threshold':>20} "
          f"{'real files within 0.5x-2x':>26} {'pooled ratio':>13}")
    values = {f.name: np.asarray(f.values, dtype=np.float64) for f in corpus}
    for step in STEPS:
        with patch.object(anomaly, "STEP", step):  # an offline study only
            verdicts = {f.name: replay(values[f.name], values[f.name], rate) for f in corpus}
        scores = report.nab_scores(corpus, verdicts)
        std = scores["profiles"]["standard"]
        found = sum(r["found"] for r in scores["files"].values())
        cal = report.real_calibration(corpus, verdicts, rate)
        perfect = cal["within_2x_if_perfect"]
        within = f"{cal['within_2x']} of {cal['series']} (perfect {perfect:.1f})"
        print(f"{step:6g} {std['score']:9.1f} {found:12d} {std['fp']:20d} {within:>26} "
              f"{cal['ratio']:13.2f}")


def main(argv: list[str] | None = None) -> None:
    """Print the NAB scores of the verdicts with each simple forecaster (or `--tradeoff`)."""
    parser = argparse.ArgumentParser(prog="python -m bench.anomaly_offline",
                                     description=__doc__)
    parser.add_argument("--tradeoff", action="store_true", help="the STEP table instead")
    args = parser.parse_args(argv)
    corpus = load_corpus()
    if args.tradeoff:
        tradeoff(corpus, 0.001)
        return
    rate = 0.001
    print(f"verdicts (worker.anomaly, rate {rate}) on NAB v1.1, offline forecasters")
    print(f"{'forecaster':<12} {'standard':>9} {'low FP':>8} {'low FN':>8} "
          f"{'flag rate (no-anomaly files)':>30} {'s':>6}")
    for name, fc in (("naive", naive), ("ewma 0.3", ewma(0.3))):
        t0 = time.perf_counter()
        s, flag_rate = evaluate(corpus, fc, rate)
        print(f"{name:<12} {s['standard']:9.1f} {s['reward_low_FP_rate']:8.1f} "
              f"{s['reward_low_FN_rate']:8.1f} {flag_rate:30.5f} {time.perf_counter() - t0:6.1f}")


if __name__ == "__main__":
    main()
