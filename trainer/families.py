"""One version for series of every frequency: a family per seasonal period, warm-up, fallback.

`plan` finds each series' seasonal period on its training part (`forecast.season`) and groups
the series by it; each family gets the window its period needs (`sizing.choose_window`, for
its longest series). `train_bundle` trains one hybrid per family (the time budget shared by
their training windows), fits each family's warm-up ladder (`trainer.warmup`), finds each
family's best single expert on validation (the fallback when the hybrid fails the gate),
and packs everything into one bundle (`forecast.bundle`) with the table series -> period.
A series whose own validation windows the last value forecasts better than its family's
hybrid (`choose_single`: a random walk, say) is served by naive alone once its window is full.
The version is scored on the validation windows of every series, young ones included
(`windows.build_partial`), exactly as the worker will serve it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from forecast import bundle, season
from forecast.errors import DataError
from forecast.modelio import BundleModel, load_bytes, rebundle, sign
from forecast.settings import Settings
from trainer import conformal, evaluate, sizing, smoothing, windows
from trainer.data import Dataset
from trainer.windows import WindowSet

if TYPE_CHECKING:
    from trainer.trained import Trained

log = logging.getLogger(__name__)

MAX_FAMILIES = 6
MIN_BUDGET_S = 20.0
MIN_VALUES = 2  # a series' first forecast follows its second value
# A series is served by SINGLE alone when, on at least SINGLE_WINDOWS of its own full
# validation windows, SINGLE's mean absolute error is below (1 - SINGLE_MARGIN) x the hybrid's.
SINGLE = "naive"
SINGLE_WINDOWS = 20
SINGLE_MARGIN = 0.02


@dataclass
class Family:
    """Series of one seasonal period and the window that serves them."""

    period: int
    n_steps: int
    names: list[str]


@dataclass
class Part:
    """A trained family: its parts' bytes and what the manifest says about them."""

    family: Family
    full: bytes
    warm: bytes | None
    fallback: bytes
    fallback_name: str
    info: dict[str, Any] = field(default_factory=dict)
    single: bytes | None = None  # naive alone, for the series it serves better (`choose_single`)


def train_part(values: np.ndarray, val_fraction: float, horizon: int) -> np.ndarray:
    """The training part of a series (what period detection may look at)."""
    split = windows.split_index(len(values), val_fraction, MIN_VALUES, horizon)
    return values[:split]


def plan(dataset: Dataset, s: Settings) -> tuple[list[Family], dict[str, int]]:
    """The families and the table series -> family period."""
    found = {name: season.series_period(train_part(v, s.val_fraction, s.horizon))
             for name, v in dataset.series.items()}
    longest: dict[int, int] = {}
    for name, p in found.items():
        n = len(train_part(dataset.series[name], s.val_fraction, s.horizon))
        longest[p] = max(longest.get(p, 0), n)
    # a period whose series are too short for two of its seasons is served as non-seasonal
    kept = {p: p for p in longest
            if p == 1 or sizing.choose_window(p, s.horizon, longest[p])[1] == p}
    by_size = sorted((p for p in kept if p > 1),
                     key=lambda p: -sum(1 for q in found.values() if q == p))
    for p in by_size[MAX_FAMILIES - 1:]:
        del kept[p]
    table = {name: kept.get(p, 1) for name, p in found.items()}
    families = []
    for p in sorted(set(table.values())):
        names = [n for n, q in table.items() if q == p]
        top = max(len(train_part(dataset.series[n], s.val_fraction, s.horizon)) for n in names)
        n_steps, _ = sizing.choose_window(p, s.horizon, top)
        families.append(Family(p, n_steps, names))
    return families, table


def describe(families: list[Family]) -> str:
    """`period 12: window 72, 4 series; ...` for the log and the manifest.

    >>> describe([Family(12, 72, ["a", "b"]), Family(1, 48, ["c"])])
    'period 12: window 72, 2 series; period 1: window 48, 1 series'
    """
    return "; ".join(f"period {f.period}: window {f.n_steps}, {len(f.names)} series"
                     for f in families)


def _budgets(sets: list[WindowSet | None], total: float) -> list[float]:
    """Each family's share of the training budget, by training windows (0: no limit)."""
    if total <= 0:
        return [0.0] * len(sets)
    sizes = np.array([len(w.x_train) if w is not None else 0 for w in sets], dtype=np.float64)
    share = sizes / max(1.0, sizes.sum())
    return [max(MIN_BUDGET_S, float(total * f)) for f in share]


