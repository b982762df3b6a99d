"""`forecast bench` / `make bench`: run the scenarios, print a table, write the results JSON.

Every scenario runs on its own private redis-server(s). Every figure is the median of
`repeats` runs, and every comparison (x tutorial, share of the Redis limit, 1M vs 1,000
series, scaling efficiency) is a ratio of figures measured in the same bench run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.scenarios import FULL, QUICK, SCENARIOS, Bench, Outcome, Plan
from bench.util import median
from forecast.errors import UsageError
from forecast.local_redis import private_redis, redis_server_binary
from forecast.settings import Settings
from testkit.results import machine_info

log = logging.getLogger(__name__)

RESULTS = "bench/results/results.json"


@dataclass
class Row:
    """One line of the table."""

    scenario: str
    figure: str
    target: str
    verdict: str  # PASS, FAIL or "-" (reported only)
    load: str = ""  # median 1-minute load average during the scenario's runs


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _rate(v: float) -> str:
    return f"{v:,.0f} values/s"


def _load(outcome: Outcome | None) -> str:
    """Median load average over an outcome's runs (nested runs included)."""
    loads = []
    for run in outcome.runs if outcome else []:
        for part in (run, *[v for v in run.values() if isinstance(v, dict)]):
            if "load_avg_1m" in part:
                loads.append(part["load_avg_1m"])
    return f"{median(loads):.1f}" if loads else ""


def _reference_rows(results: dict[str, Outcome]) -> list[Row]:
    out = []
    raw, tut = results.get("raw_redis"), results.get("tutorial")
    if raw and raw.median:
        out.append(Row("Redis XADD limit (redis-benchmark -P 64)",
                       _rate(raw.median["values_per_s"]), "reference", "-", _load(raw)))
    if tut and tut.median:
        out.append(Row("tutorial-style worker (XREAD+predict+XADD each)",
                       _rate(tut.median["values_per_s"]), "reference", "-", _load(tut)))
    return out


def _throughput_rows(results: dict[str, Outcome]) -> list[Row]:
    thr = results.get("throughput")
    if not thr or not thr.median:
        return []
    rate, load = thr.median["values_per_s"], _load(thr)
    cpu = (f" ({thr.median.get('worker_cpu_us_per_value', 0):.1f} us worker + "
           f"{thr.median.get('redis_cpu_us_per_value', 0):.1f} us Redis CPU/value)")
    out = [Row("throughput: 1 worker, 1,000 series, SimpleRNN n=3", _rate(rate) + cpu,
               ">= 150,000 values/s", _verdict(rate >= 150_000), load)]
    tut, raw = results.get("tutorial"), results.get("raw_redis")
    if tut and tut.median:
        x = rate / tut.median["values_per_s"]
        out.append(Row("throughput vs tutorial-style worker", f"{x:,.0f}x", ">= 1,000x",
                       _verdict(x >= 1000), load))
    if raw and raw.median:
        share = rate / raw.median["values_per_s"]
        out.append(Row("throughput vs Redis XADD limit", f"{share:.2f}x", "reference", "-", load))
    sh = results.get("shadow")
    if sh and sh.median:
        x = sh.median["values_per_s"] / rate
        out.append(Row("throughput with one candidate in shadow", _rate(sh.median["values_per_s"]),
                       "report", "-", _load(sh)))
        out.append(Row("... vs without a candidate", f"{x:.2f}x", ">= 0.6x", _verdict(x >= 0.6),
                       _load(sh)))
    return out


def _latency_rows(lat: Outcome | None) -> list[Row]:
    if not lat or "p50_ms" not in lat.median:
        return []
    m, load = lat.median, _load(lat)
    what = f"latency {{}} at {m.get('offered_per_s', 0):,.0f} values/s offered"
    return [Row(what.format("p50"), f"{m['p50_ms']:.2f} ms", "<= 2 ms", _verdict(m["p50_ms"] <= 2),
                load),
            Row(what.format("p99"), f"{m['p99_ms']:.2f} ms", "<= 10 ms",
                _verdict(m["p99_ms"] <= 10), load)]


