"""NAB v1.1 on the vendored corpus: a windowed-Gaussian baseline scored by bench.nab_score.

`python -m bench.nab` prints the baseline's three profile scores next to NAB's published
ones (results/final_results.json of NAB at commit ea702d7). Feed any detector through
`score_detector({file name: anomaly scores in [0, 1]})`.

NAB scored the published detectors from results CSVs that hold each anomaly score to 12
significant digits, so its windowed-Gaussian threshold of 1.0 caught every score above
0.99999999999995 (a value about 7.1 sigma away), not only those that are 1.0 in float64
(about 8.3 sigma). `baseline_scores` rounds the same way and reproduces the published row
exactly (raw -24.013 / -67.586 / -67.013, 521 TP and 409 FP values); unrounded, the same
detector scores 40.13 / 23.94 / 47.73. A new detector's scores need no rounding.
"""

from __future__ import annotations

import math
import time

import numpy as np

from bench.nab_data import NabFile, load_corpus
from bench.nab_score import PROFILES, category_scores, score_detector, score_profile

__all__ = ["NabFile", "load_corpus", "main", "published", "score_detector", "windowed_gaussian"]

# NAB's results/final_results.json, "windowedGaussian" row (full precision as published).
PUBLISHED_WINDOWED_GAUSSIAN = {
    "standard": 39.649523496077585,
    "reward_low_FP_rate": 20.86798582474138,
    "reward_low_FN_rate": 47.4100271583046,
}


def published() -> dict[str, float]:
    """NAB's published windowed-Gaussian scores, by profile."""
    return dict(PUBLISHED_WINDOWED_GAUSSIAN)


def _growing_stats(x: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of x[:i] for i = 1..count (Welford's updates, stable)."""
    mean = np.empty(count)
    var = np.empty(count)
    m, m2 = 0.0, 0.0
    for j, v in enumerate(x[:count].tolist()):
        d = v - m
        m += d / (j + 1)
        m2 += d * (v - m)
        mean[j], var[j] = m, m2 / (j + 1)
    return mean, np.sqrt(np.maximum(var, 0.0))


def windowed_gaussian(values: np.ndarray, window: int = 6400, step: int = 100) -> np.ndarray:
    """NAB's windowedGaussian: 1 - the two-sided Gaussian tail of each value, over past values.

    The statistics come from the previous values only: all of them until `window` are seen,
    then a window of `window` values that slides forward `step` values at a time. The first
    value scores 0; a window of equal values has std 1e-6, as in NAB.
    """
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    grow = min(n - 1, window)  # values 1..grow see x[:i]
    mean = np.empty(max(n - 1, 0))
    std = np.empty(max(n - 1, 0))
    mean[:grow], std[:grow] = _growing_stats(x, grow)
    for start in range(0, max(n - window, 0), step):  # values window + start, ... see these
        past = x[start : start + window]
        rows = slice(window + start - 1, min(window + start + step, n) - 1)
        mean[rows], std[rows] = past.mean(), past.std()
    std[std == 0.0] = 1e-6
    z = np.abs(x[1:] - mean) / std
    tail = np.asarray(np.frompyfunc(math.erfc, 1, 1)(z / math.sqrt(2.0)), dtype=np.float64)
    return np.concatenate([[0.0], 1.0 - 0.5 * tail])


def as_nab_csv(scores: np.ndarray) -> np.ndarray:
    """Scores as NAB's published results files hold them: 12 significant digits."""
    return np.array([float(f"{v:.12g}") for v in scores])


def baseline_scores(corpus: list[NabFile], csv_digits: bool = True) -> dict[str, np.ndarray]:
    """The windowed-Gaussian anomaly scores of every file (rounded as NAB stored them)."""
    out = {}
    for f in corpus:
        a = windowed_gaussian(f.values)
        out[f.name] = as_nab_csv(a) if csv_digits else a
    return out


def main() -> None:
    """Print the windowed-Gaussian baseline's NAB scores next to the published ones."""
    t0 = time.perf_counter()
    corpus = load_corpus()
    scores = baseline_scores(corpus)
    t1 = time.perf_counter()
    print(f"NAB v1.1: {len(corpus)} files, {sum(len(f.windows) for f in corpus)} windows")
    print(f"{'profile':<20}{'ours':>8}{'NAB':>8}{'threshold':>20}{'raw':>10}{'TP':>6}{'FP':>6}")
    cats: dict[str, dict[str, float]] = {}
    for profile in PROFILES:
        r = score_profile(corpus, scores, profile)
        cats[profile] = category_scores(corpus, r)
        print(
            f"{profile:<20}{r.score:8.2f}{PUBLISHED_WINDOWED_GAUSSIAN[profile]:8.2f}"
            f"{r.threshold:20.15f}{r.raw:10.3f}{r.tp:6d}{r.fp:6d}"
        )
    print("\nper category (normalised, at the corpus-wide threshold):")
    print(f"{'category':<24}" + "".join(f"{p:>20}" for p in PROFILES))
    for cat in cats["standard"]:
        print(f"{cat:<24}" + "".join(f"{cats[p][cat]:20.2f}" for p in PROFILES))
    t2 = time.perf_counter()
    print(f"\ndetector {t1 - t0:.1f} s (load included), scorer {t2 - t1:.1f} s")


if __name__ == "__main__":
    main()
