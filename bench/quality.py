"""`forecast bench --quality` / `make bench-quality`: the product's forecasts against the classics.

On real series bundled in pmdarima and sktime and a few short ones (`bench.quality_data`),
with the same split for everyone: the first 80% of each series is training data, and a
forecast is made at every origin of the last 20%; a short series (shorter than the windows
the defaults choose) is never trained on and is scored at every origin from its second
value on.

* The project goes **through the real path** (`bench.quality_path`): `forecast train --csv
  FILE` with the defaults (`--horizon H` for the multi-step pass), published to the registry
  of a private redis-server, served by a real `forecast worker` that reads every value from
  `forecast:values`; predictions are read back from `forecast:predictions`. Two setups: the
  **mixed** row (every series in one CSV: one version serves them all, the way one
  deployment is used) and the **per-period** rows (one CSV and one version per seasonal
  period of the catalogue).
* The peers (statsforecast): AutoETS, AutoTheta, AutoARIMA, Naive and SeasonalNaive, fitted
  on the training part and updated (not refitted) at every later origin (`cross_validation`
  with `refit=False`), with their 90% intervals; Comb, the mean of the AutoETS, AutoTheta and
  AutoARIMA forecasts (M4's Comb in spirit). On a short series the peers are fitted anew at
  every origin; where one cannot fit (too few values, or it raises) its forecast there is
  the naive one.

Scores per series: MASE (errors over the in-sample one-step naive MAE of the training part;
of the whole series for a short one), the geometric mean over series of the ratios to each
peer, per frequency group, per-step MASE for H > 1, coverage and MSIS (mean scaled interval
score, alpha = 0.1) of the 90% intervals; the targets printed as MET/MISS; throughput of the
default models; the training time of 100 series x 1,000 values (`bench.train_time`). Written
as JSON (`bench/results/quality.json`), Markdown and a PNG of a few series.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality_base import (
    COMBINED,
    PEERS,
    PROJECT,
    RESULTS,
    Forecasts,
    Served,
    geo_mean_ratio,
    mase_scale,
    msis,
    origins,
    split,
)
from bench.quality_data import QUICK, RealSeries, load
from forecast.errors import UsageError
from forecast.local_redis import redis_server_binary
from forecast.settings import Settings
from testkit.results import machine_info

log = logging.getLogger(__name__)

def score(s: RealSeries, fc: Forecasts, horizon: int) -> dict[str, Any]:
    """MASE (overall and per step), coverage and MSIS of the one-step / H-step intervals."""
    v, scale = s.values, mase_scale(s.values, s.short)
    wanted = origins(len(v), horizon, s.short)
    orig = [t for t in wanted if t in fc.point]
    if not orig:
        return {"n": 0, "missing": len(wanted)}
    y = np.stack([v[t + 1: t + 1 + horizon] for t in orig])
    p = np.stack([fc.point[t][:horizon] for t in orig])
    err = np.abs(p - y) / scale
    out: dict[str, Any] = {"n": len(orig), "missing": len(wanted) - len(orig),
                           "mase": float(err.mean()),
                           "mase_per_step": [float(e) for e in err.mean(axis=0)]}
    if all(t in fc.lower for t in orig):
        lo = np.stack([fc.lower[t][:horizon] for t in orig])
        hi = np.stack([fc.upper[t][:horizon] for t in orig])
        out["coverage"] = float(np.mean((y >= lo) & (y <= hi)))
        out["msis"] = msis(y, lo, hi, scale)
    return out


# --- peers ----------------------------------------------------------------------------------


def _models(m: int) -> list[Any]:
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta, Naive, SeasonalNaive

    return [AutoETS(season_length=m), AutoTheta(season_length=m), AutoARIMA(season_length=m),
            Naive(), SeasonalNaive(season_length=m)]


def _comb(out: dict[str, Forecasts]) -> Forecasts:
    """M4's Comb in spirit: the mean of the AutoETS, AutoTheta and AutoARIMA forecasts."""
    comb = Forecasts()
    for t in out[COMBINED[0]].point:
        comb.point[t] = np.mean([out[name].point[t] for name in COMBINED], axis=0)
    return comb


