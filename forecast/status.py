"""`forecast status`: shards, their owners and lag, workers and the current model."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from forecast import keys
from forecast.redis_conn import connect, group_info
from forecast.settings import Settings


def collect(client: Any, settings: Settings) -> dict[str, Any]:
    """Everything `forecast status` shows, as plain data."""
    now = int(time.time() * 1000)
    shards = []
    for k in range(settings.shards):
        sk = keys.shard_keys(k, settings.shards, settings.cluster)
        lease = client.get(sk.lease)
        info = group_info(client, sk.values, settings.group)
        shards.append(
            {
                "shard": k,
                "stream": sk.values,
                "length": client.xlen(sk.values),
                "owner": lease.decode().split(":", 1)[1] if lease else None,
                "lag": info.get("lag"),
                "pending": info.get("pending"),
                "series_checkpointed": client.hlen(sk.state),
            }
        )
    workers = []
    since = now - keys.WORKER_FORGET_MS
    for member, score in client.zrangebyscore(keys.WORKERS, since, "+inf", withscores=True):
        raw = client.get(keys.heartbeat(member.decode()))
        status = json.loads(raw) if raw else {}
        workers.append(
            {
                "consumer": member.decode(),
                "age_s": round((now - score) / 1000, 1),
                # the liveness rule the workers' shard assignment uses (leases.heartbeat)
                "alive": raw is not None and now - score <= settings.lease_ttl_ms,
                "ready": status.get("ready"),
                "model": status.get("model_version"),
                "shards": status.get("shards"),
                "values": status.get("values"),
            }
        )
    current = client.get(keys.MODEL_CURRENT)
    trainer = client.get(keys.TRAINER)
    return {"model": current.decode() if current else None, "shards": shards, "workers": workers,
            "trainer": json.loads(trainer) if trainer else None}


def trainer_line(t: dict[str, Any] | None, now_ms: int) -> str:
    """One line on the watching trainer.

    >>> line = trainer_line({"state": "watching", "first_model_refused": True, "reason": "no",
    ...                      "next_training_at": 61_000, "last_version": "v1"}, 1_000)
    >>> for part in line.split("; "): print(part)
    watching trainer: watching
    FIRST MODEL REFUSED (v1: no): nothing is current
    next training in 60s
    >>> trainer_line(None, 0)
    'watching trainer: (none running)'
    """
    if not t:
        return "watching trainer: (none running)"
    line = f"watching trainer: {t.get('state')}"
    if t.get("first_model_refused"):
        line += (f"; FIRST MODEL REFUSED ({t.get('last_version')}: {t.get('reason')}): "
                 "nothing is current")
    elif t.get("last_version"):
        line += f"; last trained {t['last_version']} ({t.get('last_result')})"
    if t.get("next_training_at"):
        line += f"; next training in {max(0, (t['next_training_at'] - now_ms) // 1000)}s"
    return line


def render(data: dict[str, Any]) -> str:
    """The status as a readable table."""
    lines = [
        f"current model: {data['model'] or '(none published)'}",
        trainer_line(data.get("trainer"), int(time.time() * 1000)),
        "",
        f"{'shard':>5}  {'stream':<24} {'length':>9} {'lag':>9} {'pending':>8}  owner",
    ]
    for s in data["shards"]:
        lag = "-" if s["lag"] is None else s["lag"]
        pend = "-" if s["pending"] is None else s["pending"]
        lines.append(
            f"{s['shard']:>5}  {s['stream']:<24} {s['length']:>9} {lag:>9} {pend:>8}  "
            f"{s['owner'] or '(unowned)'}"
        )
    lines += ["", f"{'worker':<28} {'alive':<6} {'ready':<6} {'model':<7} {'seen':>6}  shards"]
    for w in data["workers"]:
        lines.append(
            f"{w['consumer']:<28} {w['alive']!s:<6} {w['ready']!s:<6} {w['model']!s:<7} "
            f"{w['age_s']:>5}s  {w['shards']}"
        )
    if not data["workers"]:
        lines.append("(no live workers)")
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The `forecast status` command."""
    print(render(collect(connect(settings), settings)))
    return 0
