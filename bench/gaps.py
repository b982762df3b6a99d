"""`forecast bench --gaps` / `make bench-gaps`: which FORECAST_GAP_POLICY serves best after
missing values, measured through the real worker on the real series of `bench.quality_data`.

One version is trained with `forecast train --csv` (the defaults) on the first 80% of every
series. Then each series is pushed, with a `ts` one step apart,
four times to a real `forecast worker`: whole, and with values of its last 20% removed (10%
at random and three runs of 3 to 8 values, the same ones every time) under each policy.
Scored: the one-step forecasts made at the first three values after each gap (MASE: errors
over the in-sample naive MAE), against the forecasts the whole series got at the same
origins, and how many of those origins got a forecast at all.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality_base import RESULTS, geo_mean_ratio, mase_scale, split
from bench.quality_data import RealSeries, load
from bench.quality_path import train_group, write_training_csv
from bench.util import start_worker
from forecast import keys
from forecast.local_redis import RedisServer
from forecast.processes import wait_until
from testkit.results import machine_info

log = logging.getLogger(__name__)

STEP_MS = 3_600_000
POLICIES = ("carry", "fill", "reset")
AFTER = 3  # origins scored after each gap
SEED = 11


def removed(n: int, rng: np.random.Generator) -> np.ndarray:
    """Which values of a series of `n` go missing: in its test part, 10% at random and three
    runs of 3 to 8 (never its first test value or its last two).

    >>> keep = removed(200, np.random.default_rng(0))
    >>> int((~keep).sum()), bool(keep[:161].all())
    (15, True)
    """
    keep = np.ones(n, dtype=bool)
    first, last = split(n) + 1, n - 2
    span = np.arange(first, last)
    keep[rng.choice(span, size=max(1, len(span) // 10), replace=False)] = False
    for _ in range(3):
        length = int(rng.integers(3, 9))
        if last - length > first:
            start = int(rng.integers(first, last - length))
            keep[start:start + length] = False
    return keep


def _serve(server: RedisServer, client: Any, group: list[RealSeries],
           keep: dict[str, np.ndarray], policy: str, workdir: Path
           ) -> dict[str, dict[int, float]]:
    """Push the (gapped) series through a worker with `policy`; forecasts by origin index."""
    for key in (keys.VALUES, keys.PREDICTIONS, keys.DEADLETTER, keys.LATEST,
                keys.shard_keys(0, 1).state, keys.shard_keys(0, 1).seen):
        client.delete(key)
    worker = start_worker(server.url, f"gaps-{policy}", workdir, model_poll_s=0.2,
                          block_ms=100, gap_policy=policy)
    where: dict[bytes, tuple[str, int]] = {}
    try:
        def up() -> bool:
            worker.check_alive()
            return bool(client.exists(keys.heartbeat(worker.consumer)))
        wait_until(up, 180, 0.1, "the worker")
        for s in group:
            pipe = client.pipeline(transaction=False)
            idx = np.flatnonzero(keep[s.name])
            for i in idx.tolist():
                pipe.xadd(keys.VALUES, {"series": s.name, "value": repr(float(s.values[i])),
                                        "ts": str(i * STEP_MS)})
            for i, eid in zip(idx.tolist(), pipe.execute(), strict=True):
                where[eid] = (s.name, i)

        def done() -> bool:
            worker.check_alive()
            info = client.xinfo_groups(keys.VALUES)
            return bool(info) and info[0]["pending"] == 0 and (info[0]["lag"] or 0) == 0
        wait_until(done, 600, 0.05, "every value handled")
    finally:
        worker.stop()
    out: dict[str, dict[int, float]] = {s.name: {} for s in group}
    for _, f in client.xrange(keys.PREDICTIONS):
        name, i = where[f[b"source_id"]]
        out[name][i] = float(f[b"prediction"])
    return out


def _after_gaps(keep: np.ndarray) -> list[int]:
    """The origins scored: the first AFTER present values after each gap whose next value is
    present too (a forecast of a missing value has nothing to be scored against)."""
    origins, since = [], AFTER
    for i in range(split(len(keep)), len(keep) - 1):
        if not keep[i]:
            since = 0
            continue
        if since < AFTER and keep[i + 1]:
            origins.append(i)
        since += 1
    return origins


def score(s: RealSeries, keep: np.ndarray, fc: dict[int, float],
          whole: dict[int, float]) -> dict[str, Any]:
    """MASE at the origins after gaps (where the whole series had a forecast), and coverage."""
    scale = mase_scale(s.values)
    origins = [i for i in _after_gaps(keep) if i in whole]
    have = [i for i in origins if i in fc]
    err = [abs(fc[i] - s.values[i + 1]) / scale for i in have]
    ref = [abs(whole[i] - s.values[i + 1]) / scale for i in have]
    return {"origins": len(origins), "forecast": len(have),
            "mase": float(np.mean(err)) if err else None,
            "whole_mase": float(np.mean(ref)) if ref else None}


def run_gaps(names: list[str] | None = None, out_dir: Path = RESULTS) -> dict[str, Any]:
    """Every policy on every series; the table; `bench/results/gaps.json`."""
    import redis

    started = datetime.now(timezone.utc)
    series = [s for s in load(names) if not getattr(s, "short", False)]
    rng = np.random.default_rng(SEED)
    keep = {s.name: removed(len(s.values), rng) for s in series}
    whole = {s.name: np.ones(len(s.values), dtype=bool) for s in series}
    scores: dict[str, dict[str, Any]] = {s.name: {} for s in series}
    machine: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="forecast-gaps-") as tmp:
        for gname, group in {"mixed": series}.items():
            gdir = Path(tmp) / gname
            gdir.mkdir()
            write_training_csv(gdir / "train.csv", group)
            server = RedisServer(dir=gdir / "redis")
            server.dir.mkdir()  # type: ignore[union-attr]
            server.start()
            client = redis.Redis(port=server.port, socket_timeout=60)
            try:
                machine = machine_info(client)
                t0 = time.perf_counter()
                trained = train_group(server.url, gdir / "train.csv", gdir, 1)
                if trained["rc"] == 3:  # refused by the gate: score it anyway
                    from forecast import registry
                    registry.promote(client, registry.list_versions(client)[-1]["version"])
                print(f"[gaps] {gname}: trained in {time.perf_counter() - t0:.0f}s", flush=True)
                full = _serve(server, client, group, whole, "carry", gdir)
                for policy in POLICIES:
                    got = _serve(server, client, group, keep, policy, gdir)
                    for s in group:
                        scores[s.name][policy] = score(s, keep[s.name], got[s.name],
                                                       full[s.name])
            finally:
                client.close()
                server.cleanup()
    summary = summarise(series, scores)
    print(format_table(series, scores, summary))
    data = {"date": started.isoformat(timespec="seconds"), "machine": machine,
            "step_ms": STEP_MS, "after": AFTER,
            "series": [s.name for s in series], "scores": scores, "summary": summary,
            "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gaps.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nresults written to {out_dir / 'gaps.json'}")
    return data


def summarise(series: list[RealSeries], scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per policy: geo-mean MASE ratio to the whole series at the same origins, coverage."""
    out: dict[str, Any] = {}
    for policy in POLICIES:
        rows = [scores[s.name][policy] for s in series]
        ok = [r for r in rows if r["mase"] is not None]
        out[policy] = {
            "ratio_to_whole": geo_mean_ratio([r["mase"] for r in ok],
                                             [r["whole_mase"] for r in ok]),
            "mase_mean": float(np.mean([r["mase"] for r in ok])) if ok else math.nan,
            "coverage": sum(r["forecast"] for r in rows) / max(1, sum(r["origins"]
                                                                       for r in rows)),
        }
    covered = [p for p in POLICIES if out[p]["coverage"] >= 0.99] or list(POLICIES)
    out["best"] = min(covered, key=lambda p: out[p]["ratio_to_whole"])
    return out