def _big_rows(big: Outcome | None) -> list[Row]:
    if not big or not big.median:
        return []
    m, load, n = big.median, _load(big), big.info.get("series", 0)
    return [
        Row(f"{n:,} series n=24: worker RSS growth", f"{m['bytes_per_series']:.0f} B/series",
            "<= 400 B/series", _verdict(m["bytes_per_series"] <= 400), load),
        Row(f"{n:,} series n=24: throughput", _rate(m["values_per_s_big"]), "reference", "-", load),
        Row(f"1,000 series n=24 vs {n:,}: slowdown",
            f"{m['slowdown']:.2f}x ({_rate(m['values_per_s_small'])})", "<= 2x",
            _verdict(m["slowdown"] <= 2), load),
    ]


def _swap_rows(swap: Outcome | None) -> list[Row]:
    if not swap or not swap.median:
        return []
    m, load, n = swap.median, _load(swap), swap.info.get("series", 0)
    changes = swap.runs[0].get("changes_s", {}) if swap.runs else {}
    took = ", ".join(f"{k} in {v:.1f} s" for k, v in changes.items())
    return [
        Row(f"model swaps with {n:,} live series: lag p99 (publish, promote, unshadow)",
            f"{m['p99_ms']:,.0f} ms (max {m['max_ms']:,.0f} ms; {took})", "<= 1,000 ms",
            _verdict(m["p99_ms"] <= 1000 and m.get("missing", 0) == 0), load),
        Row(f"model swaps with {n:,} live series: lease losses, recoveries",
            f"{m['troubles']:.0f}", "0", _verdict(m["troubles"] == 0), load),
        Row(f"warm shutdown with {n:,} live series", f"{m['shutdown_s']:.1f} s", "<= 10 s",
            _verdict(m["shutdown_s"] <= 10), load),
    ]


def _report_rows(results: dict[str, Outcome]) -> list[Row]:
    out = []
    cold = results.get("cold_start")
    if cold and cold.median:
        s = cold.median["seconds"]
        out.append(Row("cold start: process start to first prediction", f"{s:.1f} s", "<= 15 s",
                       _verdict(s <= 15), _load(cold)))
    sc = results.get("scaling")
    if sc and sc.median:
        eff = sc.info.get("efficiency", {})
        for n, v in sc.median.items():
            out.append(Row(f"scaling: {n} worker(s), {sc.info.get('shards')} shards",
                           f"{_rate(v)}, efficiency {eff.get(n, float('nan')):.2f}", "report",
                           "-", _load(sc)))
    ar, thr = results.get("archs"), results.get("throughput")
    base = thr.median.get("values_per_s") if thr else None
    for arch, v in (ar.median.items() if ar else []):
        vs = f" ({v / base:.2f}x SimpleRNN)" if base else ""
        out.append(Row(f"{arch.upper()}(50) n=3, 1 worker", _rate(v) + vs, "report", "-",
                       _load(ar)))
    return out


def _redis_rows(results: dict[str, Outcome]) -> list[Row]:
    """Issue 14: Cluster vs one Redis, the model-bound worker, durability, Redis memory."""
    out = []
    cl = results.get("cluster_speed")
    if cl and cl.median:
        m = cl.median
        ratio = m.get("ratio", 0.0)
        cpu = f", CPU/value {m['cpu_ratio']:.2f}x" if "cpu_ratio" in m else ""
        out.append(Row("1 worker: 3-master Cluster, 6 shards vs one Redis",
                       f"{_rate(m['cluster_values_per_s'])} vs {_rate(m['single_values_per_s'])}"
                       f": {ratio:.2f}x (median of paired runs{cpu})", ">= 0.9x",
                       _verdict(ratio >= 0.9), _load(cl)))
    mb = results.get("model_bound")
    if mb and mb.median:
        m = mb.median
        out.append(Row("LSTM(64) n=48: end to end vs pure model calls (same batch)",
                       f"{_rate(m['end_to_end_values_per_s'])} vs "
                       f"{_rate(m['model_values_per_s'])}: {m['ratio']:.2f}x", "report", "-",
                       _load(mb)))
    du = results.get("durability")
    if du and du.median:
        m = du.median
        out.append(Row("commit replicas 0 / 1 (one replica)",
                       f"{_rate(m['replicas_0'])} / {_rate(m['replicas_1'])}: "
                       f"{m['ratio']:.2f}x", "report", "-", _load(du)))
    mem = results.get("redis_memory")
    if mem and mem.median:
        m = mem.median
        out.append(Row("Redis memory: per input value / per prediction / per series",
                       f"{m['stream_bytes_per_value']:.0f} B / "
                       f"{m.get('prediction_bytes', 0):.0f} B / "
                       f"{m['state_bytes_per_series']:.0f} B checkpoint (n=3) + "
                       f"{m['seen_bytes_per_series']:.0f} B last-seen + "
                       f"{m.get('latest_bytes_per_series', 0):.0f} B latest forecast",
                       "report", "-", _load(mem)))
    return out


