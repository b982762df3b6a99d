"""The input message grammar shared by producer, trainer and worker: `series`, `value`, `ts`,
`seq`.

A good entry becomes `(series, value, ts, seq)` (ts and seq are -1 when absent); a bad one
becomes a short reason string that goes to the dead-letter stream. Returning the reason instead of
raising keeps the hot path cheap.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# A plain decimal number: no hex, no underscores, no whitespace, no nan/inf words.
_DECIMAL = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_TS = re.compile(rb"\d{1,15}")
_SEQ = re.compile(rb"\d{1,18}")  # fits an int64
# C0 controls, DEL, and the C1 controls U+0080..U+009F (UTF-8 \xc2\x80..\xc2\x9f).
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]|\xc2[\x80-\x9f]")

# Every reason a message can be dead-lettered for (also the metrics label values).
REASONS = (
    "missing_series", "empty_series", "series_too_long", "bad_series",
    "missing_value", "value_too_long", "bad_value", "value_not_finite", "value_out_of_range",
    "bad_ts", "ts_out_of_order", "duplicate_field", "poison", "prediction_not_finite",
    "bad_seq", "duplicate",
)
# The largest magnitude served: models run in float32 (max ~3.4e38), and a window's scaling
# (sums and deviations of up to 512 values) must stay finite there.
MAX_ABS_VALUE = 1e30


@dataclass(frozen=True)
class Limits:
    """Size caps on incoming fields."""

    max_series_bytes: int = 256
    max_value_bytes: int = 64


Parsed = tuple[bytes, float, int, int]


def parse_fields(fields: list[bytes], limits: Limits = Limits()) -> Parsed | str:
    """Parse a flat `[field, value, ...]` entry into `(series, value, ts, seq)` or a reason.

    >>> parse_fields([b"series", b"s1", b"value", b"7"])
    (b's1', 7.0, -1, -1)
    >>> parse_fields([b"value", b"-1.5e3", b"series", b"a", b"ts", b"1700000000000"])
    (b'a', -1500.0, 1700000000000, -1)
    >>> parse_fields([b"series", b"a", b"value", b"1", b"seq", b"42"])
    (b'a', 1.0, -1, 42)
    >>> parse_fields([b"series", b"a", b"value", b"1", b"seq", b"-1"])
    'bad_seq'
    >>> parse_fields([b"series", b"s1", b"value", b"nan"])
    'bad_value'
    >>> parse_fields([b"series", b"s1", b"value", b"1e999"])
    'value_not_finite'
    >>> parse_fields([b"series", b"s1", b"value", b"1e300"])
    'value_out_of_range'
    >>> parse_fields([b"series", b"", b"value", b"1"])
    'empty_series'
    >>> parse_fields([b"series", b"s", b"value", b"1", b"ts", b"-5"])
    'bad_ts'
    """
    series = value = ts = seq = None
    if len(fields) == 4 and fields[0] == b"series" and fields[2] == b"value":
        series, value = fields[1], fields[3]  # the usual shape: no loop, no duplicates possible
    else:
        series, value, ts, seq = _scan(fields)
        if series is _DUPLICATE:
            return "duplicate_field"
    if series is None:
        return "missing_series"
    if not series:
        return "empty_series"
    if len(series) > limits.max_series_bytes:
        return "series_too_long"
    if series.isascii():
        if not series.decode("ascii").isprintable():  # ASCII printable: no C0 control, no DEL
            return "bad_series"
    elif _CONTROL.search(series):
        return "bad_series"
    else:
        try:
            series.decode("utf-8")
        except UnicodeDecodeError:
            return "bad_series"
    if value is None:
        return "missing_value"
    if len(value) > limits.max_value_bytes:
        return "value_too_long"
    # Only number characters, then float()'s own grammar: together exactly _DECIMAL, 8x faster.
    if value.strip(_NUMBER_CHARS):
        return "bad_value"
    try:
        number = float(value)
    except ValueError:
        return "bad_value"
    if not -MAX_ABS_VALUE <= number <= MAX_ABS_VALUE:
        return "value_out_of_range" if math.isfinite(number) else "value_not_finite"
    stamp = -1
    if ts is not None:
        if len(ts) > limits.max_value_bytes or not _TS.fullmatch(ts):
            return "bad_ts"
        stamp = int(ts)
    if seq is None:
        return series, number, stamp, -1
    if not _SEQ.fullmatch(seq):
        return "bad_seq"
    return series, number, stamp, int(seq)


_DUPLICATE = b"\0duplicate"  # sentinel returned by _scan
_NUMBER_CHARS = b"0123456789+-.eE"


_NAMES = {b"series": 0, b"value": 1, b"ts": 2, b"seq": 3}


def _scan(fields: list[bytes]) -> tuple[bytes | None, ...]:
    """`(series, value, ts, seq)` of any field order; series is `_DUPLICATE` on a repeated
    field."""
    found: list[bytes | None] = [None, None, None, None]
    for i in range(0, len(fields) - 1, 2):
        k = _NAMES.get(fields[i])
        if k is not None:
            if found[k] is not None:
                return _DUPLICATE, None, None, None
            found[k] = fields[i + 1]
    return tuple(found)
