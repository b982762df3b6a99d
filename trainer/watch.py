"""`forecast train --from-stream --watch`: retrain on a schedule and on drift, publish candidates.

The first training of an empty registry is published as current (through the gate, like
`forecast train`). After that every retraining, on the recent history of the input streams
(`FORECAST_RETRAIN_HISTORY` values per series), is published as a **candidate** when it
beats the naive forecast and the current version on its holdout: workers score it live in
shadow and promote it only on evidence (`forecast.evidence`). A retraining runs every
`FORECAST_RETRAIN_EVERY_S` seconds, and sooner when a drift event arrives on
`forecast:events` (at most one per `FORECAST_RETRAIN_MIN_GAP_S`, and again at that pace
while the gate refuses the retrained models: a new regime needs some history). Old blobs are
retired (`FORECAST_KEEP_VERSIONS`). SIGTERM or SIGINT stops it between trainings.

A Redis error never ends it: it waits (capped backoff) and carries on. What it is doing is
in `forecast:trainer` (read by `forecast status`), its log and, with
`FORECAST_TRAINER_METRICS_PORT`, Prometheus metrics; a first model refused by the gate, which
leaves nothing current, is said loudly in all three, with the time of the next try.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

import redis

from forecast import keys, registry
from forecast.backoff import Backoff
from forecast.errors import DataError
from forecast.settings import Settings
from trainer import watch_metrics as metrics

log = logging.getLogger(__name__)

STATUS_TTL_S = 120  # `forecast:trainer` expires unless rewritten (every STATUS_EVERY_S)
STATUS_EVERY_S = 30.0


@dataclass
class Status:
    """The watching trainer's state, as `forecast:trainer` holds it."""

    state: str = "starting"  # starting, training, watching, redis_unavailable
    last_result: str = ""  # current, candidate, refused, no_data, failed
    last_version: str | None = None
    reason: str = ""
    first_model_refused: bool = False  # nothing is current: the first model was refused
    next_training_at: int = 0  # epoch ms
    updated_at: int = 0


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: stopping after the training in hand", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _drift_since(client: Any, last_id: bytes, block_ms: int) -> tuple[bytes, bool]:
    """Wait up to `block_ms` for events after `last_id`; (newest id, whether one was drift)."""
    reply = client.xread({keys.EVENTS: last_id}, block=max(1, block_ms), count=100)
    drifted = False
    for _, entries in reply or []:
        for eid, fields in entries:
            last_id = eid
            drifted = drifted or fields.get(b"event") == b"drift"
    return last_id, drifted


def train_once(client: Any, settings: Settings, verbose: int = 0,
               status: Status | None = None) -> str | None:
    """One training on the recent stream history; the version published (None if refused)."""
    from trainer import artifact, auto, data, publish

    status = status or Status()
    dataset = data.check_values(data.from_stream(client, settings))
    if settings.retrain_history:
        dataset.series = {k: v[-settings.retrain_history:] for k, v in dataset.series.items()}
    settings, chosen = auto.resolve(settings, dataset)  # as `forecast train` on the same data
    trained = artifact.train_model(dataset, settings, verbose)
    trained.manifest = {**trained.manifest, "auto": chosen}
    first = registry.current_version(client) is None
    current = publish.score_current(client, trained, settings.model_hmac_key)
    gate = publish.decide(trained, current, force=False)
    version = publish.publish_trained(client, trained, gate, as_candidate=not first)
    publish.write_local(settings.model_dir, version, trained.blob, trained.manifest)
    if first and gate["decision"] == "refuse" and trained.parts is not None:
        # never nothing: an empty registry gets the best forecaster the training evaluated
        from trainer import families

        log.info("trained %s: stored (gate refused): %s", version, gate["reason"])
        fb = families.fallback(trained, dataset, settings)
        gate = publish.fallback_gate(fb, gate, None)
        version = publish.publish_trained(client, fb, gate)
        publish.write_local(settings.model_dir, version, fb.blob, fb.manifest)
        trained = fb
    passed = gate["decision"] == "promote"
    status.last_version, status.reason = version, gate["reason"]
    status.last_result = ("current" if first else "candidate") if passed else "refused"
    status.first_model_refused = first and not passed
    role = "current" if first and passed else ("candidate" if passed else "stored (gate refused)")
    log.info("trained %s: %s; %s", version, role, gate["reason"])
    registry.retire(client, settings.keep_versions)
    return version if passed else None


