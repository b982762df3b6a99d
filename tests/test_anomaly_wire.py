"""Anomaly verdicts in the worker: the output fields, forecast:anomalies written by the same
commit exactly once, FORECAST_ANOMALY_RATE=0, and the verdict state in the checkpoint."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis

from forecast import keys
from forecast.client import Producer
from forecast.grammar import Limits
from forecast.processes import wait_until
from forecast.redis_conn import connect
from forecast.settings import Settings
from testkit.cluster import LocalCluster, cluster_available
from tests.helpers import LinearModel, NaiveModel, StaticWatcher, make_worker
from worker.batch import Commit, Served, build_commit
from worker.checkpoint import blob_dtype, head_of
from worker.loop import Worker
from worker.pipeline import RETRYABLE
from worker.shard import Shard
from worker.state import SeriesStore

ALERT_FIELDS = [b"series", b"value", b"source_id", b"ts", b"score", b"kind", b"direction",
                b"prediction", b"lower", b"upper", b"model_version"]


def _calm(n: int, seed: int = 0) -> list[float]:
    """`n` values of a noisy flat line (the naive forecast's errors are the noise)."""
    return (10.0 + 0.1 * np.random.default_rng(seed).standard_normal(n)).round(4).tolist()


def _push(r: redis.Redis, series: str, values: list[float], ts0: int = 1_000) -> list[bytes]:
    return [r.xadd(keys.VALUES, {"series": series, "value": str(v), "ts": str(ts0 + i)})
            for i, v in enumerate(values)]


def _run(w: Any, done: Any, what: str) -> None:
    """Step an in-process worker until `done()`, taking a Redis error as its loop does."""
    def stepped() -> bool:
        try:
            w.step()
        except RETRYABLE as exc:
            w._disconnected(exc)
        return bool(done())
    wait_until(stepped, 30, 0.001, what=what)


def _handled(r: redis.Redis, n: int) -> bool:
    groups = r.xinfo_groups(keys.VALUES)
    return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0 \
        and r.xlen(keys.VALUES) >= n


def test_a_spike_is_flagged_on_its_output_entry_and_alerted_once(
        r: redis.Redis, redis_url: str) -> None:
    values = [*_calm(200), 25.0]
    ids = _push(r, "pump", values)
    w = make_worker(redis_url, model=NaiveModel("v1", half=0.5))
    _run(w, lambda: _handled(r, len(ids)), "every value handled")
    w.shutdown()
    out = {f[b"source_id"]: f for _, f in r.xrange(keys.PREDICTIONS)}
    spike = out[ids[-1]]
    assert (spike[b"anomaly"], spike[b"direction"], spike[b"kind"]) == (b"1", b"up", b"spike")
    assert 0.5 < float(spike[b"anomaly_score"]) <= 1.0
    # the first forecast (3rd value) has nothing before it; the 4th's error only sets a scale
    assert b"anomaly_score" not in out[ids[2]] and b"anomaly_score" not in out[ids[3]]
    calm = [out[i] for i in ids[4:-1]]
    assert all(f[b"anomaly"] == b"0" and b"kind" not in f for f in calm)
    assert all(0.0 <= float(f[b"anomaly_score"]) < 1.0 for f in calm)
    alerts = r.xrange(keys.ANOMALIES)
    assert len(alerts) == 1
    alert = alerts[0][1]
    assert list(alert) == ALERT_FIELDS
    before = out[ids[-2]]  # the forecast and interval the spike was judged against
    assert (alert[b"series"], alert[b"value"], alert[b"source_id"], alert[b"ts"]) == (
        b"pump", b"25", ids[-1], str(1_000 + len(values) - 1).encode())
    assert (alert[b"prediction"], alert[b"lower"], alert[b"upper"]) == (
        before[b"prediction"], before[b"lower"], before[b"upper"])
    assert alert[b"score"] == spike[b"anomaly_score"] and alert[b"model_version"] == b"v1"


def test_rate_zero_turns_verdicts_off(r: redis.Redis, redis_url: str) -> None:
    ids = _push(r, "pump", [*_calm(120), 25.0])
    w = make_worker(redis_url, model=NaiveModel("v1", half=0.5), anomaly_rate=0.0)
    _run(w, lambda: _handled(r, len(ids)), "every value handled")
    w.shutdown()
    out = [f for _, f in r.xrange(keys.PREDICTIONS)]
    assert len(out) == len(ids) - 2
    assert not any({b"anomaly_score", b"anomaly", b"kind", b"direction"} & set(f) for f in out)
    assert not r.exists(keys.ANOMALIES)


def test_a_commit_whose_reply_is_lost_writes_its_alert_once(
        r: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit that carries the alert lands, its reply is lost: the worker resets,
    recovers from the checkpoint and the pending entries, and carries on: one alert."""
    real = Shard.read_replies
    lost: list[Commit] = []

    def read_then_lose(self: Shard) -> list[Any]:
        commit = self.inflight
        replies = real(self)
        if commit is not None and commit.alerts and not lost:
            lost.append(commit)
            self.close()
            raise redis.ConnectionError("connection reset by peer")  # after Redis applied it
        return replies

    monkeypatch.setattr(Shard, "read_replies", read_then_lose)
    w = make_worker(redis_url, model=NaiveModel("v1", half=0.5), batch_size=7)
    calm = _calm(300)
    ids = _push(r, "pump", [*calm[:150], 25.0])
    _run(w, lambda: lost and _handled(r, len(ids)), "the spike committed, its reply lost")
    ids += _push(r, "pump", calm[150:], ts0=1_000 + 151)
    _run(w, lambda: _handled(r, len(ids)), "every value handled")
    w.shutdown()
    alerts = [f for _, f in r.xrange(keys.ANOMALIES)]
    assert [a[b"source_id"] for a in alerts].count(ids[150]) == 1
    sources = [a[b"source_id"] for a in alerts]
    assert len(sources) == len(set(sources))
    preds = [f[b"source_id"] for _, f in r.xrange(keys.PREDICTIONS)]
    assert sorted(preds) == sorted(set(preds)) and len(preds) == len(ids) - 2
    flagged = [f[b"source_id"] for _, f in r.xrange(keys.PREDICTIONS)
               if f.get(b"anomaly") == b"1"]
    assert flagged == sources


def _entries(series: bytes, values: list[float], start: int = 1) -> list[Any]:
    return [(f"{start + i}-0".encode(), [b"series", series, b"value", repr(v).encode()])
            for i, v in enumerate(values)]


def _scores(commit: Commit) -> list[str]:
    return [str(e.get("anomaly_score", "")) for e in commit.outputs.entries()]


def test_verdicts_survive_a_restart_from_the_checkpoint() -> None:
    values = [*_calm(400, seed=3), 12.0, *_calm(100, seed=4)]
    served = Served(NaiveModel("v1", half=0.5), anomaly_rate=0.01)
    no_load = lambda names: [None] * len(names)  # noqa: E731
    whole = build_commit(_entries(b"s", values), SeriesStore(3), served, Limits(), no_load)
    first = build_commit(_entries(b"s", values[:300]), SeriesStore(3), served, Limits(), no_load)
    blobs = dict(zip(first.state[0::2], first.state[1::2], strict=True))
    second = build_commit(_entries(b"s", values[300:], start=301), SeriesStore(3), served,
                          Limits(), lambda names: [blobs[n] for n in names])
    assert _scores(first) + _scores(second) == _scores(whole)
    assert [e.get("kind") for e in whole.outputs.entries()].count("spike") >= 1
    assert whole.alerts and first.alerts + second.alerts == whole.alerts


def test_an_old_checkpoint_restores_with_an_empty_verdict_state() -> None:
    row = np.zeros(1, dtype=blob_dtype(3, version=4))
    row["head"], row["count"], row["last_ts"], row["seq"] = head_of(4), 3, -1, -1
    row["aci_version"], row["pred"], row["lo"], row["hi"] = 1, 10.0, 9.5, 10.5
    row["v"] = [10.0, 10.1, 9.9]
    served = Served(NaiveModel("v1", half=0.5), anomaly_rate=0.01)
    commit = build_commit(_entries(b"s", _calm(5)), SeriesStore(3), served, Limits(),
                          lambda names: [row.tobytes()])
    scores = _scores(commit)
    assert len(scores) == 5 and scores[0] == "" and all(scores[1:])  # the first sets the scale


def test_a_dead_lettered_input_gets_no_verdict() -> None:
    class Breaks(LinearModel):
        """Naive, but not finite after a value above 20."""

        def predict(self, windows: np.ndarray) -> np.ndarray:
            last = windows[:, -1:].astype(np.float32)
            return np.where(last > 20, np.inf, last)

    commit = build_commit(_entries(b"s", [*_calm(200), 25.0]), SeriesStore(3), Served(
        Breaks(), anomaly_rate=0.01), Limits(), lambda names: [None] * len(names))
    assert [d[d.index("reason") + 1] for d in commit.deadletters] == ["prediction_not_finite"]
    assert commit.n_predictions == 198
    dead = b"201-0"  # the 25.0: no output entry, no alert
    assert dead not in [a[a.index("source_id") + 1] for a in commit.alerts]
    assert dead not in [e.get("source_id") for e in commit.outputs.entries()]


def test_a_value_near_the_one_before_it_is_not_flagged_however_wrong_its_forecast() -> None:
    """The error is the nearer of the forecast's and the previous value's (worker.anomaly.
    closer): a model that misfires now and then gets the verdicts of one that never does
    (the naive forecast: the value before), and a real spike is still flagged."""
    class Naive(LinearModel):
        def predict(self, windows: np.ndarray) -> np.ndarray:
            return windows[:, -1:].astype(np.float32)

    class Misfires(Naive):
        """Naive, but forecasts 30 after every value below 9.85 (about one in 14)."""

        def predict(self, windows: np.ndarray) -> np.ndarray:
            last = super().predict(windows)
            return np.where(last < 9.85, np.float32(30.0), last)

    values = [*_calm(600, seed=5), 13.0, *_calm(50, seed=6)]
    flags = []
    for model in (Naive(), Misfires()):
        commit = build_commit(_entries(b"s", values), SeriesStore(3), Served(
            model, anomaly_rate=0.01), Limits(), lambda names: [None] * len(names))
        flags.append([(e["source_id"], e["kind"]) for e in commit.outputs.entries()
                      if e.get("anomaly") == "1"])
    assert sum(v < 9.85 for v in values[50:600]) > 20
    assert flags[0] == flags[1] and (b"601-0", "spike") in flags[1]


def test_a_value_after_missing_steps_is_not_judged_unless_they_were_filled() -> None:
    values = _calm(120)
    for policy, judged in (("carry", False), ("fill", True)):
        entries = [(f"{i + 1}-0".encode(), [b"series", b"s", b"value", repr(v).encode(),
                                            b"ts", str(1000 * i + (5000 if i >= 100 else 0))
                                            .encode()]) for i, v in enumerate(values)]
        served = Served(NaiveModel("v1", half=0.5), gap_policy=policy, anomaly_rate=0.01)
        commit = build_commit(entries, SeriesStore(3), served, Limits(),
                              lambda names: [None] * len(names))
        out = {bytes(e["source_id"]): e for e in commit.outputs.entries()}
        assert out[b"101-0"].get("gap_steps") == "5"
        assert ("anomaly_score" in out[b"101-0"]) is judged, policy
        assert "anomaly_score" in out[b"102-0"], policy


@pytest.mark.skipif(not cluster_available(), reason="redis-server/redis-cli missing")
def test_on_a_cluster_the_alert_goes_to_its_shards_own_stream(cluster: LocalCluster) -> None:
    cluster.flush()
    shards = 3
    settings = Settings(_env_file=None, redis_url=cluster.url, cluster=True, shards=shards,  # type: ignore[call-arg]
                        metrics_port=0, block_ms=50, lease_ttl_ms=1000, consumer="c1")
    client: Any = connect(settings)
    w = Worker(connect(settings, timeout=5), settings,
               watcher=StaticWatcher(NaiveModel("v1", half=0.5)))
    values = [*_calm(150), 25.0]
    Producer(client, shards, cluster=True).push_many(
        [("pump", str(v), 1_000 + i) for i, v in enumerate(values)])
    mine = keys.shard_keys(keys.shard_of("pump", shards), shards, cluster=True)
    streams = keys.anomaly_streams(shards, cluster=True)
    assert mine.anomalies in streams and client.keyslot(mine.anomalies) == client.keyslot(
        mine.values)
    _run(w, lambda: client.xlen(mine.predictions) == len(values) - 2
         and client.xpending(mine.values, "forecast")["pending"] == 0, "every value handled")
    w.shutdown()
    alerts = client.xrange(mine.anomalies)
    assert [(f[b"series"], f[b"value"]) for _, f in alerts] == [(b"pump", b"25")]
    assert sum(client.xlen(s) for s in streams) == 1 and not client.exists(keys.ANOMALIES)
    client.close()


def test_tail_anomalies_follows_the_flagged_values(r: redis.Redis, redis_url: str) -> None:
    import io

    from cli.parser import build_parser
    from forecast.client import run_tail
    from forecast.errors import UsageError

    r.xadd(keys.PREDICTIONS, {"series": "pump", "prediction": "10", "model_version": "v1",
                              "source_id": "1-0"})
    r.xadd(keys.ANOMALIES, {"series": "pump", "value": "25", "source_id": "2-0", "score": "0.96",
                            "kind": "spike", "direction": "up", "prediction": "10",
                            "lower": "9.5", "upper": "10.5", "model_version": "v1"})
    settings = Settings(_env_file=None, redis_url=redis_url)  # type: ignore[call-arg]
    out = io.StringIO()
    args = build_parser().parse_args(["tail", "--anomalies", "--from-start", "--count", "1"])
    assert run_tail(args, settings, out=out) == 0
    assert out.getvalue() == ("ANOMALY spike up  pump  value=25  score=0.96  prediction=10  "
                              "interval=[9.5, 10.5]  model=v1  source=2-0\n")
    both = build_parser().parse_args(["tail", "--anomalies", "--deadletter"])
    with pytest.raises(UsageError, match="one of them"):
        run_tail(both, settings, out=out)


def test_the_verdict_state_grows_with_the_store_and_a_forgotten_series_starts_empty() -> None:
    from worker.anomaly import judge

    store = SeriesStore(width=3, initial=2)
    names = [b"a", b"b", b"c", b"d", b"e"]
    slots = store.place(names, lambda s: [None] * len(s))
    assert len(store.cal_q) >= 5 and len(store.calibration().scale) == len(store.vals)
    for _ in range(2):  # the first error sets each scale, the second is scored
        judge(store.calibration(), slots, np.zeros(5), np.ones(5), 0.01)
    assert store.cal_n[slots].tolist() == [1] * 5
    assert store.forget([b"a"]) == 1  # the series TTL swept it
    again = store.place([b"a"], lambda s: [None] * len(s))
    assert store.cal_n[again].tolist() == [0] and np.isnan(store.cal_scale[again]).all()
    assert store.cal_n[store.index[b"b"]] == 1


def _predictions(commit: Commit) -> dict[bytes, float]:
    return {bytes(e["source_id"]): float(e["prediction"]) for e in commit.outputs.entries()}


def test_replace_puts_a_spikes_forecast_in_the_window_whatever_the_batches() -> None:
    values = [*_calm(300, seed=5), 25.0, *_calm(20, seed=6)]
    no_load = lambda names: [None] * len(names)  # noqa: E731
    runs = {}
    for replace in (False, True):
        for per_batch in (len(values), 1):  # catch-up in one batch, or live one by one
            served = Served(NaiveModel("v1", half=0.5), anomaly_rate=0.01,
                            replace_spikes=replace)
            store, commits = SeriesStore(3), []
            entries = _entries(b"s", values)
            for i in range(0, len(values), per_batch):
                commits.append(build_commit(entries[i:i + per_batch], store, served, Limits(),
                                            no_load))
            preds = {k: v for c in commits for k, v in _predictions(c).items()}
            scores = {bytes(e["source_id"]): str(e.get("anomaly_score", ""))
                      for c in commits for e in c.outputs.entries()}
            runs[replace, per_batch] = preds, scores
    for replace in (False, True):  # the same outputs however the values are batched
        assert runs[replace, len(values)] == runs[replace, 1]
    keep, replaced = runs[False, 1][0], runs[True, 1][0]
    spike = b"301-0"
    assert keep[spike] == 25.0  # naive: the spike is the next forecast
    assert abs(replaced[spike] - 10.0) < 1.0  # its own forecast took its place in the window
    assert runs[False, 1][1][spike] == runs[True, 1][1][spike]  # judged the same way
    assert float(runs[True, 1][1][spike]) > 0.5  # and flagged
    assert all(abs(replaced[f"{i}-0".encode()] - 10.0) < 1.0 for i in range(302, 322))


def test_replace_with_interleaved_series_and_several_spikes_does_not_depend_on_batching(
        ) -> None:
    a = [*_calm(200, seed=1), 30.0, *_calm(30, seed=2), -10.0, *_calm(40, seed=3)]
    b = [*_calm(215, seed=4), 40.0, 41.0, *_calm(55, seed=5)]
    entries = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        entries += [(f"{i + 1}-0".encode(), [b"series", b"a", b"value", repr(x).encode()]),
                    (f"{i + 1}-1".encode(), [b"series", b"b", b"value", repr(y).encode()])]
    no_load = lambda names: [None] * len(names)  # noqa: E731
    seen = []
    for size in (len(entries), 37, 1):
        served = Served(NaiveModel("v1", half=0.5), anomaly_rate=0.01, replace_spikes=True)
        store = SeriesStore(3)
        commits = [build_commit(entries[i:i + size], store, served, Limits(), no_load)
                   for i in range(0, len(entries), size)]
        seen.append([e for c in commits for e in c.outputs.entries()])
    assert seen[0] == seen[1] == seen[2]
    kinds = [(e["series"], e.get("kind")) for e in seen[0] if e.get("kind")]
    assert (b"a", "spike") in kinds and (b"b", "level_shift") in kinds
    # as written: every flagged entry above 0.5, a level shift no stranger than its spike too
    flagged = [e for e in seen[0] if e.get("anomaly") == "1"]
    assert all(float(e["anomaly_score"]) > 0.5 for e in flagged)
    assert [e["anomaly_score"] for e in flagged if e["kind"] == "level_shift"] == ["0.5001"]
