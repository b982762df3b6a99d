"""What the tests and the benchmark use besides the product: a paced producer thread, and a
local Redis Cluster (`testkit.cluster`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from forecast.client import Item, Producer
from forecast.processes import wait_until


class PacedProducer(threading.Thread):
    """Pushes `make_round(i)` for i = 0, 1, ... one round every `interval` s; pausable.

    Stops after `limit` values (None: when told). `stop()` re-raises a push failure.
    """

    def __init__(self, producer: Producer, make_round: Callable[[int], list[Item]],
                 interval: float, limit: int | None = None) -> None:
        super().__init__(daemon=True, name="paced-producer")
        self.producer = producer
        self.make_round = make_round
        self.interval = interval
        self.limit = limit
        self.rounds = 0
        self.sent = 0
        self.error: BaseException | None = None
        self._go, self._idle, self._halt = threading.Event(), threading.Event(), threading.Event()
        self._go.set()

    def __enter__(self) -> PacedProducer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def run(self) -> None:
        """The push loop (on a fixed schedule, so slow pushes do not stretch it)."""
        t0 = time.monotonic()
        try:
            while not self._halt.is_set() and (self.limit is None or self.sent < self.limit):
                if not self._go.is_set():
                    self._idle.set()
                    self._go.wait(0.05)
                    t0 = time.monotonic() - self.rounds * self.interval
                    continue
                self._idle.clear()
                items = self.make_round(self.rounds)
                self.producer.push_many(items)
                self.sent += len(items)
                self.rounds += 1
                self._halt.wait(max(0.0, t0 + self.rounds * self.interval - time.monotonic()))
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        finally:
            self._idle.set()

    def pause(self, timeout: float = 10.0) -> None:
        """Stop pushing and wait until no push is under way."""
        self._idle.clear()
        self._go.clear()
        wait_until(lambda: self._idle.is_set() or not self.is_alive(), timeout,
                   what="producer paused")

    def resume(self) -> None:
        """Push again."""
        self._go.set()

    def wait_rounds(self, n: int, timeout: float = 30.0) -> None:
        """Block until `n` more rounds were pushed."""
        target = self.rounds + n
        wait_until(lambda: self.rounds >= target or self.error or not self.is_alive(), timeout,
                   what=f"{n} producer rounds")
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Stop after the round in hand; re-raise a push failure."""
        self._halt.set()
        self._go.set()
        if self.is_alive():
            self.join(10)
        if self.error is not None:
            raise self.error
