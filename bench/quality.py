"""`forecast bench --quality` / `make bench-quality`: the product's forecasts against the classics.

On real series bundled in pmdarima and sktime (`bench.quality_data`), with the same split for
everyone: the first 80% of each series is training data, and a forecast is made at every
origin of the last 20%.

* The project goes **through the real path**: one CSV per seasonal-period group, trained with
  `forecast train --csv FILE` and nothing else (the defaults; `--horizon H` for the multi-step
  pass), published to the registry of a private redis-server, served by a real
  `forecast worker` process that reads the whole series from `forecast:values`; the
  predictions are read back from `forecast:predictions`.
* The peers (statsforecast): AutoETS, AutoTheta, Naive and SeasonalNaive, fitted on the
  training part and updated (not refitted) at every later origin (`cross_validation` with
  `refit=False`), with their 90% intervals.

Scores per series: MASE (errors over the in-sample one-step naive MAE of the training part),
the geometric mean over series of the ratios to each peer, per-step MASE for H > 1, coverage
and MSIS (mean scaled interval score, alpha = 0.1) of the 90% intervals. The table is printed,
and written with everything else as JSON (`bench/results/quality.json`) with a PNG of a few
series.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality_data import QUICK, RealSeries, load
from bench.util import start_worker
from forecast import keys, registry
from forecast.errors import UsageError
from forecast.harness import wait_until
from forecast.redis_server import RedisServer, redis_server_binary
from forecast.settings import Settings

log = logging.getLogger(__name__)

TRAIN_FRACTION = 0.8
ALPHA = 0.1  # 90% intervals
PEERS = ("AutoETS", "AutoTheta", "Naive", "SeasonalNaive")
PROJECT = "forecast"
RESULTS = Path("bench/results")


@dataclass
class Forecasts:
    """Forecasts of one method on one series: per origin (index of the last value seen)."""

    point: dict[int, np.ndarray] = field(default_factory=dict)  # origin -> (H,)
    lower: dict[int, np.ndarray] = field(default_factory=dict)
    upper: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class Served:
    """A served artifact (what the bench's throughput fleet publishes)."""

    blob: bytes
    manifest: dict[str, Any]


def split(n: int) -> int:
    """Index of the first test value: the first 80% of a series is training data.

    >>> split(100), split(144)
    (80, 115)
    """
    return n * 4 // 5  # TRAIN_FRACTION, in integers


def origins(n: int, horizon: int) -> list[int]:
    """Forecast origins (index of the last observed value) whose H targets all lie in the test part.

    >>> origins(10, 1), origins(10, 2)
    ([7, 8], [7])
    """
    return list(range(split(n) - 1, n - horizon))


def mase_scale(values: np.ndarray) -> float:
    """In-sample one-step naive MAE of the training part (the MASE denominator).

    >>> mase_scale(np.array([1.0, 2.0, 4.0, 7.0, 11.0]))  # diffs of 1, 2, 4, 7
    2.0
    """
    d = np.abs(np.diff(values[: split(len(values))]))
    return float(d.mean()) if len(d) and d.mean() > 0 else 1.0


def msis(y: np.ndarray, lo: np.ndarray, hi: np.ndarray, scale: float, alpha: float = ALPHA
         ) -> float:
    """Mean scaled interval score (M4): width plus 2/alpha times each miss, over `scale`.

    >>> msis(np.array([1.0, 5.0]), np.array([0.0, 0.0]), np.array([2.0, 4.0]), 2.0)
    6.5
    """
    score = (hi - lo) + 2 / alpha * (lo - y) * (y < lo) + 2 / alpha * (y - hi) * (y > hi)
    return float(np.mean(score) / scale)


def geo_mean_ratio(a: list[float], b: list[float]) -> float:
    """Geometric mean of a_i / b_i (pairs where either is 0 or missing are skipped).

    >>> round(geo_mean_ratio([1.0, 8.0], [2.0, 2.0]), 6)
    1.414214
    """
    r = [math.log(x / y) for x, y in zip(a, b, strict=True)
         if x is not None and y is not None and x > 0 and y > 0]
    return math.exp(sum(r) / len(r)) if r else float("nan")


def score(s: RealSeries, fc: Forecasts, horizon: int) -> dict[str, Any]:
    """MASE (overall and per step), coverage and MSIS of the one-step / H-step intervals."""
    v, scale = s.values, mase_scale(s.values)
    orig = [t for t in origins(len(v), horizon) if t in fc.point]
    if not orig:
        return {"n": 0}
    y = np.stack([v[t + 1: t + 1 + horizon] for t in orig])
    p = np.stack([fc.point[t][:horizon] for t in orig])
    err = np.abs(p - y) / scale
    out: dict[str, Any] = {"n": len(orig), "missing": len(origins(len(v), horizon)) - len(orig),
                           "mase": float(err.mean()),
                           "mase_per_step": [float(e) for e in err.mean(axis=0)]}
    if all(t in fc.lower for t in orig):
        lo = np.stack([fc.lower[t][:horizon] for t in orig])
        hi = np.stack([fc.upper[t][:horizon] for t in orig])
        out["coverage"] = float(np.mean((y >= lo) & (y <= hi)))
        out["msis"] = msis(y, lo, hi, scale)
    return out


# --- peers ----------------------------------------------------------------------------------


def peer_forecasts(s: RealSeries, horizon: int) -> dict[str, Forecasts]:
    """statsforecast's AutoETS, AutoTheta, Naive, SeasonalNaive: fit once, updated per origin."""
    import pandas as pd
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, AutoTheta, Naive, SeasonalNaive

    m = s.period
    models = [AutoETS(season_length=m), AutoTheta(season_length=m), Naive(),
              SeasonalNaive(season_length=m)]
    df = pd.DataFrame({"unique_id": s.name, "ds": np.arange(len(s.values)), "y": s.values})
    n_windows = len(origins(len(s.values), horizon))
    sf = StatsForecast(models=models, freq=1, n_jobs=1)
    cv = sf.cross_validation(df=df, h=horizon, step_size=1, n_windows=n_windows, refit=False,
                             level=[90])
    out = {name: Forecasts() for name in PEERS}
    for cutoff, rows in cv.groupby("cutoff"):
        rows = rows.sort_values("ds")
        t = int(cutoff)
        for name in PEERS:
            out[name].point[t] = rows[name].to_numpy(dtype=np.float64)
            if f"{name}-lo-90" in rows:
                out[name].lower[t] = rows[f"{name}-lo-90"].to_numpy(dtype=np.float64)
                out[name].upper[t] = rows[f"{name}-hi-90"].to_numpy(dtype=np.float64)
    return out


# --- the project, through the real path -------------------------------------------------


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORECAST_")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"})
    env.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    return env


