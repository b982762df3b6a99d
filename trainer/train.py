"""Fitting the core model on normalised windows, with early stopping on validation."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np

from forecast.layers import window_stats
from forecast.settings import Settings
from trainer.windows import WindowSet

log = logging.getLogger(__name__)

# TF 2.21's Grappler reports harmless failures on relu SimpleRNN training graphs with static
# batch shapes ("... Relu has an empty op name"); the unoptimised graph runs correctly.
GRAPPLER_NOISE = ("GrapplerHook", "tfg_optimizer", "meta_optimizer.cc", "graph_view.cc",
                  "optimize_function_graph_utils.cc", "<no registered kernels>")


def scale_windows(x: np.ndarray, y: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (m, n, 1) and targets (m, H) in the model's normalised units, as float32.

    >>> xs, ys = scale_windows(np.array([[7.0, 8.0, 9.0]]), np.array([[10.0]]), "window")
    >>> xs.ravel().round(3).tolist(), ys.round(3).tolist()
    ([-3.0, -1.5, 0.0], [[1.5]])
    """
    loc, scale = window_stats(x, mode)
    xs = ((x - loc) / scale)[..., None].astype(np.float32)
    ys = ((y - loc) / scale).astype(np.float32)
    return xs, ys


@contextlib.contextmanager
def native_stderr_filtered(noise: tuple[str, ...] = GRAPPLER_NOISE) -> Iterator[None]:
    """Hold file descriptor 2 in a temporary file; replay it without lines matching `noise`.

    TensorFlow's native code writes straight to fd 2, past Python logging and its filters.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode("utf-8", "replace").splitlines(True)
                    if line.strip() and not any(n in line for n in noise)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def progress_verbosity(quiet: bool) -> int:
    """1 (Keras progress bar) when stdout is a terminal and not quiet, else 0."""
    return 1 if (not quiet and sys.stdout.isatty()) else 0


def fit(core: keras.Model, ws: WindowSet, mode: str, settings: Settings, verbose: int = 0
        ) -> dict[str, Any]:
    """Train `core` in place; returns epochs run, the best epoch and losses."""
    xs, ys = scale_windows(ws.x_train, ws.y_train, mode)
    callbacks: list[keras.callbacks.Callback] = []
    val = None
    if ws.has_val:
        val = scale_windows(ws.x_val, ws.y_val, mode)
        if settings.patience > 0:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=settings.patience, restore_best_weights=True))
    started = time.monotonic()
    with native_stderr_filtered():
        hist = core.fit(xs, ys, validation_data=val, epochs=settings.epochs,
                        batch_size=settings.train_batch_size, shuffle=True,
                        callbacks=callbacks, verbose=verbose)
    losses = hist.history.get("loss", [])
    val_losses = hist.history.get("val_loss", [])
    best = int(np.argmin(val_losses)) if val_losses else len(losses) - 1
    summary = history_summary(losses, val_losses, best, started)
    log.info("trained %d epochs (best %d) in %.1fs", summary["epochs_run"], best + 1,
             summary["seconds"])
    return summary


def history_summary(losses: list[float], val_losses: list[float], best: int,
                    started: float) -> dict[str, Any]:
    """What a fit leaves in the manifest: epochs run, the best epoch, its losses, seconds."""
    return {
        "epochs_run": len(losses),
        "best_epoch": best + 1,
        "train_loss": float(losses[best]) if losses else None,
        "val_loss": float(val_losses[best]) if val_losses else None,
        "seconds": round(time.monotonic() - started, 2),
    }
