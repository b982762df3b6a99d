"""Reads the live evidence of the served versions; promotes or rolls back on it (auto mode).

Every worker runs this at its maintenance, at most every `CHECK_S` seconds. A switch is a
registry transaction that expects the current version the evidence was about, so two
workers deciding at once switch once. Also sets the per-version live gauges.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from forecast import evidence, registry
from forecast.evidence import Decision
from forecast.states import State
from worker import metrics

log = logging.getLogger(__name__)

CHECK_S = 5.0
SETTLED = 20  # paired actuals (times min_n) after which the previous version leaves shadow


class Promoter:
    """Decisions on live evidence for one worker."""

    def __init__(self, client: Any, auto: bool, min_n: int) -> None:
        self.client = client
        self.auto = auto
        self.min_n = min_n
        self.next_check = 0.0

    def tick(self, current: str | None, shadows: list[str]) -> Decision | None:
        """Update the live gauges; in auto mode, decide and switch. The decision taken."""
        now = time.monotonic()
        if current is None or now < self.next_check:
            return None
        self.next_check = now + CHECK_S
        live = evidence.read_live(self.client, [current, *shadows])
        for v, stats in live.items():
            for gauge, value in ((metrics.LIVE_MASE, stats.mase),
                                 (metrics.LIVE_COVERAGE, stats.coverage),
                                 (metrics.LIVE_WIDTH, stats.width)):
                if value is not None:
                    gauge.labels(version=v).set(value)
        if not self.auto or not shadows:
            return None
        states = registry.states(self.client)
        pairs = {v: evidence.read_pair(self.client, v, current) for v in shadows}
        decision = evidence.decide(current, {v: states.get(v, "") for v in shadows}, pairs,
                                   live[current], self.min_n)
        if decision is None:
            self._settle_previous(current, shadows, states, pairs)
            return None
        return decision if self._apply(current, decision) else None

    def _settle_previous(self, current: str, shadows: list[str], states: Mapping[str, str],
                         pairs: dict[str, evidence.Pair]) -> None:
        """Stop shadowing the previous version once the current one has held up long enough."""
        for v in shadows:
            if states.get(v) == State.PREVIOUS and pairs[v].n >= SETTLED * self.min_n:
                registry.unshadow(self.client, v)
                log.info("%s held up against the previous %s on %d actuals: stops shadowing it",
                         current, v, int(pairs[v].n))

    def _apply(self, current: str, d: Decision) -> bool:
        if d.action == "promote":
            done = registry.promote(self.client, d.version, d.reason, d.evidence(), expect=current)
        else:
            try:
                done = registry.rollback(self.client, d.reason, d.evidence(), expect=current,
                                         to=d.version) != ""
            except registry.RegistryError:  # nothing to roll back to
                return False
        if done:
            metrics.MODEL_EVENTS.labels(event=d.action).inc()
            log.warning("%s %s (was %s): %s", "promoted" if d.action == "promote"
                        else "rolled back to", d.version, current, d.reason,
                        extra=d.evidence())
        return done
