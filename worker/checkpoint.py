"""The per-series checkpoint blob in `forecast:state`: the window and the interval state.

Version 2 (written since the adaptive intervals): `count | FLAG`, `last_ts`, then the
served version's adaptive-interval state (`aci_version`: the version number it belongs to;
`aci`: log width factor; `pred`, `lo`, `hi`: its last forecast and interval, which the next
value is scored against), then `width` float32 values, newest last. Version 1 blobs
(`count`, `last_ts`, values) are still read: their interval state starts neutral.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

FLAG = 1 << 30  # set in `count` of a version-2 blob (a window never holds 2**30 values)
_V1 = [("count", "<i4"), ("last_ts", "<i8")]
_V2 = [*_V1, ("aci_version", "<i4"), ("aci", "<f8"), ("pred", "<f4"), ("lo", "<f4"),
       ("hi", "<f4")]


@functools.lru_cache(maxsize=64)
def blob_dtype(width: int, version: int = 2) -> np.dtype:
    """The packed dtype of one checkpoint row of `width` values."""
    return np.dtype([*(_V2 if version == 2 else _V1), ("v", "<f4", (width,))])


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


def blob_version(blob: bytes) -> int:
    """1 or 2, from the flag in the leading count."""
    return 2 if int.from_bytes(blob[:4], "little") & FLAG else 1


def decode_blob(blob: bytes) -> Checkpoint:
    """Any blob, either version.

    >>> nan = np.full(1, np.nan)
    >>> raw = encode_rows(np.array([2]), np.array([5]), np.ones(1), np.zeros(1), nan, nan, nan,
    ...                   np.array([[0, 7, 8]]))[0]
    >>> c = decode_blob(raw); (c.count, c.last_ts, c.values.tolist())
    (2, 5, [7.0, 8.0])
    """
    version = blob_version(blob)
    header = np.dtype(_V2 if version == 2 else _V1).itemsize
    width = (len(blob) - header) // 4
    row = np.frombuffer(blob, dtype=blob_dtype(width, version), count=1)[0]
    count = int(row["count"]) & ~FLAG
    values = np.array(row["v"][width - count:], dtype=np.float32)
    if version == 1:
        return Checkpoint(count, int(row["last_ts"]), values)
    return Checkpoint(count, int(row["last_ts"]), values, int(row["aci_version"]),
                      float(row["aci"]), float(row["pred"]), float(row["lo"]), float(row["hi"]))


def encode_rows(count: np.ndarray, last_ts: np.ndarray, aci_version: np.ndarray,
                aci: np.ndarray, pred: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                vals: np.ndarray) -> list[bytes]:
    """Version-2 blobs of many rows (one bytes object each)."""
    rows = np.empty(len(count), dtype=blob_dtype(vals.shape[1]))
    rows["count"] = count | FLAG
    rows["last_ts"] = last_ts
    rows["aci_version"] = aci_version
    rows["aci"], rows["pred"], rows["lo"], rows["hi"] = aci, pred, lo, hi
    rows["v"] = vals
    raw = rows.tobytes()
    size = rows.dtype.itemsize
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def decode_same(blobs: list[bytes], width: int) -> np.ndarray:
    """Version-2 blobs of exactly `width` values, decoded in one numpy pass (count unflagged)."""
    rows = np.frombuffer(b"".join(blobs), dtype=blob_dtype(width)).copy()
    rows["count"] &= ~FLAG
    return rows
