"""The live evidence a worker gathers, added to Redis at each maintenance (forecast.evidence).

Per batch, `add` folds a commit's scores into per-version and per-pair sums and drift
alarms. `flush` adds the sums to `forecast:live:*` and writes drift events to
`forecast:events` (at most `EVENTS_PER_FLUSH` per-series ones each time); an overall
Page-Hinkley detector (River) sees each batch's mean scaled error, each value's capped at
`worker.scoring.DRIFT_CAP` (so is the `statistic` of its `*` drift events).

Exactly once: the sums of a flush are sent as one numbered flush, each key by the ADD_ONCE
script, which adds them only if that key has not recorded this flush number yet (the field
`flush:<consumer>`). A flush that fails half-way (the connection broke, a reply was lost) is
sent again, with the same number and sums, until every key has it; new sums wait for the
next flush. A flush is a few keys per served version, whatever the number of series, so a
model swap or a shutdown never waits on it for long.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import drift

from forecast import keys
from forecast.evidence import LIVE_FIELDS, PAIR_FIELDS
from worker import metrics
from worker.batch import Commit

log = logging.getLogger(__name__)

EVENTS_PER_FLUSH = 20
EVENTS_MAXLEN = 100_000


@dataclass
class Flush:
    """One numbered flush: key -> flat field/increment pairs, and the keys that have it."""

    number: int
    sums: dict[str, list[Any]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)


class LiveBuffer:
    """Evidence not yet added to Redis."""

    def __init__(self, consumer: str = "worker") -> None:
        self.marker = f"flush:{consumer}"
        self.versions: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(LIVE_FIELDS)))
        self.pairs: dict[tuple[str, str], np.ndarray] = defaultdict(
            lambda: np.zeros(len(PAIR_FIELDS)))
        self.drifted: list[tuple[bytes, float]] = []
        self.overall = drift.PageHinkley(min_instances=30, delta=0.005, threshold=50.0)
        self.overall_alarms: list[float] = []
        self.unsent: Flush | None = None  # a flush not yet confirmed by every key
        self.number = time.time_ns()  # flush numbers only grow, also across restarts
        self.touched: set[str] = set()  # keys holding this worker's marker

    def add(self, commit: Commit) -> None:
        """Fold one committed batch's scores in."""
        sc = commit.scores
        if sc is None or not commit.versions:
            return
        cols = len(commit.versions)
        sums = np.stack([getattr(sc, f)[:cols] for f in LIVE_FIELDS], axis=1)
        for c, v in enumerate(commit.versions):
            self.versions[v] += sums[c]
            if c:
                self.pairs[(v, commit.versions[0])] += (
                    sc.pair_n[c], sc.pair_d[c], sc.pair_d2[c], sc.pair_a[c], sc.pair_b[c])
        self.drifted += sc.drifted
        if sc.n[0]:
            mean = float(sc.drift_err[0] / sc.n[0])  # capped like the per-series test
            self.overall.update(mean)
            if self.overall.drift_detected:
                self.overall_alarms.append(mean)

    def _next_flush(self) -> Flush | None:
        """The sums gathered so far as a new numbered flush (None: nothing to add)."""
        sums: dict[str, list[Any]] = {}
        for v, row in self.versions.items():
            sums[keys.live(v)] = _pairs(LIVE_FIELDS, row)
        for (v, against), row in self.pairs.items():
            sums[keys.live_pair(v, against)] = _pairs(PAIR_FIELDS, row)
        self.versions.clear()
        self.pairs.clear()
        sums = {k: p for k, p in sums.items() if p}
        if not sums:
            return None
        self.number += 1
        return Flush(self.number, sums)

    def flush(self, client: Any, script: Any) -> None:
        """Add the sums to Redis exactly once (`script`: the registered ADD_ONCE), write drift
        events. A failure leaves the flush to be sent again by the next call."""
        if self.unsent is None:
            self.unsent = self._next_flush()
        if self.unsent is not None:
            todo = self.unsent
            for key in sorted(set(todo.sums) - todo.done):
                script(keys=[key], args=[self.marker, todo.number, *todo.sums[key]])
                todo.done.add(key)
                self.touched.add(key)
            self.unsent = None
        if self.drifted or self.overall_alarms:
            pipe = client.pipeline(transaction=False)
            self._drift_events(pipe)
            pipe.execute()

    def forget_markers(self, client: Any) -> None:
        """Remove this worker's flush markers (a clean shutdown: its flushes are all in)."""
        if self.unsent is None and self.touched:
            pipe = client.pipeline(transaction=False)
            for key in self.touched:
                pipe.hdel(key, self.marker)
            pipe.execute()
            self.touched.clear()

    def _drift_events(self, pipe: Any) -> None:
        now = str(int(time.time() * 1000))
        for series, stat in self.drifted[:EVENTS_PER_FLUSH]:
            pipe.xadd(keys.EVENTS, {"event": "drift", "series": series, "detector": "page_hinkley",
                                    "statistic": f"{stat:.4g}", "ts": now},
                      maxlen=EVENTS_MAXLEN, approximate=True)
        for stat in self.overall_alarms[:1]:
            pipe.xadd(keys.EVENTS, {"event": "drift", "series": "*", "detector": "page_hinkley",
                                    "statistic": f"{stat:.4g}", "ts": now},
                      maxlen=EVENTS_MAXLEN, approximate=True)
        if self.drifted:
            metrics.DRIFT.labels(scope="series").inc(len(self.drifted))
            log.info("drift detected in %d series", len(self.drifted),
                     extra={"series": [s.decode("utf-8", "replace") for s, _ in self.drifted[:5]]})
        if self.overall_alarms:
            metrics.DRIFT.labels(scope="overall").inc(len(self.overall_alarms))
            log.info("drift detected in the overall error stream")
        self.drifted.clear()
        self.overall_alarms.clear()


def _pairs(names: tuple[str, ...], row: np.ndarray) -> list[Any]:
    """Flat field/increment pairs of the non-zero sums.

    >>> _pairs(("n", "d"), np.array([2.0, 0.0]))
    ['n', 2.0]
    """
    out: list[Any] = []
    for name, value in zip(names, row.tolist(), strict=True):
        if value:
            out += [name, value]
    return out
