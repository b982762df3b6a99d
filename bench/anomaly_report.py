"""The pure side of `make bench-anomaly` (bench.anomaly): each file's verdicts read back from
its output entries and aligned to its values, NAB's scores per profile, category and file,
the calibration table, and the printed tables. No Redis, no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.nab_data import NabFile
from bench.nab_score import (
    PROFILES,
    ProfileResult,
    Sweep,
    category_scores,
    normalise,
    probation_length,
    score_profile,
    sweep,
)

NO_ANOMALY = "artificialNoAnomaly"  # the category whose files have no windows
RESULTS = Path("bench/results")  # where a bench run writes its results
FORECASTS = "anomaly-forecasts.npz"  # in the results folder: each file's forecasts
# NAB's scoreboard (its README, v1.1): standard, reward_low_FP_rate, reward_low_FN_rate.
SCOREBOARD: tuple[tuple[str, float, float, float], ...] = (
    ("ARTime", 74.9, 65.1, 80.4),
    ("Numenta HTM", 70.5, 62.6, 75.2),
    ("CAD OSE", 69.9, 67.0, 73.2),
    ("KNN CAD", 58.0, 43.4, 64.8),
    ("Random Cut Forest", 51.7, 38.4, 59.7),
    ("Twitter ADVec", 47.1, 33.6, 53.5),
    ("windowed Gaussian", 39.6, 20.9, 47.4),
    ("random", 11.0, 1.2, 19.5),
    ("null", 0.0, 0.0, 0.0),
)
SHORT = {"standard": "standard", "reward_low_FP_rate": "low FP", "reward_low_FN_rate": "low FN"}


@dataclass(frozen=True)
class Verdicts:
    """One file's verdicts as read back, one slot per value in file order."""

    score: np.ndarray  # anomaly_score; 0 where the value got no entry or no verdict
    judged: np.ndarray  # bool: the value's output entry carried an anomaly_score
    flagged: np.ndarray  # bool: its entry said anomaly=1
    outputs: int  # output entries read back for the file's values
    alerts: int = 0  # entries of forecast:anomalies
    prediction: np.ndarray | None = None  # each entry's forecast of the next value (NaN: none)

    @classmethod
    def empty(cls, n: int) -> Verdicts:
        """No output at all (the file could not be trained or served): every value scores 0."""
        return cls(np.zeros(n), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), 0)

    @property
    def flags(self) -> int:
        """How many values were flagged."""
        return int(self.flagged.sum())

    @property
    def flag_rate(self) -> float | None:
        """Flags per judged value (None when nothing was judged)."""
        judged = int(self.judged.sum())
        return self.flags / judged if judged else None


def align(n: int, where: Mapping[bytes, int], entries: Iterable[Mapping[bytes, bytes]],
          alerts: int = 0) -> Verdicts:
    """Each output entry's verdict at the index of the value it judged (its `source_id`);
    a value without an entry, or whose entry has no `anomaly_score`, scores 0.

    >>> v = align(3, {b"1-0": 0, b"2-0": 1, b"3-0": 2},
    ...           [{b"source_id": b"2-0", b"anomaly_score": b"0.75", b"anomaly": b"1"},
    ...            {b"source_id": b"3-0", b"prediction": b"4"}])
    >>> v.score.tolist(), v.judged.tolist(), v.flagged.tolist(), v.outputs
    ([0.0, 0.75, 0.0], [False, True, False], [False, True, False], 2)
    >>> v.prediction.tolist()
    [nan, nan, 4.0]
    """
    score = np.zeros(n)
    judged = np.zeros(n, dtype=bool)
    flagged = np.zeros(n, dtype=bool)
    prediction = np.full(n, np.nan)
    outputs = 0
    for fields in entries:
        i = where.get(fields.get(b"source_id", b""))
        if i is None:  # not one of this file's values
            continue
        outputs += 1
        if fields.get(b"prediction"):
            prediction[i] = float(fields[b"prediction"])
        text = fields.get(b"anomaly_score")
        if text:
            score[i] = min(max(float(text), 0.0), 1.0)
            judged[i] = True
            flagged[i] = fields.get(b"anomaly") == b"1"
    return Verdicts(score, judged, flagged, outputs, alerts, prediction)


