"""The step of a series learnt from its ts, gaps, and the time each forecast is for."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.timing import GAP_FACTOR, RING, median3, observe


def reference(values: list[tuple[int, int]], rows: int) -> tuple[list, list, list, list]:
    """One value at a time: (slot, ts) in stream order -> steps before/after, gaps, rings."""
    ring = [[np.nan] * RING for _ in range(rows)]
    last = [-1] * rows
    before, after, gaps = [], [], []
    for slot, ts in values:
        if ts < 0:
            before.append(np.nan)
            after.append(np.nan)
            gaps.append(0)
            continue
        b = float(median3(np.array([ring[slot]]))[0])
        diff = ts - last[slot] if last[slot] >= 0 else 0
        gap = 0
        if diff > 0:
            if not np.isnan(ring[slot]).any() and diff >= GAP_FACTOR * b:
                gap = max(1, int(np.rint(diff / b)) - 1)
            ring[slot] = [*ring[slot][1:], float(diff)]
        last[slot] = ts
        before.append(b)
        after.append(float(median3(np.array([ring[slot]]))[0]))
        gaps.append(gap)
    return before, after, gaps, ring


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 5, 10, 10, 10, 30, -1])),
                min_size=1, max_size=60),
       st.integers(1, 4))
def test_vectorised_timing_equals_one_value_at_a_time(steps: list[tuple[int, int]],
                                                      batches: int) -> None:
    clock = [1000] * 4
    values = []
    for slot, dt in steps:  # ts only grow per series (the ts order rule came first)
        if dt < 0:
            values.append((slot, -1))
        else:
            clock[slot] += dt
            values.append((slot, clock[slot]))
    want = reference(values, 4)
    ring = np.full((4, RING), np.nan)
    last = np.full(4, -1, dtype=np.int64)
    got: tuple[list, list, list] = ([], [], [])
    for chunk in np.array_split(np.arange(len(values)), batches):  # any batch boundaries
        slots = np.array([values[i][0] for i in chunk], dtype=np.int64)
        stamps = np.array([values[i][1] for i in chunk], dtype=np.int64)
        t = observe(ring, slots, stamps, last[slots] if len(slots) else last[:0])
        for i, slot in enumerate(slots.tolist()):
            if stamps[i] >= 0:
                last[slot] = stamps[i]
        for acc, part in zip(got, (t.step_before, t.step_after, t.gap), strict=True):
            acc.extend(part.tolist())
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2]
    np.testing.assert_array_equal(ring, np.array(want[3]))


def test_jitter_is_no_gap_and_a_hole_is_counted() -> None:
    ring = np.full((1, RING), np.nan)
    ts = np.array([0, 1000, 2040, 2990, 4010, 5000, 16000, 17000])
    t = observe(ring, np.zeros(len(ts), dtype=np.int64), ts, np.full(len(ts), -1))
    assert t.gap.tolist() == [0, 0, 0, 0, 0, 0, 10, 0]
    assert t.step_after[-1] == 1000.0
