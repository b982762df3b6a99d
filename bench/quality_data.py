"""Real public series bundled inside pmdarima and sktime (no download at run time).

Benchmark-only: these packages are the `bench` extra (`pip install -e '.[bench]'`), never a
runtime dependency. statsmodels' bundled data sets (and copies of them: macro data, sunspots,
Nile, CO2, El Nino) are deliberately not used: they are kept for an independent check.

Series are grouped by seasonal period for the per-period rows (one model per group, each
`forecast train --csv FILE`); the mixed row trains one model on every series at once.

Short series (`short=True`): shorter than the windows the defaults choose, they are never in
a training CSV: they stream in as new series, the way a new product's sales would, and are
scored from their second value on. Shampoo sales ship with sktime; four more are vendored
from R's datasets package (bench/data/short_series.csv, see bench/data/NOTICE).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RealSeries:
    """One bundled series: its name, frequency, seasonal period, source and values."""

    name: str
    freq: str
    period: int
    source: str
    values: np.ndarray
    short: bool = False

    @property
    def group(self) -> str:
        """The training group: one model per seasonal period."""
        return f"m{self.period}"


def _pmdarima(name: str) -> np.ndarray:
    import pmdarima.datasets as d

    y = getattr(d, f"load_{name}")(as_series=True)
    return np.asarray(y.dropna().values, dtype=np.float64)


def _sktime_csv(folder: str, file: str, column: str) -> np.ndarray:
    from pathlib import Path

    import pandas as pd
    import sktime.datasets

    path = Path(sktime.datasets.__file__).parent / "data" / folder / file
    return np.asarray(pd.read_csv(path)[column].dropna().values, dtype=np.float64)


def _uschange(column: str) -> np.ndarray:
    from sktime.datasets import load_uschange

    y, x = load_uschange()
    series = y if column == "Consumption" else x[column]
    return np.asarray(series.dropna().values, dtype=np.float64)


def _pbs() -> np.ndarray:
    from sktime.datasets import load_PBS_dataset

    return np.asarray(load_PBS_dataset().dropna().values, dtype=np.float64)


def _taylor_hourly() -> np.ndarray:
    """Half-hourly electricity demand (12 weeks), summed to hours: 2,016 values, period 24."""
    v = _pmdarima("taylor")
    return v[: len(v) // 2 * 2].reshape(-1, 2).sum(axis=1)


def _vendored(name: str) -> np.ndarray:
    """A short series of bench/data/short_series.csv (see bench/data/NOTICE)."""
    import csv
    from pathlib import Path

    path = Path(__file__).resolve().parent / "data" / "short_series.csv"
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["series"] == name]
    return np.asarray([float(r["value"]) for r in sorted(rows, key=lambda r: int(r["index"]))])


def _msft_close() -> np.ndarray:
    """The last 1,000 daily closing prices of MSFT (trading days)."""
    import pmdarima.datasets as d

    return np.asarray(d.load_msft()["Close"].values[-1000:], dtype=np.float64)


# name, frequency, period, source, loader
CATALOGUE: list[tuple[str, str, int, str, Callable[[], np.ndarray]]] = [
    ("airpassengers", "monthly", 12, "pmdarima", lambda: _pmdarima("airpassengers")),
    ("wineind", "monthly", 12, "pmdarima", lambda: _pmdarima("wineind")),
    ("pbs_a10", "monthly", 12, "sktime", _pbs),
    ("seatbelts_ksi", "monthly", 12, "sktime",
     lambda: _sktime_csv("seatbelts", "seatbelts.csv", "KSI")),
    ("woolyrnq", "quarterly", 4, "pmdarima", lambda: _pmdarima("woolyrnq")),
    ("austres", "quarterly", 4, "pmdarima", lambda: _pmdarima("austres")),
    ("ausbeer", "quarterly", 4, "pmdarima", lambda: _pmdarima("ausbeer")),
    ("us_consumption", "quarterly", 4, "sktime", lambda: _uschange("Consumption")),
    ("us_income", "quarterly", 4, "sktime", lambda: _uschange("Income")),
    ("us_production", "quarterly", 4, "sktime", lambda: _uschange("Production")),
    ("us_savings", "quarterly", 4, "sktime", lambda: _uschange("Savings")),
    ("lynx", "yearly", 1, "pmdarima", lambda: _pmdarima("lynx")),
    ("heartrate", "other", 1, "pmdarima", lambda: _pmdarima("heartrate")),
    ("msft_close", "daily", 1, "pmdarima", _msft_close),
    ("taylor_hourly", "hourly", 24, "pmdarima", _taylor_hourly),
]
# Short series: streamed as new series (never trained on), scored from their second value.
SHORT: list[tuple[str, str, int, str, Callable[[], np.ndarray]]] = [
    ("shampoo", "monthly", 12, "sktime",
     lambda: _sktime_csv("ShampooSales", "ShampooSales.csv", "Sales")),
    ("usaccdeaths", "monthly", 12, "R datasets", lambda: _vendored("usaccdeaths")),
    ("freeny_revenue", "quarterly", 4, "R datasets", lambda: _vendored("freeny_revenue")),
    ("airmiles", "yearly", 1, "R datasets", lambda: _vendored("airmiles")),
    ("uspop", "yearly", 1, "R datasets", lambda: _vendored("uspop")),
]
QUICK = ("airpassengers", "wineind", "woolyrnq", "ausbeer", "lynx", "heartrate", "shampoo",
         "freeny_revenue")


def load(names: list[str] | tuple[str, ...] | None = None) -> list[RealSeries]:
    """The bundled series (all, or the named ones), in catalogue order."""
    wanted = set(names) if names else None
    out = []
    for short, catalogue in ((False, CATALOGUE), (True, SHORT)):
        for name, freq, period, source, loader in catalogue:
            if wanted is None or name in wanted:
                out.append(RealSeries(name, freq, period, source, loader(), short))
    return out
