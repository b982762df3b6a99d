"""The watching trainer waits out Redis outages and says loudly when its first model was
refused (no TensorFlow: training is replaced by a stub with the same contract)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis

from forecast import keys
from forecast.local_redis import RedisServer
from forecast.processes import wait_until
from forecast.redis_conn import connect
from forecast.settings import Settings
from forecast.status import collect, render
from trainer import watch
from trainer import watch_metrics as metrics


def _settings(url: str) -> Settings:
    return Settings(_env_file=None, redis_url=url, retrain_every_s=3600,  # type: ignore[call-arg]
                    retrain_min_gap_s=600)


def test_a_first_model_refused_is_said_in_status_logs_and_metrics(
        redis_url: str, r: redis.Redis, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def refused(client: Any, settings: Settings, verbose: int = 0,
                status: watch.Status | None = None) -> None:
        assert status is not None
        status.last_version, status.reason, status.last_result = "v1", "MASE 1.2 >= naive", \
            "refused"
        status.first_model_refused = True

    monkeypatch.setattr(watch, "train_once", refused)
    stop = threading.Event()
    thread = threading.Thread(target=watch.run, args=(r, _settings(redis_url), 0, stop))
    thread.start()
    try:
        raw = wait_until(lambda: r.get(keys.TRAINER), 10, what="the trainer status")
        status = json.loads(raw)
        wait_until(lambda: json.loads(r.get(keys.TRAINER) or b"{}").get("first_model_refused"),
                   10, what="the refusal in the status")
        status = json.loads(r.get(keys.TRAINER) or b"{}")
        assert status["last_version"] == "v1" and status["state"] == "watching"
        line = render(collect(r, Settings(_env_file=None, redis_url=redis_url)))  # type: ignore[call-arg]
        assert "FIRST MODEL REFUSED (v1: MASE 1.2 >= naive)" in line
        assert "next training in 5" in line  # the drift gap: 600 s, not the hour
        assert metrics.FIRST_MODEL_REFUSED._value.get() == 1
        assert "the first model was refused by the gate" in caplog.text
    finally:
        stop.set()
        thread.join(10)
        if thread.is_alive():
            import faulthandler
            import sys
            faulthandler.dump_traceback(sys.stderr)
    assert not thread.is_alive()


def test_a_redis_outage_does_not_end_the_watching_trainer(
        fresh_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[int] = []

    def stub(client: Any, settings: Settings, verbose: int = 0,
             status: watch.Status | None = None) -> str:
        trained.append(1)
        return "v1"

    monkeypatch.setattr(watch, "train_once", stub)
    client = connect(_settings(fresh_server.url), timeout=2.0)  # as the trainer connects
    stop = threading.Event()
    thread = threading.Thread(target=watch.run,
                              args=(client, _settings(fresh_server.url), 0, stop))
    thread.start()
    try:
        wait_until(lambda: trained, 10, what="the first training")
        errors = metrics.REDIS_ERRORS._value.get()
        fresh_server.stop()
        wait_until(lambda: metrics.REDIS_ERRORS._value.get() > errors, 10, what="the outage seen")
        assert thread.is_alive()
        back_ms = int(time.time() * 1000)
        fresh_server.start()

        def status_since_back() -> bool:
            raw = client.get(keys.TRAINER)
            status = json.loads(raw) if raw else {}
            return status.get("state") == "watching" and status.get("updated_at", 0) >= back_ms

        wait_until(status_since_back, 20, what="the status written again")
        assert thread.is_alive() and len(trained) == 1
    finally:
        stop.set()
        thread.join(10)
        if thread.is_alive():
            import faulthandler
            import sys
            faulthandler.dump_traceback(sys.stderr)
    assert not thread.is_alive()
