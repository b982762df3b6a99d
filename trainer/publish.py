"""The publish gate and writing artifacts (locally and to the registry).

Gate: a new model becomes current only if its holdout MAE is below the naive baseline's and
not above the current model's on the same windows (a tie promotes: the newer model saw the
newer data), or with --force. A current model that cannot be scored on the holdout (it needs
longer windows than the data has) blocks the switch; one that fails its load checks does not.
A refused model is still stored as a version, not current.
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
    from trainer.artifact import Trained

log = logging.getLogger(__name__)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(a, dtype=np.float64) - b))) if np.size(a) else 0.0


def score_current(client: Any, trained: Trained, hmac_key: str = "") -> dict[str, Any] | None:
    """The current model's and the new model's MAE on the holdout windows both can forecast."""
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
    x_cur = np.stack([ws.series[s][t - current.n_steps:t]
                      for s, t in zip(sidx[usable], pos[usable], strict=True)])
    cur_pred = current.predict(x_cur)[:, :steps]
    new_pred = trained.holdout_pred[usable, :steps]
    target = y[usable, :steps]
    return {"version": version, "mae": round(_mae(cur_pred, target), 6),
            "new_mae": round(_mae(new_pred, target), 6), "windows": int(usable.sum()),
            "steps": steps}


def decide(trained: Trained, current: dict[str, Any] | None, force: bool) -> dict[str, Any]:
    """The gate decision with its scores: decision is 'promote' or 'refuse'."""
    metrics = trained.evaluation
    model_mae, naive_mae = metrics["model"]["mae"], metrics["naive"]["mae"]
    scores: dict[str, Any] = {"model_mae": model_mae, "naive_mae": naive_mae,
                              "holdout": metrics["holdout"]}
    problems = []
    if model_mae is None or naive_mae is None:
        problems.append("no holdout windows to score")
    elif not (model_mae < naive_mae or model_mae == naive_mae == 0):
        problems.append(f"MAE {model_mae:.6g} does not beat naive {naive_mae:.6g}")
    if current is not None:
        scores["current"] = current
        if current.get("mae") is not None and current["new_mae"] > current["mae"]:
            problems.append(f"MAE {current['new_mae']:.6g} is worse than current "
                            f"{current['version']} {current['mae']:.6g}")
        elif current.get("comparable") is False:
            problems.append(f"current {current['version']} cannot be scored on this holdout: "
                            f"{current['note']}")
    if not problems:
        vs = f" and current {current['version']}" if current and current.get("mae") is not None \
            else ""
        return {"decision": "promote", "forced": False, "scores": scores,
                "reason": f"MAE {model_mae:.6g} beats naive {naive_mae:.6g}{vs}"}
    reason = "; ".join(problems)
    if force:
        return {"decision": "promote", "forced": True, "scores": scores,
                "reason": f"forced despite: {reason}"}
    return {"decision": "refuse", "forced": False, "scores": scores, "reason": reason}


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
