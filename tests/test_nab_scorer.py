"""The NAB scorer (bench/nab_score.py): its rules on hand-made files, then the published proof.

No TensorFlow, no Redis. The proof scores the windowed-Gaussian baseline (bench/nab.py) on the
vendored NAB v1.1 corpus and compares with NAB's results/final_results.json.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.nab import baseline_scores, published, windowed_gaussian
from bench.nab_data import NabFile, load_corpus
from bench.nab_score import (
    MAX_TP,
    PROFILES,
    best_threshold,
    probation_length,
    raw_score,
    score_detector,
    score_profile,
    sweep,
)

STANDARD = PROFILES["standard"]
T0 = np.datetime64("2020-01-01T00:00:00", "s")


def make_file(n: int, windows: list[tuple[int, int]], name: str = "cat/f.csv") -> NabFile:
    """A file of n values one minute apart, with windows given as (start, end) indices."""
    stamps = T0 + np.arange(n) * np.timedelta64(60, "s")
    wins = [(stamps[a], stamps[b]) for a, b in windows]
    return NabFile(name, stamps, np.zeros(n), wins, [stamps[(a + b) // 2] for a, b in windows])


def detections(n: int, at: list[int]) -> np.ndarray:
    """Anomaly scores: 1 at the given indices, 0 elsewhere."""
    a = np.zeros(n)
    a[at] = 1.0
    return a


def raw(f: NabFile, at: list[int], profile: str = "standard") -> float:
    """The raw score of a file with detections at the given indices."""
    return raw_score(sweep(f), detections(len(f.values), at), PROFILES[profile], 0.5)


def test_probationary_period_is_15_percent_capped_at_750() -> None:
    """NAB scores from index min(floor(0.15 n), 750) on."""
    assert probation_length(1000) == 150
    assert probation_length(4032) == 604
    assert probation_length(22695) == 750


def test_early_detection_in_a_window_beats_a_late_one() -> None:
    """The scaled sigmoid: A_TP at the left edge of a window, near 0 at its right edge."""
    f = make_file(1000, [(400, 499)])
    early, middle, late = raw(f, [400]), raw(f, [450]), raw(f, [499])
    assert early == pytest.approx(STANDARD.tp)
    assert early > middle > late > 0.0
    assert late == pytest.approx((2 / (1 + np.exp(-5 * 0.01)) - 1) / MAX_TP)  # p = -1/100


def test_only_the_first_detection_in_a_window_counts() -> None:
    """Later detections in the same window add nothing (and cost nothing)."""
    f = make_file(1000, [(400, 499)])
    assert raw(f, [420, 450, 499]) == pytest.approx(raw(f, [420]))
    assert raw(f, [450, 420]) == pytest.approx(raw(f, [420]))


def test_missed_window_costs_the_fn_weight() -> None:
    """No detection in a window: -A_FN (2 in reward_low_FN_rate)."""
    f = make_file(1000, [(400, 499), (700, 799)])
    assert raw(f, []) == pytest.approx(-2.0)
    assert raw(f, [], "reward_low_FN_rate") == pytest.approx(-4.0)
    assert raw(f, [400]) == pytest.approx(1.0 - 1.0)


def test_false_positive_far_from_any_window_costs_the_fp_weight() -> None:
    """A_FP in full before the first window or far after one; less just after a window."""
    f = make_file(4000, [(700, 709)])  # scored from index 600 on
    missed = -STANDARD.fn
    assert raw(f, [650]) == pytest.approx(missed - STANDARD.fp)  # before the window
    assert raw(f, [2000]) == pytest.approx(missed - STANDARD.fp)  # q = 1291 / 9 > 3
    assert raw(f, [650], "reward_low_FP_rate") == pytest.approx(missed - 0.22)
    just_after = raw(f, [710]) - missed
    assert -STANDARD.fp < just_after < 0.0
    sigma_q = 2 / (1 + np.exp(5 * 11 / 9)) - 1  # q = 11 / (width - 1)
    assert raw(f, [720]) - missed == pytest.approx(STANDARD.fp * sigma_q)


def test_probationary_values_are_not_scored() -> None:
    """Detections in the first 15% count for nothing, and a window there is not missed."""
    f = make_file(1000, [(10, 20), (400, 499)])  # the first window is probationary
    assert raw(f, []) == pytest.approx(-1.0)
    assert raw(f, [5, 10, 100]) == pytest.approx(-1.0)


def test_null_detector_scores_0_and_perfect_detector_100() -> None:
    """After normalisation, for every profile, over several files."""
    corpus = [
        make_file(1000, [(400, 499)], "a/one.csv"),
        make_file(3000, [(900, 999), (2000, 2099)], "a/two.csv"),
        make_file(800, [], "b/none.csv"),
    ]
    null = {f.name: np.full(len(f.values), 0.5) for f in corpus}
    perfect = {
        f.name: detections(len(f.values), [a for a, _ in f.window_indices()]) for f in corpus
    }
    null_scores, perfect_scores = score_detector(null, corpus), score_detector(perfect, corpus)
    for profile in PROFILES:
        assert null_scores[profile] == pytest.approx(0.0)
        assert perfect_scores[profile] == pytest.approx(100.0)
    assert perfect_scores["standard/a"] == pytest.approx(100.0)
    assert "standard/b" not in perfect_scores  # no windows: no scale


def test_threshold_optimisation_is_exact() -> None:
    """The optimiser's best shared threshold equals a brute-force sweep of every score."""
    rng = np.random.default_rng(7)
    corpus = [make_file(600, [(200, 260)], "x/a.csv"), make_file(900, [(300, 340), (600, 700)])]
    scores = [np.round(rng.random(len(f.values)) ** 8, 3) for f in corpus]
    sweeps = [sweep(f) for f in corpus]
    for costs in PROFILES.values():
        threshold, best = best_threshold(sweeps, scores, costs)
        brute = max(
            sum(raw_score(s, a, costs, t) for s, a in zip(sweeps, scores, strict=True))
            for t in [*np.unique(np.concatenate(scores)), np.inf]
        )
        assert best == pytest.approx(brute)
        achieved = sum(
            raw_score(s, a, costs, threshold) for s, a in zip(sweeps, scores, strict=True)
        )
        assert achieved == pytest.approx(best)


