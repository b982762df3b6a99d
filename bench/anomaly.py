"""`forecast bench --anomaly` / `make bench-anomaly`: the worker's anomaly verdicts on the
Numenta Anomaly Benchmark (NAB v1.1, vendored in bench/data/nab), scored by NAB's rules.

Through the real worker, as a user would run it, one deployment per NAB file
(bench.anomaly_stream): a model trained with the defaults (`forecast train --csv`) on the
file's probationary first 15%, every value pushed with its timestamp, the `anomaly_score`
of each value's output entry read back (no entry or no score: 0) and scored by
bench.nab_score. It prints the standard, low-FP and low-FN scores next to NAB's
scoreboard, per category, per file, and a calibration table: the target
FORECAST_ANOMALY_RATE against the flag rate measured on the anomaly-free files (their
values are streamed again at a few more rates), and the same on the real files' normal
values (`anomaly_report.real_calibration`): at the default rate as streamed, at the other
rates judged again from the forecasts the worker wrote (`bench.anomaly_replay`). Results:
bench/results/anomaly.json; a full run (every file, not --quick) also writes
docs/results/anomaly.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bench import anomaly_report as report
from bench.anomaly_replay import replay_all
from bench.anomaly_report import FORECASTS, NO_ANOMALY, RESULTS, Verdicts
from bench.anomaly_stream import WINDOWS, run_file
from bench.nab_data import NabFile, load_corpus
from forecast.errors import UsageError
from forecast.local_redis import private_redis, redis_server_binary
from forecast.settings import Settings
from testkit.results import machine_info

log = logging.getLogger(__name__)

DOCS_RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
# --quick: one anomaly-free file (calibration), one artificial and one real file with windows.
QUICK = ("artificialNoAnomaly/art_daily_small_noise.csv",
         "artificialWithAnomaly/art_daily_jumpsup.csv",
         "realAdExchange/exchange-3_cpc_results.csv")
RATES = (0.003, 0.01, 0.03)  # calibration: streamed again at these rates (anomaly-free files)
QUICK_RATES = (0.01,)
DEFAULT_RATE = float(Settings.model_fields["anomaly_rate"].default)
DEFAULT_WINDOW = str(Settings.model_fields["anomaly_window"].default)


def pick(corpus: list[NabFile], names: list[str] | None, quick: bool) -> list[NabFile]:
    """The files to run: those named (a full name or its last part), the quick ones, or all."""
    wanted = names or (list(QUICK) if quick else None)
    if wanted is None:
        return corpus
    by_name = {f.name: f for f in corpus} | {f.name.rsplit("/", 1)[-1]: f for f in corpus}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise UsageError(f"no NAB file {', '.join(unknown)}; e.g. {corpus[0].name}")
    return [by_name[n] for n in wanted]


def _stream_all(files: list[NabFile], rates: tuple[float, ...], workdir: Path, t0: float
                ) -> tuple[dict[str, dict[str, Verdicts]], dict[float, dict[str, Verdicts]],
                           dict[str, Any], dict[str, str]]:
    """Every file through its own deployment; verdicts (per FORECAST_ANOMALY_WINDOW, then
    per file), calibration runs, infos, errors."""
    verdicts: dict[str, dict[str, Verdicts]] = {w: {} for w in WINDOWS}
    cal: dict[float, dict[str, Verdicts]] = {DEFAULT_RATE: {}, **{r: {} for r in rates}}
    infos: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for k, f in enumerate(files, 1):
        free = f.category == NO_ANOMALY
        try:
            info, per_window, extra = run_file(f, workdir / f"f{k}", rates if free else ())
        except Exception as exc:  # one file that fails must not hide the others: it scores 0
            log.exception("%s failed", f.name)
            errors[f.name] = f"{type(exc).__name__}: {str(exc)[-500:]}"
            info, per_window, extra = {}, {}, {}
        for w in WINDOWS:
            verdicts[w][f.name] = per_window.get(w, Verdicts.empty(len(f.values)))
        v, infos[f.name] = verdicts[DEFAULT_WINDOW][f.name], info
        if free:
            cal[DEFAULT_RATE][f.name] = v
            for r in rates:
                cal[r][f.name] = extra.get(r, Verdicts.empty(len(f.values)))
        what = (f"ERROR {errors[f.name][:120]}" if f.name in errors else
                f"trained in {info['train_s']:.0f}s ({info['version']}, exit {info['rc']}), "
                f"streamed in {info[f'stream_{DEFAULT_WINDOW}_s']:.0f}s: "
                f"{int(v.judged.sum())} verdicts, "
                f"{v.flags} flags, {v.alerts} alerts")
        print(f"[anomaly] {k}/{len(files)} {f.name} ({len(f.values)} values): {what}; "
              f"{time.perf_counter() - t0:.0f}s elapsed", flush=True)
    return verdicts, cal, infos, errors


def _replayed_real_calibration(files: list[NabFile], verdicts: dict[str, Verdicts],
                               rates: tuple[float, ...]) -> list[dict[str, Any]]:
    """`real_calibration` at more rates, from the forecasts the worker wrote at the default
    rate, judged again (`bench.anomaly_replay`): a real file is streamed once."""
    forecasts = {n: v.prediction for n, v in verdicts.items() if v.prediction is not None}
    rows = []
    for r in rates:
        again = {**verdicts, **replay_all(files, forecasts, r)}  # no forecasts: as streamed
        rows.append(report.real_calibration(files, again, r))
    return rows


def save_forecasts(path: Path, files: list[NabFile], verdicts: dict[str, Verdicts]) -> None:
    """Each file's forecasts as the worker wrote them (default window), for
    bench.anomaly_replay: `names`, then `prediction_<k>` for the k-th name."""
    arrays: dict[str, np.ndarray] = {"names": np.array([f.name for f in files])}
    for k, f in enumerate(files):
        pred = verdicts[f.name].prediction
        arrays[f"prediction_{k}"] = np.full(len(f.values), np.nan) if pred is None else pred
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, allow_pickle=False, **arrays)


def _machine() -> dict[str, Any]:
    """The machine, with the version of the redis-server every deployment runs."""
    import redis

    with private_redis() as server:
        client = redis.Redis(port=server.port)
        try:
            return machine_info(client)
        finally:
            client.close()


def run_anomaly(names: list[str] | None = None, quick: bool = False,
                out_dir: Path = RESULTS) -> dict[str, Any]:
    """Stream the chosen files, print the tables, write the results; return them."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    corpus = load_corpus()
    files = pick(corpus, names, quick)
    full = names is None and not quick
    with tempfile.TemporaryDirectory(prefix="forecast-anomaly-") as tmp:
        rates = QUICK_RATES if quick else RATES
        verdicts, cal, infos, errors = _stream_all(files, rates, Path(tmp), t0)
    by_window = {w: report.nab_scores(files, verdicts[w]) for w in WINDOWS}
    scores = by_window[DEFAULT_WINDOW]
    calib = report.calibration({r: v for r, v in cal.items() if v})
    real = report.real_calibration(files, verdicts[DEFAULT_WINDOW], DEFAULT_RATE)
    replayed = _replayed_real_calibration(files, verdicts[DEFAULT_WINDOW], rates)
    labels = {w: f"this worker (RATE={DEFAULT_RATE:g}, WINDOW={w}"
                 f"{', the default' if w == DEFAULT_WINDOW else ''})" for w in WINDOWS}
    print(f"\nNAB v1.1, {len(files)} of {len(corpus)} files"
          f"{'' if full else ' (NAB scoreboard: all 58)'}\n")
    print(report.format_profiles({labels[w]: by_window[w] for w in WINDOWS})
          if scores["profiles"] else "no windows")
    if scores["categories"]:
        for w in WINDOWS:
            if w != DEFAULT_WINDOW:
                print(f"\nper category with FORECAST_ANOMALY_WINDOW={w}")
                print(report.format_categories(by_window[w]))
        print(f"\nper category (normalised, at the corpus-wide thresholds; "
              f"FORECAST_ANOMALY_WINDOW={DEFAULT_WINDOW})")
        print(report.format_categories(scores))
        print("\nper file (standard profile; windows: found/scored)")
        print(report.format_files(scores))
    if calib:
        print(f"\ncalibration on the anomaly-free files ({NO_ANOMALY})")
        print(report.format_calibration(calib))
    if real["series"]:
        print("\ncalibration on the real files' normal values (after probation, outside the "
              "label windows and one window width after each)")
        print(report.format_real_calibration(real))
        print("\nthe same at more rates, each file judged again from the forecasts this run's "
              "worker wrote (bench.anomaly_replay)")
        print(report.format_real_rates([real, *replayed]))
    for name, err in errors.items():
        print(f"\n{name}: ERROR {err}")
    data = {"date": started.isoformat(timespec="seconds"), "machine": _machine(),
            "quick": quick, "full": full, "anomaly_rate": DEFAULT_RATE,
            "files": [f.name for f in files], "scoreboard": report.SCOREBOARD,
            "anomaly_window": DEFAULT_WINDOW, "scores": scores,
            "windows": {w: by_window[w]["profiles"] for w in WINDOWS}, "calibration": calib,
            "calibration_real": real, "calibration_real_replayed": replayed,
            "runs": infos, "errors": errors,
            "seconds": round(time.perf_counter() - t0, 1)}
    paths = [out_dir / "anomaly.json", *([DOCS_RESULTS / "anomaly.json"] if full else [])]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    forecasts = out_dir / FORECASTS
    save_forecasts(forecasts, files, verdicts[DEFAULT_WINDOW])
    print(f"\nresults written to {', '.join(str(p) for p in paths)}; each file's forecasts to "
          f"{forecasts} (python -m bench.anomaly_replay)")
    return data


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`forecast bench --anomaly [--quick] [--only FILE,FILE]`."""
    del settings  # every deployment is private, with the defaults
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if redis_server_binary() is None:
        raise UsageError("forecast bench --anomaly starts its own redis-server: none is on PATH")
    only = getattr(args, "only", None)
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    data = run_anomaly(names, quick=bool(getattr(args, "quick", False)))
    return 1 if data["errors"] else 0


def main() -> int:
    """`python -m bench.anomaly [--quick] [--files FILE,FILE]`."""
    parser = argparse.ArgumentParser(prog="python -m bench.anomaly", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--files", dest="only", help="comma-separated NAB files "
                        "(e.g. realKnownCause/nyc_taxi.csv or nyc_taxi.csv)")
    return run(parser.parse_args(), Settings.model_construct())


if __name__ == "__main__":
    raise SystemExit(main())
