"""The benchmark scenarios: each one measures on fresh private Redis servers and returns raw runs.

Throughput-style scenarios share one procedure (`Fleet`): start the worker processes, publish
the model, wait until every shard's lease is held by the worker `worker.leases.assign` gives
it to, warm up, then per run SIGSTOP the workers, preload the values server-side, SIGCONT and
time until every value is acknowledged. Process start, TensorFlow import, model load and
rebalancing are therefore never in a throughput figure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import redis

from bench.util import (
    Series,
    acked,
    cpu_seconds,
    load_average,
    median,
    percentile,
    preload,
    seed_state,
    series_by_shard,
    start_producer,
    start_worker,
)
from forecast import keys, registry
from forecast.local_redis import RedisServer
from forecast.processes import WorkerProcess, wait_until
from forecast.redis_conn import connect
from forecast.settings import Settings
from testkit.cluster import LocalCluster
from worker.batch import entry_ms
from worker.consumer import ensure_group

log = logging.getLogger(__name__)

GROUP = "forecast"
# Lease TTL of bench workers: it must outlast the SIGSTOP pause of a preload. Several workers
# rebalance once (a worker that loads its model first takes every shard until its next
# maintenance, a third of the TTL later), so they get a shorter one.
LEASE_TTL_ONE_MS = 60_000
LEASE_TTL_MANY_MS = 15_000


@dataclass(frozen=True)
class Plan:
    """Sizes and repeats of one benchmark run."""

    repeats: int = 3
    series: int = 1_000
    values: int = 500_000  # values per throughput run
    warmup: int = 20_000
    tutorial_msgs: int = 150
    raw_requests: int = 200_000
    latency_rate: int = 20_000
    latency_s: float = 10.0
    latency_skip_s: float = 1.0  # sends in the first second are warm-up
    big_series: int = 1_000_000
    big_values_per_series: int = 2
    scaling_values: int = 400_000
    workers: tuple[int, ...] = (1, 2, 4)
    scaling_shards: int = 4
    archs: tuple[str, ...] = ("lstm", "gru")


FULL = Plan()
QUICK = Plan(repeats=1, values=150_000, warmup=10_000, tutorial_msgs=60, raw_requests=100_000,
             latency_s=4.0, big_series=131_072, scaling_values=150_000)
# (131,072 = 1,024 x 2^7 series fill the worker's doubling row arrays exactly, like 1M does with
# max_series=1M: otherwise the empty half of the last doubling would count as per-series RSS.)


@dataclass
class Outcome:
    """Raw runs of a scenario and their medians."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    median: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def summarise(self, *names: str) -> Outcome:
        """Set the median of each named figure over the runs."""
        for name in names:
            values = [r[name] for r in self.runs if r.get(name) is not None]
            if values:
                self.median[name] = median(values)
        return self


class Bench:
    """Shared state of one benchmark run: the plan, trained models, a scratch directory."""

    def __init__(self, plan: Plan, workdir: Path,
                 trainer: Callable[[str, int], Any] | None = None) -> None:
        self.plan = plan
        self.workdir = workdir
        self.models: dict[tuple[Any, ...], Any] = {}
        self._trainer = trainer or train_tiny

    def model(self, arch: str = "simple_rnn", n_steps: int = 3, units: int = 50) -> Any:
        """A `trainer.artifact.Trained` for (arch, n_steps, units), trained once per run."""
        key = (arch, n_steps) if units == 50 else (arch, n_steps, units)
        if key not in self.models:
            t0 = time.perf_counter()
            self.models[key] = (self._trainer(arch, n_steps) if units == 50
                                else train_tiny(arch, n_steps, units))
            log.info("trained %s n_steps=%d in %.1fs", arch, n_steps, time.perf_counter() - t0)
        return self.models[key]

    @contextlib.contextmanager
    def redis(self) -> Iterator[tuple[RedisServer, Any]]:
        """A fresh private redis-server and a bytes client on it."""
        server = RedisServer(dir=Path(self.workdir, f"redis-{time.monotonic_ns()}"))
        server.dir.mkdir()  # type: ignore[union-attr]
        server.start()
        client = redis.Redis(port=server.port, protocol=2, socket_timeout=300)
        try:
            yield server, client
        finally:
            client.close()
            server.stop()
            shutil.rmtree(server.dir, ignore_errors=True)  # type: ignore[arg-type]


