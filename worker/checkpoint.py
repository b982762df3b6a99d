"""The per-series checkpoint blob in `forecast:state`: the window and the per-series state.

A blob is one packed little-endian row. Its layout version is known from its first 32 bits:

* version 6 (written now): the version 4 header, then the series' anomaly-verdict state
  (`cal`, a `worker.anomaly.STATE` record of 28 bytes), then the values;
* version 5: the same with the verdict state of the first release of verdicts (`STATE5`,
  21 bytes) and three spare bytes; its scale, thresholds and level carry over, the distance
  threshold starts at `worker.anomaly.Q0` and no hold is in force;
* version 4: `head` carries the flags `FLAG | FLAG3 | FLAG4` and the layout number in bits
  20-27; then `count`, `last_ts`, the served version's interval state (`aci_version`, `aci`,
  `pred`, `lo`, `hi`), the producer sequence number last accepted (`seq`, -1: none), the
  last three `ts` differences (`steps`, ms, NaN: not yet; see `worker.timing`), the series'
  seasonal period (`period`, for versions of several parts, see `worker.routing`; 0:
  unknown), two spare bytes, then `width` float32 values, newest last; its verdict state
  starts empty;
* version 3: `count | FLAG | FLAG3`, `last_ts`, the interval state, values;
* version 2 (`count | FLAG`, a float32 `aci`, no version number) and version 1 (`count`,
  `last_ts`, values): their interval state starts again.

Decoding is strict: a blob whose length does not fit its layout exactly, whose count is not
within its width, whose values are not finite or whose layout number is unknown raises
`CheckpointError` (never misread); the worker then starts that series afresh.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.anomaly import Q0, QUIET, STATE

FLAG = 1 << 30  # set in the head of a version 2+ blob (a window never holds 2**28 values)
FLAG3 = 1 << 29  # also set from version 3 on
FLAG4 = 1 << 28  # also set from version 4 on: the layout number is in bits 20-27
_NUMBER_SHIFT = 20
_V1 = [("count", "<i4"), ("last_ts", "<i8")]
_V2 = [*_V1, ("aci", "<f4"), ("pred", "<f4"), ("lo", "<f4"), ("hi", "<f4")]
_V3 = [*_V1, ("aci_version", "<i4"), ("aci", "<f8"), ("pred", "<f4"), ("lo", "<f4"),
       ("hi", "<f4")]
_V4 = [("head", "<u4"), ("count", "<i4"), ("last_ts", "<i8"), ("aci_version", "<i4"),
       ("aci", "<f8"), ("pred", "<f4"), ("lo", "<f4"), ("hi", "<f4"), ("seq", "<i8"),
       ("steps", "<f4", (3,)), ("period", "<i2"), ("spare", "<i2")]
STATE5 = np.dtype([("scale", "<f4"), ("q", "<f4"), ("level", "<f4"), ("spread", "<f4"),
                   ("n", "<u2"), ("mode", "i1"), ("since", "u1"), ("calm", "u1")])
_V5 = [*_V4, ("cal", STATE5), ("spare5", "u1", (3,))]
_V6 = [*_V4, ("cal", STATE)]
_HEADERS: dict[int, list[Any]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5, 6: _V6}
CURRENT = 6
HEAD = FLAG | FLAG3 | FLAG4 | (CURRENT << _NUMBER_SHIFT)


def head_of(version: int) -> int:
    """The first 32 bits of a blob of layout `version` (4 and later).

    >>> head_of(CURRENT) == HEAD
    True
    """
    return FLAG | FLAG3 | FLAG4 | (version << _NUMBER_SHIFT)


class CheckpointError(ValueError):
    """A blob that cannot be read: garbage, truncated, an unknown layout."""


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
    seq: int = -1
    steps: tuple[float, float, float] = (float("nan"),) * 3
    period: int = 0
    cal: np.ndarray | None = None  # one `worker.anomaly.STATE` row (None: starts empty)


def blob_version(blob: bytes) -> int:
    """The layout number of a blob, from the flags of its first 32 bits.

    >>> blob_version((3).to_bytes(4, "little")), blob_version(HEAD.to_bytes(4, "little"))
    (1, 6)
    """
    if len(blob) < 4:
        raise CheckpointError(f"a blob of {len(blob)} bytes has no header")
    head = int.from_bytes(blob[:4], "little")
    if not head & FLAG:
        return 1
    if not head & FLAG3:
        return 2
    if not head & FLAG4:
        return 3
    return (head >> _NUMBER_SHIFT) & 0xFF


def _row(blob: bytes) -> tuple[int, int, np.void]:
    """(version, width, the packed row) of a blob whose length fits its layout exactly."""
    version = blob_version(blob)
    if version not in _HEADERS:
        raise CheckpointError(f"unknown checkpoint layout version {version} (this worker reads "
                              f"1 to {CURRENT})")
    header = np.dtype(_HEADERS[version]).itemsize
    width, extra = divmod(len(blob) - header, 4)
    if width < 1 or extra:
        raise CheckpointError(f"a version-{version} blob of {len(blob)} bytes is not a "
                              f"{header}-byte header and whole float32 values")
    if version >= 4 and int.from_bytes(blob[:4], "little") != head_of(version):
        raise CheckpointError(f"unknown flags in the header of a version-{version} blob")
    return version, width, np.frombuffer(blob, dtype=blob_dtype(width, version), count=1)[0]


def decode_blob(blob: bytes) -> Checkpoint:
    """Any readable blob, of any version; `CheckpointError` for anything else.

    >>> nan, cal = np.full(1, np.nan), np.zeros(1, STATE)
    >>> cal["q"] = cal["ql"] = 5.0  # thresholds are positive
    >>> raw = encode_rows(np.array([2]), np.array([5]), np.ones(1), np.zeros(1), nan, nan, nan,
    ...                   np.full(1, -1), np.full((1, 3), np.nan), np.zeros(1), cal,
    ...                   np.array([[0, 7, 8]]))[0]
    >>> c = decode_blob(raw); (c.count, c.last_ts, c.values.tolist())
    (2, 5, [7.0, 8.0])
    >>> decode_blob(b"xyz")
    Traceback (most recent call last):
    ...
    worker.checkpoint.CheckpointError: a blob of 3 bytes has no header
    """
    version, width, row = _row(blob)
    count = int(row["count"]) & ~(FLAG | FLAG3) if version in (2, 3) else int(row["count"])
    if not 0 <= count <= width:
        raise CheckpointError(f"a version-{version} blob counts {count} values in a window "
                              f"of {width}")
    values = np.array(row["v"][width - count:], dtype=np.float32)
    if not np.isfinite(values).all():
        raise CheckpointError(f"a version-{version} blob holds values that are not finite")
    last_ts = int(row["last_ts"])
    if version < 3:  # no version number for the interval state: it starts again
        return Checkpoint(count, last_ts, values)
    aci = float(row["aci"])
    if not np.isfinite(aci):
        raise CheckpointError(f"a version-{version} blob has an interval factor of {aci}")
    if version < 4:
        return Checkpoint(count, last_ts, values, int(row["aci_version"]), aci,
                          float(row["pred"]), float(row["lo"]), float(row["hi"]))
    if version >= 5 and not _verdict_state_ok(row["cal"]):
        raise CheckpointError(f"a version-{version} blob has an impossible verdict state")
    steps = row["steps"].tolist()
    return Checkpoint(count, last_ts, values, int(row["aci_version"]), aci, float(row["pred"]),
                      float(row["lo"]), float(row["hi"]), int(row["seq"]),
                      (steps[0], steps[1], steps[2]), int(row["period"]),
                      _verdict_state(row["cal"], version) if version >= 5 else None)


def _verdict_state(cal: np.void, version: int) -> np.ndarray:
    """A blob's verdict state as one current `STATE` row (a version 5 one converted)."""
    if version >= 6:
        return np.array(cal).reshape(1)
    out = np.zeros(1, STATE)
    for name in ("scale", "q", "level", "spread", "n"):
        out[name] = cal[name]
    out["ql"] = Q0
    return out


