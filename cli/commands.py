"""One function per subcommand: each imports its module when it runs (start-up stays fast:
`forecast push` never loads TensorFlow) and calls it; mypy checks every call."""

from __future__ import annotations

import argparse

from forecast.settings import Settings

Args = argparse.Namespace


def _tensorflow() -> None:
    from forecast.tf import import_tensorflow

    import_tensorflow()


def train(args: Args, settings: Settings) -> int:
    """`forecast train`."""
    _tensorflow()
    from trainer import cli as trainer_cli

    return trainer_cli.run(args, settings)


def models(args: Args, settings: Settings) -> int:
    """`forecast models ...`."""
    from trainer import models_cli

    return models_cli.run(args, settings)


def worker(args: Args, settings: Settings) -> int:
    """`forecast worker`."""
    from worker import main as worker_main

    return worker_main.run(args, settings)


def push(args: Args, settings: Settings) -> int:
    """`forecast push`."""
    from forecast import client

    return client.run_push(args, settings)


def tail(args: Args, settings: Settings) -> int:
    """`forecast tail`."""
    from forecast import client

    return client.run_tail(args, settings)


def get(args: Args, settings: Settings) -> int:
    """`forecast get`."""
    from forecast import client

    return client.run_get(args, settings)


def status(args: Args, settings: Settings) -> int:
    """`forecast status`."""
    from forecast import status as status_cmd

    return status_cmd.run(args, settings)


def plot(args: Args, settings: Settings) -> int:
    """`forecast plot`."""
    from forecast import plot as plot_cmd

    return plot_cmd.run(args, settings)


def replay(args: Args, settings: Settings) -> int:
    """`forecast replay`."""
    _tensorflow()
    from worker import replay as replay_cmd

    return replay_cmd.run(args, settings)


def demo(args: Args, settings: Settings) -> int:
    """`forecast demo`."""
    _tensorflow()
    from cli import demo as demo_cmd

    return demo_cmd.run(args, settings)


def bench(args: Args, settings: Settings) -> int:
    """`forecast bench [--quality | --gaps | --anomaly]`."""
    if getattr(args, "anomaly", False):  # the worker and trainer run as subprocesses
        from bench import anomaly

        return anomaly.run(args, settings)
    _tensorflow()
    if getattr(args, "quality", False):
        from bench import quality

        return quality.run(args, settings)
    if getattr(args, "gaps", False):
        from bench import gaps

        return gaps.run(args, settings)
    from bench import run as bench_run

    return bench_run.run(args, settings)
