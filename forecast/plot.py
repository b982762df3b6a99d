"""`forecast plot`: recent values of one series against the predictions made for them, as PNG.

The x axis counts the series' input entries (oldest to newest). A prediction whose
`source_id` is input entry X forecasts the value after X, so it is drawn one step to the
right of X; the last one may sit one step past the newest value (the next forecast). The
output entry of X also carries the verdict on X: a flagged value (`anomaly=1`) is marked.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forecast import keys
from forecast.errors import UsageError
from forecast.redis_conn import AnyRedis, connect
from forecast.settings import Settings

log = logging.getLogger(__name__)

SCAN_LIMIT = 200_000  # most entries read backwards from one stream
PAGE = 5_000  # entries per XREVRANGE call

EntryId = tuple[int, int]
Actual = tuple[int, float]
Predicted = tuple[int, float, float | None, float | None]


@dataclass(frozen=True)
class Forecast:
    """One prediction read back from the output stream."""

    value: float
    lower: float | None = None
    upper: float | None = None
    anomaly: bool = False  # the input it follows was flagged (the entry's `anomaly=1`)


def parse_id(entry_id: bytes | str) -> EntryId:
    """A stream entry id as a sortable `(ms, seq)` pair.

    >>> parse_id(b"1700000000000-3")
    (1700000000000, 3)
    >>> parse_id("5-0") < parse_id("5-1") < parse_id("6-0")
    True
    """
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def before(entry_id: EntryId) -> str | None:
    """The greatest id strictly smaller than `entry_id` (None below 0-0).

    >>> before((5, 2)), before((5, 0)), before((0, 0))
    ('5-1', '4-18446744073709551615', None)
    """
    ms, seq = entry_id
    if seq > 0:
        return f"{ms}-{seq - 1}"
    if ms > 0:
        return f"{ms - 1}-18446744073709551615"
    return None


def to_float(raw: bytes | str | None) -> float | None:
    """A finite float from a stream field, else None.

    >>> to_float(b"1.5"), to_float(b"nan"), to_float(None), to_float(b"x")
    (1.5, None, None, None)
    """
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _scan(r: AnyRedis, stream: str, limit: int) -> Any:
    """Yield `(id, fields)` newest first, at most `limit` entries."""
    upper: str | None = "+"
    seen = 0
    while upper is not None and seen < limit:
        page = r.xrevrange(stream, max=upper, min="-", count=min(PAGE, limit - seen))
        if not page:
            return
        for entry_id, fields in page:
            yield parse_id(entry_id), fields
        seen += len(page)
        upper = before(parse_id(page[-1][0]))


def read_actual(
    r: AnyRedis, stream: str, series: bytes, last: int, limit: int = SCAN_LIMIT
) -> dict[EntryId, float]:
    """The newest `last` values of `series` in an input stream, by entry id."""
    found: dict[EntryId, float] = {}
    for entry_id, fields in _scan(r, stream, limit):
        if fields.get(b"series") != series:
            continue
        value = to_float(fields.get(b"value"))
        if value is not None:
            found[entry_id] = value
            if len(found) >= last:
                break
    return found


def read_predictions(
    r: AnyRedis,
    stream: str,
    series: bytes,
    want: int,
    oldest: EntryId | None = None,
    limit: int = SCAN_LIMIT,
) -> dict[EntryId, Forecast]:
    """The newest `want` predictions of `series`, by source entry id (newest copy wins).

    Stops at entries older than `oldest`: a prediction is always written after its input.
    """
    found: dict[EntryId, Forecast] = {}
    for entry_id, fields in _scan(r, stream, limit):
        if oldest is not None and entry_id < oldest:
            break
        if fields.get(b"series") != series or b"source_id" not in fields:
            continue
        value = to_float(fields.get(b"prediction"))
        if value is None:
            continue
        source = parse_id(fields[b"source_id"])
        if source not in found:
            lower, upper = to_float(fields.get(b"lower")), to_float(fields.get(b"upper"))
            found[source] = Forecast(value, lower, upper, fields.get(b"anomaly") == b"1")
            if len(found) >= want:
                break
    return found


def align(
    actual: dict[EntryId, float], predicted: dict[EntryId, Forecast], last: int
) -> tuple[list[Actual], list[Predicted]]:
    """Put values and predictions on one step axis: the prediction made at X lands on X + 1.

    >>> a = {(1, 0): 10.0, (2, 0): 11.0, (3, 0): 12.0}
    >>> p = {(1, 0): Forecast(10.5), (3, 0): Forecast(13.0, 12.0, 14.0)}
    >>> align(a, p, 10)
    ([(0, 10.0), (1, 11.0), (2, 12.0)], [(1, 10.5, None, None), (3, 13.0, 12.0, 14.0)])
    >>> align(a, p, 2)
    ([(0, 11.0), (1, 12.0)], [(2, 13.0, 12.0, 14.0)])
    """
    timeline = sorted(set(actual) | set(predicted))[-last:]
    step = {entry_id: i for i, entry_id in enumerate(timeline)}
    values = [(step[e], actual[e]) for e in timeline if e in actual]
    preds: list[Predicted] = [
        (step[e] + 1, f.value, f.lower, f.upper) for e in timeline if (f := predicted.get(e))
    ]
    return values, preds


def flagged(actual: dict[EntryId, float], predicted: dict[EntryId, Forecast],
            last: int) -> list[Actual]:
    """The flagged values as `(step, value)` on the axis of `align`.

    >>> a = {(1, 0): 10.0, (2, 0): 50.0, (3, 0): 12.0}
    >>> flagged(a, {(2, 0): Forecast(12.0, anomaly=True), (3, 0): Forecast(12.5)}, 10)
    [(1, 50.0)]
    """
    timeline = sorted(set(actual) | set(predicted))[-last:]
    return [(i, actual[e]) for i, e in enumerate(timeline)
            if e in actual and (f := predicted.get(e)) is not None and f.anomaly]


def mae(actual: list[Actual], predicted: list[Predicted]) -> float | None:
    """Mean absolute error over the steps that have both a value and a prediction.

    >>> mae([(0, 1.0), (1, 2.0), (2, 4.0)], [(1, 1.5, None, None), (2, 3.0, None, None)])
    0.75
    >>> mae([(0, 1.0)], [(1, 2.0, None, None)]) is None
    True
    """
    by_step = dict(actual)
    errors = [abs(by_step[x] - y) for x, y, _, _ in predicted if x in by_step]
    return sum(errors) / len(errors) if errors else None


def render_plot(
    actual: list[tuple[int, float]],
    predicted: list[tuple[int, float, float | None, float | None]],
    series: str,
    path: str | Path,
    anomalies: list[tuple[int, float]] | None = None,
) -> Path:
    """Draw values (line), predictions (markers), the interval band and the flagged values
    (`anomalies`, red crosses) to a PNG; return its path.

    The lists hold `(step, value)` / `(step, prediction, lower, upper)` on the same x axis.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas for PNG

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(10, 4.5), dpi=100, layout="tight")
    ax = fig.add_subplot()
    if actual:
        xs, ys = zip(*sorted(actual), strict=True)
        ax.plot(xs, ys, color="tab:blue", linewidth=1.4, marker=".", label="actual")
    if predicted:
        ordered = sorted(predicted)
        ax.plot(
            [p[0] for p in ordered], [p[1] for p in ordered], color="tab:orange",
            linestyle="--", marker="o", markersize=3, linewidth=1.0, label="prediction",
        )
        band = [(x, lo, hi) for x, _, lo, hi in ordered if lo is not None and hi is not None]
        if band:
            ax.fill_between(
                [b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                color="tab:orange", alpha=0.2, linewidth=0, label="interval",
            )
    if anomalies:
        ax.scatter([a[0] for a in anomalies], [a[1] for a in anomalies], color="tab:red",
                   marker="x", s=60, zorder=3, label="anomaly")
    error = mae(actual, predicted)
    title = f"series {series}: {len(actual)} values, {len(predicted)} predictions"
    if error is not None:
        title += f", MAE {error:.4g}"
    if anomalies:
        title += f", {len(anomalies)} flagged"
    ax.set_title(title)
    ax.set_xlabel("input entry (oldest → newest); a prediction sits on the value it forecasts")
    ax.set_ylabel("value")
    ax.grid(True, alpha=0.3)
    if actual or predicted:
        ax.legend(loc="best")
    fig.savefig(out, format="png")
    return out


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Read the series' recent values and predictions from Redis, plot them, print the path."""
    series: str = args.series
    last: int = args.last
    if last < 1:
        raise UsageError("--last must be at least 1")
    shard = keys.shard_of(series, settings.shards)
    values_stream = keys.values_stream(shard, settings.shards, settings.cluster)
    # On one Redis all shards write the plain predictions stream; on a cluster the shard's own.
    out_stream = keys.shard_keys(shard, settings.shards, settings.cluster).predictions
    r = connect(settings)
    raw = series.encode()
    actual = read_actual(r, values_stream, raw, last)
    oldest = min(actual) if actual else None
    predicted = read_predictions(r, out_stream, raw, last + 1, oldest)
    if not actual and not predicted:
        raise UsageError(
            f"no values or predictions for series {series!r} in the last {SCAN_LIMIT} entries "
            f"of {values_stream} and {out_stream}"
        )
    points, preds = align(actual, predicted, last)
    out = render_plot(points, preds, series, args.plot_out, flagged(actual, predicted, last))
    log.info("plot written", extra={"series": series, "values": len(points), "path": str(out)})
    print(out)
    return 0