def windows_found(s: Sweep, scores: np.ndarray, threshold: float) -> tuple[int, int]:
    """(windows with a detection, windows scored) of one file at a threshold.

    >>> s = Sweep("f", np.ones(6, bool), np.array([-1, 0, 0, -1, 1, 1]), np.zeros(6), 2)
    >>> windows_found(s, np.array([0.9, 0.0, 0.6, 0.0, 0.2, 0.1]), 0.5)
    (1, 2)
    """
    found = scored = 0
    for k in range(s.n_windows):
        mask = s.scored & (s.window == k)
        if mask.any():
            scored += 1
            found += bool((scores[mask] >= threshold).any())
    return found, scored


def _file_row(f: NabFile, s: Sweep, v: Verdicts, std: ProfileResult) -> dict[str, Any]:
    found, scored = windows_found(s, v.score, std.threshold)
    raw = std.per_file[f.name]
    perfect = PROFILES[std.profile].tp * scored
    return {"category": f.category, "values": len(f.values), "outputs": v.outputs,
            "judged": int(v.judged.sum()), "flags": v.flags, "alerts": v.alerts,
            "windows": scored, "found": found, "raw": raw,
            "score": normalise(raw, std.null_per_file[f.name], perfect) if perfect else None}


def nab_scores(corpus: list[NabFile], verdicts: Mapping[str, Verdicts]) -> dict[str, Any]:
    """NAB's three profile scores, per category and per file, of the verdicts' scores."""
    if not any(f.windows for f in corpus):  # nothing to normalise by
        return {"profiles": {}, "categories": {}, "files": {}}
    scores = {f.name: verdicts[f.name].score for f in corpus}
    results = {p: score_profile(corpus, scores, p) for p in PROFILES}
    std = results["standard"]
    return {
        "profiles": {p: {"score": r.score, "threshold": r.threshold, "raw": r.raw,
                         "tp": r.tp, "fp": r.fp} for p, r in results.items()},
        "categories": {p: category_scores(corpus, r) for p, r in results.items()},
        "files": {f.name: _file_row(f, sweep(f), verdicts[f.name], std) for f in corpus},
    }


def calibration(runs: Mapping[float, Mapping[str, Verdicts]]) -> list[dict[str, Any]]:
    """Per target rate: the measured flag rate on each anomaly-free file and on all of them.

    >>> v = Verdicts(np.zeros(4), np.array([1, 1, 1, 0], bool), np.array([1, 0, 0, 0], bool), 4)
    >>> row = calibration({0.25: {"a": v}})[0]
    >>> row["measured"], row["ratio"], row["files"]["a"]["ratio"], row["within_2x"]
    (0.3333333333333333, 1.3333333333333333, 1.3333333333333333, True)
    """
    rows = []
    for rate in sorted(runs):
        files: dict[str, dict[str, Any]] = {}
        for name, v in sorted(runs[rate].items()):
            m = v.flag_rate
            files[name] = {"judged": int(v.judged.sum()), "flags": v.flags, "measured": m,
                           "ratio": None if m is None else m / rate}
        judged = sum(f["judged"] for f in files.values())
        flags = sum(f["flags"] for f in files.values())
        measured = flags / judged if judged else None
        rows.append({"rate": rate, "judged": judged, "flags": flags, "measured": measured,
                     "ratio": None if measured is None else measured / rate,
                     "within_2x": all(f["ratio"] is not None and 0.5 <= f["ratio"] <= 2.0
                                      for f in files.values()),
                     "files": files})
    return rows


def normal_part(f: NabFile) -> np.ndarray:
    """Per value of a file: whether calibration counts it as normal data, i.e. after NAB's
    probation, outside every label window and outside one window width after each (an
    anomaly's aftermath, where NAB itself charges a false positive little).

    >>> f = NabFile("r/f.csv", np.arange(40).astype("datetime64[s]"), np.zeros(40),
    ...             [(np.datetime64(10, "s"), np.datetime64(14, "s"))], [])
    >>> np.flatnonzero(~normal_part(f)).tolist()
    [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    """
    n = len(f.values)
    normal = np.arange(n) >= probation_length(n)
    for a, b in f.window_indices():
        normal[a : min(n, b + 1 + (b - a + 1))] = False
    return normal


def poisson_within(expected: float, low: float = 0.5, high: float = 2.0) -> float:
    """The chance that a Poisson count with mean `expected` lies within `low`..`high` times
    its mean: how often even a perfectly calibrated detector passes a 0.5x-2x check on a
    series where it expects that many flags.

    >>> round(poisson_within(3.0), 3), round(poisson_within(30.0), 3), poisson_within(0.0)
    (0.767, 0.999, 0.0)
    """
    if expected <= 0:
        return 0.0
    term, total = math.exp(-expected), 0.0
    for k in range(int(high * expected) + 1):
        if k > 0:
            term *= expected / k
        if k >= low * expected:
            total += term
    return total


