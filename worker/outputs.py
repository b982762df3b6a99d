"""A batch's forecasts as output entries (worker.wire): the columns, the latest forecast of
each series (`forecast:latest`), the copies for followed series (`FORECAST_FOLLOW`), and the
anomaly verdicts: their fields on the entries and the alerts of `forecast:anomalies`."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field

import numpy as np

from worker.anomaly import KINDS
from worker.timing import Timing
from worker.wire import Outputs, Value, fmt, joined

FOLLOW_CACHE = 100_000  # series whose FORECAST_FOLLOW match is remembered
# The columns of a batch's verdicts (one row per output entry, see worker.batch): the score
# (NaN: not judged), flagged (1/0), direction (+1/-1), kind code (worker.anomaly.KINDS), and
# the forecast and interval (as written; NaN: none) the value was judged against.
VERDICT = ("score", "flag", "direction", "kind", "prediction", "lower", "upper")
SCORE, FLAG, DIRECTION, KIND, POINT, LOWER, UPPER = range(len(VERDICT))


@dataclass
class Written:
    """What one batch writes besides the output stream's entries."""

    outputs: Outputs
    latest: list[Value] = field(default_factory=list)  # series/JSON pairs
    follow: list[int] = field(default_factory=list)  # (entry, stream number) pairs, 1-based
    follow_series: list[bytes] = field(default_factory=list)  # stream number k: series k-1


