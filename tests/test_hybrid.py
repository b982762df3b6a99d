"""The hybrid forecaster: experts from the window, the saved artifact, bad data, the CLI."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cli.main import main
from forecast.layers import expert_matrix, expert_names, seasonal_indices
from forecast.modelio import load_bytes
from tests.model_fixtures import plain_settings
from trainer import artifact
from trainer.data import Dataset

pytestmark = pytest.mark.tf


def seasonal(n: int, seed: int, level: float = 100.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    return scale * (level + 0.3 * t + 8 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, n))


@functools.lru_cache(maxsize=1)
def tiny() -> Any:
    data = Dataset("t", {f"s{i}": seasonal(150, i, scale=10.0 ** i) for i in range(3)})
    s = plain_settings(forecaster="hybrid", n_steps=40, horizon=2, units=4, ensemble=2,
                       epochs=3, patience=0, season_period=12, arch="gru")
    return artifact.train_model(data, s)


def test_experts_are_exact_on_what_they_model() -> None:
    t = np.arange(40.0)
    pattern = np.array([3.0, -1.0, 0.0, -2.0])
    y = 0.5 * t + pattern[t.astype(int) % 4]
    w = expert_matrix(32, 4, 4)
    names = expert_names(32, 4, 4)
    f = (y[:32] @ w).reshape(len(names), 4)
    np.testing.assert_allclose(f[names.index("s_drift")], y[32:36], atol=1e-9)
    np.testing.assert_allclose(f[names.index("snaive")], y[28:32], atol=1e-9)
    np.testing.assert_allclose(seasonal_indices(y[:32], 4)[[0, 1, 2, 3]],
                               pattern - pattern.mean(), atol=1e-9)
    assert np.allclose(w.sum(axis=0), 1.0)  # every expert forecasts a constant as itself
    assert expert_names(6, 1, 4) == expert_names(6, 1, 1)  # a season needs two in the filter


def test_hybrid_artifact_loads_in_safe_mode_and_scales() -> None:
    trained = tiny()
    m = trained.manifest
    assert m["forecaster"] == "hybrid" and m["outputs"] == "interval" and m["ensemble"] == 2
    # the filter length is the one of filter_choices(40, 1) == [14, 20, 27] best on validation
    losses = m["filter_val_loss"]
    assert set(losses) == {"14", "20", "27"}
    assert m["filter_len"] == int(min(losses, key=losses.get))
    # 27 values hold two seasons of 12, so the seasonal experts join (10 + 11, each twice)
    assert m["experts"] == (42 if m["filter_len"] == 27 else 20) and m["season_period"] == 12
    loaded = load_bytes(trained.blob, m)
    x = np.stack([seasonal(40, 9)[None, :][0], seasonal(40, 10, level=5000.0)])
    out = loaded.predict(x.astype(np.float32)).astype(np.float64)
    assert out.shape == (2, 6) and np.all(np.isfinite(out))
    assert np.all(out[:, 2:4] <= out[:, :2]) and np.all(out[:, :2] <= out[:, 4:6])
    big = loaded.predict((1e6 * x).astype(np.float32)).astype(np.float64)
    np.testing.assert_allclose(big, 1e6 * out, rtol=2e-3)  # scale-equivariant


@pytest.mark.parametrize("window", [
    np.zeros(40), np.full(40, 7.0), np.full(40, -3e30), np.r_[np.zeros(39), 1.0],
    np.tile([0.0, 1e20], 20), np.linspace(-1.0, 1.0, 40), np.full(40, 1e-30),
])
def test_odd_windows_give_finite_forecasts(window: np.ndarray) -> None:
    loaded = load_bytes(tiny().blob, tiny().manifest)
    out = loaded.predict(window[None, :].astype(np.float32))
    assert np.all(np.isfinite(out)), out


def test_constant_window_forecasts_the_constant() -> None:
    loaded = load_bytes(tiny().blob, tiny().manifest)
    out = loaded.predict(np.full((1, 40), 42.0, dtype=np.float32))
    np.testing.assert_allclose(out, 42.0, rtol=1e-4)


def write_csv(path: Path, series: dict[str, np.ndarray]) -> Path:
    lines = ["series,timestamp,value"]
    for name, values in series.items():
        lines += [f"{name},{i},{v!r}" for i, v in enumerate(values.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_csv_defaults_choose_the_hybrid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    csv = write_csv(tmp_path / "d.csv", {"a": seasonal(160, 1), "b": seasonal(160, 2, 1e4),
                                         "flat": np.full(160, 3.0)})
    rc = main(["train", "--csv", str(csv), "--no-publish", "--epochs", "2", "--units", "4",
               "--ensemble", "1", "--out", str(tmp_path / "m")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "chosen for this data" in out and "forecaster=hybrid" in out
    manifest = json.loads((tmp_path / "m/local/manifest.json").read_text())
    assert manifest["forecaster"] == "hybrid" and manifest["n_steps"] == 84
    assert manifest["season_period"] == 12 and manifest["auto"]["per_series"] is True
    assert "period 12" in manifest["auto"]["families"] and "epochs" not in manifest["auto"]
    assert manifest["gate"]["scores"]["metric"] == "mase"


@pytest.mark.parametrize("content, message", [
    ("series,value\na,1\na,nan\n", "bad value 'nan'"),
    ("series,value\na,1\na,\n", "bad value ''"),
    ("series,value\n" + "".join(f"a,{1e300 * (i + 1)}\n" for i in range(40)), "float32"),
    ("series,value\na,1\na,2\na,3\na,4\n", "too little data"),
])
def test_bad_training_data_is_one_line(content: str, message: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    Path("d.csv").write_text(content)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--csv", "d.csv", "--no-publish", "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("forecast: error: ") and message in err[0], err


def test_constant_and_huge_series_train_to_a_finite_model(tmp_path: Path) -> None:
    data = Dataset("t", {"flat": np.full(120, 5.0), "huge": seasonal(120, 4, scale=1e30),
                         "tiny": seasonal(120, 5, scale=1e-20)})
    s = plain_settings(forecaster="hybrid", n_steps=24, units=4, ensemble=1, epochs=2,
                       patience=0)
    trained = artifact.train_model(data, s)
    assert np.all(np.isfinite(trained.holdout_pred))
    assert trained.manifest["metrics"]["model"]["mase"] is not None


def test_a_worker_process_serves_the_hybrid_as_it_predicts_offline(redis_url: str) -> None:
    import redis

    from forecast import keys, registry
    from forecast.processes import stop_process
    from tests.helpers import wait_for_len
    from tests.procs import start_worker

    trained = tiny()
    client = redis.Redis.from_url(redis_url)
    version = registry.publish(client, trained.blob, dict(trained.manifest))
    proc = start_worker(redis_url, "hybrid-test", interval_gamma=0)  # the model's own intervals
    try:
        values = seasonal(60, 21, level=300.0)
        for v in values:
            client.xadd(keys.VALUES, {"series": "h1", "value": repr(float(v))})
        preds = wait_for_len(lambda: [f for _, f in client.xrange(keys.PREDICTIONS)], 21,
                             timeout=120, what="hybrid predictions")
    finally:
        stop_process(proc)
        client.close()
    assert {p[b"model_version"] for p in preds} == {version.encode()}
    loaded = load_bytes(trained.blob, trained.manifest)
    x = np.stack([values[t - 40:t] for t in range(40, 61)]).astype(np.float32)
    offline = loaded.predict(x)
    served = np.array([[float(c) for c in p[b"path"].split(b",")] for p in preds])
    np.testing.assert_allclose(served, offline[:, :2], rtol=1e-5)
    lower = np.array([[float(c) for c in p[b"lower_path"].split(b",")] for p in preds])
    np.testing.assert_allclose(lower, offline[:, 2:4], rtol=1e-5)


def test_a_network_that_loses_to_naive_still_serves_the_best_forecaster(
        r: Any, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Random walks: the trained hybrid cannot beat naive, so the gate refuses it and the
    best single forecaster of each family on validation is published as current instead,
    with its intervals (exit code 5): a registry with data always serves forecasts."""
    from forecast import registry

    rng = np.random.default_rng(3)
    csv = write_csv(tmp_path / "walks.csv",
                    {f"y{s}": np.round(np.cumsum(rng.normal(size=90)) + 50, 4)
                     for s in range(8)})
    rc = main(["train", "--csv", str(csv), "--redis-url", redis_url, "--quiet", "--epochs", "2",
               "--units", "4", "--ensemble", "1", "--model-dir", str(tmp_path / "m")])
    out = capsys.readouterr()
    assert rc == 5, out.err
    assert "does not beat naive" in out.err and "published v2 as current (fallback:" in out.out
    assert registry.current_version(r) == "v2"
    manifest = json.loads(r.get("forecast:model:v2:manifest"))
    assert manifest["fallback"]["families"] and manifest["outputs"] == "interval"
    assert manifest["gate"]["decision"] == "promote"


