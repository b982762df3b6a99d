"""Test-only pieces around `forecast.processes`: worker processes at the tests' pace, heartbeats,
a tiny TensorFlow model trained once per test process and published on demand, and the
offline reference replay that says what an uninterrupted worker would have predicted.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from forecast import keys, processes
from forecast.grammar import Limits, parse_fields
from forecast.processes import WorkerProcess, wait_until

LOG_DIR = Path(tempfile.mkdtemp(prefix="forecast-procs-"))


def start_worker(url: str, consumer: str, *args: str, metrics: bool = False,
                 **settings: Any) -> WorkerProcess:
    """`forecast worker` at the tests' quick pace, logging under LOG_DIR (forecast.processes)."""
    return processes.start_worker(url, consumer, *args, log_dir=LOG_DIR, metrics=metrics,
                                **{**processes.QUICK, **settings})


def heartbeat(client: Any, consumer: str) -> dict[str, Any] | None:
    """A worker's heartbeat body, or None."""
    raw = client.get(keys.heartbeat(consumer))
    return json.loads(raw) if raw else None


def wait_serving(client: Any, consumer: str, version: str, timeout: float = 60.0,
                 proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until the worker's heartbeat says it is ready with `version` (from `proc`'s PID).

    Pass `proc` when a dead worker of the same name may have left a fresh heartbeat.
    """
    def ok() -> bool:
        hb = heartbeat(client, consumer)
        return bool(hb and hb.get("ready") and hb.get("model_version") == version
                    and (proc is None or hb.get("pid") == proc.pid))
    wait_until(ok, timeout, interval=0.1, what=f"worker {consumer} serving {version}")


# --- the tiny model ---------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def tiny_model() -> tuple[bytes, dict[str, Any]]:
    """A small SimpleRNN (n_steps=3) trained for a few epochs on 0..9: (blob, manifest)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from forecast.settings import Settings
    from trainer import artifact, data

    settings = Settings(_env_file=None, n_steps=3, units=8, epochs=5, patience=0,  # type: ignore[call-arg]
                        model_hmac_key="")
    trained = artifact.train_model(data.example(), settings)
    return trained.blob, dict(trained.manifest)


def doubling_model(manifest: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """A deliberately bad model of the same shape as `manifest`'s: it forecasts twice the
    last value of its window, with a zero-width interval."""
    import keras
    import numpy as np

    from trainer.model import to_bytes

    n = int(manifest["n_steps"])
    x = keras.Input((n, 1))
    dense = keras.layers.Dense(1, use_bias=False, trainable=False)
    point = dense(keras.layers.Flatten()(x))
    dense.set_weights([np.array([[0.0]] * (n - 1) + [[2.0]], dtype="float32")])
    outputs = [point] * (3 if manifest.get("outputs") == "interval" else 1)
    out = keras.layers.Concatenate()(outputs) if len(outputs) > 1 else point
    plain = {k: v for k, v in manifest.items() if k not in ("sha256", "version", "hmac")}
    return to_bytes(keras.Model(x, out)), {**plain, "arch": "doubling"}


def publish_tiny_model(url: str) -> str:
    """Publish the tiny model to the Redis at `url`; its version."""
    from forecast import registry

    blob, manifest = tiny_model()
    client = redis.Redis.from_url(url)
    try:
        return registry.publish(client, blob, manifest)
    finally:
        client.close()


def reference_predictions(model: Any, entries: list[tuple[bytes, dict[bytes, bytes]]],
                          limits: Limits = Limits()) -> dict[tuple[bytes, bytes], float]:  # noqa: B008
    """What an uninterrupted worker predicts: (series, source_id) -> prediction.

    `entries` are (id, fields) in stream order per shard (the shards' streams one after the
    other is fine: a series never spans shards). Ids repeat across streams, so the key holds
    the series too. Bad entries are skipped, as the worker dead-letters them.
    """
    windows: dict[bytes, list[float]] = {}
    last_seq: dict[bytes, int] = {}
    ids: list[tuple[bytes, bytes]] = []
    rows: list[list[float]] = []
    n = model.n_steps
    for eid, fields in entries:
        flat = [b for kv in fields.items() for b in kv]
        parsed = parse_fields(flat, limits)
        if isinstance(parsed, str):
            continue
        if parsed[3] >= 0:  # a producer's sequence number: a repeat is a duplicate
            if parsed[3] <= last_seq.get(parsed[0], -1):
                continue
            last_seq[parsed[0]] = parsed[3]
        window = windows.setdefault(parsed[0], [])
        window.append(float(np.float32(parsed[1])))
        del window[:-n]
        if len(window) == n:
            ids.append((parsed[0], eid))
            rows.append(list(window))
    if not rows:
        return {}
    out = model.predict(np.asarray(rows, dtype=np.float32))
    return {eid: float(v) for eid, v in zip(ids, out[:, 0].tolist(), strict=True)}


def assert_predicted_once(preds: list[dict[bytes, bytes]],
                          reference: dict[tuple[bytes, bytes], float]) -> None:
    """Every input of `reference` has exactly one prediction (and no other input has one),
    equal to the uninterrupted replay's."""
    seen = Counter((f[b"series"], f[b"source_id"]) for f in preds)
    assert set(seen) == set(reference), f"lost {len(set(reference) - set(seen))}"
    twice = sorted(k for k, n in seen.items() if n > 1)
    assert not twice, (f"duplicated predictions: {len(twice)} inputs, the first "
                       f"{[(s.decode(), e.decode()) for s, e in twice[:3]]}")
    for f in preds:
        assert float(f[b"prediction"]) == pytest.approx(
            reference[(f[b"series"], f[b"source_id"])], rel=1e-5, abs=1e-5)
