"""The README's settings table names every setting, with its default."""

from __future__ import annotations

import re
from pathlib import Path

from forecast.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `FORECAST_(\w+)` \| `([^`]*)` \|", README, re.M))
    for name, field in Settings.model_fields.items():
        assert name.upper() in rows, f"FORECAST_{name.upper()} is not in the README"
        default = field.default
        shown = f'"{default}"' if isinstance(default, str) else str(default)
        assert rows[name.upper()] == shown, (name, rows[name.upper()], shown)
