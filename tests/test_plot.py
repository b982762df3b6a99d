"""`forecast plot`: the PNG renderer and reading values/predictions back from Redis."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import fakeredis
import pytest

import forecast.plot as plot
from forecast import keys
from forecast.errors import UsageError
from forecast.settings import Settings

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > len(PNG_SIGNATURE) and data.startswith(PNG_SIGNATURE)


def settings(**overrides: object) -> Settings:
    """Settings that ignore any local `.env`."""
    values: dict[str, Any] = {"shards": 1, "cluster": False, **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_render_plot_writes_png(tmp_path: Path) -> None:
    actual = [(i, float(i % 7)) for i in range(30)]
    predicted: list[tuple[int, float, float | None, float | None]] = [
        (i + 1, float(i % 7) + 0.5, float(i % 7) - 1, float(i % 7) + 2) for i in range(30)
    ]
    predicted.append((31, 1.0, None, None))
    out = plot.render_plot(actual, predicted, "s1", tmp_path / "sub" / "p.png")
    assert out == tmp_path / "sub" / "p.png"
    assert is_png(out)


def test_render_plot_with_only_values_or_nothing(tmp_path: Path) -> None:
    assert is_png(plot.render_plot([(0, 1.0), (1, 2.0)], [], "s", tmp_path / "a.png"))
    assert is_png(plot.render_plot([], [(1, 2.0, None, None)], "s", tmp_path / "b.png"))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeRedis:
    r = fakeredis.FakeRedis()
    monkeypatch.setattr(plot, "connect", lambda settings: r)
    return r


def push(r: fakeredis.FakeRedis, series: str, value: float, stream: str = keys.VALUES) -> bytes:
    entry_id = r.xadd(stream, {"series": series, "value": repr(value)})
    assert isinstance(entry_id, bytes)
    return entry_id


def predict(r: fakeredis.FakeRedis, series: str, source: bytes, value: float, **extra: str) -> None:
    fields: dict[Any, Any] = {"series": series, "prediction": repr(value), "model_version": "v1",
              "source_id": source, **extra}
    r.xadd(keys.PREDICTIONS, fields)


def args(tmp_path: Path, series: str = "s1", last: int = 200) -> argparse.Namespace:
    return argparse.Namespace(series=series, plot_out=str(tmp_path / "out.png"), last=last)


def test_run_plots_values_and_predictions(
    fake: fakeredis.FakeRedis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(10):
        source = push(fake, "s1", float(i))
        push(fake, "other", 100.0 + i)
        predict(fake, "s1", source, float(i + 1), lower=str(i), upper=str(i + 2))
        predict(fake, "other", source, 0.0)
    assert plot.run(args(tmp_path), settings()) == 0
    out = tmp_path / "out.png"
    assert capsys.readouterr().out.strip() == str(out)
    assert is_png(out)


def test_reading_and_alignment(fake: fakeredis.FakeRedis) -> None:
    ids = []
    for i in range(5):
        ids.append(push(fake, "s1", float(i)))
        push(fake, "s2", -1.0)
    predict(fake, "s1", ids[1], 2.5)
    predict(fake, "s1", ids[4], 5.0, lower="4", upper="6")
    predict(fake, "s2", ids[4], 99.0)
    actual = plot.read_actual(fake, keys.VALUES, b"s1", last=3)
    assert sorted(actual.values()) == [2.0, 3.0, 4.0]
    predicted = plot.read_predictions(fake, keys.PREDICTIONS, b"s1", want=10)
    assert {f.value for f in predicted.values()} == {2.5, 5.0}
    values, preds = plot.align(actual, predicted, last=10)
    # ids[1] is older than the 3 values read, so it becomes step 0 of the timeline.
    assert values == [(1, 2.0), (2, 3.0), (3, 4.0)]
    assert preds == [(1, 2.5, None, None), (4, 5.0, 4.0, 6.0)]


def test_scan_pages_through_long_streams(
    fake: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plot, "PAGE", 7)
    for i in range(50):
        push(fake, "s1" if i % 5 == 0 else "noise", float(i))
    actual = plot.read_actual(fake, keys.VALUES, b"s1", last=100)
    assert sorted(actual.values()) == [float(i) for i in range(0, 50, 5)]
    limited = plot.read_actual(fake, keys.VALUES, b"s1", last=100, limit=10)
    assert sorted(limited.values()) == [40.0, 45.0]


def test_sharded_input_stream(fake: fakeredis.FakeRedis, tmp_path: Path) -> None:
    conf = settings(shards=4)
    stream = keys.values_stream(keys.shard_of("s9", 4), 4)
    for i in range(4):
        push(fake, "s9", float(i), stream=stream)
    assert plot.run(args(tmp_path, series="s9"), conf) == 0
    assert is_png(tmp_path / "out.png")


def test_unknown_series_is_a_one_line_error(fake: fakeredis.FakeRedis, tmp_path: Path) -> None:
    push(fake, "s1", 1.0)
    with pytest.raises(UsageError) as err:
        plot.run(args(tmp_path, series="nope"), settings())
    assert "nope" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out.png").exists()


def test_last_must_be_positive(fake: fakeredis.FakeRedis, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        plot.run(args(tmp_path, last=0), settings())
