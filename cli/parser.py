"""The argument parser of the `forecast` command: every subcommand, and every setting's flag
(derived from the `Settings` fields, so a flag cannot drift from its setting)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Literal, get_args, get_origin

from cli import commands
from forecast.settings import Settings, cli_commands


def _flag(name: str) -> str:
    """The flag of a setting.

    >>> _flag("n_steps")
    '--n-steps'
    """
    extra = Settings.model_fields[name].json_schema_extra
    custom = extra.get("flag") if isinstance(extra, dict) else None
    return str(custom) if custom else "--" + name.replace("_", "-")


def setting_flags(command: str) -> dict[str, dict[str, Any]]:
    """argparse specs of every setting flag of `command`, derived from the Settings fields."""
    specs: dict[str, dict[str, Any]] = {}
    for name, field in Settings.model_fields.items():
        if command not in cli_commands(name):
            continue
        env = f"FORECAST_{name.upper()}"
        spec: dict[str, Any] = {"dest": name, "help": f"{field.description} ({env})"}
        kind = field.annotation
        if kind is bool:
            spec.update(action="store_const", const=True)
        elif get_origin(kind) is Literal:
            spec["choices"] = list(get_args(kind))
        elif kind in (int, float):
            spec["type"] = kind
        specs[_flag(name)] = spec
    return specs


SETTING_DESTS = set(Settings.model_fields)


class DeprecatedAlias(argparse.Action):
    """An old flag spelling: still works, with a warning naming the new one."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        """Store the value under the new flag's destination and warn once on stderr."""
        print(f"forecast: warning: {option_string} is deprecated here; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add(p: argparse.ArgumentParser, command: str, *, nested: bool = False) -> None:
    # On nested parsers the default is SUPPRESS so a flag given before the action survives.
    default = argparse.SUPPRESS if nested else None
    for flag, spec in setting_flags(command).items():
        p.add_argument(flag, default=default, **spec)


def _alias(p: argparse.ArgumentParser, old: str, new: str, **spec: Any) -> None:
    p.add_argument(old, action=DeprecatedAlias, new=new, default=None,
                   help=argparse.SUPPRESS, **spec)


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
    p.add_argument("--watch", action="store_true",
                   help="keep running: retrain on a schedule and on drift, publish candidates")
    p.add_argument(
        "--report", metavar="DIR", help="write the evaluation report (JSON, Markdown, PNG) here"
    )
    _add(p, "train")
    _alias(p, "--batch-size", "--train-batch-size", dest="train_batch_size", type=int)
    _alias(p, "--out", "--model-dir", dest="model_dir")
    p.set_defaults(run=commands.train)

    p = sub.add_parser("models", help="list, show, promote or roll back model versions")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ml = msub.add_parser("list", help="all versions with their scores")
    ms = msub.add_parser("show", help="one version's manifest")
    ms.add_argument("version", nargs="?", help="default: current")
    mp = msub.add_parser("promote", help="make VERSION current")
    mp.add_argument("version")
    mr = msub.add_parser("rollback", help="make the previous current version current again")
    msh = msub.add_parser("shadow", help="make VERSION a candidate, scored live in shadow")
    msh.add_argument("version")
    _add(p, "models")
    for action in (ml, ms, mp, mr, msh):
        _add(action, "models", nested=True)
    p.set_defaults(run=commands.models)

    p = sub.add_parser("worker", help="run the forecasting worker until SIGTERM")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if this host's worker heartbeat is fresh, else 1",
    )
    _add(p, "worker")
    p.set_defaults(run=commands.worker)

    p = sub.add_parser("push", help="push values into the input stream")
    p.add_argument("series", nargs="?", help="series id")
    p.add_argument("values", nargs="*", help="numeric values")
    p.add_argument("--csv", metavar="FILE", help="long-format CSV: series,timestamp,value")
    p.add_argument("--ts", type=int, help="epoch ms of the first value (then +1 per value)")
    _add(p, "push")
    p.set_defaults(run=commands.push)

    p = sub.add_parser("tail", help="follow the predictions stream")
    p.add_argument("--series", help="only this series")
    p.add_argument("--from-start", action="store_true", help="print existing predictions first")
    p.add_argument("--count", type=int, help="stop after this many predictions")
    p.add_argument(
        "--deadletter", action="store_true", help="follow the dead-letter stream instead"
    )
    p.add_argument(
        "--anomalies", action="store_true",
        help="follow the flagged values (forecast:anomalies) instead",
    )
    _add(p, "tail")
    p.set_defaults(run=commands.tail)

    p = sub.add_parser("get", help="the latest forecast of each SERIES (forecast:latest)")
    p.add_argument("series", nargs="+", help="series ids")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _add(p, "get")
    p.set_defaults(run=commands.get)

    p = sub.add_parser("status", help="shards, owners, lag and worker health")
    _add(p, "status")
    p.set_defaults(run=commands.status)

    p = sub.add_parser("plot", help="plot recent values and predictions of a series to PNG")
    p.add_argument("--series", required=True)
    p.add_argument("--out", dest="plot_out", default="plot.png", help="PNG path")
    p.add_argument("--last", type=int, default=200, help="how many recent points")
    _add(p, "plot")
    p.set_defaults(run=commands.plot)

    p = sub.add_parser("replay", help="run a version over a range of the input history")
    p.add_argument("--version", required=True, help="the model version to replay, e.g. v3")
    p.add_argument("--from", dest="start", default="-", help="first entry id (default: oldest)")
    p.add_argument("--to", dest="end", default="+", help="last entry id (default: newest)")
    p.add_argument("--into", help="output stream (default forecast:replay:<VERSION>)")
    _add(p, "replay")
    p.set_defaults(run=commands.replay)

    p = sub.add_parser("demo", help="the tutorial end to end on a private Redis")
    p.add_argument(
        "--redis-url", dest="redis_url", default=None, help="use this Redis instead of starting one"
    )
    p.set_defaults(run=commands.demo)

    p = sub.add_parser("bench", help="run the benchmark and print a table")
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller scenarios")
    p.add_argument("--only", help="comma-separated scenario names")
    p.add_argument("--out", dest="bench_out", default=None,
                   help="where to write the results JSON (default bench/results/results.json)")
    p.add_argument("--quality", action="store_true",
                   help="forecast accuracy on real series against AutoETS, AutoTheta, naive "
                        "(needs the bench extra); --only names series")
    p.add_argument("--gaps", action="store_true",
                   help="the gap policies on real series with values removed (needs the "
                        "bench extra); --only names series")
    p.add_argument("--anomaly", action="store_true",
                   help="the anomaly verdicts on the NAB corpus through the real worker, "
                        "scored by NAB's rules; --only names NAB files")
    p.set_defaults(run=commands.bench)
    return parser
