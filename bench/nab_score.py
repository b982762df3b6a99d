"""The NAB scorer, written from Lavin & Ahmad (2015) and NAB v1.1's documented rules.

Per file: the first min(floor(0.15 * n), 750) values are probationary and not scored. A value
inside a labelled window at relative position p in [-1, 0) (p = -(right - i + 1) / width)
counts, when detected, sigma(p) * A_TP / sigma(-1), with sigma(p) = 2 / (1 + exp(5 p)) - 1;
only the best (earliest) detection of a window counts, and a window with no detection costs
-A_FN. A detection outside every window costs A_FP * sigma(q), q = (i - right) / (width - 1)
measured from the end of the previous window (sigma = -1 for q > 3, or before the first
window). A value is detected when its anomaly score is >= the threshold; one threshold,
shared by all files, is chosen per profile to maximise the summed raw score, exactly (every
distinct score is a candidate). Normalised: 100 * (raw - null) / (perfect - null), where null
is the raw score of a constant detector (0.5 everywhere) and perfect is A_TP per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench.nab_data import NabFile, load_corpus


@dataclass(frozen=True)
class Costs:
    """One application profile's weights (NAB's config/profiles.json); A_TN is unused."""

    tp: float
    fp: float
    fn: float
    tn: float = 1.0


PROFILES: dict[str, Costs] = {
    "standard": Costs(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": Costs(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": Costs(tp=1.0, fp=0.11, fn=2.0),
}
PROBATION_PERCENT = 0.15
NO_DETECTION = math.inf  # the threshold above every score: nothing is detected


def scaled_sigmoid(position: np.ndarray) -> np.ndarray:
    """NAB's sigma: 2 / (1 + exp(5 p)) - 1, and -1 beyond p = 3."""
    p = np.asarray(position, dtype=np.float64)
    return np.where(p > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * np.minimum(p, 3.0))) - 1.0)


MAX_TP = float(scaled_sigmoid(np.array(-1.0)))  # sigma at the left edge of a window


def probation_length(n: int) -> float:
    """How many leading values of an n-value file are not scored."""
    return min(math.floor(PROBATION_PERCENT * n), PROBATION_PERCENT * 5000)


@dataclass(frozen=True)
class Sweep:
    """A file's per-value geometry: scored or not, its window (-1: none), its unweighted sigma."""

    name: str
    scored: np.ndarray  # bool
    window: np.ndarray  # int, index of the window the value lies in, -1 outside
    sigma: np.ndarray  # float, sigma(p) inside a window, sigma(q) (or -1) outside
    n_windows: int

    def weighted(self, costs: Costs) -> np.ndarray:
        """Each value's score if it were detected (NAB's sweep score) under a profile."""
        inside = self.window >= 0
        return np.where(inside, self.sigma * costs.tp / MAX_TP, self.sigma * costs.fp)


def sweep(nab_file: NabFile) -> Sweep:
    """Label every value of a file: in which window, and how much a detection there is worth."""
    n = len(nab_file.timestamps)
    window = np.full(n, -1, dtype=np.int64)
    sigma = np.full(n, -1.0)  # before the first window: a false positive at full cost
    idx = np.arange(n)
    for k, (left, right) in enumerate(nab_file.window_indices()):
        width = right - left + 1
        inside = idx[left : right + 1]
        window[left : right + 1] = k
        sigma[left : right + 1] = scaled_sigmoid(-(right - inside + 1) / width)
        after = idx[right + 1 :]  # until the next window overwrites them
        spread = max(width - 1, 1)  # NAB divides by width - 1 (its windows are wider than 1)
        sigma[right + 1 :] = scaled_sigmoid((after - right) / spread)
    scored = idx >= probation_length(n)
    return Sweep(nab_file.name, scored, window, sigma, len(nab_file.windows))


def _events(s: Sweep, scores: np.ndarray, costs: Costs) -> tuple[np.ndarray, np.ndarray, float]:
    """A file's score as a step function of the threshold: (values, score changes, base).

    The raw score at threshold t is base + the sum of the changes whose value is >= t.
    """
    gain = s.weighted(costs)
    fp = s.scored & (s.window < 0)
    vals, deltas = [scores[fp]], [gain[fp]]
    base = 0.0
    for k in range(s.n_windows):
        mask = s.scored & (s.window == k)
        if not mask.any():
            continue  # a window lost in the probationary period is not scored
        base -= costs.fn
        a, g = scores[mask], gain[mask]
        best = np.maximum.accumulate(a)
        record = np.ones(a.size, dtype=bool)
        record[1:] = best[1:] > best[:-1]
        # the earliest value above t is the first record above t; records rise left to right
        rv, rg = a[record], g[record]
        nxt = np.append(rg[1:], -costs.fn)  # what the window is worth just above each record
        vals.append(rv)
        deltas.append(rg - nxt)
    return np.concatenate(vals), np.concatenate(deltas), base


def raw_score(s: Sweep, scores: np.ndarray, costs: Costs, threshold: float) -> float:
    """A file's raw NAB score when values with anomaly score >= threshold are detections.

    Computed straight from the rules (no step function): the optimiser's cross-check.
    """
    hit = s.scored & (scores >= threshold)
    gain = s.weighted(costs)
    total = float(gain[hit & (s.window < 0)].sum())
    for k in range(s.n_windows):
        if not (s.scored & (s.window == k)).any():
            continue  # a window lost in the probationary period is not scored
        first = np.flatnonzero(hit & (s.window == k))
        total += float(gain[first[0]]) if first.size else -costs.fn
    return total