def peer_forecasts(s: RealSeries, horizon: int) -> dict[str, Forecasts]:
    """statsforecast's AutoETS, AutoTheta, AutoARIMA, Naive, SeasonalNaive (fit once, updated
    per origin; refitted at every origin for a short series), and Comb."""
    if s.short:
        return short_peer_forecasts(s, horizon)
    import pandas as pd
    from statsforecast import StatsForecast

    df = pd.DataFrame({"unique_id": s.name, "ds": np.arange(len(s.values)), "y": s.values})
    n_windows = len(origins(len(s.values), horizon))
    sf = StatsForecast(models=_models(s.period), freq=1, n_jobs=1)
    cv = sf.cross_validation(df=df, h=horizon, step_size=1, n_windows=n_windows, refit=False,
                             level=[90])
    out = {name: Forecasts() for name in PEERS}
    for cutoff, rows in cv.groupby("cutoff"):
        rows = rows.sort_values("ds")
        t = int(cutoff)
        for name in PEERS:
            if name not in rows:
                continue
            out[name].point[t] = rows[name].to_numpy(dtype=np.float64)
            if f"{name}-lo-90" in rows:
                out[name].lower[t] = rows[f"{name}-lo-90"].to_numpy(dtype=np.float64)
                out[name].upper[t] = rows[f"{name}-hi-90"].to_numpy(dtype=np.float64)
    out["Comb"] = _comb(out)
    return out


def short_peer_forecasts(s: RealSeries, horizon: int) -> dict[str, Forecasts]:
    """The peers on a short series, fitted anew at every origin on the values so far.

    Where a peer cannot fit (too few values for it, or it raises), its forecast at that
    origin is the naive one (the last value), with no interval; `fallbacks` counts them.
    """
    import warnings

    out = {name: Forecasts() for name in PEERS}
    out["Comb"].lower = {}
    fallbacks = dict.fromkeys(PEERS, 0)
    v = s.values
    for t in origins(len(v), horizon, short=True):
        y = v[: t + 1]
        for name, model in zip(("AutoETS", "AutoTheta", "AutoARIMA", "Naive", "SeasonalNaive"),
                               _models(s.period), strict=True):
            fc = out[name]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = model.forecast(y=y.astype(np.float64), h=horizon, level=[90])
                point = np.asarray(res["mean"], dtype=np.float64)
                if not np.all(np.isfinite(point)):
                    raise FloatingPointError("non-finite forecast")
                fc.point[t] = point
                lo, hi = res.get("lo-90"), res.get("hi-90")
                if lo is not None and np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):
                    fc.lower[t] = np.asarray(lo, dtype=np.float64)
                    fc.upper[t] = np.asarray(hi, dtype=np.float64)
            except Exception:
                fc.point[t] = np.full(horizon, y[-1])
                fallbacks[name] += 1
    out["Comb"] = _comb(out)
    out["Comb"].lower, out["Comb"].upper = {}, {}
    for name, count in fallbacks.items():
        out[name].fallbacks = count  # type: ignore[attr-defined]
    return out


# --- the run ------------------------------------------------------------------------------

SETUPS = ("mixed", "per_period")
TARGET_ETS, TARGET_THETA, TARGET_COMB = 0.90, 0.90, 0.95
TARGET_WORST = 1.15
TARGET_COVERAGE = (0.80, 1.00)
THROUGHPUT_TUTORIAL, THROUGHPUT_DEFAULT = 150_000, 30_000


def _groups(series: list[RealSeries], setup: str) -> dict[str, list[RealSeries]]:
    if setup == "mixed":
        return {"mixed": list(series)}
    groups: dict[str, list[RealSeries]] = {}
    for s in series:
        groups.setdefault(s.group, []).append(s)
    return groups


