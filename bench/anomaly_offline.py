"""The verdict rule (worker.anomaly) on NAB, offline: forecasts from simple experts, no worker.

A first look at what the verdicts can score before they run inside the worker (the real
`make bench-anomaly` streams the corpus through the worker with a trained model). Each file
is one series; the forecast of each value is made from the values before it.

`python -m bench.anomaly_offline` prints the three profile scores per forecaster and the
flag rate on the anomaly-free files.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from bench.anomaly_replay import replay
from bench.nab import load_corpus, score_detector
from bench.nab_data import NabFile

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


def main() -> None:
    """Print the NAB scores of the verdicts with each simple forecaster."""
    corpus = load_corpus()
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