def write_training_csv(path: Path, group: list[RealSeries]) -> None:
    """The training parts (first 80%) in the long CSV format `forecast train --csv` reads."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["series", "timestamp", "value"])
        for s in group:
            for i, v in enumerate(s.values[: split(len(s.values))]):
                w.writerow([s.name, i, repr(float(v))])


def train_group(url: str, csv_path: Path, workdir: Path, horizon: int) -> dict[str, Any]:
    """`forecast train --csv FILE` (plus --horizon H when H > 1): wall time, exit code, output."""
    cmd = [sys.executable, "-m", "forecast.cli", "train", "--csv", str(csv_path),
           "--redis-url", url, "--out", str(workdir / "models")]
    if horizon > 1:
        cmd += ["--horizon", str(horizon)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=_env(workdir), capture_output=True, text=True,
                          check=False)
    took = time.perf_counter() - t0
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"forecast train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"seconds": round(took, 1), "rc": proc.returncode,
            "stdout": proc.stdout.strip().splitlines()[-6:],
            "gate": proc.stderr.strip().splitlines()[-1:] if proc.returncode == 3 else []}


def _floats(text: bytes | None) -> np.ndarray | None:
    if not text:
        return None
    return np.asarray([float(x) for x in text.decode().split(",")], dtype=np.float64)


def serve_group(server: RedisServer, client: Any, group: list[RealSeries], horizon: int,
                workdir: Path, tag: str) -> tuple[dict[str, Forecasts], dict[str, Any]]:
    """Run a `forecast worker` on the current model over the whole series; read predictions."""
    version = registry.current_version(client)
    manifest = registry.get_manifest(client, version or "")
    n_steps = int(manifest["n_steps"])
    worker = start_worker(server.url, f"quality-{tag}", workdir, model_poll_s=0.2, block_ms=100)
    try:
        def ready() -> bool:
            worker.check_alive()
            raw = client.get(keys.heartbeat(worker.consumer))
            return bool(raw and json.loads(raw).get("model_version") == version
                        and json.loads(raw).get("ready"))
        wait_until(ready, 180, 0.1, "the worker to serve the model")
        where: dict[bytes, tuple[str, int]] = {}
        for s in group:
            pipe = client.pipeline(transaction=False)
            for i, v in enumerate(s.values):
                pipe.xadd(keys.VALUES, {"series": s.name, "value": repr(float(v)), "ts": i})
            for i, eid in enumerate(pipe.execute()):
                where[eid] = (s.name, i)
        expected = sum(max(0, len(s.values) - n_steps + 1) for s in group)

        def done() -> bool:
            worker.check_alive()
            return int(client.xlen(keys.PREDICTIONS)) >= expected
        wait_until(done, 600, 0.05, f"{expected} predictions")
    finally:
        worker.stop()
    out = {s.name: Forecasts() for s in group}
    for _eid, f in client.xrange(keys.PREDICTIONS, "-", "+"):
        name, t = where[f[b"source_id"]]
        fc = out[name]
        if horizon > 1:
            fc.point[t] = _floats(f[b"path"])  # type: ignore[assignment]
            if b"lower_path" in f:
                fc.lower[t] = _floats(f[b"lower_path"])  # type: ignore[assignment]
                fc.upper[t] = _floats(f[b"upper_path"])  # type: ignore[assignment]
        else:
            fc.point[t] = np.asarray([float(f[b"prediction"])])
            if b"lower" in f:
                fc.lower[t] = np.asarray([float(f[b"lower"])])
                fc.upper[t] = np.asarray([float(f[b"upper"])])
    info = {"version": version, "n_steps": n_steps, "arch": manifest.get("arch"),
            "forecaster": manifest.get("forecaster", "rnn"),
            "season_period": manifest.get("metrics", {}).get("season_period"),
            "params": manifest.get("train", {}).get("params"),
            "epochs_run": manifest.get("train", {}).get("epochs_run"),
            "gate": manifest.get("gate", {}).get("reason")}
    return out, info


def project_forecasts(group: list[RealSeries], horizon: int, workdir: Path, tag: str
                      ) -> tuple[dict[str, Forecasts], dict[str, Any]]:
    """Train on the group's training parts, publish, serve, and read the forecasts back."""
    import redis

    gdir = workdir / tag
    gdir.mkdir(parents=True, exist_ok=True)
    csv_path = gdir / "train.csv"
    write_training_csv(csv_path, group)
    server = RedisServer(dir=gdir / "redis")
    server.dir.mkdir()  # type: ignore[union-attr]
    server.start()
    client = redis.Redis(port=server.port, socket_timeout=60)
    try:
        trained = train_group(server.url, csv_path, gdir, horizon)
        if trained["rc"] == 3:  # stored but refused by the gate: score it anyway, say so
            latest = registry.list_versions(client)[-1]["version"]
            registry.promote(client, latest)
        fc, info = serve_group(server, client, group, horizon, gdir, tag)
        version = registry.current_version(client) or ""
        artifact = Served(registry.get_blob(client, version),
                          registry.get_manifest(client, version))
        return fc, {**info, "train": trained, "artifact": artifact}
    finally:
        client.close()
        server.cleanup()


