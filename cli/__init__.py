"""The `forecast` command line, the top layer: it parses arguments and calls the worker, the
trainer, the benchmark and the base package's commands (see `cli.main`)."""