def test_a_series_naive_forecasts_better_is_served_by_naive_alone(
        r: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long random walk among seasonal series: on its own validation windows the last
    value does about as well as the hybrid (a margin of -50% here: a two-epoch net is close
    to naive on a walk), on the seasonal ones far worse; the version serves the walk by naive
    alone (with an interval) once its window is full, the others by the hybrid."""
    from forecast import bundle
    from trainer import families, smoothing

    monkeypatch.setattr(families, "SINGLE_MARGIN", -0.5)
    monkeypatch.setattr(smoothing, "SMOOTH_MARGIN", 1.0)  # never chosen here

    rng = np.random.default_rng(5)
    walk = 50.0 + np.cumsum(rng.normal(0.0, 1.0, 600))
    data = Dataset("t", {"walk": walk, **{f"s{i}": seasonal(200, i) for i in range(3)}})
    s = plain_settings(forecaster="hybrid", per_series=True, units=4, ensemble=1, epochs=2,
                       patience=0, horizon=1)
    trained = artifact.train_model(data, s)
    index, parts = bundle.unpack(trained.blob)
    assert index["single_series"] == ["walk"], index.get("single_series")
    for spec in index["families"]:  # in every family: a series' stored period may move
        assert spec["single_forecaster"] == families.SINGLE and spec["single"] in parts
    loaded = load_bytes(trained.blob, trained.manifest)
    n = loaded.n_steps
    x = np.stack([walk[-n:], seasonal(200, 0)[-n:]]).astype(np.float32)
    names = [b"walk", b"s0"]
    out, full = loaded.predict_rows(x, np.full(2, n), loaded.periods_of(names),
                                    loaded.single_of(names))
    assert full.all()
    assert out[0, 0] == pytest.approx(walk[-1], rel=1e-5)  # the last value
    assert out[0, 1] < out[0, 0] < out[0, 2]  # with its interval
    assert out[1, 0] != pytest.approx(x[1, -1], rel=1e-3)  # the hybrid, not the last value
    # the gate scores a current version as it is served: the same version scores the same
    from forecast import registry
    from trainer import publish

    registry.publish(r, trained.blob, dict(trained.manifest))
    scores = publish.score_current(r, trained)
    assert scores is not None and scores["windows"] > 0
    assert scores["mase"] == pytest.approx(scores["new_mase"], rel=1e-5)


def test_a_series_its_own_smoothing_forecasts_better_is_served_by_it(
        r: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the margin forced (-900%: every series with a fit is chosen), a trending series
    gets its own smoothing parameters in the version: served as the filter of its window,
    with an interval of `smooth_q` x its sigma; the gate scores the version as served."""
    from forecast import bundle, registry
    from forecast.smoothing import Smooth, apply, weights
    from trainer import publish, smoothing

    monkeypatch.setattr(smoothing, "SMOOTH_MARGIN", -9.0)
    rng = np.random.default_rng(7)
    trend = 10.0 + 0.5 * np.arange(300) + rng.normal(0.0, 1.0, 300)
    data = Dataset("t", {"trend": trend, **{f"s{i}": seasonal(200, i) for i in range(2)}})
    s = plain_settings(forecaster="hybrid", per_series=True, units=4, ensemble=1, epochs=2,
                       patience=0, horizon=1)
    trained = artifact.train_model(data, s)
    index, _ = bundle.unpack(trained.blob)
    raw = index["smooth_series"]["trend"]
    p = Smooth.from_json(raw)
    assert p.trend and p.sigma > 0 and len(index["smooth_q"]) == 1
    loaded = load_bytes(trained.blob, trained.manifest)
    n, k = loaded.n_steps, raw["n_steps"]
    x = np.stack([trend[-n:], seasonal(200, 0)[-n:]]).astype(np.float32)
    names = [b"trend", b"s0"]
    smooth = loaded.smooth_of(names)
    assert smooth[0] >= 0 and (smooth[1] >= 0) == ("s0" in index["smooth_series"])
    out, full = loaded.predict_rows(x, np.full(2, n), loaded.periods_of(names), None, smooth)
    expected = float(apply(x[None, 0, n - k:], weights(k, [p], 1)[0], p.log)[0, 0])
    assert full.all() and out[0, 0] == pytest.approx(expected, rel=1e-5)
    assert out[0, 0] == pytest.approx(trend[-1] + 0.5, abs=3.0)  # the trend goes on
    half = index["smooth_q"][0] * p.sigma
    assert out[0, 1] == pytest.approx(expected - half, rel=1e-5)
    assert out[0, 2] == pytest.approx(expected + half, rel=1e-5)
    young, young_full = loaded.predict_rows(x, np.full(2, k - 1), loaded.periods_of(names),
                                            None, smooth)
    assert not young_full[0]  # warm-up until its window is full, smoothing what it has
    young_expected = apply(x[None, 0, n - k + 1:], weights(k - 1, [p], 1)[0], p.log)[0, 0]
    assert young[0, 0] == pytest.approx(float(young_expected), rel=1e-5)
    # scored with the fit of the training part (the gate's figures), served refitted on all
    scored = trained.smooth.scored().fits["trend"]
    assert p.sigma != scored.sigma
    assert trained.manifest["sha256"] == hashlib.sha256(trained.blob).hexdigest()
    registry.publish(r, trained.blob, dict(trained.manifest))
    scores = publish.score_current(r, trained)
    assert scores is not None and 0 < scores["mase"] < 1.5 * scores["new_mase"]