def run_pass(series: list[RealSeries], horizon: int, workdir: Path,
             peers: dict[str, dict[str, Forecasts]], setup: str) -> dict[str, Any]:
    """One horizon and setup: the project's forecasts and every method's scores."""
    from bench.quality_path import project_forecasts

    scores: dict[str, dict[str, Any]] = {s.name: {} for s in series}
    info: dict[str, Any] = {}
    kept: dict[str, dict[str, Forecasts]] = {s.name: {} for s in series}
    for gname, group in _groups(series, setup).items():
        print(f"[quality] {setup} H={horizon} {gname}: {', '.join(s.name for s in group)}",
              flush=True)
        fc, info[gname] = project_forecasts(group, horizon, workdir, f"{setup}-{gname}-h{horizon}")
        fams = ", ".join(f"p{f['period']}:{f['n_steps']}" for f in info[gname]["families"])
        print(f"[quality]   trained in {info[gname]['train']['seconds']}s (exit "
              f"{info[gname]['train']['rc']}): n_steps={info[gname]['n_steps']} "
              f"{info[gname]['forecaster']} {fams}", flush=True)
        for s in group:
            kept[s.name][PROJECT] = fc[s.name]
            scores[s.name][PROJECT] = {**score(s, fc[s.name], horizon),
                                       "warmup": len(fc[s.name].warm)}
            for name, pf in peers[s.name].items():
                kept[s.name][name] = pf
                scores[s.name][name] = score(s, pf, horizon)
    return {"horizon": horizon, "setup": setup, "scores": scores, "groups": info,
            "forecasts": kept}


def summary(series: list[RealSeries], result: dict[str, Any]) -> dict[str, Any]:
    """Geo-mean ratios of the project to each peer (overall and per frequency group), the
    worst series, per-step ratios, interval aggregates, origins forecast."""
    sc = result["scores"]
    names = [s.name for s in series]
    proj = [sc[n][PROJECT]["mase"] for n in names]
    out: dict[str, Any] = {"ratio": {}, "per_freq": {}, "per_step_ratio_autoets": [],
                           "intervals": {}}
    for peer in PEERS:
        out["ratio"][peer] = geo_mean_ratio(proj, [sc[n][peer]["mase"] for n in names])
    for freq in dict.fromkeys(s.freq for s in series):
        sel = [s.name for s in series if s.freq == freq]
        out["per_freq"][freq] = {
            "series": len(sel),
            **{p: geo_mean_ratio([sc[n][PROJECT]["mase"] for n in sel],
                                 [sc[n][p]["mase"] for n in sel])
               for p in ("AutoETS", "AutoTheta", "Comb")}}
    best = [min(sc[n]["AutoETS"]["mase"], sc[n]["AutoTheta"]["mase"]) for n in names]
    out["worst_vs_best_classic"] = max(
        ((p / b if b > 0 else float("inf")), n) for p, b, n in zip(proj, best, names, strict=True))
    for k in range(result["horizon"]):
        out["per_step_ratio_autoets"].append(geo_mean_ratio(
            [sc[n][PROJECT]["mase_per_step"][k] for n in names],
            [sc[n]["AutoETS"]["mase_per_step"][k] for n in names]))
    for method in (PROJECT, "AutoETS", "AutoTheta"):
        cov = [sc[n][method].get("coverage") for n in names]
        ms = [sc[n][method].get("msis") for n in names]
        if all(c is not None for c in cov):
            out["intervals"][method] = {
                "coverage_mean": float(np.mean(cov)),
                "coverage_min": float(np.min(cov)), "coverage_max": float(np.max(cov)),
                "msis_mean": float(np.mean(ms))}
    both = [n for n in names if sc[n][PROJECT].get("msis") and sc[n]["AutoETS"].get("msis")]
    if both:
        out["msis_ratio_autoets"] = geo_mean_ratio([sc[n][PROJECT]["msis"] for n in both],
                                                   [sc[n]["AutoETS"]["msis"] for n in both])
    short = [s.name for s in series if s.short]
    out["origins"] = {"scored": sum(sc[n][PROJECT]["n"] for n in names),
                      "missing": sum(sc[n][PROJECT].get("missing", 0) for n in names),
                      "short_series": len(short),
                      "short_scored": sum(sc[n][PROJECT]["n"] for n in short),
                      "short_missing": sum(sc[n][PROJECT].get("missing", 0) for n in short),
                      "warmup": sum(sc[n][PROJECT].get("warmup", 0) for n in names)}
    return out


