"""Live evidence about model versions, and the promotion decisions taken on it.

Workers join every forecast of every served version with the actual value when it arrives
(`worker.scoring`) and add the sums to Redis (`forecast:live:<v>`, and paired sums against
the current version in `forecast:live:<v>:vs:<current>`), so the evidence of all workers
adds up and survives restarts. Errors are scaled per value by the series' naive-error scale,
so series of any size weigh the same; a version's live MASE is its mean scaled error over
the naive forecast's on the same values.

A decision needs at least `min_n` paired values, a paired t statistic beyond `z` (the
per-value loss differences; a strict threshold, since it is checked again and again) and an
improvement of at least `margin` in MASE: a candidate better than the current version is
promoted; a current version behind the previous one, or behind naive, is rolled back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from forecast import keys
from forecast.states import State

LIVE_FIELDS = ("forecast_n", "abs_err", "n", "scaled_err", "scaled_naive", "with_interval",
               "covered", "scaled_width", "naive_d", "naive_d2")
PAIR_FIELDS = ("n", "d", "d2", "a", "b")


@dataclass
class Live:
    """One version's live sums."""

    forecast_n: float = 0.0
    abs_err: float = 0.0
    n: float = 0.0
    scaled_err: float = 0.0
    scaled_naive: float = 0.0
    with_interval: float = 0.0
    covered: float = 0.0
    scaled_width: float = 0.0
    naive_d: float = 0.0  # sum of (scaled error - naive scaled error)
    naive_d2: float = 0.0

    @property
    def mase(self) -> float | None:
        """Mean scaled error over the naive forecast's, on the same values.

        >>> Live(n=4, scaled_err=2.0, scaled_naive=4.0).mase
        0.5
        """
        return self.scaled_err / self.scaled_naive if self.n and self.scaled_naive else None

    @property
    def mae(self) -> float | None:
        """Mean absolute error of every forecast joined with its actual."""
        return self.abs_err / self.forecast_n if self.forecast_n else None

    @property
    def coverage(self) -> float | None:
        """Share of actuals inside the interval written with the forecast."""
        return self.covered / self.with_interval if self.with_interval else None

    @property
    def width(self) -> float | None:
        """Mean interval width, in units of the series' naive-error scale."""
        return self.scaled_width / self.n if self.n else None


@dataclass
class Pair:
    """Paired sums of `version` against `against`: d = scaled error of version - of against."""

    n: float = 0.0
    d: float = 0.0
    d2: float = 0.0
    a: float = 0.0  # sum of version's scaled errors on these values
    b: float = 0.0  # sum of against's

    @property
    def t(self) -> float:
        """The paired t statistic of the mean difference (negative: version is better).

        >>> round(Pair(n=100, d=-10.0, d2=2.0).t, 2)
        -9.95
        """
        return t_stat(self.n, self.d, self.d2)

    @property
    def ratio(self) -> float | None:
        """MASE-like ratio of version's errors to against's on the same values."""
        return self.a / self.b if self.b else None


def t_stat(n: float, total: float, squares: float) -> float:
    """t statistic of a mean from its count, sum and sum of squares (0 when undefined)."""
    if n < 2:
        return 0.0
    mean = total / n
    var = max(squares / n - mean * mean, 0.0) * n / (n - 1)
    if var > 0:
        return mean / math.sqrt(var / n)
    return 0.0 if mean == 0 else math.copysign(1e9, mean)


def _floats(raw: dict[Any, Any], names: tuple[str, ...]) -> dict[str, float]:
    """The named sums of an evidence hash (other fields, such as flush markers, ignored).

    >>> _floats({b"n": b"2", b"flush:w1": b"17"}, ("n", "d"))
    {'n': 2.0, 'd': 0.0}
    """
    got = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    return {n: float(got.get(n, 0.0)) for n in names}


def read_live(client: Any, versions: list[str]) -> dict[str, Live]:
    """The live sums of each version (zeros for a version never scored)."""
    pipe = client.pipeline(transaction=False)
    for v in versions:
        pipe.hgetall(keys.live(v))
    return {v: Live(**_floats(raw, LIVE_FIELDS)) for v, raw in zip(versions, pipe.execute(),
                                                                   strict=True)}


def read_pair(client: Any, version: str, against: str) -> Pair:
    """Paired sums of `version` against `against`."""
    return Pair(**_floats(client.hgetall(keys.live_pair(version, against)), PAIR_FIELDS))


@dataclass
class Decision:
    """A promotion or a rollback, with the evidence behind it (for the announcement)."""

    action: str  # "promote" or "rollback"
    version: str  # the version that becomes current
    reason: str
    n: int
    mase: float | None  # of the version that becomes current (paired values)
    against_mase: float | None  # of the one it replaces
    statistic: float
    against: str

    def evidence(self) -> dict[str, Any]:
        """The announcement's evidence fields."""
        out = asdict(self)
        del out["action"], out["version"], out["reason"]
        return {k: ("" if v is None else (round(v, 6) if isinstance(v, float) else v))
                for k, v in out.items()}


def _better(pair: Pair, min_n: int, z: float, margin: float) -> bool:
    ratio = pair.ratio
    return pair.n >= min_n and pair.t < -z and ratio is not None and ratio <= 1 - margin


def decide(current: str, shadows: dict[str, str], pairs: dict[str, Pair], live: Live,
           min_n: int, z: float = 3.0, margin: float = 0.02) -> Decision | None:
    """What to do now: promote the best proven candidate, else roll back a failing current.

    `shadows` maps each shadowed version to its state (candidate or previous); `pairs` has
    each one's paired sums against `current`; `live` is the current version's sums.

    >>> good = Pair(n=500, d=-50.0, d2=30.0, a=400.0, b=450.0)
    >>> decide("v1", {"v2": "candidate"}, {"v2": good}, Live(), 300).action
    'promote'
    >>> decide("v2", {"v1": "previous"}, {"v1": Pair(n=500)}, Live(), 300) is None
    True
    """
    proven = [(p.ratio or 1.0, v) for v, p in pairs.items()
              if shadows.get(v) == State.CANDIDATE and _better(p, min_n, z, margin)]
    if proven:
        _, v = min(proven)
        p = pairs[v]
        return Decision("promote", v, "live", int(p.n), _mase(p.a, p.b, live),
                        live.mase, round(p.t, 3), current)
    for v, p in pairs.items():
        if shadows.get(v) == State.PREVIOUS and _better(p, min_n, z, margin):
            return Decision("rollback", v, "live", int(p.n), _mase(p.a, p.b, live), live.mase,
                            round(p.t, 3), current)
    worse = t_stat(live.n, live.naive_d, live.naive_d2)
    mase = live.mase
    if live.n >= min_n and worse > z and mase is not None and mase >= 1 + margin:
        # ...to a previous version that does no worse on the same actuals (never a chain)
        prev = [v for v, s in shadows.items() if s == State.PREVIOUS
                and (ratio := pairs[v].ratio) is not None and ratio < 1.0]
        if prev:
            return Decision("rollback", prev[0], "worse_than_naive", int(live.n), None, mase,
                            round(worse, 3), "naive")
    return None


def _mase(a: float, b: float, live: Live) -> float | None:
    """The MASE of a shadow from its paired ratio to the current version's live MASE."""
    if not b or live.mase is None:
        return None
    return a / b * live.mase
