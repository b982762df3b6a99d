"""Hot reload: a background thread that loads and checks new current models off the hot path."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from forecast import keys
from forecast.errors import ModelRejected

log = logging.getLogger(__name__)


class ModelWatcher:
    """Polls `forecast:model:current`; a new version is loaded, checked, then handed over."""

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

    def start(self) -> None:
        """Run the poll loop in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()

    def take(self) -> Any:
        """The newly loaded model, once (None if there is none)."""
        with self._lock:
            model, self._ready = self._ready, None
        return model

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # a Redis outage: the main loop reports it; keep polling
                log.debug("model poll failed: %s", exc)
            self._stop.wait(self.poll_s)

    def poll_once(self) -> bool:
        """Check the current version once; True if a new model was loaded."""
        raw = self.client.get(keys.MODEL_CURRENT)
        if raw is None:
            if not self._waiting_logged:
                log.info("no model published yet; waiting (values stay in the stream)")
                self._waiting_logged = True
            return False
        version = raw.decode()
        if version in (self.loaded, self.failed):
            return False
        from forecast.modelio import load_version  # TensorFlow is imported here, off the hot path
        from worker import metrics

        try:
            model = load_version(self.client, version, self.hmac_key)
        except redis.RedisError as exc:  # an outage, not a bad model: try again next poll
            log.warning("could not fetch model %s (%s); will retry", version, exc)
            return False
        except Exception as exc:  # ModelRejected, or anything Keras raises on a bad artifact
            self.failed = version
            self.failures += 1
            metrics.RELOAD_FAILURES.inc()
            why = str(exc) if isinstance(exc, ModelRejected) else f"{type(exc).__name__}: {exc}"
            log.error(
                "model %s rejected, the previous model keeps serving: %s",
                version,
                why,
            )
            return False
        with self._lock:
            self._ready = model
        self.loaded = version
        self.reloads += 1
        metrics.RELOADS.inc()
        log.info("model %s loaded (n_steps=%d, horizon=%d)", version, model.n_steps, model.horizon)
        return True