class Follow:
    """Which series FORECAST_FOLLOW's glob patterns name (remembered per series)."""

    def __init__(self, patterns: str = "") -> None:
        self.patterns = [p.strip() for p in patterns.split(",") if p.strip()]
        self.known: dict[bytes, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __call__(self, series: bytes) -> bool:
        """Whether `series` is followed.

        >>> f = Follow("sensor-*, pump?"); f(b"sensor-7"), f(b"pump12"), f(b"pump1")
        (True, False, True)
        """
        hit = self.known.get(series)
        if hit is None:
            if len(self.known) >= FOLLOW_CACHE:
                self.known.clear()
            text = series.decode("utf-8", "replace")
            hit = self.known[series] = any(fnmatch.fnmatchcase(text, p) for p in self.patterns)
        return hit


def build(version: str, h: int, has_interval: bool, out: np.ndarray, pos: list[int],
          ids: list[bytes], series: list[bytes], stamps: np.ndarray,
          follow: Follow | None = None, timing: Timing | None = None,
          warm: np.ndarray | None = None, verdicts: np.ndarray | None = None) -> Written:
    """Entries in stream order for the values at `pos` (their forecasts `out`, one row each:
    H points, then H lower and H upper bounds with an interval); with the `timing` of the
    batch's values, the time each forecast is for and the gaps; with `verdicts` (`VERDICT`
    rows), the anomaly fields."""
    o = Outputs(version=version, n=len(pos))
    if len(pos) == len(ids):  # every value predicted: pos is 0..m-1
        ser, src = series, ids
    else:
        ser, src = [series[i] for i in pos], [ids[i] for i in pos]
    o.set("series", list(ser), full=True)
    o.set("prediction", fmt(out[:, 0]), full=True)
    o.set("source_id", list(src), full=True)
    if stamps.max(initial=-1) >= 0:
        stamp_list = stamps.tolist()
        o.set("ts", [str(stamp_list[i]) if stamp_list[i] >= 0 else "" for i in pos],
              full=bool(stamps.min() >= 0))
    if timing is not None:
        _times(o, h, pos, stamps, timing)
    if has_interval:
        o.set("lower", fmt(out[:, h]), full=True)
        o.set("upper", fmt(out[:, 2 * h]), full=True)
    if h > 1:
        o.set("path", joined(out[:, :h]), full=True)
        if has_interval:
            o.set("lower_path", joined(out[:, h:2 * h]), full=True)
            o.set("upper_path", joined(out[:, 2 * h:3 * h]), full=True)
    if warm is not None and warm.any():
        o.set("warmup", np.where(warm, "1", "").tolist())
    if verdicts is not None:
        _verdicts(o, verdicts)
    written = Written(o)
    written.latest = latest(o, ser)
    if follow:
        for e, s in enumerate(ser):
            if follow(s):
                written.follow_series.append(s)
                written.follow += [e + 1, len(written.follow_series)]
    return written


def _times(o: Outputs, h: int, pos: list[int], stamps: np.ndarray, timing: Timing) -> None:
    """`target_ts` (and `path_ts` for H > 1): the input's ts plus one step (k steps) of its
    series, once the step is known; `gap_steps` on an entry whose input followed a gap."""
    at = np.asarray(pos, dtype=np.int64)
    step = timing.step_after[at]
    ts = stamps[at]
    known = (ts >= 0) & ~np.isnan(step)
    if known.any():
        target = np.where(known, ts + np.rint(np.nan_to_num(step)), -1).astype(np.int64)
        o.set("target_ts", [str(t) if ok else "" for t, ok in
                            zip(target.tolist(), known.tolist(), strict=True)],
              full=bool(known.all()))
        if h > 1:
            k = np.arange(1, h + 1)
            paths = ts[:, None] + np.rint(np.nan_to_num(step)[:, None] * k).astype(np.int64)
            o.set("path_ts", [",".join(map(str, row)) if ok else "" for row, ok in
                              zip(paths.tolist(), known.tolist(), strict=True)],
                  full=bool(known.all()))
    gap = timing.gap[at]
    if gap.any():
        o.set("gap_steps", [str(g) if g else "" for g in gap.tolist()])


def _verdicts(o: Outputs, v: np.ndarray) -> None:
    """`anomaly_score` (`%.4g`) and `anomaly` (1/0) on the judged entries; `direction` and
    `kind` on the flagged ones."""
    score = v[:, SCORE]
    judged = ~np.isnan(score)
    if not judged.any():
        return
    flag = v[:, FLAG] > 0
    n = len(score)
    if judged.all():
        o.set("anomaly_score", [f"{x:.4g}" for x in score.tolist()], full=True)
        o.set("anomaly", np.where(flag, "1", "0").tolist() if flag.any() else ["0"] * n,
              full=True)
    else:
        o.set("anomaly_score", [f"{x:.4g}" if x == x else "" for x in score.tolist()])
        o.set("anomaly", np.where(flag, "1", np.where(judged, "0", "")).tolist())
    if flag.any():
        o.set("direction", np.where(flag, np.where(v[:, DIRECTION] > 0, "up", "down"),
                                    "").tolist())
        o.set("kind", [KINDS[k] if f else "" for k, f in
                       zip(v[:, KIND].astype(np.int64).tolist(), flag.tolist(), strict=True)])


def alerts(version: str, v: np.ndarray, pos: list[int], ids: list[bytes],
           series: list[bytes], stamps: np.ndarray, values: np.ndarray) -> list[list[Value]]:
    """The `forecast:anomalies` entries (flat field/value pairs) of the flagged rows of `v`,
    the output entries of the values at batch positions `pos`.

    >>> v = np.array([[0.2, 0, 1, 0, 5.0, 4.0, 6.0], [0.9, 1, -1, 1, 5.0, 4.0, 6.0]])
    >>> alerts("v3", v, [0, 1], [b"1-0", b"2-0"], [b"a", b"a"], np.array([-1, 7]),
    ...        np.array([5.1, -20.0]))
    [['series', b'a', 'value', '-20', 'source_id', b'2-0', 'ts', '7', 'score', '0.9', \
'kind', 'spike', 'direction', 'down', 'prediction', '5', 'lower', '4', 'upper', '6', \
'model_version', 'v3']]
    """
    out: list[list[Value]] = []
    for e in np.flatnonzero(v[:, FLAG] > 0).tolist():
        i, row = pos[e], v[e]
        entry: list[Value] = ["series", series[i], "value", fmt([float(values[i])])[0],
                              "source_id", ids[i]]
        if stamps[i] >= 0:
            entry += ["ts", str(int(stamps[i]))]
        entry += ["score", f"{row[SCORE]:.4g}", "kind", KINDS[int(row[KIND])],
                  "direction", "up" if row[DIRECTION] > 0 else "down",
                  "prediction", fmt([row[POINT]])[0]]
        if not np.isnan(row[LOWER]):
            entry += ["lower", fmt([row[LOWER]])[0], "upper", fmt([row[UPPER]])[0]]
        out.append([*entry, "model_version", version])
    return out


def tally(v: np.ndarray) -> dict[tuple[str, str], int]:
    """The flagged rows of `v` counted by (kind, direction), for the metric.

    >>> tally(np.array([[0.9, 1, 1, 1, 0, 0, 0], [0.8, 1, 1, 2, 0, 0, 0], [0.1, 0, 1, 0, 0, 0, 0]]))
    {('spike', 'up'): 1, ('level_shift', 'up'): 1}
    """
    counts: dict[tuple[str, str], int] = {}
    flagged = v[v[:, FLAG] > 0]
    for kind, direction in zip(flagged[:, KIND].astype(np.int64).tolist(),
                               flagged[:, DIRECTION].tolist(), strict=True):
        key = (KINDS[kind], "up" if direction > 0 else "down")
        counts[key] = counts.get(key, 0) + 1
    return counts


def latest(o: Outputs, series: list[bytes]) -> list[Value]:
    """series/JSON pairs: each series' last entry of the batch, as a JSON object of its fields
    (`forecast:latest`; every value a string, as in the stream).

    Built column by column: the values are decimals, ids and digits, which need no JSON
    escaping (a column that would is encoded by `json.dumps`).

    >>> o = Outputs(version="v1", n=3)
    >>> o.set("series", [b"a", b"b", b"a"]); o.set("prediction", ["1", "2", "3"])
    >>> o.set("source_id", [b"1-0", b"2-0", b"3-0"]); o.set("gap_steps", ["", "", "2"])
    >>> latest(o, [b"a", b"b", b"a"])
    [b'a', '{"model_version":"v1","prediction":"3","source_id":"3-0","gap_steps":"2"}', \
b'b', '{"model_version":"v1","prediction":"2","source_id":"2-0"}']
    """
    last = dict(zip(series, range(len(series)), strict=True))  # the last entry of each
    picked = None if len(last) == len(series) else list(last.values())
    head = f'{{"model_version":{json.dumps(o.version)}'.replace("%", "%%")
    template, texts = [head], []  # the fields every picked entry has: one %-format per entry
    rest: list[tuple[str, list[str]]] = []  # the others: added where not empty
    for name, column in o.columns.items():
        if name == "series":
            continue
        values = column if picked is None else [column[e] for e in picked]
        text = [v.decode() if isinstance(v, bytes) else v for v in values]
        joined_text = "".join(text)
        if '"' in joined_text or "\\" in joined_text or not joined_text.isprintable():
            rest.append((json.dumps(name), [json.dumps(t) if t else "" for t in text]))
        elif name in o.full:
            template.append(f',"{name}":"%s"')
            texts.append(text)
        else:
            rest.append((f'"{name}"', [f'"{t}"' if t else "" for t in text]))
    fmt_ = "".join(template)
    body = [fmt_ % row for row in zip(*texts, strict=True)] if texts else [fmt_] * len(last)
    for key, extra in rest:
        body = [b + f",{key}:{v}" if v else b for b, v in zip(body, extra, strict=True)]
    out: list[Value] = [b""] * (2 * len(body))
    out[0::2] = list(last)
    out[1::2] = [b + "}" for b in body]
    return out
