"""The deployment files: docker-compose.yml, Prometheus config and the Grafana dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Metric

from cli.parser import build_parser
from forecast.settings import Settings
from worker import metrics

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"  # vendored: tests/data/README.md
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "forecast.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = compose["services"]
    return result


def default(value: str) -> str:
    """`${VAR:-default}` interpolations replaced by their defaults, as Compose does unset."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def as_list(command: str | list[str]) -> list[str]:
    return command.split() if isinstance(command, str) else list(command)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices or ())


def test_core_services_exist(services: dict[str, Any]) -> None:
    assert {"redis", "trainer", "worker"} <= set(services)


def test_redis_is_durable_and_healthchecked(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    redis = services["redis"]
    assert default(redis["image"]) == "redis:7-alpine"
    command = " ".join(as_list(redis["command"]))
    assert "--appendonly yes" in command
    mounts = [v.split(":") for v in redis["volumes"]]
    assert ["redis-data", "/data"] in [m[:2] for m in mounts]
    assert "redis-data" in compose["volumes"]
    assert "redis-cli" in as_list(redis["healthcheck"]["test"])
    assert "ping" in as_list(redis["healthcheck"]["test"])
    assert redis["restart"] == "unless-stopped"


def test_worker_and_trainer_wait_for_healthy_redis(services: dict[str, Any]) -> None:
    for name in ("worker", "trainer"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert services["worker"]["restart"] == "unless-stopped"
    # the trainer watches the stream (retrains on a schedule and on drift): supervised too
    assert services["trainer"]["restart"] == "unless-stopped"
    assert "--watch" in as_list(services["trainer"]["command"])


def test_worker_is_scalable_and_supervised(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # a fixed host port would break --scale worker=3
    assert as_list(worker["command"]) == ["worker"]
    assert as_list(worker["healthcheck"]["test"])[1:] == ["forecast", "worker", "--check"]
    assert "stop_grace_period" in worker
    limits = worker["deploy"]["resources"]["limits"]
    assert limits["cpus"] and limits["memory"]
    env = env_of(worker)
    assert env["FORECAST_REDIS_URL"] == "redis://redis:6379/0"
    assert env["FORECAST_METRICS_PORT"] == "9108"


def test_commands_are_real_subcommands(services: dict[str, Any]) -> None:
    known = subcommands()
    for name, service in services.items():
        image = default(service.get("image", ""))
        if not image.startswith("forecast-worker"):
            continue
        command = as_list(service.get("command", ["worker"]))
        if command[0] == "forecast":
            command = command[1:]
        assert command[0] in known, (name, command)
        for check in [service.get("healthcheck", {}).get("test", [])]:
            words = as_list(check)
            if "forecast" in words:
                assert words[words.index("forecast") + 1] in known, (name, words)


def test_forecast_env_vars_are_settings_fields(services: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    seen = 0
    for name, service in services.items():
        for key in env_of(service):
            if key.startswith("FORECAST_"):
                seen += 1
                assert key[len("FORECAST_") :].lower() in fields, (name, key)
    assert seen
    # No other FORECAST_* name anywhere in the file (interpolations, comments with a typo...).
    for key in set(re.findall(r"\bFORECAST_[A-Z0-9_]+", COMPOSE.read_text())):
        assert key[len("FORECAST_") :].lower() in fields, key


def test_matches_the_compose_schema(compose: dict[str, Any]) -> None:
    import jsonschema

    # The spec names draft-07 (as ".../draft-07/schema", which jsonschema does not look up).
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert not errors, errors


def test_prometheus_scrapes_every_worker(services: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    worker_port = int(env_of(services["worker"])["FORECAST_METRICS_PORT"])
    assert worker_port == Settings.model_fields["metrics_port"].default
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    sd = jobs["forecast-worker"]["dns_sd_configs"][0]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    assert sd["port"] == worker_port
    prom = services["prometheus"]
    assert "monitoring" in prom["profiles"]
    assert any(v.startswith("./deploy/prometheus/prometheus.yml:") for v in prom["volumes"])


def test_grafana_provisioning(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    assert "monitoring" in grafana["profiles"]
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/forecast.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert any(v.split(":")[1] == path for v in grafana["volumes"])


def exported_names(metric: Metric) -> set[str]:
    """Sample names a metric family can expose, by its type."""
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["", "_sum", "_count", "_created"],
        "info": ["_info"],
        "gauge": [""],
    }[metric.type]
    return {metric.name + suffix for suffix in suffixes}


def test_dashboard_uses_only_real_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {name for expr in exprs for name in re.findall(r"\bforecast_[a-z0-9_]+", expr)}
    known: set[str] = set()
    for value in vars(metrics).values():
        if hasattr(value, "describe") and hasattr(value, "_name"):
            for family in value.describe():
                known |= exported_names(family)
    assert used, "dashboard references no forecast_* metric"
    assert used <= known, sorted(used - known)
    # The dashboard covers throughput, lag, latency, errors and the model.
    for needed in (
        "forecast_values_read_total", "forecast_predictions_written_total",
        "forecast_end_to_end_lag_seconds_bucket", "forecast_group_lag",
        "forecast_model_call_seconds_bucket", "forecast_deadletter_total",
        "forecast_model_reload_failures_total", "forecast_redis_reconnects_total",
        "forecast_model_info",
    ):
        assert needed in used, needed
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_images_are_parameters_defaulting_to_the_official_ones(services: dict[str, Any]) -> None:
    """Offline machines point the variables at local stand-ins; the defaults stay official."""
    official = {
        "redis": ("REDIS_IMAGE", "redis:7-alpine"),
        "prometheus": ("PROMETHEUS_IMAGE", "prom/prometheus:v2.53.1"),
        "grafana": ("GRAFANA_IMAGE", "grafana/grafana:11.1.3"),
        "worker": ("WORKER_IMAGE", "forecast-worker:latest"),
        "trainer": ("WORKER_IMAGE", "forecast-worker:latest"),
    }
    for name, (var, image) in official.items():
        assert services[name]["image"] == f"${{{var}:-{image}}}", name
    dockerfile = DOCKERFILE.read_text()
    arg = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert arg and arg.group(1) == "python:3.11-slim"
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}$", dockerfile, re.M)
    for name in ("worker", "trainer"):
        args = services[name]["build"]["args"]
        assert default(args["PYTHON_IMAGE"]) == "python:3.11-slim", name


def test_dockerfile_builds_offline_with_either_builder() -> None:
    """No `# syntax=` line (BuildKit would pull a frontend image) and no BuildKit-only
    `RUN --mount` (docker-compose 1.29 builds with the classic builder)."""
    dockerfile = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax=", dockerfile, re.M | re.I)
    assert "--mount" not in dockerfile
    user = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["forecast"\]$', dockerfile, re.M)  # exec form: PID 1


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set(DOCKERIGNORE.read_text().split())
    for path in (".git", ".venv", ".env", "**/__pycache__", ".pytest_cache", ".mypy_cache",
                 ".ruff_cache", "models", "out", "tests", "bench/results.json",
                 "bench/chaos-results.json"):
        assert path in ignored, path


def test_forecast_containers_run_read_only(services: dict[str, Any]) -> None:
    for name in ("worker", "trainer"):
        service = services[name]
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name
    mounts = [v.split(":") for v in services["trainer"]["volumes"]]
    assert ["models", "/app/models"] in [m[:2] for m in mounts]


def test_published_ports_are_loopback_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