def test_scores_must_be_one_per_value_in_0_1() -> None:
    """A detector's scores are checked before scoring."""
    corpus = [make_file(100, [(50, 60)])]
    with pytest.raises(ValueError, match="scores for"):
        score_detector({"cat/f.csv": np.zeros(99)}, corpus)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_detector({"cat/f.csv": np.full(100, 1.5)}, corpus)


def test_windowed_gaussian_uses_past_values_only() -> None:
    """The first value scores 0; a value far from the past window scores near 1."""
    a = windowed_gaussian(np.array([1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 50.0]))
    assert a[0] == 0.0
    assert a[-1] > 0.999
    assert np.all((a >= 0.0) & (a <= 1.0))


def test_windowed_gaussian_reproduces_nab_published_scores() -> None:
    """The proof: NAB's published windowedGaussian row, from this scorer and this baseline."""
    corpus = load_corpus()
    assert len(corpus) == 58
    assert sum(len(f.windows) for f in corpus) == 116
    scores = baseline_scores(corpus)
    expected = published()
    results = {p: score_profile(corpus, scores, p) for p in PROFILES}
    assert results["standard"].score == pytest.approx(39.6, abs=0.5)
    assert results["reward_low_FP_rate"].score == pytest.approx(20.9, abs=1.0)
    assert results["reward_low_FN_rate"].score == pytest.approx(47.4, abs=1.0)
    for profile, r in results.items():
        assert r.score == pytest.approx(expected[profile], abs=1e-6)
        # NAB's results/windowedGaussian/*_scores.csv: 521 TP and 409 FP values at threshold 1.0
        assert (r.threshold, r.tp, r.fp) == (1.0, 521, 409)
