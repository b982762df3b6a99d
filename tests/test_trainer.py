"""The trainer end to end: the tutorial, CSV and stream sources, the report, gate and CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import fakeredis
import numpy as np
import pytest
import redis

from cli.main import main
from forecast import keys, registry
from forecast.modelio import load_bytes
from tests import model_fixtures
from trainer import report

tutorial_model = model_fixtures.tutorial_model  # the shared session fixture
PNG = b"\x89PNG\r\n\x1a\n"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> fakeredis.FakeRedis:
    """The CLI's Redis is this fakeredis; the working directory has no `.env`."""
    client = fakeredis.FakeRedis()
    monkeypatch.setattr("forecast.redis_conn.connect", lambda settings, **kw: client)
    monkeypatch.chdir(tmp_path)
    return client


def test_tutorial_predicts_the_next_value(tutorial_model: Any) -> None:
    loaded = load_bytes(tutorial_model.blob, tutorial_model.manifest)  # a fresh load of the bytes
    out = loaded.predict(np.array([[7, 8, 9], [997, 998, 999]], dtype=np.float32))
    assert abs(out[0, 0] - 10.0) < 1.0
    assert abs(out[1, 0] - 1000.0) < 0.02 * 1000.0
    assert out[0, 1] <= out[0, 0] <= out[0, 2]


def test_tutorial_manifest(tutorial_model: Any) -> None:
    m = tutorial_model.manifest
    assert (m["arch"], m["n_steps"], m["horizon"], m["units"]) == ("simple_rnn", 3, 1, 50)
    assert ISO_UTC.match(m["created_at"])
    assert m["input_shape"] == [None, 3, 1] and m["outputs"] == "interval"
    assert m["size_bytes"] == len(tutorial_model.blob) and len(m["sha256"]) == 64
    assert len(m["conformal_q"]) == 1 and m["coverage"] == 0.9 and m["scaling"] == "window"
    assert m["data"] == {"source": "example", "series": 1, "values": 10, "skipped": 0,
                         "train_windows": 5, "val_windows": 2}
    metrics = m["metrics"]
    assert metrics["model"]["mae"] < 0.1 < metrics["naive"]["mae"] == 1.0
    assert set(metrics["model"]) == {"mae", "rmse", "mase", "smape"}
    assert m["keras_version"] and "hmac" not in m
    json.dumps(m)  # JSON-ready


def test_report_files(tutorial_model: Any, tmp_path: Path) -> None:
    paths = report.write(tmp_path / "rep", tutorial_model.manifest, tutorial_model.ws,
                         tutorial_model.holdout_pred)
    assert json.loads(paths["json"].read_text())["sha256"] == tutorial_model.manifest["sha256"]
    md = paths["md"].read_text()
    assert "| model |" in md and "| naive |" in md and "| seasonal_naive |" in md
    assert paths["png"].read_bytes().startswith(PNG)


def write_csv(path: Path, rng: np.random.Generator) -> Path:
    rows = ["series,timestamp,value"]
    t = np.arange(80)
    for name, scale in (("small", 1.0), ("big", 5000.0)):
        values = scale * (10 + 3 * np.sin(2 * np.pi * t / 8) + rng.normal(0, 0.2, len(t)))
        rows += [f"{name},{1_700_000_000_000 + 60_000 * i},{v:.6g}"
                 for i, v in zip(t, values, strict=True)]
    path.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")  # out of time order
    return path