def encode_rows(count: np.ndarray, last_ts: np.ndarray, aci_version: np.ndarray,
                aci: np.ndarray, pred: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                seq: np.ndarray, steps: np.ndarray, period: np.ndarray, cal: np.ndarray,
                vals: np.ndarray) -> list[bytes]:
    """Current-version blobs of many rows (one bytes object each); `cal`: their verdict
    state (`worker.anomaly.Calibration.snapshot`)."""
    rows = np.empty(len(count), dtype=blob_dtype(vals.shape[1]))
    rows["head"] = HEAD
    rows["count"] = count
    rows["last_ts"] = last_ts
    rows["aci_version"] = aci_version
    rows["aci"], rows["pred"], rows["lo"], rows["hi"] = aci, pred, lo, hi
    rows["seq"] = seq
    rows["steps"] = steps
    rows["period"] = period
    rows["spare"] = 0
    rows["cal"] = cal
    rows["v"] = vals
    raw = rows.tobytes()
    size = rows.dtype.itemsize
    return [raw[i:i + size] for i in range(0, len(raw), size)]


def decode_same(blobs: list[bytes], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Current-version blobs of exactly `width` values, decoded in one numpy pass: the rows,
    and a mask of those that are valid (the others go through `decode_blob` to say why)."""
    rows = np.frombuffer(b"".join(blobs), dtype=blob_dtype(width)).copy()
    count = rows["count"]
    values_ok = np.isfinite(rows["v"]) | (np.arange(width) < (width - count)[:, None])
    ok = ((rows["head"] == HEAD) & (count >= 0) & (count <= width) & values_ok.all(axis=1)
          & np.isfinite(rows["aci"]) & _verdict_state_ok(rows["cal"]))
    return rows, ok


def _verdict_state_ok(cal: np.ndarray | np.void) -> np.ndarray:
    """Which verdict states (`worker.anomaly.STATE`, or a version 5 one) can be real: finite
    positive thresholds, a finite spread, a known mode."""
    q, spread, mode = cal["q"], cal["spread"], cal["mode"]
    ok = np.isfinite(q) & (q > 0) & np.isfinite(spread) & (mode >= -QUIET) & (mode <= QUIET)
    if "ql" in (cal.dtype.names or ()):
        ok &= np.isfinite(cal["ql"]) & (cal["ql"] > 0)
    return ok