def targets(mixed: dict[str, Any], summ: dict[str, Any], h_step: dict[str, Any] | None = None
            ) -> list[tuple[str, str, bool]]:
    """The targets of the mixed row with the measured figure and whether each is met."""
    r = summ["ratio"]
    worst, worst_name = summ["worst_vs_best_classic"]
    freq = {f: v["AutoETS"] for f, v in summ["per_freq"].items()}
    top = max(freq, key=lambda f: freq[f])
    out = [
        (f"mixed row: geo-mean one-step MASE <= {TARGET_ETS}x AutoETS", f"{r['AutoETS']:.3f}x",
         r["AutoETS"] <= TARGET_ETS),
        (f"mixed row: geo-mean one-step MASE <= {TARGET_THETA}x AutoTheta",
         f"{r['AutoTheta']:.3f}x", r["AutoTheta"] <= TARGET_THETA),
        (f"mixed row: geo-mean one-step MASE <= {TARGET_COMB}x Comb (ETS/Theta/ARIMA mean)",
         f"{r['Comb']:.3f}x", r["Comb"] <= TARGET_COMB),
        (f"mixed row: no series worse than {TARGET_WORST}x the better of AutoETS/AutoTheta",
         f"{worst:.3f}x ({worst_name})", worst <= TARGET_WORST),
        ("mixed row: every frequency group <= 1.0x AutoETS",
         ", ".join(f"{f} {v:.3f}" for f, v in freq.items()) + f" (worst {top})",
         freq[top] <= 1.0),
    ]
    iv = summ["intervals"].get(PROJECT)
    if iv:
        covs = [mixed["scores"][n][PROJECT]["coverage"] for n in mixed["scores"]]
        lo, hi = TARGET_COVERAGE
        out.append((f"mixed row: 90% interval coverage {100 * lo:.0f}-{100 * hi:.0f}% on every "
                    "series", f"{100 * min(covs):.0f}%..{100 * max(covs):.0f}% (mean "
                    f"{100 * iv['coverage_mean']:.1f}%)",
                    all(lo <= c <= hi for c in covs)))
    o = summ["origins"]
    out.append(("mixed row: short series scored from their second value (every origin "
                "forecast)", f"{o['short_series']} series, {o['short_scored']} origins, "
                f"{o['short_missing']} without a forecast",
                o["short_series"] > 0 and o["short_missing"] == 0))
    out.append(("mixed row: every scored origin has a forecast",
                f"{o['scored']} scored, {o['missing']} missing", o["missing"] == 0))
    if h_step is not None:
        steps = h_step["per_step_ratio_autoets"]
        out.append((f"mixed row H={len(steps)}: every step's geo-mean MASE <= 1.0x AutoETS",
                    f"max {max(steps):.3f}x", max(steps) <= 1.0))
    return out


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    groups = {g: {k: v for k, v in info.items() if k != "artifact"}
              for g, info in result.get("groups", {}).items()}
    return {**{k: v for k, v in result.items() if k != "forecasts"}, "groups": groups}


def throughput(models: dict[str, Served], quick: bool) -> list[tuple[str, float]]:
    """values/s of one worker over 1,000 series (the `make bench` fleet, exactly-once commit):
    the tutorial SimpleRNN(50) n_steps=3, and each default model."""
    from bench.scenarios import FULL, QUICK, Bench, fleet_throughput, train_tiny

    plan = QUICK if quick else FULL
    rows = []
    with tempfile.TemporaryDirectory(prefix="forecast-quality-thr-") as tmp:
        bench = Bench(plan, Path(tmp))
        tutorial = train_tiny("simple_rnn", 3)
        out = fleet_throughput(bench, tutorial)
        rows.append(("tutorial SimpleRNN(50) n_steps=3", out.median["values_per_s"]))
        for name, served in models.items():
            m = served.manifest
            # warm every series' window up first, so every measured value is a full window
            warm = Bench(dataclasses.replace(plan, warmup=plan.series * int(m["n_steps"])),
                         Path(tmp))
            out = fleet_throughput(warm, served)
            fams = "+".join(str(f["n_steps"]) for f in m.get("families", [])) or m["n_steps"]
            what = (f"default model {name}: {m.get('forecaster')} {m.get('arch')}"
                    f"({m.get('units')}) x{m.get('ensemble', 1)} windows {fams}")
            rows.append((what, out.median["values_per_s"]))
    return rows


