"""Errors that the CLI turns into a one-line message and a non-zero exit."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing error: printed as `forecast: error: <message>`, exit code 2."""


class ModelRejected(Exception):
    """A model artifact failed a check (hash, signature, shape, probe, safe mode)."""
