"""Replay a `make bench-anomaly` run's forecasts through the verdicts, offline, in seconds.

The bench keeps each NAB file's forecasts as the worker wrote them
(`bench/results/anomaly-forecasts.npz`, `bench.anomaly.save_forecasts`). Replaying judges
every value again with `worker.anomaly` as the worker does (the error is `closer` of the
value's distance from the forecast issued for it and from the value before it), so a change
to the verdict rule, or another rate, is scored on NAB without training 58 models again.

The replay matches the worker's verdicts for a file whose timestamps have no gaps; where the
worker filled missing steps or left a value after a gap unjudged (the `realTraffic` files,
a few others), the replay judges every value against the previous one, so it is close, not
exact. The figures the docs quote come from the bench itself; the one replay among them, the
real-series calibration at rates other than the default, judges each file again from the
forecasts that same run wrote (`bench.anomaly`), and says so.

`python -m bench.anomaly_replay [--rate R] [--forecasts PATH]`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bench import anomaly_report as report
from bench.anomaly_report import FORECASTS, RESULTS, Verdicts
from bench.nab_data import NabFile, load_corpus
from worker import anomaly


def load_forecasts(path: Path) -> dict[str, np.ndarray]:
    """Each file's forecasts (one per value: the forecast of the next value; NaN: none)."""
    with np.load(path) as saved:
        return {str(name): saved[f"prediction_{k}"] for k, name in enumerate(saved["names"])}


def replay(values: np.ndarray, prediction: np.ndarray, rate: float) -> Verdicts:
    """One file's verdicts judged again from its values and the forecasts written for them.

    >>> y = np.r_[np.tile([10.0, 10.2], 40), 30.0, 10.1]
    >>> v = replay(y, y.copy(), 0.01)  # a naive forecast: each value's is the value itself
    >>> np.flatnonzero(v.flagged).tolist(), v.judged[:3].tolist()  # the first error: the scale
    ([80], [False, False, True])
    """
    y = np.asarray(values, dtype=np.float64)
    point = np.r_[np.nan, prediction[:-1]]  # the forecast written with the value before
    before = np.r_[np.nan, y[:-1]]
    errors = np.where(np.isnan(point), np.nan, anomaly.closer(y - point, y - before))
    v = anomaly.judge(anomaly.Calibration.empty(1), np.zeros(len(y), dtype=np.int64), y,
                      errors, rate)
    judged = ~np.isnan(v.score)
    return Verdicts(np.nan_to_num(v.score), judged, v.flag.copy(), int(judged.sum()),
                    int(v.flag.sum()), np.asarray(prediction, dtype=np.float64))


def replay_all(corpus: list[NabFile], forecasts: dict[str, np.ndarray], rate: float
               ) -> dict[str, Verdicts]:
    """Every file that has forecasts, replayed."""
    return {f.name: replay(f.values, forecasts[f.name], rate) for f in corpus
            if f.name in forecasts}


def main(argv: list[str] | None = None) -> int:
    """Print the NAB scores and the calibration of the replayed verdicts."""
    parser = argparse.ArgumentParser(prog="python -m bench.anomaly_replay", description=__doc__)
    parser.add_argument("--rate", type=float, default=0.001, help="FORECAST_ANOMALY_RATE")
    parser.add_argument("--forecasts", type=Path, default=RESULTS / FORECASTS)
    args = parser.parse_args(argv)
    if not args.forecasts.exists():
        parser.error(f"no {args.forecasts}: run make bench-anomaly first")
    forecasts = load_forecasts(args.forecasts)
    files = [f for f in load_corpus() if f.name in forecasts]
    verdicts = replay_all(files, forecasts, args.rate)
    scores: dict[str, Any] = report.nab_scores(files, verdicts)
    print(f"replayed {len(files)} files at rate {args.rate:g}\n")
    print(report.format_profiles({"replay": scores}))
    print("\n" + report.format_real_calibration(
        report.real_calibration(files, verdicts, args.rate)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
