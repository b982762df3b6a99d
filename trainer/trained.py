"""What training returns: the artifact, its manifest and its holdout evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from forecast.modelio import BundleModel, LoadedModel
from trainer.windows import WindowSet


@dataclass
class Trained:
    """A trained, exported and re-loaded model with its manifest and holdout evaluation."""

    blob: bytes
    manifest: dict[str, Any]
    ws: WindowSet
    loaded: LoadedModel | BundleModel
    holdout_pred: np.ndarray  # (m, width) on ws.holdout() windows
    parts: Any = None  # a per-series version: its trained families (trainer.families.Part)
    table: dict[str, int] | None = None  # and its series -> period table
    smooth: Any = None  # and its series served by their own smoothing (smoothing.Choice)

    @property
    def evaluation(self) -> dict[str, Any]:
        """The manifest's validation metrics."""
        metrics: dict[str, Any] = self.manifest["metrics"]
        return metrics


def utc_now() -> str:
    """The current time as ISO 8601 UTC with seconds, e.g. 2025-01-31T12:00:00Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