# --- the run ------------------------------------------------------------------------------


def _groups(series: list[RealSeries]) -> dict[str, list[RealSeries]]:
    groups: dict[str, list[RealSeries]] = {}
    for s in series:
        groups.setdefault(s.group, []).append(s)
    return groups


def run_pass(series: list[RealSeries], horizon: int, workdir: Path) -> dict[str, Any]:
    """One horizon: every method's forecasts and scores on every series."""
    scores: dict[str, dict[str, Any]] = {s.name: {} for s in series}
    info: dict[str, Any] = {}
    kept: dict[str, dict[str, Forecasts]] = {s.name: {} for s in series}
    for gname, group in _groups(series).items():
        print(f"[quality] H={horizon} {gname}: {', '.join(s.name for s in group)}", flush=True)
        fc, info[gname] = project_forecasts(group, horizon, workdir, f"{gname}-h{horizon}")
        print(f"[quality]   trained in {info[gname]['train']['seconds']}s: "
              f"n_steps={info[gname]['n_steps']} {info[gname]['forecaster']}", flush=True)
        for s in group:
            kept[s.name][PROJECT] = fc[s.name]
            scores[s.name][PROJECT] = score(s, fc[s.name], horizon)
            for name, pf in peer_forecasts(s, horizon).items():
                kept[s.name][name] = pf
                scores[s.name][name] = score(s, pf, horizon)
    return {"horizon": horizon, "scores": scores, "groups": info, "forecasts": kept}


