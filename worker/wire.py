"""The output entries of one commit: one schema, read by the batch builder, the commit
script's arguments (and the Lua written from it) and replay alike.

A batch's output entries are columns: one list of values per field (`FIELDS` gives every
field an entry can have, in entry order). A field every entry of the batch has goes into
the batch's *layout*: those values travel as one flat array, `width` per entry, and the
COMMIT script made for that layout (`worker.scripts.Scripts.commit_for`) writes them with one
unrolled XADD call per entry (no per-entry tables in Lua). A field only some entries have
(an empty string elsewhere) travels as per-entry extra name/value pairs. `model_version` is
the same for the whole batch: it is one script argument.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

# Every field of an output entry, in the order an entry lists them (public: README).
FIELDS = ("series", "prediction", "model_version", "source_id", "ts", "target_ts", "lower",
          "upper", "path", "path_ts", "lower_path", "upper_path", "warmup", "gap_steps",
          "anomaly_score", "anomaly", "direction", "kind")
VERSION = "model_version"  # one value per batch, a script argument

Value = bytes | str


@dataclass
class Outputs:
    """The output entries of a batch, by column (every column has one value per entry;
    an empty string: this entry has no such field)."""

    columns: dict[str, Sequence[Value]] = field(default_factory=dict)
    version: str = ""
    n: int = 0
    full: set[str] = field(default_factory=set)  # columns known to have no empty value

    def set(self, name: str, values: Sequence[Value], full: bool = False) -> None:
        """Give every entry a value (or "") of field `name`; `full`: none is empty."""
        if name not in FIELDS or name == VERSION:
            raise ValueError(f"{name!r} is not an output field")
        if len(values) != self.n:
            raise ValueError(f"{len(values)} values of {name} for {self.n} entries")
        self.columns[name] = values
        if full:
            self.full.add(name)

    def pack(self) -> Packed:
        """The flat arrays the COMMIT script takes (see `Packed`)."""
        dense: list[str] = []
        partial: list[str] = []
        if not self.n:
            return Packed((), [], [], [])
        for name in FIELDS:
            if name == VERSION:
                dense.append(name)
                continue
            column = self.columns.get(name)
            if column is None or not self.n:
                continue
            empty = 0 if name in self.full else sum(1 for v in column if not v)
            if empty == 0:
                dense.append(name)
            elif empty < self.n:
                partial.append(name)
        stored = [n for n in dense if n != VERSION]
        width = len(stored)
        flat: list[Value] = [b""] * (width * self.n)
        for k, name in enumerate(stored):
            flat[k::width] = self.columns[name]
        extra: list[Value] = []
        counts: list[int] = []
        if partial:
            per_entry: list[list[Value]] = [[] for _ in range(self.n)]
            for name in partial:
                for e, v in enumerate(self.columns[name]):
                    if v:
                        per_entry[e] += [name, v]
            counts = [len(pairs) for pairs in per_entry]
            extra = [x for pairs in per_entry for x in pairs]
        return Packed(tuple(dense), flat, extra, counts)

    def entries(self) -> Iterator[dict[str, Value]]:
        """Each entry as field -> value, in entry order (what a reader of the stream sees)."""
        names = [n for n in FIELDS if n in self.columns or n == VERSION]
        for e in range(self.n):
            out: dict[str, Value] = {}
            for name in names:
                v = self.version if name == VERSION else self.columns[name][e]
                if v:
                    out[name] = v
            yield out


@dataclass(frozen=True)
class Packed:
    """A batch's entries for the COMMIT script: the `layout` (the fields every entry has, in
    entry order, `model_version` among them), their values flat (`width` per entry, without
    `model_version`), and the other fields as per-entry name/value pairs: `counts[e]` values
    of `extra` belong to entry e (both empty when no entry has such a field)."""

    layout: tuple[str, ...]
    flat: list[Value]
    extra: list[Value]
    counts: list[int]

    @property
    def width(self) -> int:
        """Values per entry in `flat`."""
        return len(self.layout) - (VERSION in self.layout)


def fmt(values: Sequence[float] | np.ndarray) -> list[str]:
    """Decimal strings of 7 significant digits, as every number of an output entry is written.

    >>> fmt([10.000123, 1234567.8, 0.5])
    ['10.00012', '1234568', '0.5']
    """
    return [f"{v:.7g}" for v in (values.tolist() if isinstance(values, np.ndarray) else values)]


def joined(rows: np.ndarray) -> list[str]:
    """One comma-separated string of decimals per row (the `*_path` fields).

    >>> joined(np.array([[1.0, 2.5], [3.0, 4.0]]))
    ['1,2.5', '3,4']
    """
    return [",".join(fmt(r)) for r in rows.tolist()]
