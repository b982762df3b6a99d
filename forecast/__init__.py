"""Streaming forecasting on Redis: shared settings, key names, registry and CLI."""

from __future__ import annotations

__version__ = "0.1.0"