def run_quality(quick: bool = False, out_dir: Path = RESULTS, horizon: int = 6,
                names: list[str] | None = None, multi: bool = True,
                measure_throughput: bool = True, train_time: bool = True) -> dict[str, Any]:
    """The whole benchmark: the mixed and per-period one-step rows, the mixed H-step row,
    throughput of the default models, the training-time check."""
    from bench import quality_report
    from bench.train_time import LIMIT_S, measure_training

    started = datetime.now(timezone.utc)
    series = load(names or (list(QUICK) if quick else None))
    passes: list[tuple[dict[str, Any], dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="forecast-quality-") as tmp:
        peers1 = {}
        for s in series:
            print(f"[quality] peers H=1 {s.name}", flush=True)
            peers1[s.name] = peer_forecasts(s, 1)
        for setup in SETUPS:
            res = run_pass(series, 1, Path(tmp), peers1, setup)
            passes.append((res, summary(series, res)))
            print()
            print(quality_report.format_table(series, *passes[-1]), flush=True)
            print()
        if multi:
            peers_h = {s.name: peer_forecasts(s, horizon) for s in series}
            res = run_pass(series, horizon, Path(tmp), peers_h, "mixed")
            passes.append((res, summary(series, res)))
            print(quality_report.format_table(series, *passes[-1]), flush=True)
    mixed, summ = passes[0]
    defaults = {"mixed": mixed["groups"]["mixed"]["artifact"]}
    if "m24" in passes[1][0]["groups"]:
        defaults["m24 (hourly)"] = passes[1][0]["groups"]["m24"]["artifact"]
    thr = throughput(defaults, quick) if measure_throughput else []
    for what, rate in thr:
        print(f"throughput, 1 worker, 1,000 series: {what}: {rate:,.0f} values/s")
    checks = targets(mixed, summ, passes[2][1] if multi else None)
    for what, rate in thr:
        floor = THROUGHPUT_TUTORIAL if what.startswith("tutorial") else THROUGHPUT_DEFAULT
        checks.append((f"throughput {what} >= {floor:,} values/s", f"{rate:,.0f}",
                       rate >= floor))
    timing = measure_training(quick) if train_time else None
    if timing is not None:
        checks.append((f"training --csv on {timing['series']} series x {timing['length']} values "
                       f"<= {LIMIT_S:.0f} s", f"{timing['seconds']:.0f} s (exit {timing['rc']})",
                       timing["seconds"] <= LIMIT_S and timing["rc"] in (0, 5)))
    print("targets:")
    for what, figure, ok in checks:
        print(f"  {'MET ' if ok else 'MISS'} {what}: {figure}")
    out_dir.mkdir(parents=True, exist_ok=True)
    quality_report.plot(series, mixed, out_dir / "quality.png")
    data = {
        "date": started.isoformat(timespec="seconds"), "machine": machine_info(),
        "quick": quick,
        "series": [{"name": s.name, "freq": s.freq, "period": s.period, "source": s.source,
                    "length": len(s.values), "short": s.short,
                    "train": 0 if s.short else split(len(s.values))} for s in series],
        "passes": [{**_jsonable(r), "summary": s} for r, s in passes],
        "targets": [{"target": w, "figure": f, "met": ok} for w, f, ok in checks],
        "throughput": [{"model": w, "values_per_s": r} for w, r in thr],
        "training_time": timing,
        "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
    }
    (out_dir / "quality.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out_dir / "quality.md").write_text(
        quality_report.markdown(json.loads(json.dumps(data, default=str))))
    print(f"\nresults written to {out_dir / 'quality.json'} and {out_dir / 'quality.png'}")
    return data


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`forecast bench --quality`."""
    del settings
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if redis_server_binary() is None:
        raise UsageError("forecast bench --quality starts its own redis-server: none is on PATH")
    try:
        import pmdarima  # noqa: F401
        import sktime  # noqa: F401
        import statsforecast  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"the quality benchmark needs the bench extra: pip install -e '.[bench]' "
                       f"({exc})") from None
    names = [n.strip() for n in args.only.split(",")] if getattr(args, "only", None) else None
    run_quality(quick=bool(args.quick), names=names)
    return 0