def format_table(series: list[RealSeries], scores: dict[str, dict[str, Any]],
                 summary: dict[str, Any]) -> str:
    """One line per series: after-gap MASE per policy and of the whole series; the summary."""
    head = f"{'series':<16} {'origins':>7} {'whole':>7} " + " ".join(f"{p:>13}" for p in POLICIES)
    lines = [f"one-step MASE at the first {AFTER} values after each gap", head, "-" * len(head)]
    for s in series:
        r = scores[s.name]
        whole = r["carry"]["whole_mase"]
        cells = []
        for p in POLICIES:
            m, n, k = r[p]["mase"], r[p]["forecast"], r[p]["origins"]
            cells.append(f"{'-' if m is None else f'{m:.3f}'} ({n}/{k})".rjust(13))
        lines.append(f"{s.name:<16} {r['carry']['origins']:>7} "
                     f"{'-' if whole is None else f'{whole:.3f}':>7} " + " ".join(cells))
    lines.append("-" * len(head))
    for p in POLICIES:
        sm = summary[p]
        lines.append(f"{p:<6} geo-mean ratio to the whole series {sm['ratio_to_whole']:.3f}, "
                     f"forecasts at {100 * sm['coverage']:.0f}% of the origins")
    lines.append(f"best policy (lowest ratio among those with a forecast everywhere): "
                 f"{summary['best']}")
    return "\n".join(lines)


def run(args: Any, settings: Any) -> int:
    """`forecast bench --gaps [--only a,b]`."""
    del settings
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    names = [n.strip() for n in args.only.split(",")] if getattr(args, "only", None) else None
    run_gaps(names)
    return 0
