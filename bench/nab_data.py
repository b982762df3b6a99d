"""The Numenta Anomaly Benchmark (NAB v1.1) corpus, vendored in bench/data/nab (no download).

bench/data/nab/corpus.tar.xz holds NAB's 58 data files (`data/<category>/<file>.csv`, columns
timestamp,value) and its ground truth (`labels/combined_windows.json`: the anomaly windows of
each file, and `labels/combined_labels.json`: the labelled anomaly points). Source, commit and
licence (MIT): bench/data/NOTICE and bench/data/nab/LICENSE.
"""

from __future__ import annotations

import functools
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CORPUS_PATH = Path(__file__).parent / "data" / "nab" / "corpus.tar.xz"


@dataclass(frozen=True)
class NabFile:
    """One NAB data file: its name, timestamps, values and labelled anomaly windows."""

    name: str  # e.g. "realKnownCause/nyc_taxi.csv", as NAB names it
    timestamps: np.ndarray  # datetime64[s], in file order (a few files repeat a timestamp)
    values: np.ndarray  # float64
    windows: list[tuple[np.datetime64, np.datetime64]]  # (start, end), both inclusive
    anomalies: list[np.datetime64]  # the labelled anomaly points (one per window)

    @property
    def category(self) -> str:
        """NAB's category: the folder of the file, e.g. "realKnownCause"."""
        return self.name.split("/", 1)[0]

    def window_indices(self) -> list[tuple[int, int]]:
        """Each window as (first index of its start, first index of its end), as NAB finds them."""
        out = []
        for start, end in self.windows:
            lo = np.flatnonzero(self.timestamps == start)
            hi = np.flatnonzero(self.timestamps == end)
            if lo.size == 0 or hi.size == 0:
                raise ValueError(f"{self.name}: window {start}..{end} is not on a timestamp")
            out.append((int(lo[0]), int(hi[0])))
        return out


def _parse_csv(text: str) -> tuple[np.ndarray, np.ndarray]:
    """A NAB csv (header timestamp,value) as (datetime64[s] timestamps, float64 values)."""
    lines = text.strip().splitlines()
    if lines[0].strip() != "timestamp,value":
        raise ValueError(f"unexpected header {lines[0]!r}")
    stamps, values = zip(*(line.split(",") for line in lines[1:]), strict=True)
    return np.array(stamps, dtype="datetime64[s]"), np.array(values, dtype=np.float64)


def _stamp(text: str) -> np.datetime64:
    """A label timestamp ("2014-04-10 07:15:00.000000") at one-second resolution."""
    return np.datetime64(text, "s")


@functools.lru_cache(maxsize=2)
def _load(path: Path) -> tuple[NabFile, ...]:
    """Read every data file and its labels from the compressed archive (cached)."""
    csvs: dict[str, str] = {}
    with tarfile.open(path, "r:xz") as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            if handle is not None:
                csvs[member.name] = handle.read().decode("utf-8")
    windows = json.loads(csvs.pop("labels/combined_windows.json"))
    points = json.loads(csvs.pop("labels/combined_labels.json"))
    files = []
    for name in sorted(windows):
        stamps, values = _parse_csv(csvs[f"data/{name}"])
        wins = [(_stamp(a), _stamp(b)) for a, b in windows[name]]
        files.append(NabFile(name, stamps, values, wins, [_stamp(t) for t in points[name]]))
    return tuple(files)


def load_corpus(path: Path = CORPUS_PATH) -> list[NabFile]:
    """The 58 NAB v1.1 data files with their anomaly windows, sorted by name."""
    return list(_load(path))
