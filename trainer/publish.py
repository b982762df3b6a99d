"""The publish gate and writing artifacts (locally and to the registry).

Gate: a new model becomes current only if its holdout MASE (scale-free: each series' errors
over its in-sample naive MAE, so one big series cannot decide for all) is below the naive
and the seasonal-naive baselines' and not above the current model's on the same windows (a
tie promotes: the newer model saw the newer data), or with --force. Where MASE is undefined
(every series constant in training) the gate falls back to MAE. A current model that cannot
be scored on the holdout (it needs longer windows than the data has) blocks the switch; one
that fails its load checks does not.
A refused model is still stored as a version, not current.

Never nothing: when a version with several parts (the defaults, `trainer.families`) is
refused, the trainer publishes its fallback as current instead: the same families each
served by the best single forecaster evaluated on validation (an expert of the hybrid:
naive, seasonal naive, Theta, ...), with intervals, unless the current version is better than
the fallback on the same holdout (then the current one keeps serving). `fallback_gate`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forecast import modelio, registry
from forecast.errors import ModelRejected

if TYPE_CHECKING:  # the gate itself needs no TensorFlow
    from trainer.trained import Trained

log = logging.getLogger(__name__)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - b))) if np.size(a) else 0.0


def _mase(pred: np.ndarray, y: np.ndarray, scale: np.ndarray) -> float | None:
    ok = scale > 0
    if not ok.any():
        return None
    err = np.abs(np.asarray(pred, dtype=np.float64) - y)[ok] / scale[ok].reshape(-1, 1)
    return round(float(err.mean()), 6)


def score_current(client: Any, trained: Trained, hmac_key: str = "") -> dict[str, Any] | None:
    """The current model's and the new model's MAE and MASE on the holdout windows both can
    forecast."""
    from trainer.evaluate import mase_scales

    version = registry.current_version(client)
    if version is None:
        return None
    try:
        current = modelio.load_version(client, version, hmac_key)
    except ModelRejected as exc:
        log.warning("current model %s cannot be loaded (%s); the gate ignores it", version, exc)
        return {"version": version, "mae": None, "note": f"unloadable: {exc}"}
    ws = trained.ws
    _, y, sidx, pos, _ = ws.holdout()
    steps = min(current.horizon, ws.horizon)
    usable = pos >= current.n_steps
    if not usable.any():
        return {"version": version, "mae": None, "comparable": False,
                "note": f"no holdout window has the {current.n_steps} values it needs"}
    if isinstance(current, modelio.BundleModel):  # as served: by its table and routes
        from trainer.families import holdout_forecasts

        cur_pred = holdout_forecasts(current, ws, sidx[usable], pos[usable])[1][:, :steps]
    else:
        x_cur = np.stack([ws.series[s][t - current.n_steps:t]
                          for s, t in zip(sidx[usable], pos[usable], strict=True)])
        cur_pred = current.predict(x_cur)[:, :steps]
    new_pred = trained.holdout_pred[usable, :steps]
    target = y[usable, :steps]
    scale = mase_scales(ws, sidx[usable])
    return {"version": version, "mae": round(_mae(cur_pred, target), 6),
            "new_mae": round(_mae(new_pred, target), 6),
            "mase": _mase(cur_pred, target, scale), "new_mase": _mase(new_pred, target, scale),
            "windows": int(usable.sum()), "steps": steps}


def _metric(metrics: dict[str, Any]) -> str:
    """'mase' when the model and naive both have one, else 'mae'."""
    ok = all(isinstance(metrics.get(k), dict) and metrics[k].get("mase") is not None
             for k in ("model", "naive"))
    return "mase" if ok else "mae"


def decide(trained: Trained, current: dict[str, Any] | None, force: bool) -> dict[str, Any]:
    """The gate decision with its scores: decision is 'promote' or 'refuse'."""
    metrics = trained.evaluation
    key = _metric(metrics)
    name = key.upper()
    model_v, naive_v = metrics["model"][key], metrics["naive"][key]
    snaive = metrics.get("seasonal_naive") or {}
    snaive_v = snaive.get(key) if metrics.get("season_period", 1) > 1 else None
    scores: dict[str, Any] = {"metric": key, "model_mae": metrics["model"]["mae"],
                              "naive_mae": metrics["naive"]["mae"],
                              "holdout": metrics["holdout"]}
    if key == "mase":
        scores.update(model_mase=model_v, naive_mase=naive_v, seasonal_naive_mase=snaive_v)
    problems = []
    if model_v is None or naive_v is None:
        problems.append("no holdout windows to score")
    else:
        if not (model_v < naive_v or model_v == naive_v == 0):
            problems.append(f"{name} {model_v:.6g} does not beat naive {naive_v:.6g}")
        if snaive_v is not None and not (model_v < snaive_v or model_v == snaive_v == 0):
            problems.append(f"{name} {model_v:.6g} does not beat seasonal naive {snaive_v:.6g}")
    cur_key = key if current is not None and current.get(key) is not None else "mae"
    if current is not None:
        scores["current"] = current
        if current.get(cur_key) is not None and current[f"new_{cur_key}"] > current[cur_key]:
            problems.append(f"{cur_key.upper()} {current[f'new_{cur_key}']:.6g} is worse than "
                            f"current {current['version']} {current[cur_key]:.6g}")
        elif current.get("comparable") is False:
            problems.append(f"current {current['version']} cannot be scored on this holdout: "
                            f"{current['note']}")
    if not problems:
        beats = f"naive {naive_v:.6g}"
        if snaive_v is not None:
            beats += f", seasonal naive {snaive_v:.6g}"
        if current and current.get(cur_key) is not None:
            beats += f" and current {current['version']} {current[cur_key]:.6g}"
        return {"decision": "promote", "forced": False, "scores": scores,
                "reason": f"{name} {model_v:.6g} beats {beats}"}
    reason = "; ".join(problems)
    if force:
        return {"decision": "promote", "forced": True, "scores": scores,
                "reason": f"forced despite: {reason}"}
    return {"decision": "refuse", "forced": False, "scores": scores, "reason": reason}


def fallback_gate(fallback: Trained, refused: dict[str, Any], current: dict[str, Any] | None
                  ) -> dict[str, Any]:
    """Whether the fallback of a refused version becomes current: when there is no current
    version, or it is not better than the fallback on the holdout both forecast."""
    names = fallback.manifest.get("fallback", {}).get("families", [])
    periods = [f["period"] for f in fallback.manifest.get("families", [])]
    which = ", ".join(f"period {p}: {n}" for p, n in zip(periods, names, strict=True))
    metrics = fallback.evaluation
    key = _metric(metrics)
    scores = {"metric": key, "model_mae": metrics["model"]["mae"],
              "naive_mae": metrics["naive"]["mae"], "holdout": metrics["holdout"],
              f"model_{key}": metrics["model"][key]}
    base = {"fallback": True, "forced": False, "forecasters": which,
            "refused": refused["reason"], "scores": scores}
    cur_key = key if current is not None and current.get(key) is not None else "mae"
    if current is not None:
        scores["current"] = current
        worse = (current.get(cur_key) is not None
                 and current[f"new_{cur_key}"] > current[cur_key])
        if worse or current.get("comparable") is False:
            return {**base, "decision": "refuse",
                    "reason": f"the hybrid was refused ({refused['reason']}) and its fallback "
                              f"({which}) is not better than current {current['version']}"}
    return {**base, "decision": "promote",
            "reason": f"the hybrid was refused ({refused['reason']}); serving the best "
                      f"forecaster on validation instead ({which})"}


def write_local(model_dir: str | Path, version: str, blob: bytes, manifest: dict[str, Any]
                ) -> Path:
    """Write `<model_dir>/<version>/model.keras` and `manifest.json`; returns the directory."""
    out = Path(model_dir) / version
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.keras").write_bytes(blob)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out


def publish_trained(client: Any, trained: Trained, gate: dict[str, Any],
                    as_candidate: bool = False) -> str:
    """Store the artifact as a new version: current (or, `as_candidate`, a candidate scored in
    shadow) when the gate says promote, else stored only."""
    manifest = {**trained.manifest, "gate": gate}
    passed = gate["decision"] == "promote"
    version = registry.publish(client, trained.blob, manifest,
                               make_current=passed and not as_candidate,
                               candidate=passed and as_candidate)
    trained.manifest = {**manifest, "version": version}
    return version
