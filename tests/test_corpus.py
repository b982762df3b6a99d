"""A corpus of malformed messages through a real `forecast worker` process.

Every bad message is interleaved with a good one of the same series: each bad one must be
dead-lettered once with its reason (and leave the window alone), each good one predicted
once, with the value an offline replay of the good messages gives.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from forecast import keys, processes
from forecast.processes import WorkerProcess, wait_until
from tests import procs

pytestmark = [pytest.mark.slow, pytest.mark.tf]

MB = 1024 * 1024
S = b"good"  # the series most bad messages claim, so a wrongly accepted one shows in its window

# (fields as flat pairs, reason). The worker's defaults: series <= 256 bytes, value/ts <= 64.
BAD: list[tuple[list[bytes], str]] = [
    ([b"foo", b"bar"], "missing_series"),
    ([b"value", b"1"], "missing_series"),
    ([b"Series", S, b"value", b"1"], "missing_series"),
    ([b"series", S], "missing_value"),
    ([b"series", S, b"Value", b"1"], "missing_value"),
    ([b"series", S, b"ts", b"5"], "missing_value"),
    ([b"series", b"", b"value", b"1"], "empty_series"),
    ([b"series", b"x" * MB, b"value", b"1"], "series_too_long"),
    ([b"series", b"x" * 257, b"value", b"1"], "series_too_long"),
    ([b"series", b"a\x00b", b"value", b"1"], "bad_series"),
    ([b"series", b"a\nb", b"value", b"1"], "bad_series"),
    ([b"series", b"a\x7f", b"value", b"1"], "bad_series"),
    ([b"series", b"\xff\xfe", b"value", b"1"], "bad_series"),
    ([b"series", "a\u0085".encode(), b"value", b"1"], "bad_series"),
    ([b"series", S, b"value", b""], "bad_value"),
    ([b"series", S, b"value", b"nan"], "bad_value"),
    ([b"series", S, b"value", b"NaN"], "bad_value"),
    ([b"series", S, b"value", b"inf"], "bad_value"),
    ([b"series", S, b"value", b"-inf"], "bad_value"),
    ([b"series", S, b"value", b"Infinity"], "bad_value"),
    ([b"series", S, b"value", b"1e999"], "value_not_finite"),
    ([b"series", S, b"value", b"-1e999"], "value_not_finite"),
    ([b"series", S, b"value", b"0x10"], "bad_value"),
    ([b"series", S, b"value", b"1_000"], "bad_value"),
    ([b"series", S, b"value", b" 1"], "bad_value"),
    ([b"series", S, b"value", b"1 "], "bad_value"),
    ([b"series", S, b"value", b"\t1\n"], "bad_value"),
    ([b"series", S, b"value", b"1,5"], "bad_value"),
    ([b"series", S, b"value", b"abc"], "bad_value"),
    ([b"series", S, b"value", b"1e"], "bad_value"),
    ([b"series", S, b"value", b"--1"], "bad_value"),
    ([b"series", S, b"value", b"."], "bad_value"),
    ([b"series", S, b"value", b"1.2.3"], "bad_value"),
    ([b"series", S, b"value", b"\x00\x01\x02"], "bad_value"),
    ([b"series", S, b"value", b"\xff\xd8\xff"], "bad_value"),
    ([b"series", S, b"value", "\u0661\u0662".encode()], "bad_value"),  # Arabic-Indic digits
    ([b"series", S, b"value", "\u22121".encode()], "bad_value"),  # Unicode minus
    ([b"series", S, b"value", b"true"], "bad_value"),
    ([b"series", S, b"value", b"1" * 65], "value_too_long"),
    ([b"series", S, b"value", b"1" + b"0" * 400], "value_too_long"),
    ([b"series", S, b"value", b"1" * MB], "value_too_long"),
    ([b"series", S, b"value", b"1", b"ts", b"-5"], "bad_ts"),
    ([b"series", S, b"value", b"1", b"ts", b"abc"], "bad_ts"),
    ([b"series", S, b"value", b"1", b"ts", b"1.5"], "bad_ts"),
    ([b"series", S, b"value", b"1", b"ts", b""], "bad_ts"),
    ([b"series", S, b"value", b"1", b"ts", b"1e3"], "bad_ts"),
    ([b"series", S, b"value", b"1", b"ts", b"0x10"], "bad_ts"),
    ([b"series", S, b"value", b"1", b"ts", b" 5"], "bad_ts"),
    ([b"series", S, b"value", b"1", b"ts", b"1" * 16], "bad_ts"),
    ([b"series", S, b"series", S, b"value", b"1"], "duplicate_field"),
    ([b"series", S, b"value", b"1", b"value", b"2"], "duplicate_field"),
    ([b"series", S, b"value", b"1", b"ts", b"5", b"ts", b"6"], "duplicate_field"),
    ([b"series", S, b"value", b"nan", b"value", b"1"], "duplicate_field"),
]

# Unusual but valid values for series S (each gets a prediction).
ODD_VALUES: list[list[bytes]] = [
    [b"series", S, b"value", b"+3"], [b"series", S, b"value", b"3."],
    [b"series", S, b"value", b".5"], [b"series", S, b"value", b"1E2"],
    [b"series", S, b"value", b"-0"], [b"series", S, b"value", b"1e-999"],
    [b"series", S, b"value", b"0" * 63 + b"7"], [b"value", b"4", b"series", S],
    [b"series", S, b"value", b"5", b"extra", b"ignored"],
    [b"series", S, b"value", b"6", b"\xff\x00", b"\x00\xff"],
]
# Unusual but valid series ids (three values each, the third is predicted).
ODD_SERIES: list[bytes] = [b"s" * 256, "s\u00e9rie-\u00fc\u4e2d".encode(), b" ", b"a b",
                           b"emoji-\xf0\x9f\x98\x80"]


@pytest.fixture
def worker(redis_url: str) -> Iterator[WorkerProcess]:
    """One worker process serving the tiny model."""
    version = procs.publish_tiny_model(redis_url)
    proc = procs.start_worker(redis_url, "corpus")
    try:
        client = redis.Redis.from_url(redis_url)
        procs.wait_serving(client, "corpus", version)
        client.close()
        yield proc
    finally:
        processes.stop_process(proc)


def xadd(client: Any, fields: list[bytes]) -> bytes:
    """XADD with raw, possibly repeated field names."""
    return client.execute_command("XADD", keys.VALUES, "*", *fields)


def test_malformed_corpus_through_a_real_worker(r: redis.Redis, worker: WorkerProcess) -> None:
    """>= 40 bad messages each dead-lettered once with its reason; every good one predicted."""
    from forecast import modelio

    assert len(BAD) >= 40
    client: Any = r
    good: list[bytes] = []
    bad: dict[bytes, str] = {}
    value = 10.0
    for fields in ([b"series", S, b"value", b"1"], [b"series", S, b"value", b"2"]):  # warm-up
        xadd(client, fields)
    for fields, reason in BAD:
        bad[xadd(client, fields)] = reason
        value += 1.0
        good.append(xadd(client, [b"series", S, b"value", repr(value).encode()]))
    for fields in ODD_VALUES:
        good.append(xadd(client, fields))
    for series in ODD_SERIES:
        ids = [xadd(client, [b"series", series, b"value", str(v).encode()]) for v in (1, 2, 3)]
        good.append(ids[-1])
    # Out-of-order ts on one series: older is dead-lettered, equal is accepted.
    o = b"ordered"
    for v, ts in ((1, b"2000"), (2, b"2000")):
        xadd(client, [b"series", o, b"value", str(v).encode(), b"ts", ts])
    bad[xadd(client, [b"series", o, b"value", b"99", b"ts", b"1999"])] = "ts_out_of_order"
    good.append(xadd(client, [b"series", o, b"value", b"3", b"ts", b"2000"]))
    good.append(xadd(client, [b"series", o, b"value", b"4", b"ts", b"2001"]))

    wait_until(lambda: r.xlen(keys.DEADLETTER) >= len(bad) and r.xlen(keys.PREDICTIONS) >= len(good)
             and r.xpending(keys.VALUES, "forecast")["pending"] == 0, 60, 0.1,
             what="every message handled")
    dead = {f[b"source_id"]: f for _, f in client.xrange(keys.DEADLETTER)}
    assert client.xlen(keys.DEADLETTER) == len(dead) == len(bad)
    wrong = {eid: (reason, dead[eid][b"reason"].decode()) for eid, reason in bad.items()
             if dead.get(eid, {}).get(b"reason", b"").decode() != reason}
    assert not wrong, f"wrong or missing dead-letter reasons: {wrong}"
    assert all(len(f.get(b"series", b"")) <= 4096 + 64 for f in dead.values())  # 1 MB truncated

    preds = client.xrange(keys.PREDICTIONS)
    count = Counter(f[b"source_id"] for _, f in preds)
    assert not (set(count) & set(bad)), "a bad message was predicted"
    assert sorted(count) == sorted(good) and set(count.values()) == {1}
    model = modelio.load_version(client, client.get(keys.MODEL_CURRENT).decode())
    entries = [(eid, f) for eid, f in client.xrange(keys.VALUES) if eid not in bad]
    reference = procs.reference_predictions(model, entries)
    for _, f in preds:
        expected = reference[(f[b"series"], f[b"source_id"])]
        assert float(f[b"prediction"]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert worker.poll() is None, "the worker died on bad input"
    assert processes.stop_process(worker) == 0
