"""The `forecast` command line: one entry point, one subcommand per job.

Each subcommand's work lives in its own module; this file only parses arguments, builds
`Settings` (env, `.env`, then flags) and turns user errors into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import redis
from pydantic import ValidationError

from forecast.errors import CliError
from forecast.settings import Settings, load_settings, mask_url

# Flags shared by several subcommands, mapped 1:1 onto Settings fields.
_CONN_FLAGS: dict[str, dict[str, Any]] = {
    "--redis-url": {"dest": "redis_url", "help": "Redis URL (FORECAST_REDIS_URL)"},
    "--cluster": {
        "dest": "cluster",
        "action": "store_const",
        "const": True,
        "help": "use the Redis Cluster client",
    },
    "--shards": {"dest": "shards", "type": int, "help": "number of input shards (FORECAST_SHARDS)"},
}
_TRAIN_FLAGS: dict[str, dict[str, Any]] = {
    "--forecaster": {"dest": "forecaster", "choices": ["rnn", "hybrid"]},
    "--ensemble": {"dest": "ensemble", "type": int},
    "--arch": {"dest": "arch", "choices": ["simple_rnn", "lstm", "gru"]},
    "--n-steps": {"dest": "n_steps", "type": int},
    "--units": {"dest": "units", "type": int},
    "--epochs": {"dest": "epochs", "type": int},
    "--batch-size": {"dest": "train_batch_size", "type": int},
    "--learning-rate": {"dest": "learning_rate", "type": float},
    "--seed": {"dest": "seed", "type": int},
    "--val-fraction": {"dest": "val_fraction", "type": float},
    "--patience": {"dest": "patience", "type": int},
    "--train-budget-s": {"dest": "train_budget_s", "type": float},
    "--horizon": {"dest": "horizon", "type": int},
    "--coverage": {"dest": "coverage", "type": float},
    "--scaling": {"dest": "scaling", "choices": ["auto", "none", "window"]},
    "--season-period": {"dest": "season_period", "type": int},
    "--out": {"dest": "model_dir", "help": "local directory for the artifact and manifest"},
}
_WORKER_FLAGS: dict[str, dict[str, Any]] = {
    "--group": {"dest": "group"},
    "--consumer": {"dest": "consumer"},
    "--batch-size": {"dest": "batch_size", "type": int},
    "--block-ms": {"dest": "block_ms", "type": int},
    "--max-series": {"dest": "max_series", "type": int},
    "--lease-ttl-ms": {"dest": "lease_ttl_ms", "type": int},
    "--metrics-port": {"dest": "metrics_port", "type": int},
    "--log-json": {"dest": "log_json", "action": "store_const", "const": True},
    "--log-level": {"dest": "log_level"},
}
SETTING_DESTS = {
    spec["dest"] for flags in (_CONN_FLAGS, _TRAIN_FLAGS, _WORKER_FLAGS) for spec in flags.values()
}


def _add(
    p: argparse.ArgumentParser, flags: dict[str, dict[str, Any]], *, nested: bool = False
) -> None:
    # On nested parsers the default is SUPPRESS so a flag given before the action survives.
    default = argparse.SUPPRESS if nested else None
    for flag, spec in flags.items():
        p.add_argument(flag, default=default, **spec)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="forecast", description="Streaming RNN forecasts on Redis streams."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a model and publish it to the registry")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--example", action="store_true", help="the tutorial sequence 0..9")
    src.add_argument("--csv", metavar="FILE", help="long-format CSV: series,timestamp,value")
    src.add_argument("--from-stream", action="store_true", help="history in the input stream(s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-publish", action="store_true", help="write the artifact locally only")
    p.add_argument("--force", action="store_true", help="publish even if the gate says no")
    p.add_argument(
        "--report", metavar="DIR", help="write the evaluation report (JSON, Markdown, PNG) here"
    )
    _add(p, _CONN_FLAGS)
    _add(p, _TRAIN_FLAGS)
    p.set_defaults(run="trainer.cli:run")

    p = sub.add_parser("models", help="list, show, promote or roll back model versions")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ml = msub.add_parser("list", help="all versions with their scores")
    ms = msub.add_parser("show", help="one version's manifest")
    ms.add_argument("version", nargs="?", help="default: current")
    mp = msub.add_parser("promote", help="make VERSION current")
    mp.add_argument("version")
    mr = msub.add_parser("rollback", help="make the previous current version current again")
    _add(p, _CONN_FLAGS)
    for action in (ml, ms, mp, mr):
        _add(action, _CONN_FLAGS, nested=True)
    p.set_defaults(run="trainer.models_cli:run")

    p = sub.add_parser("worker", help="run the forecasting worker until SIGTERM")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if this host's worker heartbeat is fresh, else 1",
    )
    _add(p, _CONN_FLAGS)
    _add(p, _WORKER_FLAGS)
    p.set_defaults(run="worker.main:run")

    p = sub.add_parser("push", help="push values into the input stream")
    p.add_argument("series", nargs="?", help="series id")
    p.add_argument("values", nargs="*", help="numeric values")
    p.add_argument("--csv", metavar="FILE", help="long-format CSV: series,timestamp,value")
    p.add_argument("--ts", type=int, help="epoch ms of the first value (then +1 per value)")
    _add(p, _CONN_FLAGS)
    p.set_defaults(run="forecast.client:run_push")

    p = sub.add_parser("tail", help="follow the predictions stream")
    p.add_argument("--series", help="only this series")
    p.add_argument("--from-start", action="store_true", help="print existing predictions first")
    p.add_argument("--count", type=int, help="stop after this many predictions")
    p.add_argument(
        "--deadletter", action="store_true", help="follow the dead-letter stream instead"
    )
    _add(p, _CONN_FLAGS)
    p.set_defaults(run="forecast.client:run_tail")

    p = sub.add_parser("status", help="shards, owners, lag and worker health")
    _add(p, _CONN_FLAGS)
    p.add_argument("--group", dest="group", default=None)
    p.set_defaults(run="forecast.status:run")

    p = sub.add_parser("plot", help="plot recent values and predictions of a series to PNG")
    p.add_argument("--series", required=True)
    p.add_argument("--out", dest="plot_out", default="plot.png", help="PNG path")
    p.add_argument("--last", type=int, default=200, help="how many recent points")
    _add(p, _CONN_FLAGS)
    p.set_defaults(run="forecast.plot:run")

    p = sub.add_parser("demo", help="the tutorial end to end on a private Redis")
    p.add_argument(
        "--redis-url", dest="redis_url", default=None, help="use this Redis instead of starting one"
    )
    p.set_defaults(run="forecast.demo:run")

    p = sub.add_parser("bench", help="run the benchmark and print a table")
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller scenarios")
    p.add_argument("--only", help="comma-separated scenario names")
    p.add_argument("--out", dest="bench_out", default="bench/results.json")
    p.add_argument("--quality", action="store_true",
                   help="forecast accuracy on real series against AutoETS, AutoTheta, naive "
                        "(needs the bench extra); --only names series")
    p.set_defaults(run="forecast.bench:run")
    return parser


def _resolve(path: str) -> Callable[[argparse.Namespace, Settings], int | None]:
    module, func = path.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `forecast` script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k in SETTING_DESTS}
    try:
        settings = load_settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        parser.exit(2, f"forecast: error: setting {field}: {err['msg']}\n")
    if args.command == "bench" and getattr(args, "quality", False):
        args.run = "bench.quality:run"
    if args.command in ("train", "demo", "bench"):
        from forecast.tf import import_tensorflow

        import_tensorflow()
    try:
        rc = _resolve(args.run)(args, settings)
    except CliError as exc:
        parser.exit(2, f"forecast: error: {exc}\n")
    except redis.AuthenticationError:
        parser.exit(
            2,
            f"forecast: error: Redis refused the credentials for {mask_url(settings.redis_url)}\n",
        )
    except redis.ConnectionError as exc:
        parser.exit(
            2, f"forecast: error: cannot reach Redis at {mask_url(settings.redis_url)}: {exc}\n"
        )
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
