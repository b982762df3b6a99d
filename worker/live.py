"""The live evidence a worker gathers, added to Redis at each maintenance (forecast.evidence).

Per batch, `add` folds a commit's scores into per-version and per-pair sums and drift
alarms; per-series sums accumulate in the shards' `SeriesStore` rows (`worker.scoring`).
`flush` adds them to `forecast:live:*` with HINCRBYFLOAT and writes drift events to
`forecast:events` (at most `EVENTS_PER_FLUSH` per-series ones each time); an overall
Page-Hinkley detector (River) sees each batch's mean scaled error.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np
from river import drift

from forecast import keys
from forecast.evidence import LIVE_FIELDS, PAIR_FIELDS
from worker import metrics
from worker.batch import Commit

log = logging.getLogger(__name__)

SERIES_CAP = 50_000
SERIES_FLUSH_S = 30.0  # per-series sums are added less often: they are many small writes
EVENTS_PER_FLUSH = 20
EVENTS_MAXLEN = 100_000


class LiveBuffer:
    """Evidence not yet added to Redis."""

    def __init__(self) -> None:
        self.versions: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(LIVE_FIELDS)))
        self.pairs: dict[tuple[str, str], np.ndarray] = defaultdict(
            lambda: np.zeros(len(PAIR_FIELDS)))
        self.drifted: list[tuple[bytes, float]] = []
        self.overall = drift.PageHinkley(min_instances=30, delta=0.005, threshold=50.0)
        self.overall_alarms: list[float] = []
        self.next_series_flush = time.monotonic() + SERIES_FLUSH_S
        self.first_store = 0  # stores take turns at the head of the per-series flush

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
            self.overall.update(float(sc.scaled_err[0] / sc.n[0]))
            if self.overall.drift_detected:
                self.overall_alarms.append(float(sc.scaled_err[0] / sc.n[0]))

    def flush(self, client: Any, stores: list[Any], versions: list[str],
              final: bool = False) -> None:
        """Add the sums to Redis, write drift events. Per-series sums (kept in the stores'
        rows) go out every SERIES_FLUSH_S, at most SERIES_CAP series a time (round robin over
        series and stores); when `final`, all of them, SERIES_CAP series per round trip."""
        series_due = (final or time.monotonic() >= self.next_series_flush) and versions
        if not (self.versions or self.drifted or self.overall_alarms or series_due):
            return
        pipe = client.pipeline(transaction=False)
        for v, sums in self.versions.items():
            for name, value in zip(LIVE_FIELDS, sums.tolist(), strict=True):
                if value:
                    pipe.hincrbyfloat(keys.live(v), name, value)
        for (v, against), sums in self.pairs.items():
            for name, value in zip(PAIR_FIELDS, sums.tolist(), strict=True):
                if value:
                    pipe.hincrbyfloat(keys.live_pair(v, against), name, value)
        if series_due:
            self.next_series_flush = time.monotonic() + SERIES_FLUSH_S
            left = SERIES_CAP
            turn = self.first_store % max(1, len(stores))
            self.first_store += 1
            for store in [*stores[turn:], *stores[:turn]]:
                while left > 0 or final:
                    if left <= 0:  # final: everything goes, one round trip per SERIES_CAP
                        pipe.execute()
                        left = SERIES_CAP
                    names, sums = store.take_evidence(left)
                    if not names:
                        break
                    left -= len(names)
                    self._series_sums(pipe, versions, names, sums)
        self._drift_events(pipe)
        self.versions.clear()
        self.pairs.clear()
        pipe.execute()

    @staticmethod
    def _series_sums(pipe: Any, versions: list[str], names: list[bytes], sums: Any) -> None:
        for name, row in zip(names, sums.tolist(), strict=True):
            text = name.decode("utf-8", "replace")
            for v, (n, err, naive) in zip(versions, row, strict=False):
                if n:
                    pipe.hincrbyfloat(keys.live_series(v), f"{text}:n", n)
                    pipe.hincrbyfloat(keys.live_series(v), f"{text}:err", err)
                    pipe.hincrbyfloat(keys.live_series(v), f"{text}:naive", naive)

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
