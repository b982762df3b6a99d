"""What enters a series' window after missing steps: the gap policy (FORECAST_GAP_POLICY).

`carry` uses the values as they come (the window spans the hole as if it were continuous);
`reset` starts the window again at the value after the gap; `fill` first puts the model's
own forecasts for the missing steps into the window (never scored as actuals, never
written as outputs). A gap of more than FORECAST_GAP_MAX_STEPS steps resets in every
policy. Gaps are found by `worker.timing`.

A fill needs the window as it is right before the gap, so a batch in which a series has a
fill after its first value is processed in passes (`Plan.passes`): in each pass a series'
values start with at most one fill, made from its window after the previous pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

POLICIES = ("carry", "fill", "reset")


@dataclass
class Plan:
    """How a batch meets its gaps: `restart` per value (stream order), the passes (stream
    order indices, one after the other) and the fills: value index -> steps to fill."""

    restart: np.ndarray
    passes: list[np.ndarray]
    fills: dict[int, int]


def plan(policy: str, gap: np.ndarray, slots: np.ndarray, max_steps: int) -> Plan:
    """The plan for a batch whose values follow `gap` missing steps (0: none).

    >>> p = plan("fill", np.array([0, 2, 0, 0, 9, 1]), np.array([0, 0, 1, 0, 0, 1]), 5)
    >>> p.restart.tolist(), [x.tolist() for x in p.passes], p.fills
    ([False, False, False, False, True, False], [[0, 2], [1, 3, 4, 5]], {1: 2, 5: 1})
    """
    m = len(gap)
    everything = [np.arange(m)]
    too_long = gap > max_steps
    if policy == "reset":
        return Plan(too_long | (gap > 0), everything, {})
    if policy != "fill" or not (gap > 0).any():
        return Plan(too_long, everything, {})
    fill = (gap > 0) & ~too_long
    order = np.argsort(slots, kind="stable")
    g = slots[order]
    first = np.concatenate(([True], g[1:] != g[:-1]))
    # a series' k-th fill after its first value starts its pass k
    split = (fill[order] & ~first).astype(np.int64)
    starts = np.flatnonzero(first)
    running = np.cumsum(split)
    before = np.repeat(running[starts] - split[starts], np.diff(np.append(starts, m)))
    pass_of = np.empty(m, dtype=np.int64)
    pass_of[order] = running - before
    passes = [np.flatnonzero(pass_of == k) for k in range(int(pass_of.max()) + 1)]
    return Plan(too_long, passes, {int(i): int(gap[i]) for i in np.flatnonzero(fill)})


def forecasts(model: Any, windows: np.ndarray, counts: np.ndarray, steps: np.ndarray
              ) -> list[list[float]]:
    """Each window's next `steps[i]` values as `model` forecasts them, one step at a time
    (a window not yet full gets none: its gap is carried)."""
    n = model.n_steps
    w = np.array(windows, dtype=np.float32)
    out: list[list[float]] = [[] for _ in range(len(w))]
    able = counts >= n
    for t in range(int(steps.max(initial=0))):
        active = np.flatnonzero(able & (steps > t))
        if not len(active):
            break
        nxt = np.asarray(model.predict(np.ascontiguousarray(w[active, -n:])))[:, 0]
        w[active, :-1] = w[active, 1:]
        w[active, -1] = nxt
        for i, v in zip(active.tolist(), nxt.tolist(), strict=True):
            out[i].append(v)
    return out