def test_train_on_csv_without_publishing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FORECAST_MODEL_HMAC_KEY", "k3y")
    csv = write_csv(tmp_path / "data.csv", np.random.default_rng(3))
    rc = main(["train", "--csv", str(csv), "--no-publish", "--quiet", "--epochs", "15",
               "--n-steps", "8", "--horizon", "2", "--model-dir", str(tmp_path / "models"),
               "--report", str(tmp_path / "rep")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "not published" in out
    manifest = json.loads((tmp_path / "models/local/manifest.json").read_text())
    blob = (tmp_path / "models/local/model.keras").read_bytes()
    assert manifest["version"] == "local" and manifest["gate"]["decision"] == "not_published"
    assert manifest["data"]["series"] == 2 and manifest["horizon"] == 2
    assert manifest["metrics"]["season_period"] == 8
    loaded = load_bytes(blob, manifest, hmac_key="k3y")  # signed with the configured key
    assert loaded.predict(np.ones((4, 8), dtype=np.float32)).shape == (4, 6)
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {"report.json", "report.md",
                                                              "report.png"}


def test_train_from_stream_publishes(redis_url: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    client = redis.Redis.from_url(redis_url)
    for i in range(60):
        client.xadd(keys.VALUES, {"series": "a", "value": str(i), "ts": str(1000 + i)})
        client.xadd(keys.VALUES, {"series": "b", "value": str(1000 + 10 * i)})
    client.xadd(keys.VALUES, {"series": "a", "value": "not a number"})
    rc = main(["train", "--from-stream", "--redis-url", redis_url, "--quiet", "--epochs", "30",
               "--patience", "5", "--model-dir", str(tmp_path / "models")])
    assert rc == 0, capsys.readouterr()
    assert "published v1 as current" in capsys.readouterr().out
    assert registry.current_version(client) == "v1"
    manifest = registry.get_manifest(client, "v1")
    assert manifest["data"]["source"] == "stream" and manifest["data"]["series"] == 2
    assert manifest["data"]["skipped"] == 1 and manifest["gate"]["decision"] == "promote"
    entries: Any = client.xrange(keys.MODELS_STREAM)
    assert len(entries) == 1 and entries[0][1] == {b"event": b"published", b"version": b"v1",
                      b"sha256": manifest["sha256"].encode()}
    assert (tmp_path / "models/v1/model.keras").read_bytes() == registry.get_blob(client, "v1")
    client.close()


def test_gate_refuses_a_worse_model_and_force_overrides(
        tutorial_model: Any, fake: fakeredis.FakeRedis, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    registry.publish(fake, tutorial_model.blob, tutorial_model.manifest)
    args = ["train", "--example", "--quiet", "--epochs", "3", "--model-dir", str(tmp_path / "m")]
    assert main(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("forecast: gate: v2 stored but not current")
    assert "worse than current v1" in err[0]
    assert registry.current_version(fake) == "v1"
    refused = registry.get_manifest(fake, "v2")["gate"]
    assert refused["decision"] == "refuse"
    assert refused["scores"]["current"]["mae"] < refused["scores"]["current"]["new_mae"]

    assert main([*args, "--force"]) == 0
    assert "published v3 as current (forced)" in capsys.readouterr().out
    assert registry.current_version(fake) == "v3"
    assert fake.lrange(keys.MODEL_HISTORY, 0, -1) == [b"v1"]


def test_models_commands(tutorial_model: Any, fake: fakeredis.FakeRedis,
                         capsys: pytest.CaptureFixture[str]) -> None:
    registry.publish(fake, tutorial_model.blob, tutorial_model.manifest)
    registry.publish(fake, tutorial_model.blob, tutorial_model.manifest, make_current=False)
    fake.hset(keys.ACCURACY, mapping={"v1:abs_err_sum": "3.0", "v1:count": "12"})
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["VERSION", "ARCH"]
    assert lines[1].split()[0] == "*" and lines[1].split()[1] == "v1"
    assert lines[1].split()[8:11] == ["0.25", "12", "current"] and lines[2].split()[0] == "v2"
    assert main(["models", "show"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v1"
    assert main(["models", "promote", "v2"]) == 0
    assert registry.current_version(fake) == "v2"
    assert main(["models", "rollback"]) == 0
    assert "rolled back from v2 to v1" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["models", "promote", "v42"], "unknown model version 'v42'"),
    (["models", "show", "v42"], "unknown model version 'v42'"),
    (["models", "rollback"], "nothing to roll back to"),
])
def test_models_errors_are_one_line(argv: list[str], message: str, fake: fakeredis.FakeRedis,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("forecast: error: ") and message in err[0]


@pytest.mark.parametrize("content, message", [
    (None, "cannot read missing.csv"),
    ("series,timestamp,value\na,1,1\na,2,oops\n", "missing.csv:3: bad value 'oops'"),
    ("series,timestamp,value\na,1,1\na,2\n", "missing.csv:3: expected 3 columns, got 2"),
    ("name,value\na,1\n", "header must name the columns"),
    ("series,value\na,1\na,2\na,3\n", "too little data: the longest series has 3 values"),
    ("", "empty file"),
])
def test_train_data_errors_are_one_line(content: str | None, message: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    if content is not None:
        Path("missing.csv").write_text(content)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--csv", "missing.csv", "--no-publish", "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("forecast: error: ") and message in err[0]
