"""Hot reload: a background thread that loads and checks new models off the hot path.

It follows the current version and the versions the registry shadows (candidates, and the
previous current kept for rollback evidence) and hands the worker a `Lineup` whenever that
set changes. A version that fails its checks is never retried; the others keep serving.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import redis

from forecast import keys, registry
from forecast.errors import ModelRejected

log = logging.getLogger(__name__)


@dataclass
class Lineup:
    """The models to serve: the current one, and the shadows (scored, never written)."""

    current: Any
    shadows: list[Any] = field(default_factory=list)


class ModelWatcher:
    """Polls the current and shadowed versions; new ones are loaded, checked, handed over."""

    def __init__(self, client: Any, poll_s: float, hmac_key: str = "") -> None:
        self.client = client
        self.poll_s = poll_s
        self.hmac_key = hmac_key
        self.loaded: str | None = None  # last version handed over (or being served)
        self.failed: str | None = None  # last version that failed its checks
        self.reloads = 0
        self.failures = 0
        self._ready: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._waiting_logged = False
        self.models: dict[str, Any] = {}  # loaded versions (current and shadows)
        self.served: tuple[str, ...] = ()  # current then shadows, as last handed over
        self.rejected: set[str] = set()

    def start(self) -> None:
        """Run the poll loop in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()

    def take(self) -> Lineup | None:
        """The newly loaded lineup, once (None if nothing changed)."""
        with self._lock:
            lineup, self._ready = self._ready, None
        return lineup

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # a Redis outage: the main loop reports it; keep polling
                log.debug("model poll failed: %s", exc)
            self._stop.wait(self.poll_s)

    def poll_once(self) -> bool:
        """Check the served versions once; True if a new lineup was handed over."""
        raw = self.client.get(keys.MODEL_CURRENT)
        if raw is None:
            if not self._waiting_logged:
                log.info("no model published yet; waiting (values stay in the stream)")
                self._waiting_logged = True
            return False
        current = raw.decode()
        shadows = [v for v in registry.shadowed(self.client) if v not in self.rejected]
        if current in self.rejected:  # the previous model (if any) keeps serving
            if self.loaded is None:
                return False
            current = self.loaded
        wanted = (current, *(v for v in shadows if v != current))
        if wanted == self.served:
            return False
        for version in wanted:
            loaded = version in self.models or self._load(version)
            if not loaded and version == current:
                return False
        served = tuple(v for v in wanted if v in self.models)
        if served == self.served or served[0] != current:
            return False
        self.models = {v: self.models[v] for v in served}
        with self._lock:
            self._ready = Lineup(self.models[current], [self.models[v] for v in served[1:]])
        self.served = served
        self.loaded = current
        return True

    def _load(self, version: str) -> bool:
        """Load and check one version; False (and remembered, unless an outage) on failure."""
        from forecast.modelio import load_version  # TensorFlow is imported here, off the hot path
        from worker import metrics

        try:
            model = load_version(self.client, version, self.hmac_key)
        except redis.RedisError as exc:  # an outage, not a bad model: try again next poll
            log.warning("could not fetch model %s (%s); will retry", version, exc)
            return False
        except Exception as exc:  # ModelRejected, or anything Keras raises on a bad artifact
            self.rejected.add(version)
            self.failed = version
            self.failures += 1
            metrics.RELOAD_FAILURES.inc()
            why = str(exc) if isinstance(exc, ModelRejected) else f"{type(exc).__name__}: {exc}"
            log.error("model %s rejected, the previous model keeps serving: %s", version, why)
            return False
        self.models[version] = model
        self.reloads += 1
        metrics.RELOADS.inc()
        log.info("model %s loaded (n_steps=%d, horizon=%d)", version, model.n_steps, model.horizon)
        return True