def rows(results: dict[str, Outcome]) -> list[Row]:
    """The table rows for whatever scenarios ran (targets from issues 5 and 14)."""
    return [*_reference_rows(results), *_throughput_rows(results),
            *_latency_rows(results.get("latency")), *_big_rows(results.get("series_1m")),
            *_swap_rows(results.get("swap_1m")),
            *_report_rows(results), *_redis_rows(results)]


def format_table(table: list[Row]) -> str:
    """A plain-text table: scenario | figure | target | result | load."""
    header = Row("scenario", "figure", "target", "result", "load")
    lines = [header, *table]
    fields = ("scenario", "figure", "target", "verdict")
    widths = [max(len(getattr(r, f)) for r in lines) for f in fields]
    out = []
    for i, r in enumerate(lines):
        cells = [f"{getattr(r, f):<{w}}" for f, w in zip(fields, widths, strict=True)]
        out.append(" | ".join([*cells, r.load]))
        if i == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def run_bench(plan: Plan, names: list[str], out_path: Path, quick: bool = False,
              trainer: Any = None) -> dict[str, Any]:
    """Run the named scenarios; print the table; write the JSON results; return them."""
    started = datetime.now(timezone.utc)
    results: dict[str, Outcome] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="forecast-bench-") as tmp:
        bench = Bench(plan, Path(tmp), trainer)
        with private_redis() as server:
            import redis

            client = redis.Redis(port=server.port)
            machine = machine_info(client)
            client.close()
        for name in names:
            print(f"[bench] {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                results[name] = SCENARIOS[name](bench)
            except Exception as exc:  # one broken scenario must not hide the others
                log.exception("scenario %s failed", name)
                errors[name] = f"{type(exc).__name__}: {exc}"
            took = time.perf_counter() - t0
            print(f"[bench] {name} done in {took:.0f}s: "
                  f"{json.dumps(results[name].median) if name in results else errors[name]}",
                  flush=True)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    table = rows(results)
    print()
    print(f"forecast bench {'(quick) ' if quick else ''}{started:%Y-%m-%d %H:%M} UTC | "
          f"{machine['cores']} cores {machine['cpu']} | Python {machine['python']}, "
          f"TensorFlow {machine['tensorflow']}, Redis {machine['redis']} | load avg "
          f"start {machine['load_average_1_5_15'][0]}, end {machine['load_average_end'][0]}")
    print(f"medians of {plan.repeats} run(s); Redis and workers on the same machine\n")
    print(format_table(table))
    for name, err in errors.items():
        print(f"\n{name}: ERROR {err}")
    data = {
        "date": started.isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine,
        "plan": asdict(plan),
        "table": [asdict(r) for r in table],
        "scenarios": {name: asdict(r) for name, r in results.items()},
        "errors": errors,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"\nresults written to {out_path}")
    return data


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The `forecast bench` command."""
    del settings  # the bench starts its own servers and workers
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    names = list(SCENARIOS)
    if getattr(args, "only", None):
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise UsageError(f"unknown scenario(s) {', '.join(unknown)}; "
                           f"choose from {', '.join(SCENARIOS)}")
    if redis_server_binary() is None:
        raise UsageError("forecast bench starts its own redis-server: none is on PATH")
    plan = QUICK if getattr(args, "quick", False) else FULL
    data = run_bench(plan, names, Path(getattr(args, "bench_out", None) or RESULTS),
                     quick=bool(getattr(args, "quick", False)))
    return 1 if data["errors"] else 0