def real_calibration(files: list[NabFile], verdicts: Mapping[str, Verdicts], rate: float
                     ) -> dict[str, Any]:
    """The flag rate at `rate` on the normal part (`normal_part`) of each real NAB file,
    next to how many files a perfectly calibrated detector would bring within 0.5x-2x
    (Poisson counts: a few thousand values at 0.001 expect only a few flags)."""
    rows: dict[str, dict[str, Any]] = {}
    for f in files:
        if not f.category.startswith("real") or f.name not in verdicts:
            continue
        v = verdicts[f.name]
        normal = normal_part(f) & v.judged
        judged, flags = int(normal.sum()), int((v.flagged & normal).sum())
        rows[f.name] = {"judged": judged, "flags": flags, "expected": judged * rate,
                        "ratio": flags / (judged * rate) if judged else None}
    ratios = [r["ratio"] for r in rows.values()]
    judged = sum(r["judged"] for r in rows.values())
    flags = sum(r["flags"] for r in rows.values())
    return {"rate": rate, "judged": judged, "flags": flags,
            "ratio": flags / (judged * rate) if judged else None,
            "within_2x": sum(r is not None and 0.5 <= r <= 2.0 for r in ratios),
            "series": len(rows),
            "within_2x_if_perfect": sum(poisson_within(r["expected"]) for r in rows.values()),
            "files": rows}


def format_real_rates(rows: list[dict[str, Any]]) -> str:
    """One line per rate (each a `real_calibration`): the pooled ratio and the files within
    0.5x-2x, next to what a perfectly calibrated detector would average there."""
    head = f"{'target':>8}{'ratio':>7}{'within 0.5x-2x':>16}{'if perfect':>12}"
    body = [f"{c['rate']:>8g}{_num(c['ratio'], '.2f'):>7}"
            f"{str(c['within_2x']) + '/' + str(c['series']):>16}"
            f"{c['within_2x_if_perfect']:>12.1f}" for c in rows]
    return "\n".join([head, "-" * len(head), *body])


