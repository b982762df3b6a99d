"""`forecast train --from-stream --watch`: retrain on a schedule and on drift, publish candidates.

The first training of an empty registry is published as current (through the gate, like
`forecast train`). After that every retraining, on the recent history of the input streams
(`FORECAST_RETRAIN_HISTORY` values per series), is published as a **candidate** when it
beats the naive forecast and the current version on its holdout: workers score it live in
shadow and promote it only on evidence (`forecast.evidence`). A retraining runs every
`FORECAST_RETRAIN_EVERY_S` seconds, and sooner when a drift event arrives on
`forecast:events` (at most one per `FORECAST_RETRAIN_MIN_GAP_S`, and again at that pace
while the gate refuses the retrained models: a new regime needs some history). Old blobs are
retired
(`FORECAST_KEEP_VERSIONS`). SIGTERM or SIGINT stops it between trainings.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

from forecast import keys, registry
from forecast.errors import DataError
from forecast.settings import Settings

log = logging.getLogger(__name__)


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


def train_once(client: Any, settings: Settings, verbose: int = 0) -> str | None:
    """One training on the recent stream history; the version published (None if refused)."""
    from trainer import artifact, auto, data, publish

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
    role = "current" if first and gate["decision"] == "promote" else (
        "candidate" if gate["decision"] == "promote" else "stored (gate refused)")
    log.info("trained %s: %s; %s", version, role, gate["reason"])
    registry.retire(client, settings.keep_versions)
    return version if gate["decision"] == "promote" else None


def run(client: Any, settings: Settings, verbose: int = 0,
        stop: threading.Event | None = None) -> int:
    """The watch loop; returns 0 when stopped."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        _stop_on_signals(stop)
    newest = client.xrevrange(keys.EVENTS, count=1)
    last_id: bytes = newest[0][0] if newest else b"0-0"
    due = time.monotonic() if registry.current_version(client) is None else \
        time.monotonic() + settings.retrain_every_s
    last_train = float("-inf")
    drift_pending = False  # a drift event not yet answered by a published candidate
    log.info("watching: retrain every %.0fs and on drift (at most every %.0fs)",
             settings.retrain_every_s, settings.retrain_min_gap_s)
    while not stop.is_set():
        now = time.monotonic()
        if now >= due:
            published = None
            try:
                published = train_once(client, settings, verbose)
            except DataError as exc:  # e.g. no history yet: try again later
                log.warning("no training: %s", exc)
            last_train = time.monotonic()
            if drift_pending and published is None:  # the new regime is still young: again
                due = last_train + settings.retrain_min_gap_s
            else:
                drift_pending = False
                due = last_train + settings.retrain_every_s
            continue
        last_id, drifted = _drift_since(client, last_id, int(min(due - now, 1.0) * 1000))
        if drifted:
            drift_pending = True
            soonest = last_train + settings.retrain_min_gap_s
            due = min(due, max(time.monotonic(), soonest))
            log.info("drift event: retraining in %.0fs", max(0.0, due - time.monotonic()))
    log.info("stopped watching")
    return 0