def _train_family(fam: Family, ws: WindowSet, dataset: Dataset, s: Settings, budget: float,
                  verbose: int) -> Part:
    from trainer import hybrid, model, warmup  # TensorFlow

    sf = s.model_copy(update={"n_steps": fam.n_steps, "season_period": fam.period,
                              "train_budget_s": budget})
    h, filter_losses, start = hybrid.build(ws, sf, fam.period)
    fit = hybrid.fit(h, ws, sf, verbose, start)
    q, offset = hybrid.calibrate(h, ws, s.coverage)
    full = model.to_bytes(h.serving(q, offset))
    coverage = s.coverage if q is not None else None
    series = [dataset.series[n] for n in fam.names]
    splits = [windows.split_index(len(v), s.val_fraction, MIN_VALUES, s.horizon) for v in series]
    levels = warmup.fit_ladder(fam.n_steps, fam.period, series, splits, s.horizon, coverage,
                               s.seed)
    warm = model.to_bytes(warmup.warm_model(fam.n_steps, levels, s.horizon)) if levels else None
    xv, yv = (ws.x_val, ws.y_val) if ws.has_val else (ws.x_train, ws.y_train)
    period = fam.period if h.filter_len >= 2 * fam.period else 1
    names, errors = warmup.expert_errors(fam.n_steps, h.filter_len, period, xv, yv, s.horizon)
    k = int(np.argmin(errors))
    fallback = model.to_bytes(warmup.single_expert(fam.n_steps, h.filter_len, period, k,
                                                   s.horizon, xv, yv, coverage))
    j = names.index(SINGLE)
    single = fallback if j == k else model.to_bytes(warmup.single_expert(
        fam.n_steps, h.filter_len, period, j, s.horizon, xv, yv, coverage))
    info = {"period": fam.period, "n_steps": fam.n_steps, "series": len(fam.names),
            "filter_len": h.filter_len, "experts": h.bank.n_experts, "params": h.params,
            "spread_offset": round(offset, 6), "conformal_q": q or [],
            "filter_val_loss": {str(k2): round(v, 6) for k2, v in filter_losses.items()},
            "val_loss": fit.get("val_loss"), "train": fit,
            "warm_lengths": [lv.length for lv in levels], "train_windows": len(ws.x_train),
            "best_expert": names[k], "best_expert_val_loss": round(float(errors[k]), 6)}
    log.info("family period %d (window %d, %d series): %d epochs in %.1fs; best single "
             "expert %s", fam.period, fam.n_steps, len(fam.names), fit["epochs_run"],
             fit["seconds"], names[k])
    return Part(fam, full, warm, fallback, names[k], info, single)


def pack(parts: list[Part], table: dict[str, int], s: Settings, use_fallback: bool = False,
         singles: frozenset[str] = frozenset(), smooth: smoothing.Choice | None = None
         ) -> tuple[bytes, dict[str, Any]]:
    """The bundle blob of trained parts (with each family's best expert when `use_fallback`)
    and its index; the series in `singles` are served by their family's `SINGLE` part, those
    in `smooth` by their own exponential smoothing."""
    blobs: dict[str, bytes] = {}
    specs = []
    for i, part in enumerate(parts):
        fam = part.family
        full = f"family{i}-p{fam.period}-{'expert' if use_fallback else 'hybrid'}.keras"
        blobs[full] = part.fallback if use_fallback else part.full
        spec: dict[str, Any] = {"period": fam.period, "n_steps": fam.n_steps, "full": full,
                                "forecaster": part.fallback_name if use_fallback else "hybrid"}
        if part.single is not None and singles:  # every family: a series' period may move
            spec["single"] = f"family{i}-p{fam.period}-{SINGLE}.keras"
            spec["single_forecaster"] = SINGLE
            blobs[spec["single"]] = part.single
        if part.warm is not None:
            spec["warm"] = f"family{i}-p{fam.period}-warmup.keras"
            spec["warm_lengths"] = part.info["warm_lengths"]
            blobs[spec["warm"]] = part.warm
        specs.append(spec)
    width = max(p.family.n_steps for p in parts)
    index = {"families": specs, "series": table, "width": width, "horizon": s.horizon,
             "outputs": "interval" if parts[0].info["conformal_q"] else "point",
             "min_values": MIN_VALUES}
    if singles:
        index["single_series"] = sorted(singles)
    if smooth is not None and smooth.fits:
        index["smooth_series"] = {name: {**p.as_json(), "n_steps": smooth.n_steps[name]}
                                  for name, p in sorted(smooth.fits.items())}
        index["smooth_q"] = smooth.q or []
    return bundle.pack(index, blobs), index


