"""Forecasts before a series fills its window, and single experts: models without a net.

A young series has fewer values than its family's window. Its warm-up model forecasts from
the last L values for every length L of a ladder (2, 3, 4, 5, ...) below the window and
keeps, per series, the longest L it has (`forecast.layers.SelectByCount`). Each length is
the hybrid's untrained expert selection on L values (the experts weighted by their
in-window backtest errors, with the sharpness and the filter/backtest split chosen on
validation windows of that length), or the last value when L is too short for backtests;
each has its own split-conformal interval calibrated on windows of that length, so the
interval of a series with three values says how little three values tell. A level averages
every forecaster whose validation loss is within one standard error of the best one's
(forecast pooling): a series unlike the family's, which a young series may well be, is not
left to whichever of several near-equal forecasters the family's windows happened to favour.

`single_expert` is one expert of the bank alone (naive, seasonal naive, Theta, ...), with an
interval from its own in-window errors: what the trainer publishes when the hybrid does not
pass the gate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from forecast import npgraph
from forecast.layers import (
    ExpertBank,
    FillMissing,
    GatedCombine,
    HybridOutput,
    NaiveExpert,
    SelectByCount,
    WindowScale,
    calibration_mask,
    window_stats,
)
from trainer import conformal
from trainer.hybrid import SCALING, SHARPNESS_GRID, SPREAD_SHRINK, series_weights
from trainer.sizing import filter_len

log = logging.getLogger(__name__)

# Finer where a series is youngest: a series with 11 values forecast from its last 8 would
# drop more than a quarter of what little it has.
LADDER = (2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128, 192, 256,
          384)
# The experts of M3/M4's "Comb" benchmark (SES, Holt, damped trend; Theta here), which a
# level may average instead of selecting from every expert: a few backtests select noisily.
COMB = ("ses0.3", "holt0.3", "theta0.5")
SHARPNESS = (1e-3, *SHARPNESS_GRID)  # 1e-3: an equal-weight average
MIN_SPREAD = 0.05
MAX_WINDOWS = 20_000  # validation windows per length (a random subset beyond that)
SHORT_LEVEL = 16  # up to this length a level also tries a filter with H + 3 backtests
POOL_BLOCKS = 50  # contiguous blocks of validation windows for the pooling's standard error
CHUNK = 4096  # windows per numpy call while fitting


Member = tuple[int, int, bool, float]  # (filter_len, period, comb, sharpness)


@dataclass
class Level:
    """One length of the ladder: how its forecasters are built, and its interval."""

    length: int
    filter_len: int  # 0: the last value (too short for in-window backtests)
    period: int
    sharpness: float
    q: list[float] | None
    offset: float
    val_loss: float
    comb: bool = False  # only the COMB experts (of the deseasonalised window when seasonal)
    pooled: tuple[Member, ...] = ()  # the other forecasters averaged with this one

    @property
    def members(self) -> list[Member]:
        """Every forecaster the level averages, the best on validation first."""
        return [(self.filter_len, self.period, self.comb, self.sharpness), *self.pooled]


def _combine(z: Any, x: Any, loc: Any, scale: Any, lv: Level, horizon: int, name: str
             ) -> tuple[Any, Any]:
    """(point, spread) in scaled units for one level's window: its members' average."""
    if lv.filter_len == 0:
        point, spread = NaiveExpert(horizon, name=f"{name}_naive")(z)
        return point, spread
    banks: dict[tuple[int, int], Any] = {}
    points, spreads = [], []
    for i, (flen, period, comb, sharp) in enumerate(lv.members):
        if (flen, period) not in banks:
            bank = ExpertBank(filter_len=flen, horizon=horizon, period=period, log=True,
                              name=f"{name}_experts" + (f"{len(banks)}" if banks else ""))
            banks[(flen, period)] = (bank, bank([x, z, loc, scale]))
        bank, (f, e) = banks[(flen, period)]
        combine = GatedCombine(sharp, name=f"{name}_combine" + (f"{i}" if i else ""))
        point, spread = combine([f, e, scale])  # no features: the gate's net terms stay zero
        if comb:
            combine.prior.assign(_comb_prior(bank.names, bank.n_experts, horizon))
        points.append(point)
        spreads.append(spread)
    if len(points) == 1:
        return points[0], spreads[0]
    return (keras.layers.Average(name=f"{name}_point")(points),
            keras.layers.Average(name=f"{name}_spread")(spreads))


def _comb_prior(names: list[str], k: int, horizon: int) -> np.ndarray:
    """Prior weights that keep only the COMB experts (plain and log; seasonal when there)."""
    seasonal = "snaive" in names
    wanted = {f"s_{n}" if seasonal else n for n in COMB}
    keep = np.asarray([n in wanted for n in names] * (k // len(names)))
    return np.where(keep[:, None], 0.0, -60.0).repeat(horizon, axis=1).astype("float32")


def _set_sharpness(combine: Any, value: float) -> None:
    raw = float(np.log(np.expm1(value)))
    combine.sharp.assign(np.full(combine.sharp.shape, raw, dtype="float32"))


def _numpy(model: keras.Model, x: np.ndarray) -> list[np.ndarray]:
    """`model`'s outputs on raw windows `x` (m, n) through its numpy twin: no graph tracing
    per candidate model (`forecast.npgraph`)."""
    return npgraph.predict(model, x.reshape(len(x), -1, 1).astype(np.float32), CHUNK)


def _scaled(model: keras.Model, x: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    out = _numpy(model, x)[0]
    return out[:, :horizon].astype(np.float64), out[:, horizon:].astype(np.float64)


Candidate = tuple[int, int, bool, float, np.ndarray, np.ndarray]


def _candidates(length: int, period: int, x: np.ndarray, horizon: int) -> Iterator[Candidate]:
    """(filter_len, period, comb, sharpness, point, spread) in scaled units on windows `x`
    of every forecaster a level of `length` tries. Backtests on a half, a third or a
    quarter of the window, and on H + 3 values up to `SHORT_LEVEL` (the longer filter holds
    two seasons sooner, and smooths a noisy young series over more values); each filter's
    expert bank runs once, its combine (all experts, or COMB's) once per sharpness."""
    raw = keras.Input((length, 1), name="raw_window")
    z, loc, scale = WindowScale(mode=SCALING, name="window_scale")(raw)
    tried = {filter_len(length, horizon, share) for share in (2, 3, 4)}
    if length <= SHORT_LEVEL:  # few backtests: more values for each expert
        tried.add(max(2, length - horizon - 3))
    flens = [f for f in sorted(tried) if length - f >= horizon and length >= 3]
    if not flens:
        point, spread = _numpy(keras.Model(raw, NaiveExpert(horizon)(z)), x)
        yield 0, 1, False, 0.0, point.astype(np.float64), spread.astype(np.float64)
    for flen in flens:
        p = period if period >= 2 and flen >= 2 * period else 1
        bank = ExpertBank(filter_len=flen, horizon=horizon, period=p, log=True)
        f, e = bank([raw, z, loc, scale])
        inputs = _numpy(keras.Model(raw, [f, e, scale]), x)
        combine = GatedCombine(SHARPNESS[0])
        combine([f, e, scale])
        for comb in (False, True):
            if comb:
                combine.prior.assign(_comb_prior(bank.names, bank.n_experts, horizon))
            for sharp in SHARPNESS:
                _set_sharpness(combine, sharp)
                point, spread = npgraph.twin(combine)(inputs)
                yield flen, p, comb, sharp, point.astype(np.float64), spread.astype(np.float64)


def _calibrate(point: np.ndarray, spread: np.ndarray, yz: np.ndarray, coverage: float
               ) -> tuple[list[float], float]:
    offset = float(np.median(np.maximum(spread, MIN_SPREAD))) * SPREAD_SHRINK
    r = np.abs(yz - point) / (np.maximum(spread, MIN_SPREAD) + offset)
    return conformal.conformal_q(r, coverage), offset


def pool(errors: list[np.ndarray], weight: np.ndarray | None = None,
         blocks: int = POOL_BLOCKS) -> list[int]:
    """The candidates (indices, the best first) whose mean validation error is within one
    standard error of the best's: the error differences per window, averaged over contiguous
    blocks of windows (neighbouring windows share values, so single windows overstate what
    is known).

    >>> a, b, c = np.array([1.0, 1, 1, 1]), np.array([0.5, 1.5, 0.5, 1.5]), np.full(4, 2.0)
    >>> pool([a, b, c], blocks=2), pool([a[:1], c[:1]]), pool([a[:0], c[:0]])
    ([0, 1], [0], [0])
    """
    e = np.asarray(errors, dtype=np.float64)  # (candidates, windows)
    if e.shape[1] == 0:
        return [0]
    w = np.ones(e.shape[1]) if weight is None else np.asarray(weight, dtype=np.float64)
    best = int(np.argmin(e @ w))
    k = min(blocks, e.shape[1])  # blocks as equal as they come, the first ones longer
    sizes = np.full(k, e.shape[1] // k) + (np.arange(k) < e.shape[1] % k)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    d = np.add.reduceat((e - e[best]) * w, starts, axis=1) / sizes  # (candidates, blocks)
    se = d.std(axis=1, ddof=1) / np.sqrt(len(sizes)) if len(sizes) > 1 else 0.0
    near = np.flatnonzero(d.mean(axis=1) <= se)
    return [best, *(int(i) for i in near if i != best)]


def fit_level(length: int, period: int, x: np.ndarray, y: np.ndarray, horizon: int,
              coverage: float | None, weight: np.ndarray | None = None) -> Level:
    """The forecasters of `length` values pooled on the windows (x, y) (see `pool`), with
    the interval of their average.

    Chosen and calibrated on the windows whose scale is informative: a constant window
    (`[0, 0]` of a count series) puts any next value 1e6..1e12 scaled units away, which
    would make the selection loss and the conformal half-width meaningless.
    """
    keep = calibration_mask(x, SCALING)
    x, y = x[keep], y[keep]
    w = None if weight is None else np.asarray(weight, dtype=np.float64)[keep]
    loc, scale = window_stats(x, SCALING)
    yz = (y - loc) / scale
    cands = list(_candidates(length, period, x, horizon))
    chosen = pool([np.mean(np.abs(yz - c[4]), axis=1) for c in cands], w)
    point = np.mean([cands[i][4] for i in chosen], axis=0)
    spread = np.mean([cands[i][5] for i in chosen], axis=0)
    loss = float(np.average(np.mean(np.abs(yz - point), axis=1), weights=w))
    q, offset = _calibrate(point, spread, yz, coverage) if coverage else (None, 0.0)
    flen, p, comb, sharp = cands[chosen[0]][:4]
    return Level(length, flen, p, sharp, q, offset, loss, comb,
                 tuple(cands[i][:4] for i in chosen[1:]))


def ladder(n_steps: int) -> list[int]:
    """The warm-up lengths of a family whose full window is `n_steps`.

    >>> ladder(48), ladder(3)
    ([2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40], [2])
    """
    return [v for v in LADDER if v < n_steps]


def _windows(series: list[np.ndarray], splits: list[int], length: int, horizon: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of `length` values whose targets lie in the validation part (else anywhere),
    and each window's weight: every series weighs the same in a level's choice, however
    many windows it has (one long series would otherwise choose for all of them)."""
    xs, ys, which = [], [], []
    for i, (values, split) in enumerate(zip(series, splits, strict=True)):
        start = split if split < len(values) else 0
        pos = np.arange(max(length, start), len(values) - horizon + 1)
        if len(pos):
            idx = pos[:, None] + np.arange(-length, horizon)[None, :]
            w = values[idx]
            xs.append(w[:, :length])
            ys.append(w[:, length:])
            which.append(np.full(len(pos), i))
    if not xs:
        return np.zeros((0, length)), np.zeros((0, horizon)), np.zeros(0)
    x, y, weight = np.concatenate(xs), np.concatenate(ys), series_weights(np.concatenate(which))
    if len(x) > MAX_WINDOWS:
        keep = np.sort(rng.choice(len(x), MAX_WINDOWS, replace=False))
        x, y, weight = x[keep], y[keep], weight[keep]
    return x, y, weight


def fit_ladder(n_steps: int, period: int, series: list[np.ndarray], splits: list[int],
               horizon: int, coverage: float | None, seed: int = 0) -> list[Level]:
    """Every warm-up length of a family, fitted on its series' validation windows."""
    rng = np.random.default_rng(seed)
    levels = []
    for length in ladder(n_steps):
        x, y, weight = _windows(series, splits, length, horizon, rng)
        if not len(x):
            break
        levels.append(fit_level(length, period, x, y, horizon, coverage, weight))
    return levels


def warm_model(n_steps: int, levels: list[Level], horizon: int) -> keras.Model:
    """The warm-up model: a window of `n_steps` with its unknown past as NaN -> forecasts."""
    raw = keras.Input((n_steps, 1), name="raw_window")
    filled, count = FillMissing(name="fill_missing")(raw)
    outs = []
    for lv in levels:
        name = f"len{lv.length}"
        x = filled
        if lv.length < n_steps:
            x = keras.layers.Cropping1D((n_steps - lv.length, 0), name=f"{name}_crop")(filled)
        z, loc, scale = WindowScale(mode=SCALING, name=f"{name}_scale")(x)
        point, spread = _combine(z, x, loc, scale, lv, horizon, name)
        outs.append(HybridOutput(q=lv.q, offset=lv.offset, min_spread=MIN_SPREAD,
                                 name=f"{name}_output")([point, spread, loc, scale]))
    out = SelectByCount([lv.length for lv in levels], name="by_count")([count, *outs])
    return keras.Model(raw, out, name="warmup")


def expert_errors(n_steps: int, flen: int, period: int, x: np.ndarray, y: np.ndarray,
                  horizon: int) -> tuple[list[str], np.ndarray]:
    """Each expert's mean absolute validation error in scaled units (names, errors)."""
    raw = keras.Input((n_steps, 1))
    z, loc, scale = WindowScale(mode=SCALING)(raw)
    bank = ExpertBank(filter_len=flen, horizon=horizon, period=period, log=True)
    f, _ = bank([raw, z, loc, scale])
    model = keras.Model(raw, f)
    pred = _numpy(model, x)[0].astype(np.float64)  # (m, K, H)
    lo, sc = window_stats(x, SCALING)
    yz = (y - lo) / sc
    names = [*bank.names, *(f"log_{n}" for n in bank.names)]
    return names, np.mean(np.abs(pred - yz[:, None, :]), axis=(0, 2))


def single_expert(n_steps: int, flen: int, period: int, k: int, horizon: int,
                  x: np.ndarray, y: np.ndarray, coverage: float | None) -> keras.Model:
    """Expert `k` of the bank alone (raw windows -> raw forecasts), interval from its own
    in-window errors calibrated on (x, y)."""
    raw = keras.Input((n_steps, 1), name="raw_window")
    z, loc, scale = WindowScale(mode=SCALING, name="window_scale")(raw)
    bank = ExpertBank(filter_len=flen, horizon=horizon, period=period, log=True, name="experts")
    f, e = bank([raw, z, loc, scale])
    combine = GatedCombine(1e-6, name="combine")  # no error weighting: the prior decides
    point, spread = combine([f, e, scale])
    prior = np.full((bank.n_experts, horizon), -60.0, dtype="float32")
    prior[k] = 60.0
    combine.prior.assign(prior)
    q, offset = None, 0.0
    if coverage:
        scaled = keras.Model(raw, keras.layers.Concatenate()([point, spread]))
        p, sp = _scaled(scaled, x, horizon)
        keep = calibration_mask(x, SCALING)  # see `fit_level`
        lo, sc = window_stats(x[keep], SCALING)
        q, offset = _calibrate(p[keep], sp[keep], (y[keep] - lo) / sc, coverage)
    out = HybridOutput(q=q, offset=offset, min_spread=MIN_SPREAD, name="output")(
        [point, spread, loc, scale])
    return keras.Model(raw, out, name="single_expert")
