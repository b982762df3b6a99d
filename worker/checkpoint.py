"""The per-series checkpoint blob in `forecast:state`: the window and the interval state.

Version 4 (written now): `count | FLAG | FLAG3 | FLAG4`, `last_ts`, then the served version's
adaptive-interval state (`aci_version`: the version number it belongs to; `aci`: log width
factor, float64; `pred`, `lo`, `hi`: its last forecast and interval, which the next value is
scored against), `period` (int16: the series' seasonal period for versions with several
parts, see `worker.routing`; 0 unknown), then `width` float32 values, newest last. Older
blobs are still read: version 3 (the same without `period`: it is found again), version 2
(`count | FLAG`, `last_ts`, a float32 `aci`, `pred`, `lo`, `hi`, values; written by workers
of 739b6de) and version 1 (`count`, `last_ts`, values); their interval state starts again
(it has no version number).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

FLAG = 1 << 30  # set in `count` of a version-2 or -3 blob (a window never holds 2**29 values)
FLAG3 = 1 << 29  # also set in a version-3 or -4 blob
FLAG4 = 1 << 28  # also set in a version-4 blob
_V1 = [("count", "<i4"), ("last_ts", "<i8")]
_V2 = [*_V1, ("aci", "<f4"), ("pred", "<f4"), ("lo", "<f4"), ("hi", "<f4")]
_V3 = [*_V1, ("aci_version", "<i4"), ("aci", "<f8"), ("pred", "<f4"), ("lo", "<f4"),
       ("hi", "<f4")]
_V4 = [*_V3, ("period", "<i2")]
_HEADERS = {1: _V1, 2: _V2, 3: _V3, 4: _V4}
CURRENT = 4
_FLAGS = FLAG | FLAG3 | FLAG4


@functools.lru_cache(maxsize=64)
def blob_dtype(width: int, version: int = CURRENT) -> np.dtype:
    """The packed dtype of one checkpoint row of `width` values."""
    return np.dtype([*_HEADERS[version], ("v", "<f4", (width,))])


@dataclass
class Checkpoint:
    """One decoded blob (`values` holds the real values only)."""

    count: int
    last_ts: int
    values: np.ndarray
    aci_version: int = -1
    aci: float = 0.0
    pred: float = float("nan")
    lo: float = float("nan")
    hi: float = float("nan")
    period: int = 0


def blob_version(blob: bytes) -> int:
    """1 to 4, from the flags in the leading count."""
    head = int.from_bytes(blob[:4], "little")
    if not head & FLAG:
        return 1
    if not head & FLAG3:
        return 2
    return 4 if head & FLAG4 else 3


def decode_blob(blob: bytes) -> Checkpoint:
    """Any blob, of any version.

    >>> nan = np.full(1, np.nan)
    >>> raw = encode_rows(np.array([2]), np.array([5]), np.ones(1), np.zeros(1), nan, nan, nan,
    ...                   np.array([[0, 7, 8]]), np.array([12]))[0]
    >>> c = decode_blob(raw); (c.count, c.last_ts, c.values.tolist(), c.period)
    (2, 5, [7.0, 8.0], 12)
    """
    version = blob_version(blob)
    header = np.dtype(_HEADERS[version]).itemsize
    width = (len(blob) - header) // 4
    row = np.frombuffer(blob, dtype=blob_dtype(width, version), count=1)[0]
    count = int(row["count"]) & ~_FLAGS
    values = np.array(row["v"][width - count:], dtype=np.float32)
    if version < 3:  # no version number for the interval state: it starts again
        return Checkpoint(count, int(row["last_ts"]), values)
    return Checkpoint(count, int(row["last_ts"]), values, int(row["aci_version"]),
                      float(row["aci"]), float(row["pred"]), float(row["lo"]), float(row["hi"]),
                      int(row["period"]) if version >= 4 else 0)


def encode_rows(count: np.ndarray, last_ts: np.ndarray, aci_version: np.ndarray,
                aci: np.ndarray, pred: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                vals: np.ndarray, period: np.ndarray | None = None) -> list[bytes]:
    """Current-version blobs of many rows (one bytes object each)."""
    rows = np.empty(len(count), dtype=blob_dtype(vals.shape[1]))
    rows["count"] = count | _FLAGS
    rows["last_ts"] = last_ts
    rows["aci_version"] = aci_version
    rows["aci"], rows["pred"], rows["lo"], rows["hi"] = aci, pred, lo, hi
    rows["period"] = 0 if period is None else period
    rows["v"] = vals
    raw = rows.tobytes()
    size = rows.dtype.itemsize
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def decode_same(blobs: list[bytes], width: int) -> np.ndarray:
    """Current-version blobs of exactly `width` values, decoded in one numpy pass (count
    unflagged)."""
    rows = np.frombuffer(b"".join(blobs), dtype=blob_dtype(width)).copy()
    rows["count"] &= ~_FLAGS
    return rows
