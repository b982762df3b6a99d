"""`forecast models list|show|promote|rollback`: inspect and switch registry versions."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping
from typing import Any

from forecast import evidence as evidence_mod
from forecast import keys, registry
from forecast.errors import ModelRejected, RegistryError, UsageError
from forecast.settings import Settings

log = logging.getLogger(__name__)

COLUMNS = ("", "VERSION", "ARCH", "N_STEPS", "HORIZON", "CREATED_AT", "VAL_MAE", "NAIVE_MAE",
           "LIVE_MAE", "LIVE_N", "STATE", "LIVE_MASE", "LIVE_COV", "LIVE_WIDTH")


def _num(value: Any) -> str:
    """A number for the table.

    >>> _num(0.000123456), _num(None), _num(12.0)
    ('0.0001235', '-', '12')
    """
    return "-" if value is None else f"{value:.4g}"


def live_errors(client: Any, versions: list[str]) -> dict[str, tuple[float | None, int]]:
    """Online MAE and count per version from the accuracy hash."""
    if not versions:
        return {}
    fields = [f"{v}:{k}" for v in versions for k in ("abs_err_sum", "count")]
    raw = client.hmget(keys.ACCURACY, fields)
    out: dict[str, tuple[float | None, int]] = {}
    for i, v in enumerate(versions):
        total, count = raw[2 * i], raw[2 * i + 1]
        n = int(float(count)) if count is not None else 0
        out[v] = (float(total) / n if total is not None and n > 0 else None, n)
    return out


def table(rows: list[dict[str, Any]], current: str | None, live: dict[str, Any],
          states: Mapping[str, str] | None = None,
          evidence: dict[str, evidence_mod.Live] | None = None) -> str:
    """The versions as an aligned text table; `*` marks the current version.

    >>> rows = table([{"version": "v1", "arch": "gru", "n_steps": 3, "horizon": 1,
    ...   "created_at": "2025-01-01T00:00:00Z", "metrics": {"model": {"mae": 0.5},
    ...   "naive": {"mae": 1.0}}}], "v1", {"v1": (0.25, 8)}).splitlines()
    >>> rows[0].split()[7:]
    ['LIVE_MAE', 'LIVE_N', 'STATE', 'LIVE_MASE', 'LIVE_COV', 'LIVE_WIDTH']
    >>> rows[1].split()[:2], rows[1].split()[6:]
    (['*', 'v1'], ['0.5', '1', '0.25', '8', 'current', '-', '-', '-'])
    """
    lines = [list(COLUMNS)]
    for m in rows:
        v = str(m.get("version"))
        metrics = m.get("metrics", {})
        mae, n = live.get(v, (None, 0))
        ev = (evidence or {}).get(v, evidence_mod.Live())
        state = "current" if v == current else (states or {}).get(v, "stored")
        lines.append(["*" if v == current else "", v, str(m.get("arch", "?")),
                      str(m.get("n_steps", "?")), str(m.get("horizon", "?")),
                      str(m.get("created_at", "missing" if m.get("missing") else "?")),
                      _num(metrics.get("model", {}).get("mae")),
                      _num(metrics.get("naive", {}).get("mae")), _num(mae), str(n), state,
                      _num(ev.mase), _num(ev.coverage), _num(ev.width)])
    widths = [max(len(r[i]) for r in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in lines)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one `models` action; returns the exit code."""
    from forecast.redis_conn import connect

    client = connect(settings)
    action = args.models_command
    try:
        if action == "list":
            rows = registry.list_versions(client)
            if not rows:
                print("no model versions yet; publish one with `forecast train`")
                return 0
            current = registry.current_version(client)
            versions = [str(m.get("version")) for m in rows]
            live = live_errors(client, versions)
            print(table(rows, current, live, registry.states(client),
                        evidence_mod.read_live(client, versions)))
        elif action == "show":
            version = args.version or registry.current_version(client)
            if version is None:
                raise UsageError("no current model; publish one with `forecast train`")
            print(json.dumps(registry.get_manifest(client, version), indent=2, sort_keys=True))
        elif action == "promote":
            if registry.promote(client, args.version):
                print(f"{args.version} is now current")
            else:
                print(f"{args.version} is already current")
        elif action == "shadow":
            registry.shadow(client, args.version)
            print(f"{args.version} is a candidate: workers score it live in shadow")
        elif action == "rollback":
            previous = registry.current_version(client)
            version = registry.rollback(client)
            print(f"rolled back from {previous} to {version}")
        else:  # pragma: no cover - argparse restricts the choices
            raise UsageError(f"unknown models action {action!r}")
    except (RegistryError, ModelRejected) as exc:
        raise UsageError(f"{exc}; see `forecast models list`") from None
    return 0

