"""Benchmark plumbing: server-side preloading, group progress, statistics, the machine.

Nothing here imports TensorFlow. Worker processes come from `forecast.processes`. The latency
producer (`python -m bench.util produce ...`) runs in its own process so that it never
competes for the reader's GIL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis

from forecast import keys, processes
from forecast.processes import WorkerProcess
from forecast.redis_conn import group_info
from worker.state import SeriesStore

# Values generated inside Redis: ~1M XADD/s instead of ~100k/s through a Python pipeline.
# KEYS: stream. ARGV: first index, count, n_series, prefix, [explicit series names...].
# Entry j gets series names[j % n] (or prefix .. (j % n)) and value (j % 1000) / 8.
PRELOAD_LUA = """
local first, count, n, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local named = #ARGV > 4
for j = first, first + count - 1 do
  local k = j % n
  local s
  if named then s = ARGV[5 + k] else s = prefix .. k end
  redis.call('XADD', KEYS[1], '*', 'series', s, 'value', tostring((j % 1000) / 8))
end
return count
"""

# KEYS: state hash. ARGV: first, count, prefix, blob. Same checkpoint for series prefix..k.
SEED_LUA = """
local first, count, prefix, blob = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000
for k = first, first + count - 1 do
  redis.call('HSET', KEYS[1], prefix .. k, blob)
  if KEYS[2] then redis.call('ZADD', KEYS[2], now, prefix .. k) end
end
return count
"""

CHUNK = 50_000  # entries per preload script call (each call blocks Redis ~50 ms)


@dataclass(frozen=True)
class Series:
    """A set of series: explicit names, or `prefix0 .. prefix{n-1}` generated in Redis."""

    n: int
    prefix: str = "s"
    names: tuple[str, ...] = ()

    def name(self, k: int) -> str:
        """The k-th series name."""
        return self.names[k] if self.names else f"{self.prefix}{k}"


def series_by_shard(n: int, shards: int, prefix: str = "s") -> list[Series]:
    """`n` series `prefix0..` split by the shard they are routed to (crc32 mod shards)."""
    buckets: list[list[str]] = [[] for _ in range(shards)]
    for k in range(n):
        name = f"{prefix}{k}"
        buckets[keys.shard_of(name, shards)].append(name)
    return [Series(len(b), prefix, tuple(b)) for b in buckets]


def preload(client: Any, stream: str, count: int, series: Series, first: int = 0) -> None:
    """XADD `count` values round-robin over `series` into `stream`, generated server-side."""
    script = client.register_script(PRELOAD_LUA)
    names = list(series.names)
    done = 0
    while done < count:
        n = min(CHUNK, count - done)
        script(keys=[stream], args=[first + done, n, series.n, series.prefix, *names])
        done += n


def seed_state(client: Any, state_key: str, series: Series, width: int,
               seen_key: str | None = None) -> None:
    """Checkpoint a full window (width values) for every series, as if each had history;
    with `seen_key`, also its last-seen time (as a steady state: no backfill to run)."""
    store = SeriesStore(width)
    blob = store.encode([store.set_window(b"seed", np.linspace(1.0, 2.0, width))])[0]
    if series.names:
        client.hset(state_key, mapping={name: blob for name in series.names})
        return
    script = client.register_script(SEED_LUA)
    for first in range(0, series.n, 2 * CHUNK):
        n = min(2 * CHUNK, series.n - first)
        script(keys=[state_key, *([seen_key] if seen_key else [])],
               args=[first, n, series.prefix, blob])


def acked(client: Any, streams: Sequence[str], group: str = "forecast") -> int:
    """Entries the group has acknowledged over `streams` (entries-read minus pending)."""
    total = 0
    for s in streams:
        info = group_info(client, s, group)
        if info:
            total += int(info.get("entries-read") or 0) - int(info["pending"])
    return total


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(np.median(np.asarray(values, dtype=np.float64)))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    """1-minute load average (how busy the machine was around a measurement)."""
    return round(os.getloadavg()[0], 2)


def start_worker(url: str, consumer: str, log_dir: Path, **settings: Any) -> WorkerProcess:
    """A bench worker: TensorFlow's own thread pools, metrics off, warnings only."""
    return processes.start_worker(url, consumer, log_dir=log_dir, threads=None,
                                log_level="WARNING", **settings)


# --- machine ----------------------------------------------------------------------------


# --- latency producer (a separate process) ----------------------------------------------


@dataclass
class Pacer:
    """Offer `rate` values/s in pipelined chunks every `interval` seconds, ts-less."""

    rate: int
    seconds: float
    series: int = 1000
    interval: float = 0.002
    sent: list[tuple[bytes, float]] = field(default_factory=list)

    def run(self, client: Any, stream: str = keys.VALUES) -> None:
        """Send until `seconds` have passed; remember (entry id, send time) of every value."""
        per_chunk = max(1, round(self.rate * self.interval))
        chunks = int(self.seconds / self.interval)
        start = time.perf_counter()
        j = 0
        for c in range(chunks):
            delay = start + c * self.interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pipe = client.pipeline(transaction=False)
            for _ in range(per_chunk):
                pipe.xadd(stream, {"series": f"s{j % self.series}", "value": str((j % 1000) / 8)})
                j += 1
            t_send = time.perf_counter()
            for eid in pipe.execute():
                self.sent.append((eid, t_send))


def produce_main(argv: Sequence[str]) -> int:
    """`python -m bench.util produce URL RATE SECONDS SERIES OUT`: write sends as JSON."""
    url, rate, seconds, series, out = argv
    client = redis.Redis.from_url(url, protocol=2)
    pacer = Pacer(int(rate), float(seconds), int(series))
    t0 = time.perf_counter()
    pacer.run(client)
    took = time.perf_counter() - t0
    data = {"took_s": took, "sent": [[eid.decode(), t] for eid, t in pacer.sent]}
    Path(out).write_text(json.dumps(data))
    return 0


def start_producer(url: str, rate: int, seconds: float, series: int,
                   out_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the latency producer process; returns it and the path of its JSON output."""
    fd, name = tempfile.mkstemp(prefix="sends-", suffix=".json", dir=out_dir)
    os.close(fd)
    proc = subprocess.Popen([sys.executable, "-m", "bench.util", "produce", url,
                             str(rate), str(seconds), str(series), name])
    return proc, Path(name)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "produce":
        sys.exit(produce_main(sys.argv[2:]))
    sys.exit("usage: python -m bench.util produce URL RATE SECONDS SERIES OUT")
