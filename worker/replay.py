"""`forecast replay --version V --from ID --to ID [--into STREAM]`: a backtest on real traffic.

Runs version V over a range of the input history (every shard's stream, windows starting
empty at `--from`), exactly as a worker would, and writes each forecast with the actual that
followed it (`actual`, `abs_error`) to a separate stream, `forecast:replay:<V>` by default —
never to `forecast:predictions`. The last entry (`summary=1`) and the printed line give the
scores: MAE, the naive forecast's MAE on the same values, their ratio, interval coverage.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from forecast import keys
from forecast.errors import UsageError
from forecast.grammar import Limits, parse_fields
from forecast.settings import Settings
from worker.batch import Served, build_commit
from worker.state import SeriesStore

log = logging.getLogger(__name__)

PAGE = 5000


def _entries(client: Any, stream: str, start: str, end: str) -> list[Any]:
    """Raw (id, flat fields) entries of `stream` in [start, end], paged."""
    out: list[Any] = []
    cursor = start
    while True:
        page = client.xrange(stream, min=cursor, max=end, count=PAGE)
        out += [(eid, [x for kv in fields.items() for x in kv]) for eid, fields in page]
        if len(page) < PAGE:
            return out
        cursor = "(" + (page[-1][0].decode() if isinstance(page[-1][0], bytes) else page[-1][0])


def replay(client: Any, model: Any, streams: list[str], start: str, end: str, into: str,
           limits: Limits) -> dict[str, float]:
    """Replay every stream; write forecasts and the summary to `into`; return the summary."""
    pending: dict[bytes, dict[str, Any]] = {}  # last forecast per series, waiting for actual
    sums = {"n": 0.0, "abs_error": 0.0, "naive_abs_error": 0.0, "covered": 0.0, "intervals": 0.0}
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        store = SeriesStore(max(2, model.n_steps))
        entries = _entries(client, stream, start, end)
        for i in range(0, len(entries), PAGE):
            chunk = entries[i:i + PAGE]
            commit = build_commit(chunk, store, Served(model, gamma=0.0), limits,
                                  lambda s: [None] * len(s))
            forecasts = _forecasts(commit)
            for eid, fields in chunk:
                parsed = parse_fields(fields, limits)
                if isinstance(parsed, str):  # dead-lettered by a worker too
                    continue
                series, value = parsed[0], float(parsed[1])
                prev = pending.pop(series, None)
                if prev is not None:
                    _settle(pipe, into, prev, value, sums)
                if eid in forecasts:
                    pending[series] = {**forecasts[eid], "last": value}
    for prev in pending.values():
        pipe.xadd(into, {k: v for k, v in prev.items() if k != "last"})
    summary = _summary(sums)
    pipe.xadd(into, {"summary": 1, "model_version": model.version, **summary})
    pipe.execute()
    return summary


def _forecasts(commit: Any) -> dict[bytes, dict[str, Any]]:
    """The commit's forecasts by source id, as output fields."""
    width = 4 + len(commit.extra_fields)
    flat = commit.predictions
    out = {}
    for i in range(0, len(flat), width):
        series, pred, src, ts = flat[i:i + 4]
        fields = {"series": series, "prediction": pred, "model_version": commit.version,
                  "source_id": src,
                  **{k: v for k, v in zip(commit.extra_fields, flat[i + 4:i + width],
                                          strict=True) if v != ""}}
        if ts:
            fields["ts"] = ts
        out[src] = fields
    return out


def _settle(pipe: Any, into: str, fc: dict[str, Any], actual: float,
            sums: dict[str, float]) -> None:
    """Write a forecast with the actual that followed it; add to the sums."""
    err = abs(actual - float(fc["prediction"]))
    sums["n"] += 1
    sums["abs_error"] += err
    sums["naive_abs_error"] += abs(actual - fc["last"])
    if "lower" in fc:
        sums["intervals"] += 1
        sums["covered"] += float(fc["lower"]) <= actual <= float(fc["upper"])
    fields = {k: v for k, v in fc.items() if k != "last"}
    pipe.xadd(into, {**fields, "actual": f"{actual:.7g}", "abs_error": f"{err:.7g}"})


def _summary(sums: dict[str, float]) -> dict[str, float]:
    n = sums["n"]
    mae = sums["abs_error"] / n if n else float("nan")
    naive = sums["naive_abs_error"] / n if n else float("nan")
    out = {"n": n, "mae": round(mae, 6), "naive_mae": round(naive, 6),
           "relative_mae": round(mae / naive, 6) if naive else float("nan")}
    if sums["intervals"]:
        out["coverage"] = round(sums["covered"] / sums["intervals"], 4)
    return out


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The `forecast replay` command."""
    from forecast import modelio
    from forecast.redis_conn import connect

    into = args.into or keys.replay(args.version)
    if into in keys.output_streams(settings.shards, settings.cluster) or into.startswith(
            keys.VALUES):
        raise UsageError(f"--into {into}: replay never writes to the live streams")
    client = connect(settings)
    model = modelio.load_version(client, args.version, settings.model_hmac_key)
    streams = [keys.values_stream(k, settings.shards, settings.cluster)
               for k in range(settings.shards)]
    summary = replay(client, model, streams, args.start, args.end, into,
                     Limits(settings.max_series_bytes, settings.max_value_bytes))
    print(f"replayed {args.version} on {', '.join(streams[:3])}{' ...' if len(streams) > 3 else ''}"
          f" [{args.start}, {args.end}] into {into}: " +
          ", ".join(f"{k}={v}" for k, v in summary.items()))
    return 0
