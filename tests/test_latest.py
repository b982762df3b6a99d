"""forecast:latest (the newest forecast of every series, by key), `forecast get`, the
client's `latest()`, and the streams of followed series (FORECAST_FOLLOW)."""

from __future__ import annotations

import io
import json
from typing import Any

import redis

from cli.parser import build_parser
from forecast import keys
from forecast.client import latest, run_get, run_tail
from forecast.processes import wait_until
from forecast.settings import Settings
from tests.helpers import LinearModel, make_worker


def test_latest_forecast_by_key_and_the_streams_of_followed_series(
        redis_url: str, r: redis.Redis) -> None:
    client: Any = r
    pipe = client.pipeline(transaction=True)
    for t in range(6):
        for s in ("pump-1", "pump-2", "fan"):
            pipe.xadd(keys.VALUES, {"series": s, "value": str(t * (2 if s == "fan" else 1)),
                                    "ts": str(1000 + t)})
    pipe.execute()
    w = make_worker(redis_url, "w1", model=LinearModel(has_interval=True), follow="pump-1, f?n")
    wait_until(lambda: (w.step(), client.xlen(keys.PREDICTIONS) == 12)[1], 20, 0.001,
               what="12 predictions")
    w.shutdown()
    entries = [{k.decode(): v.decode() for k, v in f.items()}
               for _, f in client.xrange(keys.PREDICTIONS)]
    newest = {e["series"]: e for e in entries}
    for series, entry in newest.items():  # the latest forecast is the series' last entry
        assert latest(client, series) == {k: v for k, v in entry.items() if k != "series"}
    assert latest(client, "nobody") is None
    assert newest["fan"]["prediction"] == "12" and newest["fan"]["ts"] == "1005"
    own = {s: [dict(f) for _, f in client.xrange(f"forecast:predictions:{s}")]
           for s in ("pump-1", "pump-2", "fan")}
    assert len(own["pump-1"]) == len(own["fan"]) == 4 and own["pump-2"] == []
    assert own["pump-1"] == [f for _, f in client.xrange(keys.PREDICTIONS)
                             if f[b"series"] == b"pump-1"]
    settings = Settings(_env_file=None, redis_url=redis_url)  # type: ignore[call-arg]
    out = io.StringIO()
    assert run_get(build_parser().parse_args(["get", "fan", "nobody", "--json"]), settings,
                   out) == 1  # one series has no forecast
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    assert got[0]["prediction"] == "12" and got[1] == {"series": "nobody", "found": False}
    # `tail --series` reads a followed series' own stream
    client.xadd("forecast:predictions:fan", {"series": "fan", "prediction": "99",
                                             "model_version": "v1", "source_id": "9-0"})
    out = io.StringIO()
    run_tail(build_parser().parse_args(["tail", "--series", "fan", "--count", "1",
                                        "--from-start"]), settings, out)
    assert out.getvalue().startswith("fan  prediction=6")