class Watch:
    """The watch loop's schedule and state (one per `run`)."""

    def __init__(self, client: Any, settings: Settings, verbose: int) -> None:
        self.client, self.settings, self.verbose = client, settings, verbose
        self.status = Status()
        self.last_id = b"0-0"
        self.started = False  # the events cursor and the first due time are known
        self.due = 0.0  # time.monotonic() of the next training
        self.last_train = float("-inf")
        self.drift_pending = False  # a drift event not yet answered by a published candidate
        self.status_written = float("-inf")

    def start(self) -> None:
        """Where to read events from, and when to train first (now, on an empty registry)."""
        newest = self.client.xrevrange(keys.EVENTS, count=1)
        self.last_id = newest[0][0] if newest else b"0-0"
        empty = registry.current_version(self.client) is None
        self.due = time.monotonic() + (0.0 if empty else self.settings.retrain_every_s)
        self.started = True

    def step(self) -> None:
        """Train when due, else wait up to a second for a drift event."""
        if not self.started:
            self.start()
        now = time.monotonic()
        if now >= self.due:
            self._train()
            return
        self._set("watching")
        self.last_id, drifted = _drift_since(self.client, self.last_id,
                                             int(min(self.due - now, 1.0) * 1000))
        if drifted:
            self.drift_pending = True
            soonest = self.last_train + self.settings.retrain_min_gap_s
            self.due = min(self.due, max(time.monotonic(), soonest))
            log.info("drift event: retraining in %.0fs", max(0.0, self.due - time.monotonic()))

    def _train(self) -> None:
        s = self.settings
        self._set("training", force=True)
        published = None
        try:
            published = train_once(self.client, s, self.verbose, self.status)
        except DataError as exc:  # e.g. no history yet: try again later
            log.warning("no training: %s", exc)
            self.status.last_result, self.status.reason = "no_data", str(exc)
        self.last_train = time.monotonic()
        metrics.TRAININGS.labels(result=self.status.last_result).inc()
        if self.status.first_model_refused or (self.drift_pending and published is None):
            self.due = self.last_train + s.retrain_min_gap_s  # nothing current / young regime
        else:
            self.drift_pending = False
            self.due = self.last_train + s.retrain_every_s
        self.status.next_training_at = _epoch_ms(self.due)
        metrics.FIRST_MODEL_REFUSED.set(1 if self.status.first_model_refused else 0)
        metrics.NEXT_TRAINING.set(self.status.next_training_at / 1000)
        if self.status.first_model_refused:
            log.error("the first model was refused by the gate (%s): no model is current and no "
                      "forecast is served; next training in %.0fs", self.status.reason,
                      self.due - time.monotonic())
        self._set("watching", force=True)

    def _set(self, state: str, force: bool = False) -> None:
        """Record the state; write `forecast:trainer` when it changed or is getting old."""
        changed = state != self.status.state
        self.status.state = state
        now = time.monotonic()
        if changed or force or now - self.status_written >= STATUS_EVERY_S:
            self.status.updated_at = int(time.time() * 1000)
            self.client.set(keys.TRAINER, json.dumps(asdict(self.status)), ex=STATUS_TTL_S)
            self.status_written = now

    def unavailable(self, exc: redis.RedisError) -> None:
        """A Redis error: say so (the status is written once Redis is back)."""
        if self.status.state != "redis_unavailable":
            log.warning("Redis unavailable (%s: %s); retrying with backoff", type(exc).__name__,
                        exc)
        self.status.state = "redis_unavailable"
        metrics.REDIS_ERRORS.inc()


def _epoch_ms(monotonic_at: float) -> int:
    return int((time.time() + monotonic_at - time.monotonic()) * 1000)


def run(client: Any, settings: Settings, verbose: int = 0,
        stop: threading.Event | None = None) -> int:
    """The watch loop; returns 0 when stopped. Redis errors are waited out, never fatal."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        _stop_on_signals(stop)
    metrics.serve(settings.trainer_metrics_port)
    log.info("watching: retrain every %.0fs and on drift (at most every %.0fs)",
             settings.retrain_every_s, settings.retrain_min_gap_s)
    watch = Watch(client, settings, verbose)
    backoff = Backoff(base=0.1, cap=10.0)
    while not stop.is_set():
        try:
            watch.step()
            backoff.reset()
        except redis.RedisError as exc:
            watch.unavailable(exc)
            stop.wait(backoff.next())
    log.info("stopped watching")
    return 0