def best_threshold(
    sweeps: list[Sweep], scores: list[np.ndarray], costs: Costs
) -> tuple[float, float]:
    """The one threshold for all files with the highest summed raw score: (threshold, score).

    Ties go to the highest threshold, as in NAB's optimiser; NO_DETECTION when detecting
    nothing is best.
    """
    parts = [_events(s, a, costs) for s, a in zip(sweeps, scores, strict=True)]
    base = sum(p[2] for p in parts)
    vals = np.concatenate([p[0] for p in parts])
    deltas = np.concatenate([p[1] for p in parts])
    levels, inverse = np.unique(vals, return_inverse=True)
    per_level = np.bincount(inverse, weights=deltas, minlength=levels.size)
    totals = base + np.cumsum(per_level[::-1])[::-1]  # totals[j]: threshold levels[j]
    thresholds = np.append(levels, NO_DETECTION)
    totals = np.append(totals, base)
    j = int(np.flatnonzero(totals == totals.max())[-1])
    return float(thresholds[j]), float(totals[j])


@dataclass(frozen=True)
class ProfileResult:
    """One profile's outcome: threshold, raw and normalised scores, per file and category."""

    profile: str
    threshold: float
    raw: float
    null: float
    perfect: float
    score: float
    per_file: dict[str, float]  # raw score of each file at the threshold
    null_per_file: dict[str, float]  # the constant detector's, at its own best threshold
    tp: int  # detected values inside windows (scored part)
    fp: int  # detected values outside windows (scored part)


def normalise(raw: float, null: float, perfect: float) -> float:
    """100 * (raw - null) / (perfect - null): the null detector scores 0, a perfect one 100."""
    return 100.0 * (raw - null) / (perfect - null)


def _checked(nab_file: NabFile, scores_per_file: dict[str, np.ndarray]) -> np.ndarray:
    """The anomaly scores of one file, checked: one per value, each in [0, 1]."""
    a = np.asarray(scores_per_file[nab_file.name], dtype=np.float64)
    if a.shape != nab_file.values.shape:
        raise ValueError(f"{nab_file.name}: {a.size} scores for {nab_file.values.size} values")
    if not np.all((a >= 0.0) & (a <= 1.0)):
        raise ValueError(f"{nab_file.name}: anomaly scores must lie in [0, 1]")
    return a


def _at(sweeps: list[Sweep], scores: list[np.ndarray], costs: Costs) -> tuple[float, dict]:
    """The best shared threshold and each file's raw score with it."""
    threshold, _ = best_threshold(sweeps, scores, costs)
    per_file = {
        s.name: raw_score(s, a, costs, threshold) for s, a in zip(sweeps, scores, strict=True)
    }
    return threshold, per_file


def score_profile(
    corpus: list[NabFile], scores_per_file: dict[str, np.ndarray], profile: str
) -> ProfileResult:
    """Optimise the threshold for one profile and score the corpus with it."""
    costs = PROFILES[profile]
    sweeps = [sweep(f) for f in corpus]
    scores = [_checked(f, scores_per_file) for f in corpus]
    threshold, per_file = _at(sweeps, scores, costs)
    _, null_per_file = _at(sweeps, [np.full(a.size, 0.5) for a in scores], costs)
    raw, null = sum(per_file.values()), sum(null_per_file.values())
    perfect = costs.tp * sum(len(f.windows) for f in corpus)
    hit = [s.scored & (a >= threshold) for s, a in zip(sweeps, scores, strict=True)]
    tp = sum(int((h & (s.window >= 0)).sum()) for h, s in zip(hit, sweeps, strict=True))
    fp = sum(int((h & (s.window < 0)).sum()) for h, s in zip(hit, sweeps, strict=True))
    score = normalise(raw, null, perfect)
    return ProfileResult(
        profile, threshold, raw, null, perfect, score, per_file, null_per_file, tp, fp
    )


def category_scores(corpus: list[NabFile], result: ProfileResult) -> dict[str, float]:
    """Normalised score per category at the corpus-wide threshold (categories with windows)."""
    tp_weight = PROFILES[result.profile].tp
    out = {}
    for cat in sorted({f.category for f in corpus}):
        names = [f.name for f in corpus if f.category == cat]
        n_windows = sum(len(f.windows) for f in corpus if f.category == cat)
        if n_windows == 0:
            continue  # no windows, no scale (artificialNoAnomaly: only false positives)
        raw = sum(result.per_file[n] for n in names)
        null = sum(result.null_per_file[n] for n in names)
        out[cat] = normalise(raw, null, tp_weight * n_windows)
    return out


def score_detector(
    scores_per_file: dict[str, np.ndarray], corpus: list[NabFile] | None = None
) -> dict[str, float]:
    """NAB's three normalised profile scores, and "<profile>/<category>" ones, of a detector.

    scores_per_file maps each file name of the corpus (default: all 58 NAB files, e.g.
    "realKnownCause/nyc_taxi.csv") to one anomaly score in [0, 1] per value, in file order.
    """
    files = load_corpus() if corpus is None else corpus
    out: dict[str, float] = {}
    for profile in PROFILES:
        result = score_profile(files, scores_per_file, profile)
        out[profile] = result.score
        for cat, value in category_scores(files, result).items():
            out[f"{profile}/{cat}"] = value
    return out