def summary(series: list[RealSeries], result: dict[str, Any]) -> dict[str, Any]:
    """Geo-mean ratios of the project to each peer, per-step ratios, interval aggregates."""
    sc = result["scores"]
    names = [s.name for s in series]
    proj = [sc[n][PROJECT]["mase"] for n in names]
    out: dict[str, Any] = {"ratio": {}, "per_step_ratio_autoets": [], "intervals": {}}
    for peer in PEERS:
        out["ratio"][peer] = geo_mean_ratio(proj, [sc[n][peer]["mase"] for n in names])
    best = [min(sc[n]["AutoETS"]["mase"], sc[n]["AutoTheta"]["mase"]) for n in names]
    out["worst_vs_best_classic"] = max(
        ((p / b if b > 0 else float("inf")), n) for p, b, n in zip(proj, best, names, strict=True))
    h = result["horizon"]
    for k in range(h):
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
    if PROJECT in out["intervals"] and "AutoETS" in out["intervals"]:
        out["msis_ratio_autoets"] = geo_mean_ratio(
            [sc[n][PROJECT]["msis"] for n in names], [sc[n]["AutoETS"]["msis"] for n in names])
    return out


def format_table(series: list[RealSeries], result: dict[str, Any], summ: dict[str, Any]) -> str:
    """Per-series MASE of every method (plus coverage and MSIS), then the aggregate lines."""
    sc, h = result["scores"], result["horizon"]
    methods = (PROJECT, *PEERS)
    head = f"{'series':<16} {'freq':<9} {'n':>5} " + " ".join(f"{m:>13}" for m in methods) + \
        f" {'cov fc/ETS':>11} {'MSIS fc/ETS':>13}"
    lines = ["one-step MASE" if h == 1 else f"H={h}: MASE over all steps", head, "-" * len(head)]
    for s in series:
        r = sc[s.name]
        cov = r[PROJECT].get("coverage"), r["AutoETS"].get("coverage")
        ms = r[PROJECT].get("msis"), r["AutoETS"].get("msis")
        cells = " ".join(f"{r[m]['mase']:>13.3f}" for m in methods)
        cov_s = f"{100 * cov[0]:.0f}/{100 * cov[1]:.0f}" if None not in cov else "-"
        ms_s = f"{ms[0]:.2f}/{ms[1]:.2f}" if None not in ms else "-"
        lines.append(f"{s.name:<16} {s.freq:<9} {len(s.values):>5} {cells} {cov_s:>11} {ms_s:>13}")
    lines.append("-" * len(head))
    ratios = " ".join(f"{summ['ratio'][p]:>13.3f}" for p in PEERS)
    lines.append(f"{'geo-mean ratio forecast / peer':<46}{'':>0}{ratios}")
    worst, name = summ["worst_vs_best_classic"]
    lines.append(f"worst single series vs the better of AutoETS/AutoTheta: {worst:.3f} ({name})")
    if h > 1:
        steps = ", ".join(f"{v:.3f}" for v in summ["per_step_ratio_autoets"])
        lines.append(f"per-step geo-mean MASE ratio forecast / AutoETS: {steps}")
    for m, iv in summ["intervals"].items():
        lines.append(f"90% intervals {m}: coverage mean {100 * iv['coverage_mean']:.1f}% "
                     f"(min {100 * iv['coverage_min']:.0f}%, max {100 * iv['coverage_max']:.0f}%),"
                     f" MSIS mean {iv['msis_mean']:.3f}")
    if "msis_ratio_autoets" in summ:
        lines.append(f"MSIS geo-mean ratio forecast / AutoETS: {summ['msis_ratio_autoets']:.3f}")
    return "\n".join(lines)