def train_tiny(arch: str, n_steps: int, units: int = 50) -> Any:
    """Train a model for one epoch on a small generated dataset (accuracy is irrelevant)."""
    from forecast.settings import Arch, Settings
    from trainer.artifact import train_model
    from trainer.data import Dataset

    rng = np.random.default_rng(7)
    data = {f"rw{i}": 10 + np.cumsum(rng.normal(0, 1, 120)) for i in range(6)}
    settings = Settings(_env_file=None, arch=cast(Arch, arch), n_steps=n_steps,  # type: ignore[call-arg]
                        units=units, epochs=1, patience=0, train_batch_size=64)
    return train_model(Dataset("bench", data), settings)


def make_current(client: Any, trained: Any) -> str:
    """Publish a trained model as the current version."""
    return registry.publish(client, trained.blob, dict(trained.manifest))


# --- the fleet procedure ----------------------------------------------------------------


class Fleet:
    """`n` worker processes over `shards` input shards of one Redis."""

    def __init__(self, bench: Bench, server: RedisServer | None, client: Any, n: int,
                 shards: int = 1, cluster: LocalCluster | None = None, **settings: Any) -> None:
        self.bench = bench
        self.server = server
        self.cluster = cluster  # the workers run with --cluster against it (server unused)
        self.client = client
        self.n = n
        self.shards = shards
        ttl = LEASE_TTL_ONE_MS if n == 1 else LEASE_TTL_MANY_MS
        self.settings = {"shards": shards, "lease_ttl_ms": ttl, "model_poll_s": 0.2,
                         **({"cluster": True} if cluster else {}), **settings}
        self.streams = [keys.values_stream(k, shards, cluster is not None)
                        for k in range(shards)]
        self.workers: list[WorkerProcess] = []

    @property
    def url(self) -> str:
        """The URL the workers are given."""
        if self.cluster is not None:
            return self.cluster.url
        assert self.server is not None
        return self.server.url

    def __enter__(self) -> Fleet:
        for s in self.streams:
            ensure_group(self.client, s, GROUP)
        try:
            for i in range(self.n):
                self.workers.append(start_worker(self.url, f"bench-{i}",
                                                 self.bench.workdir, **self.settings))
            self._wait(lambda: self.client.zcard(keys.WORKERS) >= self.n, 180, "workers to start")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every worker by its PID."""
        for w in self.workers:
            w.stop()

    def _wait(self, cond: Callable[[], Any], timeout: float, what: str,
              interval: float = 0.005) -> float:
        def check() -> Any:
            for w in self.workers:
                w.check_alive()
            return cond()
        wait_until(check, timeout, interval, what)
        return time.perf_counter()

    def serve(self, trained: Any) -> None:
        """Publish the model; wait until every shard's lease is held by its assigned worker."""
        make_current(self.client, trained)
        leases = [keys.shard_keys(k, self.shards, self.cluster is not None).lease
                  for k in range(self.shards)]
        names = sorted(w.consumer for w in self.workers)
        wanted = [names[k % len(names)].encode() for k in range(self.shards)]  # as leases.assign

        def balanced() -> bool:
            got = [self.client.get(k) for k in leases]  # one slot each on a cluster
            owners = [v.split(b":", 1)[1] if v else None for v in got]
            return owners == wanted
        self._wait(balanced, 180, "the shard leases to settle", 0.05)

    def wait_shadowing(self) -> None:
        """Wait until every worker runs a model in shadow (its heartbeat says so)."""
        def shadowing() -> bool:
            beats = self.client.mget([keys.heartbeat(w.consumer) for w in self.workers])
            return all(b is not None and json.loads(b).get("shadows") for b in beats)
        self._wait(shadowing, 120, "the workers to load the shadow model", 0.05)

    def loads(self, count: int, series: Series | None = None) -> list[tuple[str, int, Series]]:
        """(stream, count, series) per shard for `count` values over `series` (default 1,000)."""
        if series is not None and self.shards == 1:
            return [(self.streams[0], count, series)]
        total = series.n if series is not None else self.bench.plan.series
        buckets = series_by_shard(total, self.shards)
        return [(self.streams[k], count * b.n // total, b) for k, b in enumerate(buckets) if b.n]

    def warm(self, loads: Sequence[tuple[str, int, Series]]) -> None:
        """Process some values untimed (first model calls, allocations)."""
        base = acked(self.client, self.streams)
        for stream, count, series in loads:
            preload(self.client, stream, count, series)
        total = sum(c for _, c, _ in loads)
        self._wait(lambda: acked(self.client, self.streams) >= base + total, 300, "warm-up", 0.02)

    def measure(self, loads: Sequence[tuple[str, int, Series]]) -> dict[str, Any]:
        """Pause, preload, resume; values/s until every value is acknowledged."""
        base = acked(self.client, self.streams)
        total = sum(c for _, c, _ in loads)
        for w in self.workers:
            w.pause()
        try:
            rss_before = self.workers[0].rss()
            t_pre = time.perf_counter()
            for stream, count, series in loads:
                preload(self.client, stream, count, series)
            preload_s = time.perf_counter() - t_pre
            cpu_before = self._cpu()
            own_before = time.process_time()
            load = load_average()
        finally:
            t0 = time.perf_counter()
            for w in self.workers:
                w.resume()
        # one XINFO per stream per poll: poll less often with more streams, so that a fleet
        # with many shards does not pay more of the bench's own CPU (2 cores shared)
        t1 = self._wait(lambda: acked(self.client, self.streams) >= base + total,
                        max(300.0, total / 2000), "every value acknowledged",
                        0.005 * len(self.streams))
        seconds = t1 - t0
        cpu = [after - before for before, after in zip(cpu_before, self._cpu(), strict=True)]
        own = time.process_time() - own_before
        return {"values": total, "seconds": round(seconds, 4),
                "values_per_s": round(total / seconds, 1), "preload_s": round(preload_s, 2),
                "rss_before": rss_before, "rss_after": self.workers[0].rss(),
                "load_avg_1m": load,
                # CPU time per value: less sensitive to a busy machine than values/s
                "worker_cpu_us_per_value": round(sum(cpu[:-1]) / total * 1e6, 2),
                "redis_cpu_us_per_value": round(cpu[-1] / total * 1e6, 2),
                "bench_cpu_us_per_value": round(own / total * 1e6, 2)}  # this process (polling)

    def _cpu(self) -> list[float]:
        """CPU seconds of every worker, then of the redis-server."""
        servers = self.cluster.nodes if self.cluster is not None else [self.server]
        redis_pids = [srv.proc.pid for srv in servers if srv is not None and srv.proc is not None]
        redis_cpu = sum(cpu_seconds(pid) for pid in redis_pids)
        return [*(cpu_seconds(w.pid) for w in self.workers), redis_cpu]


def fleet_throughput(bench: Bench, trained: Any, n_workers: int = 1, shards: int = 1,
                     values: int | None = None, shadow: Any = None) -> Outcome:
    """Median values/s of `repeats` runs over 1,000 series on one fleet.

    With `shadow`, that model is a candidate every worker also runs (scored, not written).
    """
    plan = bench.plan
    out = Outcome()
    extra: dict[str, Any] = {"promote": "manual"} if shadow is not None else {}
    with bench.redis() as (server, client), \
            Fleet(bench, server, client, n_workers, shards, **extra) as fleet:
        fleet.serve(trained)
        if shadow is not None:
            registry.publish(client, shadow.blob, dict(shadow.manifest), make_current=False,
                             candidate=True)
            fleet.wait_shadowing()
        fleet.warm(fleet.loads(plan.warmup))
        for _ in range(plan.repeats):
            out.runs.append(fleet.measure(fleet.loads(values or plan.values)))
    return out.summarise("values_per_s", "worker_cpu_us_per_value", "redis_cpu_us_per_value")


# --- scenarios ----------------------------------------------------------------------------


def raw_redis(bench: Bench) -> Outcome:
    """The Redis limit: redis-benchmark's pipelined XADD rate on a private server."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise RuntimeError("redis-benchmark is not on PATH")
    out = Outcome()
    with bench.redis() as (server, client):
        for _ in range(bench.plan.repeats):
            client.delete("forecast:bench")
            cmd = [binary, "-p", str(server.port), "-n", str(bench.plan.raw_requests), "-P", "64",
                   "-q", "XADD", "forecast:bench", "*", "series", "s", "value", "1"]
            load = load_average()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
            rates = re.findall(r"([\d.]+) requests per second", proc.stdout)
            if not rates:
                raise RuntimeError(f"cannot parse redis-benchmark output: {proc.stdout[-300:]!r}")
            out.runs.append({"values_per_s": float(rates[-1]), "load_avg_1m": load})
    out.info["command"] = (f"redis-benchmark -n {bench.plan.raw_requests} -P 64 -q "
                           "XADD forecast:bench '*' series s value 1")
    return out.summarise("values_per_s")


def tutorial_worker(client: Any, model: Any, n_steps: int, count: int) -> float:
    """The tutorial's loop: one XREAD, one `model.predict`, one XADD per message; values/s."""
    windows: dict[bytes, list[float]] = {}
    last: bytes | str = "0-0"
    t0 = time.perf_counter()
    for _ in range(count):
        reply = client.xread({keys.VALUES: last}, count=1, block=5000)
        last, fields = reply[0][1][0]
        window = windows.setdefault(fields[b"series"], [])
        window.append(float(fields[b"value"]))
        del window[:-n_steps]
        if len(window) == n_steps:
            x = np.asarray(window, dtype=np.float32).reshape(1, n_steps, 1)
            prediction = float(model.predict(x, verbose=0)[0, 0])
            client.xadd(keys.PREDICTIONS, {"series": fields[b"series"], "prediction": prediction})
    return count / (time.perf_counter() - t0)


def tutorial(bench: Bench) -> Outcome:
    """The tutorial-style worker on the same SimpleRNN(50) model (Keras `model.predict`)."""
    trained = bench.model("simple_rnn", 3)
    model = trained.loaded.model
    model.predict(np.zeros((1, 3, 1), np.float32), verbose=0)  # build the predict function
    out = Outcome()
    with bench.redis() as (_, client):
        for _ in range(bench.plan.repeats):
            client.delete(keys.VALUES, keys.PREDICTIONS)
            preload(client, keys.VALUES, bench.plan.tutorial_msgs, Series(1, "tutorial"))
            load = load_average()
            rate = tutorial_worker(client, model, 3, bench.plan.tutorial_msgs)
            out.runs.append({"values_per_s": round(rate, 2), "messages": bench.plan.tutorial_msgs,
                             "load_avg_1m": load})
    return out.summarise("values_per_s")


def throughput(bench: Bench) -> Outcome:
    """Sustained values/s: 1 worker, 1,000 series, SimpleRNN(50) n_steps=3, exactly-once commit."""
    out = fleet_throughput(bench, bench.model("simple_rnn", 3))
    out.info.update(series=bench.plan.series, model="SimpleRNN(50) n_steps=3",
                    outputs=bench.model("simple_rnn", 3).manifest["outputs"])
    return out


def shadow(bench: Bench) -> Outcome:
    """Throughput with one candidate in shadow (the same SimpleRNN again): one more model call
    per batch and its live scoring; compare with `throughput`."""
    trained = bench.model("simple_rnn", 3)
    out = fleet_throughput(bench, trained, shadow=trained)
    out.info.update(series=bench.plan.series, model="SimpleRNN(50) n_steps=3, one shadow")
    return out


def archs(bench: Bench) -> Outcome:
    """LSTM(50) and GRU(50) instead of SimpleRNN: values/s per architecture."""
    out = Outcome()
    for arch in bench.plan.archs:
        sub = fleet_throughput(bench, bench.model(arch, 3))
        for run in sub.runs:
            out.runs.append({"arch": arch, **run})
        out.median[arch] = sub.median["values_per_s"]
    return out


def scaling(bench: Bench) -> Outcome:
    """1, 2, 4 worker processes over 4 shards: aggregate values/s and efficiency."""
    out = Outcome()
    plan = bench.plan
    for n in plan.workers:
        sub = fleet_throughput(bench, bench.model("simple_rnn", 3), n_workers=n,
                               shards=plan.scaling_shards, values=plan.scaling_values)
        for run in sub.runs:
            out.runs.append({"workers": n, **run})
        out.median[str(n)] = sub.median["values_per_s"]
    base = out.median.get("1")
    if base:
        out.info["efficiency"] = {k: round(v / (int(k) * base), 3) for k, v in out.median.items()}
    out.info["shards"] = plan.scaling_shards
    return out


def series_1m(bench: Bench) -> Outcome:
    """1M distinct series, n_steps=24: RSS growth per series and values/s vs 1,000 series.

    Every series starts with a checkpointed full window (as if it had history), so every value
    yields a prediction; the first pass over the big set loads each window from the checkpoint.
    Per run: fresh Redis and worker; warm-up on 1,000 of the series; then the big phase
    (big_series x big_values_per_series values, round-robin); then the same number of values
    over the 1,000 warm series on the same worker (the comparison case, same model).
    """
    plan = bench.plan
    trained = bench.model("simple_rnn", 24)
    big = Series(plan.big_series, "m")
    small = Series(min(plan.series, plan.big_series), "m")
    count = plan.big_series * plan.big_values_per_series
    out = Outcome()
    for _ in range(plan.repeats):
        with bench.redis() as (server, client), Fleet(
                bench, server, client, 1, 1, max_series=max(plan.big_series, 1_000_000)) as fleet:
            seed_state(client, keys.shard_keys(0, 1).state, big, 24)
            fleet.serve(trained)
            fleet.warm(fleet.loads(plan.warmup, small))
            run_big = fleet.measure(fleet.loads(count, big))
            run_small = fleet.measure(fleet.loads(count, small))
            grown = run_big["rss_after"] - run_big["rss_before"]
            out.runs.append({
                "big": run_big, "small": run_small,
                "bytes_per_series": round(grown / (big.n - small.n), 1),
                "values_per_s_big": run_big["values_per_s"],
                "values_per_s_small": run_small["values_per_s"],
                "slowdown": round(run_small["values_per_s"] / run_big["values_per_s"], 3),
            })
    out.info.update(series=plan.big_series, values_per_run=count, n_steps=24,
                    comparison_series=small.n)
    return out.summarise("bytes_per_series", "values_per_s_big", "values_per_s_small", "slowdown")


LOOP_TROUBLE = ("lost the lease", "Redis unavailable", "unexpected error", "failed;")


def _choreograph(client: Any, worker: WorkerProcess, steps: list[tuple[float, Any, Any]],
                 done: dict[str, float]) -> None:
    """At each (seconds after start, action, until) step: run action(), then poll until(),
    recording how long each took to show in the worker's heartbeat."""
    t0 = time.monotonic()
    for at, (name, action), until in steps:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        t1 = time.monotonic()
        action()

        def shown(until: Callable[[dict[str, Any]], Any] = until) -> Any:
            return until(json.loads(client.get(keys.heartbeat(worker.consumer)) or b"{}"))
        wait_until(shown, 120, 0.01, name)
        done[name] = round(time.monotonic() - t1, 3)


def swap_1m(bench: Bench) -> Outcome:
    """A model line-up change with 1M live series must not stall the loop.

    One worker holds 1M series (every window checkpointed and in memory, n_steps=24) while a
    paced producer offers `latency_rate` values/s over 1,000 series for 14 s; meanwhile a
    candidate is published (served in shadow), promoted, and the previous version (shadowed
    after the promotion) unshadowed. Reported: the producer's end-to-end latency over the whole
    window, how long each change took to show in the heartbeat, lease losses or recoveries
    in the worker's log, and how long a warm shutdown (SIGTERM) takes with 1M series.
    """
    plan = bench.plan
    trained = bench.model("simple_rnn", 24)
    big = Series(plan.big_series, "m")
    out = Outcome()
    with bench.redis() as (server, client), Fleet(
            bench, server, client, 1, 1, max_series=max(plan.big_series, 1_000_000),
            lease_ttl_ms=5000) as fleet:
        shard = keys.shard_keys(0, 1)
        seed_state(client, shard.state, big, 24, shard.seen)  # steady state: no TTL backfill
        fleet.serve(trained)
        fleet.warm(fleet.loads(plan.big_series, big))  # every series in memory, with live state
        fleet.warm(fleet.loads(plan.warmup))
        worker = fleet.workers[0]
        first = registry.current_version(client)
        log_before = len(worker.log())
        cand: dict[str, str] = {}

        def publish() -> None:
            cand["v"] = registry.publish(client, trained.blob, dict(trained.manifest),
                                         make_current=False, candidate=True)

        steps = [
            (2.0, ("candidate published", publish), lambda b: b.get("shadows")),
            (5.0, ("candidate promoted", lambda: registry.promote(client, cand["v"])),
             lambda b: b.get("model_version") == cand["v"]),
            (9.0, ("previous unshadowed", lambda: registry.unshadow(client, first or "")),
             lambda b: b.get("shadows") == []),
        ]
        done: dict[str, float] = {}
        load = load_average()
        producer, path = start_producer(server.url, plan.latency_rate, 14.0, plan.series,
                                        bench.workdir)
        thread = threading.Thread(target=_choreograph, args=(client, worker, steps, done))
        thread.start()
        try:
            run = _latencies(client, producer, path, plan.latency_skip_s)
        finally:
            thread.join(180)
            if producer.poll() is None:
                producer.kill()
                producer.wait()
        log = worker.log()[log_before:]
        trouble = {k: log.count(k) for k in LOOP_TROUBLE}
        t0 = time.perf_counter()
        code = worker.stop(grace=60.0)
        shutdown = time.perf_counter() - t0
        out.runs.append({**run, "load_avg_1m": load, "changes_s": done,
                         "loop_trouble": trouble, "troubles": sum(trouble.values()),
                         "shutdown_s": round(shutdown, 2), "exit_code": code})
    out.info.update(series=plan.big_series, rate=plan.latency_rate, n_steps=24)
    return out.summarise("p50_ms", "p99_ms", "max_ms", "missing", "troubles", "shutdown_s")


def cold_start(bench: Bench) -> Outcome:
    """Seconds from starting `forecast worker` to its first prediction.

    The model is published and values are waiting before the process starts.
    """
    trained = bench.model("simple_rnn", 3)
    out = Outcome()
    for _ in range(bench.plan.repeats):
        with bench.redis() as (server, client):
            make_current(client, trained)
            preload(client, keys.VALUES, 3 * bench.plan.series, Series(bench.plan.series))
            load = load_average()
            t0 = time.perf_counter()
            worker = start_worker(server.url, "bench-cold", bench.workdir)
            try:
                wait_until(_first_prediction(client, worker), 180, 0.01, "a prediction")
                t1 = time.perf_counter()
            finally:
                worker.stop()
            out.runs.append({"seconds": round(t1 - t0, 3), "load_avg_1m": load})
    return out.summarise("seconds")


def _first_prediction(client: Any, worker: WorkerProcess) -> Callable[[], bool]:
    def check() -> bool:
        worker.check_alive()
        return bool(client.xlen(keys.PREDICTIONS))
    return check


def _latencies(client: Any, producer: subprocess.Popen[bytes], sends_path: Path,
               skip_s: float) -> dict[str, Any]:
    """Read predictions with XREAD BLOCK while the producer runs; match them to the sends."""
    reader: Any = redis.Redis(connection_pool=client.connection_pool)
    reader.set_response_callback("XREAD", lambda r, **_: r)
    newest = client.xrevrange(keys.PREDICTIONS, count=1)
    last = newest[0][0] if newest else b"0-0"
    seen: dict[bytes, float] = {}
    stage: dict[bytes, int] = {}  # source id -> ms from input XADD to prediction XADD
    quiet_since: float | None = None
    while True:
        reply = reader.xread({keys.PREDICTIONS: last}, count=10_000, block=50)
        now = time.perf_counter()
        if reply:
            quiet_since = None
            for eid, fields in reply[0][1]:
                last = eid
                source = fields[fields.index(b"source_id") + 1]
                seen[source] = now
                stage[source] = entry_ms(eid) - entry_ms(source)
        elif producer.poll() is not None:
            quiet_since = quiet_since or now
            if now - quiet_since > 1.0:
                break
    if producer.returncode != 0:
        raise RuntimeError(f"latency producer exited with {producer.returncode}")
    data = json.loads(sends_path.read_text())
    sends = [(eid.encode(), t) for eid, t in data["sent"]]
    start = sends[0][1] + skip_s
    lat = [(seen[eid] - t) * 1000 for eid, t in sends if t >= start and eid in seen]
    missing = sum(1 for eid, t in sends if t >= start and eid not in seen)
    # The part between the two XADDs (input, prediction), at the ids' 1 ms resolution.
    worker = [stage[eid] for eid, t in sends if t >= start and eid in stage]
    return {"p50_ms": round(percentile(lat, 50), 3), "p99_ms": round(percentile(lat, 99), 3),
            "p999_ms": round(percentile(lat, 99.9), 3), "max_ms": round(max(lat), 3),
            "samples": len(lat), "missing": missing,
            "offered_per_s": round(len(sends) / data["took_s"], 1),
            "xadd_to_xadd_p50_ms": percentile(worker, 50),
            "xadd_to_xadd_p99_ms": percentile(worker, 99)}


def latency(bench: Bench) -> Outcome:
    """End-to-end latency at a steady offered rate: input XADD to the prediction's XREAD BLOCK."""
    plan = bench.plan
    out = Outcome()
    with bench.redis() as (server, client), Fleet(bench, server, client, 1, 1) as fleet:
        fleet.serve(bench.model("simple_rnn", 3))
        fleet.warm(fleet.loads(plan.warmup))
        for _ in range(plan.repeats):
            load = load_average()
            producer, path = start_producer(server.url, plan.latency_rate, plan.latency_s,
                                            plan.series, bench.workdir)
            try:
                run = _latencies(client, producer, path, plan.latency_skip_s)
            finally:
                if producer.poll() is None:
                    producer.kill()
                    producer.wait()
            out.runs.append({**run, "load_avg_1m": load})
    out.info.update(rate=plan.latency_rate, seconds=plan.latency_s, series=plan.series)
    return out.summarise("p50_ms", "p99_ms", "p999_ms", "offered_per_s", "xadd_to_xadd_p50_ms",
                         "xadd_to_xadd_p99_ms")


# --- Redis topologies, durability, memory -------------------------------------------------


@contextlib.contextmanager
def _cluster(bench: Bench) -> Iterator[tuple[LocalCluster, Any]]:
    """A fresh private 3-master Redis Cluster and a cluster client on it."""
    cluster = LocalCluster().start()
    try:
        client = connect(Settings(_env_file=None, redis_url=cluster.url, cluster=True),  # type: ignore[call-arg]
                         timeout=300)
        try:
            yield cluster, client
        finally:
            client.close()
    finally:
        cluster.stop()


def cluster_speed(bench: Bench) -> Outcome:
    """One worker over a 3-master Redis Cluster with 6 shards vs one worker on one Redis.

    Same model, same 1,000 series, same values per run; both fleets are up at once and their
    runs alternate in pairs, so both see the same machine load. The figure is the median of
    the pairs' ratios; `cpu_ratio` compares (worker + Redis) CPU seconds per value, the
    measure least sensitive to a busy machine.
    """
    plan = bench.plan
    trained = bench.model("simple_rnn", 3)
    out = Outcome()
    with bench.redis() as (server, client), _cluster(bench) as (cluster, cclient), \
            Fleet(bench, server, client, 1, 1) as single, \
            Fleet(bench, None, cclient, 1, 6, cluster=cluster) as clustered:
        for fleet in (single, clustered):
            fleet.serve(trained)
            fleet.warm(fleet.loads(plan.warmup))
        # pairs back to back (the machine's load drifts): the figure is the median pair ratio
        for _ in range(max(plan.repeats, 5) if plan.repeats > 1 else 1):
            one = single.measure(single.loads(plan.values))
            many = clustered.measure(clustered.loads(plan.values))

            def cpu(run: dict[str, Any]) -> float:
                return float(run["worker_cpu_us_per_value"] + run["redis_cpu_us_per_value"])
            out.runs.append({"single": one, "cluster": many,
                             "single_values_per_s": one["values_per_s"],
                             "cluster_values_per_s": many["values_per_s"],
                             "ratio": round(many["values_per_s"] / one["values_per_s"], 3),
                             "cpu_ratio": round(cpu(one) / cpu(many), 3),
                             "load_avg_1m": one["load_avg_1m"]})
    out.summarise("single_values_per_s", "cluster_values_per_s", "ratio", "cpu_ratio")
    out.median["ratio_of_medians"] = round(
        out.median["cluster_values_per_s"] / out.median["single_values_per_s"], 3)
    out.info.update(masters=3, shards=6, series=plan.series)
    return out


def model_bound(bench: Bench) -> Outcome:
    """LSTM(64), n_steps=48: end to end values/s next to the pure model-call rate of the same
    artifact at the same batch size (in this process, same thread pools as a worker)."""
    plan = bench.plan
    trained = bench.model("lstm", 48, units=64)
    batch = Settings(_env_file=None).batch_size  # type: ignore[call-arg]
    values = max(plan.values // 5, 2 * batch)
    end_to_end = Outcome()
    with bench.redis() as (server, client), Fleet(bench, server, client, 1, 1) as fleet:
        fleet.serve(trained)
        # every series' window full before timing: every timed value makes a model row
        fleet.warm(fleet.loads(max(plan.warmup, 50 * plan.series)))
        for _ in range(plan.repeats):
            end_to_end.runs.append(fleet.measure(fleet.loads(values)))
    rng = np.random.default_rng(3)
    x = rng.normal(10, 1, (batch, 48)).astype(np.float32)
    model = trained.loaded
    model.predict(x)  # traced once
    out = Outcome()
    for run in end_to_end.runs:
        calls, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 3.0:
            model.predict(x)
            calls += 1
        rate = calls * batch / (time.perf_counter() - t0)
        out.runs.append({**run, "model_values_per_s": round(rate, 1),
                         "end_to_end_values_per_s": run["values_per_s"],
                         "ratio": round(run["values_per_s"] / rate, 3)})
    out.info.update(model="LSTM(64) n_steps=48", batch=batch, values=values)
    return out.summarise("end_to_end_values_per_s", "model_values_per_s", "ratio")


def durability(bench: Bench) -> Outcome:
    """FORECAST_COMMIT_REPLICAS = 0 and 1 on a primary with one replica (started here)."""
    plan = bench.plan
    trained = bench.model("simple_rnn", 3)
    out = Outcome()
    with bench.redis() as (server, client):
        replica = RedisServer(dir=Path(bench.workdir, f"replica-{time.monotonic_ns()}"),
                              extra_args=["--replicaof", "127.0.0.1", str(server.port)])
        replica.dir.mkdir()  # type: ignore[union-attr]
        replica.start()
        try:
            wait_until(lambda: client.info("replication").get("slave0", {}).get("state")
                       == "online", 60, 0.05, "the replica in sync")
            for n in (0, 1):
                client.flushall()
                with Fleet(bench, server, client, 1, 1, commit_replicas=n) as fleet:
                    fleet.serve(trained)
                    fleet.warm(fleet.loads(plan.warmup))
                    for _ in range(plan.repeats):
                        run = fleet.measure(fleet.loads(plan.values))
                        out.runs.append({"commit_replicas": n, **run})
        finally:
            replica.cleanup()
    for n in (0, 1):
        rates = [r["values_per_s"] for r in out.runs if r["commit_replicas"] == n]
        out.median[f"replicas_{n}"] = median(rates)
    out.median["ratio"] = round(out.median["replicas_1"] / out.median["replicas_0"], 3)
    out.info.update(series=plan.series, replicas=1)
    return out


def redis_memory(bench: Bench) -> Outcome:
    """Redis memory per retained input value and per live series (checkpoint, last-seen
    time, latest forecast).

    `MEMORY USAGE` of the input stream after a preload, per entry; then a worker turns
    values of `series` series into checkpoints (n_steps=3): memory of forecast:state and
    forecast:seen per series.
    """
    plan = bench.plan
    trained = bench.model("simple_rnn", 3)
    n_series = max(10_000, plan.big_series // 10)
    out = Outcome()
    with bench.redis() as (server, client), Fleet(bench, server, client, 1, 1) as fleet:
        k = keys.shard_keys(0, 1)
        fleet.serve(trained)
        count = 3 * n_series
        fleet.measure(fleet.loads(count, Series(n_series, "mem")))
        stream = int(client.memory_usage(k.values, samples=0) or 0)
        state = int(client.memory_usage(k.state, samples=0) or 0)
        seen = int(client.memory_usage(k.seen, samples=0) or 0)
        latest = int(client.memory_usage(k.latest, samples=0) or 0)
        entries = client.xlen(k.values)
        preds = int(client.memory_usage(k.predictions, samples=0) or 0)
        n_preds = client.xlen(k.predictions)
        out.runs.append({"stream_bytes_per_value": round(stream / max(1, entries), 1),
                         "prediction_bytes": round(preds / max(1, n_preds), 1),
                         "state_bytes_per_series": round(state / n_series, 1),
                         "seen_bytes_per_series": round(seen / n_series, 1),
                         "latest_bytes_per_series": round(latest / n_series, 1),
                         "entries": entries, "series": n_series,
                         "used_memory": int(client.info("memory")["used_memory"])})
    out.info.update(n_steps=3, series=n_series)
    return out.summarise("stream_bytes_per_value", "state_bytes_per_series",
                         "seen_bytes_per_series", "latest_bytes_per_series", "prediction_bytes")


SCENARIOS: dict[str, Callable[[Bench], Outcome]] = {
    "raw_redis": raw_redis,
    "tutorial": tutorial,
    "throughput": throughput,
    "latency": latency,
    "cold_start": cold_start,
    "shadow": shadow,
    "archs": archs,
    "scaling": scaling,
    "series_1m": series_1m,
    "swap_1m": swap_1m,
    "cluster_speed": cluster_speed,
    "model_bound": model_bound,
    "durability": durability,
    "redis_memory": redis_memory,
}
