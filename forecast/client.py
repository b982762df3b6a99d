"""Producer and consumer helpers: the `Producer` class, `forecast push` and `forecast tail`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import redis

from forecast import csvio, keys
from forecast.errors import ReplicasBehind, UsageError
from forecast.grammar import parse_fields
from forecast.redis_conn import connect
from forecast.settings import Settings

Item = tuple[str, float | str, int | None]  # series, value, ts (epoch ms) or None


class Producer:
    """Pushes values into the right input shard (crc32(series) mod shards), pipelined.

    Every value carries a producer sequence number `seq` (microseconds since the epoch,
    strictly increasing across the values this producer sends), so a chunk that is sent again
    after a connection error is safe: whatever of it had landed already is recognised by the
    worker and dead-lettered as `duplicate`, never predicted twice. A chunk is sent at most
    `1 + retries` times; the client itself never re-sends anything (`forecast.redis_conn`).
    """

    def __init__(
        self, client: Any, shards: int = 1, cluster: bool = False, chunk: int = 1000,
        wait_replicas: int = 0, wait_timeout_ms: int = 1000, retries: int = 3,
        retry_wait_s: float = 0.2, sequence: bool = True,
    ) -> None:
        """`wait_replicas=N`: each pipelined chunk ends with `WAIT N wait_timeout_ms`, and
        `push`/`push_many` raise `ReplicasBehind` when fewer replicas confirmed it (the values
        are on the primary then, but a failover may lose them). `sequence=False` sends no
        `seq` (and then never retries: a retry could duplicate a value)."""
        if wait_replicas and cluster:
            raise UsageError("waiting for replicas (WAIT) is not supported with --cluster")
        self.client = client
        self.shards = shards
        self.cluster = cluster
        self.chunk = chunk
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.sequence = sequence
        self.retries = retries if sequence else 0
        self.retry_wait_s = retry_wait_s
        self.last_seq = 0

    def stream_of(self, series: str) -> str:
        """The input stream a series is routed to."""
        return keys.values_stream(keys.shard_of(series, self.shards), self.shards, self.cluster)

    def next_seq(self) -> int:
        """A sequence number above every earlier one of this producer (and of earlier
        producers on a clock that does not go back): microseconds since the epoch."""
        self.last_seq = max(time.time_ns() // 1000, self.last_seq + 1)
        return self.last_seq

    @staticmethod
    def fields(series: str, value: float | str, ts: int | None = None,
               seq: int | None = None) -> dict[str, str]:
        """The entry fields of one value.

        >>> Producer.fields("s1", 7)
        {'series': 's1', 'value': '7'}
        >>> Producer.fields("s1", 0.5, ts=1700000000000, seq=12)
        {'series': 's1', 'value': '0.5', 'ts': '1700000000000', 'seq': '12'}
        """
        out = {"series": series, "value": value if isinstance(value, str) else repr(value)}
        if isinstance(value, int):
            out["value"] = str(value)
        if ts is not None:
            out["ts"] = str(ts)
        if seq is not None:
            out["seq"] = str(seq)
        return out

    def _entry(self, series: str, value: float | str, ts: int | None) -> tuple[str, Any]:
        seq = self.next_seq() if self.sequence else None
        return self.stream_of(series), self.fields(series, value, ts, seq)

    def push(self, series: str, value: float | str, ts: int | None = None) -> bytes:
        """Push one value; returns the entry id."""
        return self._send([self._entry(series, value, ts)], 0)[0]

    def push_many(self, items: Iterable[Item]) -> list[bytes]:
        """Push many values in pipelined chunks; returns the entry ids in order."""
        ids: list[bytes] = []
        chunk: list[tuple[str, Any]] = []
        for series, value, ts in items:
            chunk.append(self._entry(series, value, ts))
            if len(chunk) == self.chunk:
                ids += self._send(chunk, len(ids))
                chunk = []
        if chunk:
            ids += self._send(chunk, len(ids))
        return ids

    def _send(self, chunk: list[tuple[str, Any]], done: int) -> list[bytes]:
        """One chunk in one round trip, sent again (same fields) after a connection error."""
        for attempt in range(self.retries + 1):
            pipe = self.client.pipeline(transaction=False)
            for stream, fields in chunk:
                pipe.xadd(stream, fields)
            try:
                return self._execute(pipe, done)
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == self.retries:
                    raise
                time.sleep(self.retry_wait_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def _execute(self, pipe: Any, done: int) -> list[bytes]:
        if not self.wait_replicas:
            return list(pipe.execute())
        # WAIT on the connection that wrote: the pipeline's, in the same round trip
        pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
        *ids, confirmed = pipe.execute()
        if int(confirmed) < self.wait_replicas:
            raise ReplicasBehind(int(confirmed), self.wait_replicas, self.wait_timeout_ms,
                                 pushed=done + len(ids))
        return ids


def check_value(series: str, value: str, where: str = "") -> None:
    """Raise UsageError unless (series, value) is what the worker accepts."""
    result = parse_fields([b"series", series.encode(), b"value", value.encode()])
    if isinstance(result, str):
        raise UsageError(
            f"{where}cannot push series={series!r} value={value!r}: {result.replace('_', ' ')}"
        )


def read_csv(path: str) -> Iterator[Item]:
    """Values of a long-format CSV `series,timestamp,value` (see `forecast.csvio`)."""
    for row in csvio.read_rows(path):
        yield row.series, row.value, row.ts


def run_push(args: argparse.Namespace, settings: Settings) -> int:
    """`forecast push SERIES VALUE...` or `forecast push --csv FILE`."""
    if args.csv:
        if args.series or args.values:
            raise UsageError("give either --csv FILE or SERIES VALUE..., not both")
        items = list(read_csv(args.csv))
    else:
        if not args.series or not args.values:
            raise UsageError("usage: forecast push SERIES VALUE [VALUE ...] (or --csv FILE)")
        for v in args.values:
            check_value(args.series, v)
        ts0 = args.ts
        items = [
            (args.series, v, None if ts0 is None else ts0 + i) for i, v in enumerate(args.values)
        ]
    producer = Producer(connect(settings), settings.shards, settings.cluster,
                        wait_replicas=settings.wait_replicas,
                        wait_timeout_ms=settings.replicas_timeout_ms)
    try:
        ids = producer.push_many(items)
    except ReplicasBehind as exc:
        print(f"forecast: warning: pushed {exc.pushed} value(s), but {exc}; a failover may "
              "lose them", file=sys.stderr)
        return 4
    print(f"pushed {len(ids)} value(s)" + (f", last id {ids[-1].decode()}" if ids else "")
          + (f", confirmed by {settings.wait_replicas} replica(s)" if settings.wait_replicas
             else ""))
    return 0


def format_prediction(entry_id: bytes, fields: dict[bytes, bytes]) -> str:
    """One readable line for a prediction (or dead letter, or anomaly).

    >>> format_prediction(b"1-0", {b"series": b"s1", b"prediction": b"10.705",
    ...                   b"model_version": b"v1", b"source_id": b"0-9"})
    's1  prediction=10.705  model=v1  source=0-9'
    >>> format_prediction(b"2-0", {b"series": b"s1", b"value": b"99", b"score": b"0.97",
    ...                   b"kind": b"spike", b"direction": b"up", b"prediction": b"10.7",
    ...                   b"model_version": b"v1", b"source_id": b"0-10"})
    'ANOMALY spike up  s1  value=99  score=0.97  prediction=10.7  model=v1  source=0-10'
    """
    f = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}
    if "reason" in f:
        shown = {k: v[:60] for k, v in f.items() if k not in ("reason", "source_id")}
        return f"DEAD {f['reason']}  source={f.get('source_id', '?')}  fields={shown}"
    line = f"{f.get('series', '?')}  prediction={f.get('prediction', '?')}"
    if "score" in f and "kind" in f:  # an entry of forecast:anomalies
        line = (f"ANOMALY {f['kind']} {f.get('direction', '?')}  {f.get('series', '?')}  "
                f"value={f.get('value', '?')}  score={f['score']}  "
                f"prediction={f.get('prediction', '?')}")
    if "lower" in f:
        line += f"  interval=[{f['lower']}, {f['upper']}]"
    if "path" in f:
        line += f"  path={f['path']}"
    if f.get("anomaly") == "1":
        line += f"  anomaly={f.get('kind', '?')}/{f.get('direction', '?')}"
        line += f" score={f.get('anomaly_score', '?')}"
    return line + f"  model={f.get('model_version', '?')}  source={f.get('source_id', '?')}"


def newest_id(client: Any, stream: str) -> bytes | str:
    """The id of the newest entry of `stream` ("0-0" when it is empty or missing)."""
    newest = client.xrevrange(stream, count=1)
    return newest[0][0] if newest else "0-0"


def latest(client: Any, series: str | bytes, shards: int = 1,
           cluster: bool = False) -> dict[str, str] | None:
    """The newest forecast of `series` (the fields of its last output entry), or None."""
    key = keys.latest_hashes(shards, cluster)[keys.shard_of(series, shards) if cluster else 0]
    raw = client.hget(key, series)
    return None if raw is None else dict(json.loads(raw))


def run_get(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    """`forecast get SERIES...`: the latest forecast of each (exit 1 if one has none)."""
    client = connect(settings)
    missing = 0
    for series in args.series:
        found = latest(client, series, settings.shards, settings.cluster)
        if found is None:
            missing += 1
            print(json.dumps({"series": series, "found": False}) if args.json
                  else f"{series}  (no forecast)", file=out)
        elif args.json:
            print(json.dumps({"series": series, **found}), file=out)
        else:
            fields = {k.encode(): v.encode() for k, v in found.items()}
            print(format_prediction(b"", {b"series": series.encode(), **fields}), file=out)
    return 1 if missing else 0


def run_tail(args: argparse.Namespace, settings: Settings, out: TextIO = sys.stdout) -> int:
    """`forecast tail`: follow predictions (or dead letters, or anomalies) until Ctrl-C or
    --count."""
    anomalies = getattr(args, "anomalies", False)
    if args.deadletter and anomalies:
        raise UsageError("--deadletter and --anomalies: follow one of them")
    client = connect(settings, timeout=None)
    pick = keys.output_streams
    if args.deadletter:
        pick = keys.deadletter_streams
    elif anomalies:
        pick = keys.anomaly_streams
    streams = pick(settings.shards, settings.cluster)
    if args.series and not args.deadletter and not anomalies:  # a followed series' stream
        k = keys.shard_of(args.series, settings.shards) if settings.cluster else 0
        own = keys.shard_keys(k, settings.shards, settings.cluster).follow_stream(
            args.series.encode()).decode()
        if client.exists(own):
            streams = [own]
    # Concrete ids, never "$": reading one stream at a time (a cluster), "$" would skip what
    # arrived in the others since their last read.
    last = {s: "0-0" if args.from_start else newest_id(client, s) for s in streams}
    want = args.series.encode() if args.series else None
    shown = 0
    try:
        while args.count is None or shown < args.count:
            if settings.cluster and len(streams) > 1:  # one slot per stream: one short read each
                replies = [
                    rep
                    for s in streams
                    for rep in client.xread(
                        {s: last[s]}, block=max(1, 1000 // len(streams)), count=1000
                    )
                    or []
                ]
            else:
                replies = client.xread(last, block=1000, count=1000) or []
            for stream, entries in replies:
                last[stream.decode()] = entries[-1][0]
                for entry_id, fields in entries:
                    if want is not None and fields.get(b"series") != want:
                        continue
                    print(format_prediction(entry_id, fields), file=out, flush=True)
                    shown += 1
                    if args.count is not None and shown >= args.count:
                        return 0
    except KeyboardInterrupt:
        pass
    return 0
