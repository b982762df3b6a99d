"""Shared test helpers: a numpy stand-in for a model, in-process workers, polling for items."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from forecast.processes import wait_until


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


class NaiveModel(LinearModel):
    """Next = last, with an interval of +-`half` (a version to shadow or compare)."""

    def __init__(self, version: str = "v2", half: float = 1.0, **kw: Any) -> None:
        super().__init__(version, has_interval=True, **kw)
        self.half = half
        self.manifest["coverage"] = 0.9

    def predict(self, windows: np.ndarray) -> np.ndarray:
        self.calls += 1
        last = windows[:, -1:].astype(np.float32)
        return np.concatenate([last, last - self.half, last + self.half], axis=1)


class StaticWatcher:
    """Hands an in-process worker one model (and later ones on demand), like ModelWatcher."""

    def __init__(self, model: Any) -> None:
        self.next = model

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def take(self) -> Any:
        model, self.next = self.next, None
        return model


def make_worker(url: str, consumer: str = "w1", model: Any = None, **overrides: Any) -> Any:
    """An in-process `worker.loop.Worker` on `url` serving `model` (default a LinearModel)."""
    import redis

    from forecast.settings import Settings
    from worker.loop import Worker

    settings = Settings(_env_file=None, redis_url=url, metrics_port=0, block_ms=50,  # type: ignore[call-arg]
                        lease_ttl_ms=600, consumer=consumer, **overrides)
    client = redis.Redis.from_url(url, protocol=2)
    return Worker(client, settings, watcher=StaticWatcher(model or LinearModel()))


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


def wait_for_len(
    fetch: Callable[[], list[Any]], n: int, timeout: float = 20.0, what: str = "items"
) -> list[Any]:
    """Poll `fetch` until it returns at least `n` items; return them."""
    box: list[list[Any]] = []

    def enough() -> bool:
        box[:] = [fetch()]
        return len(box[0]) >= n

    wait_until(enough, timeout, what=f"{n} {what}")
    return box[0]
