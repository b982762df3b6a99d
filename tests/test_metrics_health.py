"""The metrics/health HTTP server: probes, 404s, /metrics content and port handling."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY

from worker import metrics
from worker.health import HealthServer, start_http_server


class Flags:
    """Toggleable liveness/readiness answers."""

    def __init__(self) -> None:
        self.live = True
        self.ready = False

    def is_live(self) -> bool:
        return self.live

    def is_ready(self) -> bool:
        return self.ready


def get(server: HealthServer, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, including error statuses."""
    try:
        with urllib.request.urlopen(server.url + path, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def flags() -> Flags:
    return Flags()


@pytest.fixture
def server(flags: Flags) -> Iterator[HealthServer]:
    srv = start_http_server("127.0.0.1", 0, flags.is_live, flags.is_ready)
    yield srv
    srv.stop()


def test_ephemeral_port_is_reported(server: HealthServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_probes_follow_the_callables(server: HealthServer, flags: Flags) -> None:
    assert get(server, "/healthz")[::2] == (200, "ok\n")
    assert get(server, "/readyz")[0] == 503
    flags.ready = True
    assert get(server, "/readyz")[0] == 200
    flags.live = False
    assert get(server, "/healthz")[0] == 503
    assert get(server, "/healthz?verbose=1")[0] == 503


def test_probe_that_raises_counts_as_failing() -> None:
    def boom() -> bool:
        raise RuntimeError("redis down")

    srv = start_http_server("127.0.0.1", 0, boom, boom)
    try:
        assert get(srv, "/healthz")[0] == 503
        assert get(srv, "/readyz")[0] == 503
    finally:
        srv.stop()


def test_unknown_path_is_404(server: HealthServer) -> None:
    assert get(server, "/")[0] == 404
    assert get(server, "/metricsx")[0] == 404


def test_metrics_show_a_counter_moving(server: HealthServer) -> None:
    before = REGISTRY.get_sample_value("forecast_values_read_total") or 0.0
    metrics.VALUES_READ.inc(7)
    status, ctype, body = get(server, "/metrics")
    assert status == 200
    assert ctype == CONTENT_TYPE_LATEST
    line = next(x for x in body.splitlines() if x.startswith("forecast_values_read_total "))
    assert float(line.split()[1]) == before + 7
    assert "forecast_end_to_end_lag_seconds_bucket" in body


def test_labelled_metrics_and_model_helper(server: HealthServer) -> None:
    metrics.DEADLETTERED.labels(reason="bad_value").inc()
    metrics.GROUP_LAG.labels(stream="forecast:values").set(42)
    metrics.set_model("v12", "lstm", 8)
    body = get(server, "/metrics")[2]
    assert 'forecast_deadletter_total{reason="bad_value"}' in body
    assert 'forecast_group_lag{stream="forecast:values"} 42.0' in body
    assert 'forecast_model_info{arch="lstm",n_steps="8",version="v12"} 1.0' in body
    assert "forecast_model_version_number 12.0" in body


def test_exact_metric_names() -> None:
    names = {
        "VALUES_READ": "forecast_values_read",
        "PREDICTIONS": "forecast_predictions_written",
        "DEADLETTERED": "forecast_deadletter",
        "BATCH_SIZE": "forecast_batch_size",
        "MODEL_LATENCY": "forecast_model_call_seconds",
        "COMMIT_LATENCY": "forecast_commit_seconds",
        "E2E_LAG": "forecast_end_to_end_lag_seconds",
        "GROUP_LAG": "forecast_group_lag",
        "PENDING": "forecast_pending",
        "MODEL_INFO": "forecast_model",
        "MODEL_VERSION": "forecast_model_version_number",
        "RELOADS": "forecast_model_reloads",
        "RELOAD_FAILURES": "forecast_model_reload_failures",
        "RECONNECTS": "forecast_redis_reconnects",
        "ONLINE_MAE": "forecast_online_mae",
        "SHARDS_OWNED": "forecast_shards_owned",
        "READY": "forecast_ready",
    }
    for attr, name in names.items():
        assert getattr(metrics, attr).describe()[0].name == name, attr
    assert min(metrics.E2E_LAG._upper_bounds) == 0.0005
    assert metrics.E2E_LAG._upper_bounds[-2] == 60.0  # then +Inf
    assert metrics.BATCH_SIZE._upper_bounds[0] == 1
    assert metrics.BATCH_SIZE._upper_bounds[-2] == 100_000


def test_port_in_use_raises_clear_oserror(flags: Flags) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}.*in use"):
            start_http_server("127.0.0.1", port, flags.is_live, flags.is_ready)


def test_stop_releases_the_port(flags: Flags) -> None:
    srv = start_http_server("127.0.0.1", 0, flags.is_live, flags.is_ready)
    port = srv.port
    srv.stop()
    srv.stop()  # idempotent
    again = start_http_server("127.0.0.1", port, flags.is_live, flags.is_ready)
    again.stop()
