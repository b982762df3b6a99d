"""From a dataset to a checked artifact: train, calibrate, export, reload, evaluate, describe."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import keras
import numpy as np

from forecast.modelio import load_bytes, sign
from forecast.settings import Settings
from trainer import conformal, evaluate, model, train, windows
from trainer.data import Dataset
from trainer.trained import Trained, utc_now
from trainer.windows import WindowSet

log = logging.getLogger(__name__)


def _calibrate(core: keras.Model, ws: WindowSet, mode: str, coverage: float) -> list[float] | None:
    if not ws.has_val:
        return None
    xs, ys = train.scale_windows(ws.x_val, ws.y_val, mode)
    pred = keras.ops.convert_to_numpy(core(xs, training=False))
    return conformal.conformal_q(np.abs(ys - pred), coverage)


def _train_rnn(ws: WindowSet, s: Settings, verbose: int
               ) -> tuple[bytes, list[float] | None, dict[str, Any], dict[str, Any]]:
    mode = model.resolve_scaling(s.scaling, s.n_steps)
    core = model.build_core(s.arch, s.n_steps, s.horizon, s.units, s.learning_rate, s.seed)
    fit_summary = train.fit(core, ws, mode, s, verbose)
    q = _calibrate(core, ws, mode, s.coverage)
    blob = model.to_bytes(model.build_serving(core, s.n_steps, mode, q))
    return blob, q, {**fit_summary, "params": int(core.count_params())}, {"scaling": mode}


def _train_hybrid(ws: WindowSet, s: Settings, period: int, verbose: int
                  ) -> tuple[bytes, list[float] | None, dict[str, Any], dict[str, Any]]:
    from trainer import hybrid

    h, filter_losses, start = hybrid.build(ws, s, period)
    fit_summary = hybrid.fit(h, ws, s, verbose, start)
    q, offset = hybrid.calibrate(h, ws, s.coverage)
    blob = model.to_bytes(h.serving(q, offset))
    extra = {"scaling": hybrid.SCALING, "filter_len": h.filter_len, "ensemble": h.members,
             "experts": h.bank.n_experts, "spread_offset": round(offset, 6),
             "filter_val_loss": {str(k): round(v, 6) for k, v in filter_losses.items()}}
    return blob, q, {**fit_summary, "params": h.params}, extra


def train_model(dataset: Dataset, settings: Settings, verbose: int = 0,
                ws: WindowSet | None = None) -> Trained:
    """Train on `dataset` with `settings`; the artifact is reloaded through the worker's checks."""
    s = settings
    if s.forecaster == "hybrid" and s.per_series:
        from trainer import families

        trained: Trained = families.train_bundle(dataset, s, verbose)
        return trained
    if ws is None:
        ws = windows.build(dataset, s.n_steps, s.horizon, s.val_fraction)
    period = s.season_period or evaluate.detect_period(
        [v[:sp] for v, sp in zip(ws.series, ws.splits, strict=True)])
    if s.forecaster == "hybrid":
        blob, q, fit_summary, extra = _train_hybrid(ws, s, period, verbose)
    else:
        blob, q, fit_summary, extra = _train_rnn(ws, s, verbose)
    manifest: dict[str, Any] = {
        "version": "local",
        "forecaster": s.forecaster,
        "arch": s.arch,
        "n_steps": s.n_steps,
        "horizon": s.horizon,
        "units": s.units,
        "created_at": utc_now(),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "size_bytes": len(blob),
        "input_shape": [None, s.n_steps, 1],
        "outputs": "interval" if q is not None else "point",
        "coverage": s.coverage if q is not None else None,
        "conformal_q": q or [],
        **extra,
        "season_period": period,
        "data": {**dataset.summary(), **ws.summary()},
        "train": {**fit_summary, "seed": s.seed,
                  "epochs": s.epochs, "learning_rate": s.learning_rate,
                  "batch_size": s.train_batch_size, "patience": s.patience,
                  "val_fraction": s.val_fraction},
        "keras_version": keras.__version__,
    }
    if s.model_hmac_key:
        manifest["hmac"] = sign(blob, s.model_hmac_key)
    loaded = load_bytes(blob, manifest, s.model_hmac_key)
    x, y, _, _, _ = ws.holdout()
    pred = loaded.predict(x)
    mean = pred[:, : s.horizon].astype(np.float64)
    metrics = evaluate.evaluate(ws, mean, period)
    if q is not None and len(y):
        lower, upper = pred[:, s.horizon: 2 * s.horizon], pred[:, 2 * s.horizon:]
        metrics["interval"] = {
            "coverage_nominal": s.coverage,
            "coverage_calibration": round(conformal.interval_coverage(y, lower, upper), 4),
            "mean_width": round(conformal.mean_width(lower, upper), 6),
        }
    manifest["metrics"] = metrics
    log.info("holdout MAE model %s, naive %s", metrics["model"]["mae"], metrics["naive"]["mae"])
    return Trained(blob, manifest, ws, loaded, pred)
