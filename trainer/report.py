"""The evaluation report: `report.json`, `report.md` and `report.png` (actual vs predicted)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from trainer.windows import WindowSet

log = logging.getLogger(__name__)

PLOT_SERIES = 4


def _fmt(value: Any) -> str:
    """A metric for a Markdown cell.

    >>> _fmt(0.123456), _fmt(None), _fmt(12345.678)
    ('0.1235', '-', '1.235e+04')
    """
    if value is None:
        return "-"
    return f"{value:.4g}"


def markdown(manifest: dict[str, Any]) -> str:
    """The report as Markdown: data, training, metrics table and interval calibration."""
    m = manifest.get("metrics", {})
    d = manifest.get("data", {})
    t = manifest.get("train", {})
    lines = [
        f"# Forecast model {manifest.get('version', 'local')}",
        "",
        f"- arch `{manifest.get('arch')}`, n_steps {manifest.get('n_steps')}, "
        f"horizon {manifest.get('horizon')}, units {manifest.get('units')}, "
        f"scaling `{manifest.get('scaling')}`",
        f"- data: {d.get('source')}, {d.get('series')} series, {d.get('values')} values, "
        f"{d.get('train_windows')} training / {d.get('val_windows')} validation windows",
        f"- training: {t.get('epochs_run')} epochs (best {t.get('best_epoch')}) "
        f"in {t.get('seconds')} s, seed {t.get('seed')}",
        f"- created {manifest.get('created_at')}, sha256 `{str(manifest.get('sha256'))[:16]}...`",
        "",
        f"## Accuracy on the {m.get('holdout', 'validation')} holdout "
        f"({m.get('windows')} windows, season period {m.get('season_period')})",
        "",
        "| forecaster | MAE | RMSE | MASE | sMAPE % |",
        "|---|---|---|---|---|",
    ]
    for name in ("model", "naive", "seasonal_naive"):
        row = m.get(name, {})
        lines.append(f"| {name} | {_fmt(row.get('mae'))} | {_fmt(row.get('rmse'))} | "
                     f"{_fmt(row.get('mase'))} | {_fmt(row.get('smape'))} |")
    interval = m.get("interval")
    if interval:
        lines += ["", "## Prediction interval (split conformal)", "",
                  f"- nominal coverage {interval['coverage_nominal']}, coverage on the "
                  f"calibration windows {interval['coverage_calibration']}, "
                  f"mean width {_fmt(interval['mean_width'])}",
                  f"- half-widths per step (scaled units): {manifest.get('conformal_q')}"]
    gate = manifest.get("gate")
    if gate:
        lines += ["", "## Publish gate", "", f"- {gate.get('decision')}: {gate.get('reason')}"]
    return "\n".join(lines) + "\n"


def plot(ws: WindowSet, pred: np.ndarray, path: Path, max_series: int = PLOT_SERIES) -> Path:
    """Actual values and one-step-ahead holdout predictions (with interval) of a few series."""
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas for PNG

    _, _, sidx, pos, label = ws.holdout()
    shown = list(dict.fromkeys(int(s) for s in sidx))[:max_series] or [0]
    fig = Figure(figsize=(10, 2.6 * len(shown)), dpi=90, layout="tight")
    horizon = ws.horizon
    for row, s in enumerate(shown, start=1):
        ax = fig.add_subplot(len(shown), 1, row)
        values = ws.series[s]
        ax.plot(np.arange(len(values)), values, color="tab:blue", linewidth=1.2, label="actual")
        mine = sidx == s
        if mine.any():
            p = pred[mine]
            ax.plot(pos[mine], p[:, 0], color="tab:orange", linestyle="--", marker=".",
                    markersize=3, linewidth=1.0, label="predicted (step 1)")
            if p.shape[1] == 3 * horizon:
                ax.fill_between(pos[mine], p[:, horizon], p[:, 2 * horizon], color="tab:orange",
                                alpha=0.2, linewidth=0, label="interval")
        ax.axvline(ws.splits[s] - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{ws.names[s]} ({label} holdout right of the dotted line)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=7)
    fig.savefig(path, format="png")
    return path


def write(directory: str | Path, manifest: dict[str, Any], ws: WindowSet, pred: np.ndarray
          ) -> dict[str, Path]:
    """Write report.json, report.md and report.png into `directory`; returns their paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md", "png": out / "report.png"}
    paths["json"].write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    paths["md"].write_text(markdown(manifest))
    plot(ws, pred, paths["png"])
    log.info("report written to %s", out)
    return paths