def holdout_forecasts(loaded: Any, ws: WindowSet, sidx: np.ndarray, pos: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """What `loaded` (a plain model or a bundle) forecasts for the windows ending before
    `pos` of `ws.series[sidx]`, as a worker would serve it: (which it forecasts, forecasts)."""
    n = loaded.n_steps
    if not isinstance(loaded, BundleModel):
        usable = pos >= n
        if not usable.any():
            return usable, np.zeros((0, loaded.width))
        x = np.stack([ws.series[s][t - n:t] for s, t in zip(sidx[usable], pos[usable],
                                                             strict=True)])
        return usable, loaded.predict(x.astype(np.float32))
    usable = pos >= loaded.min_values
    x = np.zeros((int(usable.sum()), n), dtype=np.float32)
    filled = np.minimum(pos[usable], n)
    for i, (s, t) in enumerate(zip(sidx[usable], pos[usable], strict=True)):
        k = min(t, n)
        x[i, n - k:] = ws.series[s][t - k:t]
    names = [ws.names[s].encode() for s in sidx[usable]]
    periods = loaded.periods_of(names)
    unknown = periods == 0
    if unknown.any():  # series the version never saw: the period of their window
        periods[unknown] = -season.detect(x[unknown])
    single = loaded.single_of(names) if loaded.singles else None
    smooth = loaded.smooth_of(names) if loaded.smooth else None
    return usable, loaded.predict_rows(x, filled, periods, single, smooth)[0]


def better_alone(sidx: np.ndarray, hybrid_err: np.ndarray, alone_err: np.ndarray,
                 n_series: int, min_windows: int = SINGLE_WINDOWS,
                 margin: float = SINGLE_MARGIN) -> np.ndarray:
    """Per series: whether, on at least `min_windows` of its windows, the single expert's
    mean error is below (1 - margin) x the hybrid's.

    >>> err = np.ones(5)
    >>> better_alone(np.array([0, 0, 1, 1, 2]), err, np.r_[0.5, 0.5, 0.99, 0.99, 0.1], 3,
    ...              min_windows=2).tolist()
    [True, False, False]
    """
    count = np.bincount(sidx, minlength=n_series)
    hybrid = np.bincount(sidx, hybrid_err, n_series)
    alone = np.bincount(sidx, alone_err, n_series)
    return (count >= min_windows) & (alone < (1.0 - margin) * hybrid)


def choose_single(trained: Trained, parts: list[Part], table: dict[str, int], horizon: int
                  ) -> frozenset[str]:
    """The series that `SINGLE` (the last value) forecasts better than the hybrid on their own
    validation windows that the hybrid served (full windows)."""
    ws = trained.ws
    x, y, sidx, pos, _ = ws.holdout()  # each window ends with the value before its target
    pred = trained.holdout_pred[:, :horizon].astype(np.float64)
    if len(pred) != len(y) or not len(y):
        return frozenset()
    n_steps = {p.family.period: p.family.n_steps for p in parts}
    need = np.asarray([n_steps.get(table.get(name, 0), 1 << 30) for name in ws.names])
    full = pos >= need[sidx]
    last = x[:, -1]
    y = y.reshape(len(y), -1)[:, :horizon]
    hybrid_err = np.abs(pred - y).mean(axis=1)
    alone_err = np.abs(last[:, None] - y).mean(axis=1)
    alone = better_alone(sidx[full], hybrid_err[full], alone_err[full], len(ws.names),
                         SINGLE_WINDOWS, SINGLE_MARGIN)
    return frozenset(ws.names[i] for i in np.flatnonzero(alone))


def choose_smooth(trained: Trained, parts: list[Part], table: dict[str, int],
                  dataset: Dataset, s: Settings, singles: frozenset[str]) -> smoothing.Choice:
    """The series their own exponential smoothing forecasts better than the version on
    their validation windows (`trainer.smoothing.choose`)."""
    ws = trained.ws
    _, y, sidx, pos, _ = ws.holdout()
    pred = trained.holdout_pred[:, : s.horizon].astype(np.float64)
    window = {p.family.period: p.family.n_steps for p in parts}
    n_steps = {n: window[table[n]] for n in ws.names if table.get(n) in window}
    holdout = smoothing.Holdout(ws.names, sidx, pos, y.reshape(len(y), -1)[:, : s.horizon],
                                pred)
    coverage = s.coverage if trained.manifest["outputs"] == "interval" else None
    return smoothing.choose(dataset.series, dict(zip(ws.names, ws.splits, strict=True)),
                            n_steps, table, holdout, singles, coverage)


def train_bundle(dataset: Dataset, s: Settings, verbose: int = 0) -> Trained:
    """Train every family and return the `Trained` bundle (with the fallback ready)."""
    from trainer.trained import utc_now

    started = time.monotonic()
    families, table = plan(dataset, s)
    log.info("families: %s", describe(families))
    sets: list[WindowSet | None] = []
    for fam in families:
        sub = Dataset(dataset.source, {n: dataset.series[n] for n in fam.names})
        try:
            sets.append(windows.build(sub, fam.n_steps, s.horizon, s.val_fraction))
        except Exception as exc:  # too short for a training window: served by the warm-up
            log.info("family period %d: no training windows (%s)", fam.period, exc)
            sets.append(None)
    kept = [(f, w) for f, w in zip(families, sets, strict=True) if w is not None]
    if not kept:
        raise DataError("too little data: no series has a full window and a target")
    budgets = _budgets([w for _, w in kept], s.train_budget_s)
    parts = []
    for (fam, ws), budget in zip(kept, budgets, strict=True):
        print(f"training family period {fam.period}: window {fam.n_steps}, "
              f"{len(fam.names)} series, {len(ws.x_train)} windows "
              f"(budget {budget:.0f}s; {time.monotonic() - started:.0f}s so far)", flush=True)
        parts.append(_train_family(fam, ws, dataset, s, budget, verbose))
    # families without training windows are served by the nearest trained one
    served = {p.family.period for p in parts}
    table = {n: (p if p in served else 1 if 1 in served else parts[0].family.period)
             for n, p in table.items()}
    for part in parts:
        part.family.names = [n for n, p in table.items() if p == part.family.period]
    trained = _assemble(parts, table, dataset, s, use_fallback=False)
    singles = choose_single(trained, parts, table, s.horizon)
    smooth = choose_smooth(trained, parts, table, dataset, s, singles)
    singles = singles - smooth.fits.keys()
    if singles:
        print(f"{len(singles)} series served by {SINGLE} alone (better than the hybrid on "
              f"their validation windows): {_shown(singles)}", flush=True)
    if smooth.fits:
        print(f"{len(smooth.fits)} series served by their own exponential smoothing (better "
              f"than the hybrid on their validation windows): {_shown(smooth.fits)}",
              flush=True)
    if singles or smooth.fits:
        trained = _serving(_assemble(parts, table, dataset, s, use_fallback=False,
                                     singles=singles, smooth=smooth.scored(), base=trained),
                           parts, table, s, False, singles, smooth)
    trained.manifest["train"]["seconds"] = round(time.monotonic() - started, 2)
    trained.manifest["created_at"] = utc_now()
    trained.parts, trained.table, trained.smooth = parts, table, smooth
    return trained


def _shown(names: Any) -> str:
    return ", ".join(sorted(names)[:10]) + (" ..." if len(names) > 10 else "")


def _assemble(parts: list[Part], table: dict[str, int], dataset: Dataset, s: Settings,
              use_fallback: bool, singles: frozenset[str] = frozenset(),
              smooth: smoothing.Choice | None = None, base: Trained | None = None) -> Trained:
    """Pack, reload through the worker's checks, score on the validation windows (`base`:
    the same parts assembled without these routes, whose parts and scores are reused)."""
    from trainer.trained import Trained, utc_now

    blob, index = pack(parts, table, s, use_fallback, singles, smooth)
    width = index["width"]
    fits = smooth.fits if smooth is not None else {}
    fams = [{**p.info, "forecaster": spec["forecaster"],
             "single_series": len(singles.intersection(p.family.names)),
             "smooth_series": len(fits.keys() & set(p.family.names))}
            for p, spec in zip(parts, index["families"], strict=True)]
    first = parts[0].info
    manifest: dict[str, Any] = {
        "version": "local", "forecaster": "hybrid", "arch": s.arch, "n_steps": width,
        "horizon": s.horizon, "units": s.units, "created_at": utc_now(),
        "input_shape": [None, width, 1], "outputs": index["outputs"],
        "coverage": s.coverage if index["outputs"] == "interval" else None,
        "conformal_q": first["conformal_q"], "scaling": "diff",
        "ensemble": s.ensemble, "filter_len": first["filter_len"], "per_series": True,
        "families": fams, "min_values": MIN_VALUES,
        "fallback": ({"families": [p.fallback_name for p in parts]} if use_fallback else None),
        "series_periods": {str(p): sum(1 for q in table.values() if q == p)
                           for p in sorted(set(table.values()))},
        "season_period": max(p.family.period for p in parts),
        "data": {**dataset.summary()},
        "train": {"seed": s.seed, "epochs": s.epochs, "learning_rate": s.learning_rate,
                  "batch_size": s.train_batch_size, "patience": s.patience,
                  "val_fraction": s.val_fraction,
                  "epochs_run": max(p.info["train"]["epochs_run"] for p in parts),
                  "params": sum(p.info["params"] for p in parts),
                  "seconds": 0.0},
        "keras_version": _keras_version(),
    }
    manifest = _stamped(manifest, blob, s)
    if base is None:
        loaded = load_bytes(blob, manifest, s.model_hmac_key, numpy=False)  # big batches: TF
        ws, _ = windows.build_partial(dataset, width, s.horizon, s.val_fraction, MIN_VALUES)
        _, y, sidx, pos, _ = ws.holdout()
        _, pred = holdout_forecasts(loaded, ws, sidx, pos)
    else:  # the same parts with other routes: only the rerouted series' windows change
        assert isinstance(base.loaded, BundleModel)
        loaded = rebundle(base.loaded, blob, manifest, numpy=False)
        ws = base.ws
        _, y, sidx, pos, _ = ws.holdout()
        routed = np.isin(np.asarray(ws.names)[sidx], [*singles, *fits]) if len(sidx) else sidx
        pred = base.holdout_pred.copy()
        if routed.any():
            pred[routed] = holdout_forecasts(loaded, ws, sidx[routed], pos[routed])[1]
    periods = np.asarray([table.get(ws.names[i], 1) for i in sidx])
    metrics = evaluate.evaluate(ws, pred[:, : s.horizon].astype(np.float64), periods)
    metrics["season_period"] = manifest["season_period"]
    if index["outputs"] == "interval" and len(y):
        h = s.horizon
        lower, upper = pred[:, h:2 * h], pred[:, 2 * h:]
        metrics["interval"] = {
            "coverage_nominal": s.coverage,
            "coverage_calibration": round(conformal.interval_coverage(y, lower, upper), 4),
            "mean_width": round(conformal.mean_width(lower, upper), 6)}
    manifest["metrics"] = metrics
    manifest["data"].update({"train_windows": sum(p.info["train_windows"] for p in parts),
                             "val_windows": len(y)})
    return Trained(blob, manifest, ws, loaded, pred)


def fallback(trained: Trained, dataset: Dataset, s: Settings) -> Trained:
    """The same version with each family's best single expert instead of its hybrid (the
    series served by `SINGLE` alone or by their own smoothing keep it)."""
    assert trained.parts is not None and trained.table is not None
    singles = frozenset(n.decode() for n in getattr(trained.loaded, "singles", ()))
    smooth = trained.smooth
    out = _assemble(trained.parts, trained.table, dataset, s, use_fallback=True,
                    singles=singles, smooth=smooth.scored() if smooth else None)
    if smooth is not None and smooth.fits:
        out = _serving(out, trained.parts, trained.table, s, True, singles, smooth)
    out.manifest["train"] = trained.manifest["train"]
    return out


def _serving(scored: Trained, parts: list[Part], table: dict[str, int], s: Settings,
             use_fallback: bool, singles: frozenset[str], smooth: smoothing.Choice) -> Trained:
    """`scored` (assembled with the smoothing fits of the training parts: the gate's honest
    figures) with the fits refitted on all the values, which the version serves."""
    from trainer.trained import Trained

    blob, _ = pack(parts, table, s, use_fallback, singles, smooth)
    manifest = _stamped(scored.manifest, blob, s)
    assert isinstance(scored.loaded, BundleModel)
    loaded = rebundle(scored.loaded, blob, manifest, numpy=False)
    return Trained(blob, manifest, scored.ws, loaded, scored.holdout_pred)


def _stamped(manifest: dict[str, Any], blob: bytes, s: Settings) -> dict[str, Any]:
    """`manifest` with the blob's sha256, size and (with a key) HMAC signature."""
    out = {**manifest, "sha256": hashlib.sha256(blob).hexdigest(), "size_bytes": len(blob)}
    if s.model_hmac_key:
        out["hmac"] = sign(blob, s.model_hmac_key)
    return out


def _keras_version() -> str:
    import keras

    return str(keras.__version__)
