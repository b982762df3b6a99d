"""Logging set-up: JSON lines, the human format, idempotency and secret masking."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from forecast.errors import UsageError
from forecast.logs import SecretFilter, mask_secrets, setup_logging

log = logging.getLogger("worker.test")


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_json_lines_parse_with_extras() -> None:
    out = io.StringIO()
    setup_logging("INFO", json_lines=True, stream=out)
    log.info("batch %d committed", 3, extra={"shard": 2, "lag_s": 0.25, "series": b"s1"})
    log.debug("hidden")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["level"] == "INFO"
    assert event["logger"] == "worker.test"
    assert event["msg"] == "batch 3 committed"
    assert event["shard"] == 2 and event["lag_s"] == 0.25 and event["series"] == "s1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["ts"])


def test_json_exception_is_one_line() -> None:
    out = io.StringIO()
    setup_logging("INFO", json_lines=True, stream=out)
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed", extra={"nan": float("nan")})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert "ValueError: bad" in event["exc"]
    assert event["nan"] == "nan"


def test_human_format() -> None:
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    log.warning("model loaded", extra={"version": "v3", "note": "two words"})
    line = out.getvalue().rstrip("\n")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING worker\.test: model loaded "
        r'version=v3 note="two words"',
        line,
    ), line


def test_setup_is_idempotent() -> None:
    out = io.StringIO()
    setup_logging("INFO", stream=out)
    setup_logging("INFO", stream=out)
    setup_logging("DEBUG", json_lines=True, stream=out)
    log.debug("once")
    assert out.getvalue().count("once") == 1
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("tensorflow").level == logging.WARNING
    assert logging.getLogger("absl").level == logging.WARNING


def test_bad_level_is_a_cli_error() -> None:
    with pytest.raises(UsageError, match="unknown log level"):
        setup_logging("LOUD")


def test_sets_tf_cpp_min_log_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    setup_logging("INFO", stream=io.StringIO())
    import os

    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    setup_logging("INFO", stream=io.StringIO())
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


@pytest.mark.parametrize("json_lines", [False, True])
def test_secrets_never_reach_the_output(json_lines: bool) -> None:
    out = io.StringIO()
    setup_logging("INFO", json_lines=json_lines, stream=out)
    url = "redis://worker:s3cret-pw@redis:6379/0"
    nested = {"redis_url": url, "model_hmac_key": "k3y", "shards": 1}
    log.info(
        "connecting to %s", url,
        extra={"redis_url": url, "model_hmac_key": "k3y", "settings": nested},
    )
    log.info(f"f-string {url}")
    try:
        raise ConnectionError(f"cannot reach {url}")
    except ConnectionError:
        log.exception("lost")
    text = out.getvalue()
    assert "s3cret-pw" not in text
    assert "k3y" not in text
    assert "redis://worker:***@redis:6379/0" in text


def test_filter_is_on_the_handler() -> None:
    setup_logging("INFO", stream=io.StringIO())
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_forecast_handler", False)]
    assert len(ours) == 1
    assert any(isinstance(f, SecretFilter) for f in ours[0].filters)


def test_mask_secrets_cases() -> None:
    assert mask_secrets("rediss://default:p4ss@h:6380") == "rediss://default:***@h:6380"
    assert mask_secrets("redis://:only-pw@h") == "redis://:***@h"
    assert mask_secrets("redis://user@h:6379") == "redis://user@h:6379"
    assert mask_secrets("a redis://u:x@y b redis://v:z@w") == "a redis://u:***@y b redis://v:***@w"
    assert mask_secrets("nothing here") == "nothing here"
