"""The long-format CSV (`series,timestamp,value`) read by `forecast push` and `forecast train`.

One reader, one set of rules: a header naming `series` and `value` (and optionally
`timestamp`, in any order and case), one row per value, a value in the input grammar
(`forecast.grammar`), a timestamp in epoch milliseconds or empty. Blank lines are skipped.
Any other row is a `DataError` naming the file and line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from forecast.errors import DataError
from forecast.grammar import parse_fields

HEADER = "series,timestamp,value"
_WHY = {
    "bad_value": "expected a finite decimal number",
    "value_too_long": "too long",
    "value_not_finite": "expected a finite number",
    "value_out_of_range": "at most 1e30 in absolute value: the model runs in float32",
}


@dataclass(frozen=True)
class Row:
    """One value of the file: where it is, its series, value text and timestamp."""

    line: int
    series: str
    value: str
    ts: int | None


def _check(path: Path, line: int, series: str, value: str, ts: str) -> None:
    where = f"{path}:{line}"
    if not series:
        raise DataError(f"{where}: empty series id")
    parsed = parse_fields([b"series", series.encode(), b"value", value.encode()])
    if isinstance(parsed, str):
        if parsed.startswith("value") or parsed == "bad_value":
            raise DataError(f"{where}: bad value {value!r} ({_WHY.get(parsed, parsed)})")
        raise DataError(f"{where}: bad series {series!r} ({parsed.replace('_', ' ')})")
    if ts and not (ts.isdigit() and len(ts) <= 15):
        raise DataError(f"{where}: timestamp must be epoch milliseconds, got {ts!r}")


def read_rows(path: str | Path) -> Iterator[Row]:
    """The rows of a long-format CSV, checked, in file order.

    >>> import tempfile, os
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
    >>> _ = f.write("Value,Series\\n7,s1\\n\\n8,s1\\n"); f.close()
    >>> [(r.line, r.series, r.value, r.ts) for r in read_rows(f.name)]
    [(2, 's1', '7', None), (4, 's1', '8', None)]
    >>> os.unlink(f.name)
    """
    p = Path(path)
    try:
        handle = p.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {p}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise DataError(f"{p}: empty file (expected a header {HEADER})") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{p}: not a readable CSV: {exc}") from None
        if "series" not in header or "value" not in header:
            raise DataError(f"{p}: header must name the columns {HEADER} "
                            f"(timestamp optional), got {','.join(header)!r}")
        i_series, i_value = header.index("series"), header.index("value")
        i_ts = header.index("timestamp") if "timestamp" in header else None
        try:
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                line = reader.line_num
                if len(row) != len(header):
                    raise DataError(f"{p}:{line}: expected {len(header)} columns, got {len(row)}")
                series, value = row[i_series].strip(), row[i_value].strip()
                ts = row[i_ts].strip() if i_ts is not None else ""
                _check(p, line, series, value, ts)
                yield Row(line, series, value, int(ts) if ts else None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{p}:{reader.line_num}: not a readable CSV row: {exc}") from None
