"""Shared test helpers: a numpy stand-in for a model, and polling with a deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np


class LinearModel:
    """A TensorFlow-free Predictor: next = last + (last - previous)."""

    def __init__(
        self, version: str = "v1", n_steps: int = 3, horizon: int = 1, has_interval: bool = False
    ) -> None:
        self.version = version
        self.n_steps = n_steps
        self.horizon = horizon
        self.has_interval = has_interval
        self.manifest: dict[str, Any] = {"arch": "linear", "n_steps": n_steps}
        self.calls = 0

    def predict(self, windows: np.ndarray) -> np.ndarray:
        self.calls += 1
        last = windows[:, -1]
        step = last - windows[:, -2] if windows.shape[1] > 1 else np.zeros_like(last)
        mean = np.stack([last + step * (h + 1) for h in range(self.horizon)], axis=1)
        if not self.has_interval:
            return mean.astype(np.float32)
        return np.concatenate([mean, mean - 1, mean + 1], axis=1).astype(np.float32)


class StaticWatcher:
    """Hands an in-process worker one model (and later ones on demand), like ModelWatcher."""

    def __init__(self, model: Any) -> None:
        self.next = model

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def take(self) -> Any:
        model, self.next = self.next, None
        return model


class WorkerThreads:
    """Runs in-process workers in threads; `stop_all()` stops and joins them."""

    def __init__(self) -> None:
        self.started: list[tuple[Any, threading.Thread]] = []

    def start(self, worker: Any) -> Any:
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        self.started.append((worker, thread))
        return worker

    def stop_all(self) -> None:
        for worker, thread in self.started:
            worker.stop()
            thread.join(10)


def wait_for(
    cond: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll `cond` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for_len(
    fetch: Callable[[], list[Any]], n: int, timeout: float = 20.0, what: str = "items"
) -> list[Any]:
    """Poll `fetch` until it returns at least `n` items; return them."""
    box: list[list[Any]] = []

    def enough() -> bool:
        box[:] = [fetch()]
        return len(box[0]) >= n

    wait_for(enough, timeout, what=f"{n} {what}")
    return box[0]
