"""Training data sources: the tutorial sequence, a long-format CSV, or the input streams."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forecast import csvio, keys
from forecast.errors import DataError
from forecast.grammar import Limits, parse_fields
from forecast.settings import Settings

log = logging.getLogger(__name__)

PAGE = 10_000  # XRANGE COUNT per round trip


@dataclass
class Dataset:
    """Named series of float64 values in time order, plus where they came from."""

    source: str
    series: dict[str, np.ndarray]
    skipped: int = 0  # stream entries that failed validation
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_values(self) -> int:
        """Total number of values over all series."""
        return int(sum(len(v) for v in self.series.values()))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description for the manifest."""
        return {"source": self.source, "series": len(self.series), "values": self.n_values,
                "skipped": self.skipped, **self.extra}


def example() -> Dataset:
    """The tutorial sequence 0..9 as one series.

    >>> example().series["example"].tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    """
    return Dataset("example", {"example": np.arange(10, dtype=np.float64)})


def read_csv(path: str | Path) -> Dataset:
    """A long-format CSV (`forecast.csvio`): each series in timestamp order when every row of it
    has one, else in file order."""
    rows: dict[str, list[tuple[int | None, float]]] = defaultdict(list)
    for row in csvio.read_rows(path):
        rows[row.series].append((row.ts, float(row.value)))
    if not rows:
        raise DataError(f"{Path(path)}: no data rows")
    series = {}
    for name, pairs in rows.items():
        values = np.asarray([v for _, v in pairs], dtype=np.float64)
        stamps = [t for t, _ in pairs]
        if None not in stamps:
            values = values[np.argsort(np.asarray(stamps, dtype=np.int64), kind="stable")]
        series[name] = values
    return Dataset(f"csv:{Path(path).name}", series)


def from_stream(client: Any, settings: Settings, page: int = PAGE) -> Dataset:
    """Every valid entry of every input stream (XRANGE paged by COUNT), grouped by series."""
    limits = Limits(settings.max_series_bytes, settings.max_value_bytes)
    values: dict[str, list[float]] = defaultdict(list)
    last_seq: dict[bytes, int] = {}
    skipped = 0
    streams = [keys.values_stream(k, settings.shards, settings.cluster)
               for k in range(settings.shards)]
    for stream in streams:
        start: bytes | str = "-"
        while True:
            entries = client.xrange(stream, min=start, max="+", count=page)
            for _entry_id, fields in entries:
                flat = [x for pair in fields.items() for x in pair]
                parsed = parse_fields(flat, limits)
                if isinstance(parsed, str):
                    skipped += 1
                    continue
                if parsed[3] >= 0:  # a producer's sequence number: a repeat is a duplicate
                    if parsed[3] <= last_seq.get(parsed[0], -1):
                        skipped += 1
                        continue
                    last_seq[parsed[0]] = parsed[3]
                values[parsed[0].decode("utf-8")].append(parsed[1])
            if len(entries) < page:
                break
            start = b"(" + _as_bytes(entries[-1][0])
    if skipped:
        log.warning("skipped %d invalid stream entries", skipped)
    if not values:
        raise DataError(f"no valid entries in {', '.join(streams[:3])}"
                       f"{' ...' if len(streams) > 3 else ''}; push some history first")
    log.info("training on what input retention keeps: %d values of %d series "
             "(FORECAST_INPUT_MAXLEN=%d entries per stream, FORECAST_INPUT_RETENTION_MS=%d)",
             sum(map(len, values.values())), len(values), settings.input_maxlen,
             settings.input_retention_ms)
    series = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    return Dataset("stream", series, skipped=skipped, extra={"streams": len(streams)})


def _as_bytes(entry_id: bytes | str) -> bytes:
    return entry_id if isinstance(entry_id, bytes) else entry_id.encode()


FLOAT32_LIMIT = 3.0e38  # the model runs in float32 (max 3.4e38): leave room for its arithmetic


def check_values(dataset: Dataset) -> Dataset:
    """Refuse values the float32 model cannot carry (one clear line, not an inf/NaN model).

    >>> check_values(Dataset("t", {"a": np.array([1.0, 2e38])})).n_values
    2
    >>> check_values(Dataset("t", {"a": np.array([1.0, 1e300])}))
    Traceback (most recent call last):
    forecast.errors.DataError: series 'a' has a value of 1e+300 at position 1: the model runs in \
float32, values must lie within +-3e+38 (rescale the data, e.g. to thousands)
    """
    for name, values in dataset.series.items():
        big = np.flatnonzero(np.abs(values) > FLOAT32_LIMIT)
        if len(big):
            i = int(big[0])
            raise DataError(f"series {name!r} has a value of {values[i]:.6g} at position {i}: the "
                           f"model runs in float32, values must lie within +-{FLOAT32_LIMIT:.0e} "
                           f"(rescale the data, e.g. to thousands)")
    return dataset


def load(args: Any, settings: Settings, client: Any = None) -> Dataset:
    """The dataset the `train` arguments ask for (--example, --csv FILE or --from-stream)."""
    if getattr(args, "csv", None):
        return check_values(read_csv(args.csv))
    if getattr(args, "from_stream", False):
        if client is None:
            raise DataError("--from-stream needs a Redis connection")
        return check_values(from_stream(client, settings))
    return example()