def targets(passes: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[tuple[str, str, bool]]:
    """The issue's targets with the measured figure and whether each is met."""
    one, summ1 = passes[0]
    out = [
        ("geo-mean one-step MASE <= 0.95x AutoETS", f"{summ1['ratio']['AutoETS']:.3f}x",
         summ1["ratio"]["AutoETS"] <= 0.95),
        ("geo-mean one-step MASE <= 0.95x AutoTheta", f"{summ1['ratio']['AutoTheta']:.3f}x",
         summ1["ratio"]["AutoTheta"] <= 0.95),
        ("no series worse than 1.15x the better of AutoETS/AutoTheta",
         f"{summ1['worst_vs_best_classic'][0]:.3f}x ({summ1['worst_vs_best_classic'][1]})",
         summ1["worst_vs_best_classic"][0] <= 1.15),
    ]
    iv = summ1["intervals"].get(PROJECT)
    if iv:
        sc = one["scores"]
        covs = [sc[n][PROJECT]["coverage"] for n in sc]
        out.append(("90% coverage within +-3 points on average",
                    f"{100 * iv['coverage_mean']:.1f}%", abs(iv["coverage_mean"] - 0.9) <= 0.03))
        out.append(("90% coverage within +-10 points on every series",
                    f"{100 * min(covs):.0f}%..{100 * max(covs):.0f}%",
                    all(abs(c - 0.9) <= 0.10 for c in covs)))
        out.append(("MSIS no worse than AutoETS (geo-mean ratio)",
                    f"{summ1.get('msis_ratio_autoets', float('nan')):.3f}x",
                    summ1.get("msis_ratio_autoets", 9.9) <= 1.0))
    for res, summ in passes[1:]:
        steps = summ["per_step_ratio_autoets"]
        out.append((f"H={res['horizon']}: every step's geo-mean MASE <= 1.0x AutoETS",
                    f"max {max(steps):.3f}x", max(steps) <= 1.0))
    return out


def plot(series: list[RealSeries], result: dict[str, Any], path: Path, count: int = 4) -> None:
    """Actuals, the project's one-step forecasts with its 90% interval, AutoETS: a few series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = series[:count]
    fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.6 * len(chosen)), squeeze=False)
    for ax, s in zip(axes[:, 0], chosen, strict=True):
        fc = result["forecasts"][s.name]
        start = max(0, split(len(s.values)) - 3 * max(s.period, 8))
        t = np.arange(start, len(s.values))
        ax.plot(t, s.values[start:], color="black", lw=1.2, label="actual")
        proj, ets = fc[PROJECT], fc["AutoETS"]
        o = sorted(proj.point)
        o = [k for k in o if k >= split(len(s.values)) - 1 and k + 1 < len(s.values)]
        if o:
            ax.plot([k + 1 for k in o], [proj.point[k][0] for k in o], color="tab:blue",
                    label="forecast (project)")
            if all(k in proj.lower for k in o):
                ax.fill_between([k + 1 for k in o], [proj.lower[k][0] for k in o],
                                [proj.upper[k][0] for k in o], color="tab:blue", alpha=0.2,
                                label="90% interval")
        oe = sorted(ets.point)
        ax.plot([k + 1 for k in oe], [ets.point[k][0] for k in oe], color="tab:orange", lw=1,
                ls="--", label="AutoETS")
        ax.axvline(split(len(s.values)) - 0.5, color="grey", lw=0.8)
        ax.set_title(f"{s.name} ({s.freq}), one step ahead", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(data: dict[str, Any]) -> str:
    """The README's tables from the JSON results: one-step MASE per series, the aggregates,
    the H-step per-step ratios, intervals, throughput and the targets."""
    one = data["passes"][0]
    sc, summ = one["scores"], one["summary"]
    methods = (PROJECT, *PEERS)
    out = ["| series | freq | length | " + " | ".join(methods)
           + " | coverage fc / ETS | MSIS fc / ETS |",
           "|---|---|---|" + "---|" * len(methods) + "---|---|"]
    for s in data["series"]:
        r = sc[s["name"]]
        best = min(r[m]["mase"] for m in methods)
        cells = [f"**{r[m]['mase']:.3f}**" if r[m]["mase"] == best else f"{r[m]['mase']:.3f}"
                 for m in methods]
        cov = f"{100 * r[PROJECT]['coverage']:.0f}% / {100 * r['AutoETS']['coverage']:.0f}%"
        ms = f"{r[PROJECT]['msis']:.2f} / {r['AutoETS']['msis']:.2f}"
        out.append(f"| {s['name']} | {s['freq']} | {s['length']} | " + " | ".join(cells)
                   + f" | {cov} | {ms} |")
    out.append("| **geo-mean ratio forecast / peer** | | | | "
               + " | ".join(f"**{summ['ratio'][p]:.3f}**" for p in PEERS) + " | | |")
    out.append("")
    for res in data["passes"][1:]:
        steps = ", ".join(f"{v:.3f}" for v in res["summary"]["per_step_ratio_autoets"])
        out.append(f"H={res['horizon']} (one model per group trained with `--horizon "
                   f"{res['horizon']}`): geo-mean MASE ratio forecast / AutoETS per step: "
                   f"{steps}; over all steps {res['summary']['ratio']['AutoETS']:.3f} "
                   f"(AutoTheta {res['summary']['ratio']['AutoTheta']:.3f}).")
        out.append("")
    out.append("| target (issue 11) | measured | |")
    out.append("|---|---|---|")
    for t in data["targets"]:
        out.append(f"| {t['target']} | {t['figure']} | {'met' if t['met'] else 'missed'} |")
    return "\n".join(out) + "\n"


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    groups = {g: {k: v for k, v in info.items() if k != "artifact"}
              for g, info in result.get("groups", {}).items()}
    return {**{k: v for k, v in result.items() if k != "forecasts"}, "groups": groups}


def throughput(models: dict[str, Served], quick: bool) -> list[tuple[str, float]]:
    """values/s of one worker over 1,000 series (the `make bench` fleet, exactly-once commit):
    the tutorial SimpleRNN(50) n_steps=3, and each served default model."""
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
            # warm every series' window up first, so every measured value is predicted
            warm = Bench(dataclasses.replace(plan, warmup=plan.series * int(m["n_steps"])),
                         Path(tmp))
            out = fleet_throughput(warm, served)
            what = (f"default model {name}: {m.get('forecaster')} {m.get('arch')}"
                    f"({m.get('units')}) x{m.get('ensemble', 1)} n_steps={m['n_steps']}")
            rows.append((what, out.median["values_per_s"]))
    return rows


def run_quality(quick: bool = False, out_dir: Path = RESULTS, horizon: int = 6,
                names: list[str] | None = None, multi: bool = True,
                measure_throughput: bool = True) -> dict[str, Any]:
    """The whole benchmark: one-step pass, then (unless disabled) the H-step pass."""
    started = datetime.now(timezone.utc)
    series = load(names or (list(QUICK) if quick else None))
    passes = []
    with tempfile.TemporaryDirectory(prefix="forecast-quality-") as tmp:
        for h in ([1, horizon] if multi else [1]):
            res = run_pass(series, h, Path(tmp))
            summ = summary(series, res)
            passes.append((res, summ))
            print()
            print(format_table(series, res, summ), flush=True)
            print()
    models = {g: info["artifact"] for g, info in passes[0][0]["groups"].items()
              if g in ("m12", "m24")}
    thr = throughput(models, quick) if measure_throughput else []
    for what, rate in thr:
        print(f"throughput, 1 worker, 1,000 series: {what}: {rate:,.0f} values/s")
    checks = targets(passes)
    for what, rate in thr:
        floor = 150_000 if what.startswith("tutorial") else 30_000
        checks.append((f"throughput {what} >= {floor:,} values/s", f"{rate:,.0f}",
                       rate >= floor))
    print("targets:")
    for what, figure, ok in checks:
        print(f"  {'MET ' if ok else 'MISS'} {what}: {figure}")
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(series, passes[0][0], out_dir / "quality.png")
    data = {
        "date": started.isoformat(timespec="seconds"),
        "quick": quick,
        "series": [{"name": s.name, "freq": s.freq, "period": s.period, "source": s.source,
                    "length": len(s.values), "train": split(len(s.values))} for s in series],
        "passes": [{**_jsonable(r), "summary": s} for r, s in passes],
        "targets": [{"target": w, "figure": f, "met": ok} for w, f, ok in checks],
        "throughput": [{"model": w, "values_per_s": r} for w, r in thr],
        "seconds": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
    }
    (out_dir / "quality.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out_dir / "quality.md").write_text(markdown(json.loads(json.dumps(data, default=str))))
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
