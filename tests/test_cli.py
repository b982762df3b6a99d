"""CLI contract: bad arguments give one line and exit 2; push (args and CSV) and tail work."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from cli.main import main
from cli.parser import build_parser
from forecast import keys
from forecast.client import run_tail


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args", [
    ("push", "s1", "abc"),
    ("push", "s1", "nan"),
    ("push", "", "1"),
    ("push", "--csv", "/nonexistent.csv"),
    ("worker", "--batch-size", "0"),
    ("push", "--redis-url", "ftp://x", "s1", "1"),
    ("push", "--redis-url", "redis://127.0.0.1:1/0", "s1", "1"),
    ("models", "--redis-url", "redis://127.0.0.1:1/0", "list"),
])
def test_bad_arguments_give_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    out = cli(*args)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("forecast: error: "), out.stderr
    assert "Traceback" not in out.stderr


def test_push_values_and_csv_then_tail(r: redis.Redis, redis_url: str, tmp_path: Path,
                                      capsys: Any) -> None:
    assert main(["push", "--redis-url", redis_url, "s1", "1", "2.5", "--ts", "1000"]) == 0
    csv = tmp_path / "in.csv"
    csv.write_text("series,timestamp,value\na,1700000000000,3\nb,,4\n")
    assert main(["push", "--redis-url", redis_url, "--csv", str(csv)]) == 0
    rows = [f for _, f in r.xrange(keys.VALUES)]
    seqs = [int(f.pop(b"seq")) for f in rows]  # every pushed value carries its sequence number
    assert seqs == sorted(set(seqs))
    assert rows == [
        {b"series": b"s1", b"value": b"1", b"ts": b"1000"},
        {b"series": b"s1", b"value": b"2.5", b"ts": b"1001"},
        {b"series": b"a", b"value": b"3", b"ts": b"1700000000000"},
        {b"series": b"b", b"value": b"4"},
    ]
    csv.write_text("series,timestamp,value\na,,x\n")
    with pytest.raises(SystemExit) as exc:
        main(["push", "--redis-url", redis_url, "--csv", str(csv)])
    assert exc.value.code == 2
    assert "in.csv:2" in capsys.readouterr().err

    r.xadd(keys.PREDICTIONS, {"series": "s1", "prediction": "3.5", "model_version": "v1",
                              "source_id": "1-0"})
    args = build_parser().parse_args(["tail", "--from-start", "--count", "1"])
    from forecast.settings import Settings

    out = io.StringIO()
    assert run_tail(args, Settings(redis_url=redis_url), out=out) == 0
    assert out.getvalue() == "s1  prediction=3.5  model=v1  source=1-0\n"


def test_setting_flags_come_from_the_settings_fields() -> None:
    from cli.parser import setting_flags
    from forecast.settings import Settings, cli_commands

    for name in Settings.model_fields:
        for command in cli_commands(name):
            assert any(spec["dest"] == name for spec in setting_flags(command).values()), name
    parser = build_parser()
    train = parser.parse_args(["train", "--example", "--train-batch-size", "8", "--arch", "gru"])
    worker = parser.parse_args(["worker", "--batch-size", "7", "--max-deliveries", "3"])
    assert (train.train_batch_size, train.arch) == (8, "gru")
    assert (worker.batch_size, worker.max_deliveries) == (7, 3)
    assert not hasattr(worker, "train_batch_size")
    assert "model_hmac_key" not in vars(worker)  # a secret is never a flag
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--example", "--arch", "transformer"])  # choices from Literal


def test_old_train_flags_still_work_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["train", "--example", "--batch-size", "16", "--out", "m"])
    assert (args.train_batch_size, args.model_dir) == (16, "m")
    err = capsys.readouterr().err
    assert "--batch-size is deprecated here; use --train-batch-size" in err
    assert "--out is deprecated here; use --model-dir" in err


def test_tail_on_a_cluster_never_skips_what_arrives_in_an_idle_stream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Read one stream at a time, a "$" would skip entries that arrive in another stream
    between its reads: tail starts from each stream's newest id and follows real ids."""
    import fakeredis

    from forecast import client as client_mod
    from forecast.settings import Settings

    fake = fakeredis.FakeRedis()
    streams = keys.output_streams(2, True)
    fake.xadd(streams[0], {"series": "old", "prediction": "1"})  # before tail: not shown
    calls: list[dict[str, Any]] = []

    class Recording:
        def xrevrange(self, *args: Any, **kwargs: Any) -> Any:
            return fake.xrevrange(*args, **kwargs)

        def xread(self, last: dict[str, Any], **kwargs: Any) -> Any:
            calls.append(dict(last))
            if len(calls) == 1:  # while stream 0 is read, values arrive in the idle stream 1
                fake.xadd(streams[1], {"series": "s", "prediction": "2"})
            return fake.xread(last, **kwargs)

    monkeypatch.setattr(client_mod, "connect", lambda *a, **k: Recording())
    out = io.StringIO()
    args = build_parser().parse_args(["tail", "--count", "1"])
    run_tail(args, Settings(_env_file=None, cluster=True, shards=2), out=out)  # type: ignore[call-arg]
    assert out.getvalue().startswith("s  prediction=2")
    assert all("$" not in last.values() for last in calls)
