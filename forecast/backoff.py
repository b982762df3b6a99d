"""Capped exponential backoff with full jitter, for Redis outages (worker and trainer)."""

from __future__ import annotations

import random


class Backoff:
    """Delays 0..min(cap, base * 2**n) seconds; `reset()` after a success.

    >>> b = Backoff(base=0.1, cap=1.0, rng=random.Random(0))
    >>> [round(b.next(), 3) for _ in range(6)]
    [0.084, 0.152, 0.168, 0.207, 0.511, 0.405]
    >>> b.attempts
    6
    """

    def __init__(
        self, base: float = 0.05, cap: float = 5.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.attempts = 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        """The next delay in seconds."""
        ceiling = min(self.cap, self.base * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        """Back to the shortest delay."""
        self.attempts = 0