def _num(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_profiles(runs: Mapping[str, dict[str, Any]]) -> str:
    """The three profile scores of each run (label: `nab_scores`) next to NAB's scoreboard,
    best first."""
    rows: list[tuple[Any, ...]] = [*SCOREBOARD]
    for label, scores in runs.items():
        rows.append((f"> {label}", *(scores["profiles"].get(p, {}).get("score")
                                     for p in PROFILES)))
    rows.sort(key=lambda r: -math.inf if r[1] is None else r[1], reverse=True)
    w = max(len(r[0]) for r in rows) + 2
    head = f"{'detector':<{w}}" + "".join(f"{SHORT[p]:>10}" for p in PROFILES)
    body = [f"{r[0]:<{w}}" + "".join(f"{_num(x):>10}" for x in r[1:]) for r in rows]
    return "\n".join([head, "-" * len(head), *body])


def format_categories(scores: dict[str, Any]) -> str:
    """Normalised score per category and profile (at the corpus-wide thresholds)."""
    cats = scores["categories"]
    names = sorted({c for per in cats.values() for c in per})
    head = f"{'category':<24}" + "".join(f"{SHORT[p]:>10}" for p in PROFILES)
    body = [f"{c:<24}" + "".join(f"{_num(cats.get(p, {}).get(c)):>10}" for p in PROFILES)
            for c in names]
    return "\n".join([head, "-" * len(head), *body])


def format_files(scores: dict[str, Any]) -> str:
    """One line per file: values, verdicts, flags, windows found, standard raw and score."""
    head = (f"{'file':<58}{'values':>7}{'judged':>7}{'flags':>6}{'windows':>9}"
            f"{'raw':>8}{'score':>7}")
    lines = [head, "-" * len(head)]
    for name, r in scores["files"].items():
        lines.append(f"{name:<58}{r['values']:>7}{r['judged']:>7}{r['flags']:>6}"
                     f"{r['found']:>4}/{r['windows']:<4}{r['raw']:>8.2f}{_num(r['score']):>7}")
    return "\n".join(lines)


def format_calibration(rows: list[dict[str, Any]]) -> str:
    """Target rate against the measured flag rate on the anomaly-free files."""
    head = f"{'target':>8}{'measured':>10}{'ratio':>7}{'flags':>7}{'judged':>8}  per file (ratio)"
    lines = [head, "-" * len(head)]
    for r in rows:
        per = ", ".join(f"{n.rsplit('/', 1)[-1]} {_num(f['ratio'], '.2f')}"
                        for n, f in r["files"].items())
        lines.append(f"{r['rate']:>8g}{_num(r['measured'], '.5f'):>10}"
                     f"{_num(r['ratio'], '.2f'):>7}{r['flags']:>7}{r['judged']:>8}  {per}")
    return "\n".join(lines)


def format_real_calibration(c: dict[str, Any]) -> str:
    """The flag rate on the real files' normal part: overall, and per file with the number
    of flags a calibrated detector expects there."""
    head = (f"target {c['rate']:g}: measured ratio {_num(c['ratio'], '.2f')} "
            f"({c['flags']} flags in {c['judged']} normal values of {c['series']} real files); "
            f"{c['within_2x']} of {c['series']} files within 0.5x-2x "
            f"(a perfectly calibrated detector: {c['within_2x_if_perfect']:.1f} on average)")
    per = [f"  {n.rsplit('/', 1)[-1]:<46}{r['flags']:>4} flags, {r['expected']:5.1f} expected, "
           f"ratio {_num(r['ratio'], '.2f')}" for n, r in c["files"].items()]
    return "\n".join([head, *per])


def _md(rows: list[list[str]]) -> str:
    """Rows (the first: the header) as a Markdown table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows[1:]])


def markdown(data: dict[str, Any]) -> str:
    """The tables of a results file (`bench.anomaly`) for the docs: the profiles next to the
    scoreboard (each FORECAST_ANOMALY_WINDOW), the categories, the calibration."""
    default = data.get("anomaly_window", "keep")
    runs = data.get("windows") or {default: data["scores"]["profiles"]}
    board: list[tuple[str, Any, Any, Any]] = [(n, a, b, c) for n, a, b, c in SCOREBOARD]
    for w, prof in runs.items():
        label = f"**this worker, `FORECAST_ANOMALY_WINDOW={w}`**" + (
            " (the default)" if w == default else "")
        board.append((label, *(prof.get(p, {}).get("score") for p in PROFILES)))
    board.sort(key=lambda r: -math.inf if r[1] is None else r[1], reverse=True)
    parts = [_md([["detector", *SHORT.values()],
                  *[[r[0], *(_num(x) for x in r[1:])] for r in board]])]
    cats = data["scores"]["categories"]
    names = sorted({c for per in cats.values() for c in per})
    parts.append(_md([["category (default window)", *SHORT.values()],
                      *[[c, *(_num(cats.get(p, {}).get(c)) for p in PROFILES)]
                        for c in names]]))
    found = sum(r["found"] for r in data["scores"]["files"].values())
    windows = sum(r["windows"] for r in data["scores"]["files"].values())
    parts.append(f"Windows found at the standard threshold: {found} of {windows}.")
    real = data.get("calibration_real")
    if real and real.get("series"):
        parts.append(
            f"Real series (the normal values of the {real['series']} real files: after "
            f"probation, outside the label windows and one window width after each), target "
            f"{real['rate']:g}: measured ratio {_num(real['ratio'], '.2f')} ({real['flags']} "
            f"flags in {real['judged']} values); {real['within_2x']} of {real['series']} "
            f"files within 0.5x-2x, where a perfectly calibrated detector would average "
            f"{real['within_2x_if_perfect']:.1f} (a few thousand values at this rate expect "
            f"only a few flags each).")
    replayed = data.get("calibration_real_replayed")
    if real and real.get("series") and replayed:
        parts.append(
            "The same at more rates, each file judged again from the forecasts this run's "
            "worker wrote (`bench.anomaly_replay`: the worker's rule; exact where the "
            "timestamps have no gaps):")
        parts.append(_md([["target rate", "pooled ratio", "files within 0.5x-2x",
                           "a perfectly calibrated detector"], *[
            [f"{c['rate']:g}", _num(c["ratio"], ".2f"), f"{c['within_2x']} of {c['series']}",
             f"{c['within_2x_if_perfect']:.1f}"] for c in [real, *replayed]]]))
    if data.get("calibration"):
        parts.append(_md([["target rate", "measured", "ratio", "per file (ratio)"], *[
            [f"{r['rate']:g}", _num(r["measured"], ".5f"), _num(r["ratio"], ".2f"),
             ", ".join(f"{n.rsplit('/', 1)[-1]} {_num(f['ratio'], '.2f')}"
                       for n, f in r["files"].items())] for r in data["calibration"]]]))
    return "\n\n".join(parts) + "\n"
