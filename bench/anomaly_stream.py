"""One NAB file through the real worker, for `make bench-anomaly` (bench.anomaly).

A private redis-server per file (one deployment, one current version): `forecast train
--csv` with the defaults on the file's probationary values, then a `forecast worker`, every
value pushed with its timestamp (`XADD forecast:values * series <file> value <v> ts <ms>`)
in pipelined chunks, and, once the worker has acknowledged them all, the output entries
read back from `forecast:predictions`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from bench.anomaly_report import Verdicts, align
from bench.nab_data import NabFile
from bench.nab_score import probation_length
from bench.quality_path import train_group
from bench.util import acked, start_worker
from forecast import keys, registry
from forecast.local_redis import RedisServer
from forecast.processes import wait_until

CHUNK = 2_000  # values per pipelined XADD round trip
PAGE = 10_000  # output entries per XRANGE call
SHARD = keys.shard_keys(0, 1)


def epoch_ms(stamps: np.ndarray) -> np.ndarray:
    """NAB's timestamps as epoch milliseconds (the `ts` field).

    >>> epoch_ms(np.array(["1970-01-01T00:00:01", "2014-04-01"], dtype="datetime64[s]")).tolist()
    [1000, 1396310400000]
    """
    return np.asarray(stamps, dtype="datetime64[ms]").astype(np.int64)


def training_rows(f: NabFile) -> list[tuple[str, int, str]]:
    """The file's probationary values (NAB's unscored first 15%) as CSV rows to train on."""
    n = int(probation_length(len(f.values)))
    ts = epoch_ms(f.timestamps[:n]).tolist()
    return [(f.name, t, repr(float(v))) for t, v in zip(ts, f.values[:n].tolist(), strict=True)]


def _read(client: Any, stream: str) -> Iterator[dict[bytes, bytes]]:
    """Every entry of a stream, oldest first, a page at a time."""
    start = "-"
    while True:
        page = client.xrange(stream, start, "+", count=PAGE)
        for _eid, fields in page:
            yield fields
        if len(page) < PAGE:
            return
        start = "(" + page[-1][0].decode()


class Deployment:
    """A private redis-server with the model of one NAB file, streamed as often as asked."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server = RedisServer(dir=workdir / "redis")
        self.client: Any = None
        self.version: str | None = None

    def __enter__(self) -> Deployment:
        import redis

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server.dir.mkdir()  # type: ignore[union-attr]
        try:
            self.server.start()
        except BaseException:
            self.server.cleanup()
            raise
        self.client = redis.Redis(port=self.server.port, socket_timeout=60)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.client is not None:
            self.client.close()
        self.server.cleanup()

    def train(self, f: NabFile) -> dict[str, Any]:
        """`forecast train --csv` with the defaults on the probationary values; the outcome."""
        path = self.workdir / "train.csv"
        with path.open("w", newline="") as out:
            w = csv.writer(out)
            w.writerow(["series", "timestamp", "value"])
            w.writerows(training_rows(f))
        trained = train_group(self.server.url, path, self.workdir, 1)
        if trained["rc"] == 3:  # stored, refused by the gate: serve it anyway and say so
            registry.promote(self.client, registry.list_versions(self.client)[-1]["version"])
        self.version = registry.current_version(self.client)
        return {**trained, "version": self.version}

    def _reset(self) -> None:
        """Forget the previous pass: inputs, outputs, checkpoints (the model stays)."""
        self.client.delete(SHARD.values, SHARD.predictions, SHARD.deadletter, SHARD.state,
                           SHARD.seen, SHARD.latest, SHARD.anomalies)

    def stream(self, f: NabFile, tag: str, **settings: Any) -> Verdicts:
        """Push every value of the file through a fresh worker; its verdicts, aligned."""
        self._reset()
        client = self.client
        worker = start_worker(self.server.url, f"anomaly-{tag}", self.workdir,
                              model_poll_s=0.2, block_ms=100, **settings)
        where: dict[bytes, int] = {}
        try:
            def serving() -> bool:
                worker.check_alive()
                raw = client.get(keys.heartbeat(worker.consumer))
                beat = json.loads(raw) if raw else {}
                return bool(beat.get("ready") and beat.get("model_version") == self.version)
            wait_until(serving, 180, 0.1, "the worker to serve the model")
            ts = epoch_ms(f.timestamps).tolist()
            values = f.values.tolist()
            for lo in range(0, len(values), CHUNK):
                pipe = client.pipeline(transaction=False)
                for i in range(lo, min(lo + CHUNK, len(values))):
                    pipe.xadd(SHARD.values, {"series": f.name, "value": repr(float(values[i])),
                                             "ts": str(ts[i])})
                for i, eid in enumerate(pipe.execute(), lo):
                    where[eid] = i

            def drained() -> bool:
                worker.check_alive()
                return acked(client, [SHARD.values]) >= len(values)
            wait_until(drained, 300 + len(values) / 20, 0.1, f"{len(values)} values handled")
        finally:
            worker.stop()
        return align(len(values), where, _read(client, SHARD.predictions),
                     int(client.xlen(SHARD.anomalies)))


WINDOWS = ("keep", "replace")  # FORECAST_ANOMALY_WINDOW: each file is streamed with each


def run_file(f: NabFile, workdir: Path, rates: tuple[float, ...] = ()
             ) -> tuple[dict[str, Any], dict[str, Verdicts], dict[float, Verdicts]]:
    """Train on one file, stream it with the default rate once per FORECAST_ANOMALY_WINDOW
    (`WINDOWS`), then once per extra rate (the default window)."""
    with Deployment(workdir) as d:
        t0 = time.perf_counter()
        info = d.train(f)
        info["train_s"] = round(time.perf_counter() - t0, 1)
        verdicts = {}
        for window in WINDOWS:
            t1 = time.perf_counter()
            verdicts[window] = d.stream(f, window, anomaly_window=window)
            info[f"stream_{window}_s"] = round(time.perf_counter() - t1, 1)
        extra = {r: d.stream(f, f"rate-{k}", anomaly_rate=r) for k, r in enumerate(rates)}
        return info, verdicts, extra
