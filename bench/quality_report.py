"""The quality benchmark's tables and plot: printed, Markdown for the README, a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.quality_base import PEERS, PROJECT, origins, split
from bench.quality_data import RealSeries

TABLE_PEERS = ("AutoETS", "AutoTheta", "AutoARIMA", "Comb", "Naive", "SeasonalNaive")


def _title(result: dict[str, Any]) -> str:
    h, setup = result["horizon"], result.get("setup", "per_period")
    row = "mixed row: every series in one version" if setup == "mixed" else \
        "per-period rows: one version per seasonal period"
    return f"{row}; " + ("one-step MASE" if h == 1 else f"H={h}: MASE over all steps")


def format_table(series: list[RealSeries], result: dict[str, Any], summ: dict[str, Any]) -> str:
    """Per-series MASE of every method (plus coverage and MSIS), then the aggregate lines."""
    sc = result["scores"]
    methods = (PROJECT, *TABLE_PEERS)
    head = f"{'series':<16} {'freq':<9} {'n':>5} " + " ".join(f"{m[:9]:>9}" for m in methods) + \
        f" {'cov fc/ETS':>11} {'MSIS fc/ETS':>13}"
    lines = [_title(result), head, "-" * len(head)]
    for s in series:
        r = sc[s.name]
        cov = r[PROJECT].get("coverage"), r["AutoETS"].get("coverage")
        ms = r[PROJECT].get("msis"), r["AutoETS"].get("msis")
        cells = " ".join(f"{r[m]['mase']:>9.3f}" for m in methods)
        cov_s = f"{100 * cov[0]:.0f}/{100 * cov[1]:.0f}" if None not in cov else "-"
        ms_s = f"{ms[0]:.2f}/{ms[1]:.2f}" if None not in ms else "-"
        name = s.name + ("*" if s.short else "")
        lines.append(f"{name:<16} {s.freq:<9} {len(s.values):>5} {cells} {cov_s:>11} {ms_s:>13}")
    lines.append("-" * len(head))
    ratios = " ".join(f"{summ['ratio'][p]:>9.3f}" for p in TABLE_PEERS)
    lines.append(f"{'geo-mean ratio forecast / peer':<42}{ratios}")
    per_freq = ", ".join(f"{f} {v['AutoETS']:.3f}" for f, v in summ["per_freq"].items())
    lines.append(f"per frequency group, ratio forecast / AutoETS: {per_freq}")
    worst, name = summ["worst_vs_best_classic"]
    lines.append(f"worst single series vs the better of AutoETS/AutoTheta: {worst:.3f} ({name})")
    if result["horizon"] > 1:
        steps = ", ".join(f"{v:.3f}" for v in summ["per_step_ratio_autoets"])
        lines.append(f"per-step geo-mean MASE ratio forecast / AutoETS: {steps}")
    for m, iv in summ["intervals"].items():
        lines.append(f"90% intervals {m}: coverage mean {100 * iv['coverage_mean']:.1f}% "
                     f"(min {100 * iv['coverage_min']:.0f}%, max {100 * iv['coverage_max']:.0f}%),"
                     f" MSIS mean {iv['msis_mean']:.3f}")
    o = summ["origins"]
    lines.append(f"origins scored {o['scored']} ({o['missing']} without a forecast); short "
                 f"series (*) {o['short_series']}: {o['short_scored']} origins from their second "
                 f"value; forecasts marked warmup=1: {o['warmup']}")
    return "\n".join(lines)


def plot(series: list[RealSeries], result: dict[str, Any], path: Path, count: int = 4) -> None:
    """Actuals, the project's one-step forecasts with its 90% interval, AutoETS: a few series
    (the first long ones and the first short one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longs = [s for s in series if not s.short]
    chosen = longs[: count - 1] + [s for s in series if s.short][:1]
    chosen = chosen if len(chosen) == count else series[:count]
    fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 2.6 * len(chosen)), squeeze=False)
    for ax, s in zip(axes[:, 0], chosen, strict=True):
        fc = result["forecasts"][s.name]
        first = origins(len(s.values), 1, s.short)[0]
        start = 0 if s.short else max(0, split(len(s.values)) - 3 * max(s.period, 8))
        t = np.arange(start, len(s.values))
        ax.plot(t, s.values[start:], color="black", lw=1.2, label="actual")
        proj, ets = fc[PROJECT], fc["AutoETS"]
        o = [k for k in sorted(proj.point) if k >= first and k + 1 < len(s.values)]
        if o:
            ax.plot([k + 1 for k in o], [proj.point[k][0] for k in o], color="tab:blue",
                    label="forecast (project)")
            if all(k in proj.lower for k in o):
                ax.fill_between([k + 1 for k in o], [proj.lower[k][0] for k in o],
                                [proj.upper[k][0] for k in o], color="tab:blue", alpha=0.2,
                                label="90% interval")
        oe = sorted(ets.point)
        ax.plot([k + 1 for k in oe], [ets.point[k][0] for k in oe], color="tab:orange", lw=1,
                ls="--", label="AutoETS")
        if not s.short:
            ax.axvline(split(len(s.values)) - 0.5, color="grey", lw=0.8)
        what = "new series, from its second value" if s.short else "one step ahead"
        ax.set_title(f"{s.name} ({s.freq}), {what}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(data: dict[str, Any], one: dict[str, Any]) -> list[str]:
    sc, summ = one["scores"], one["summary"]
    methods = (PROJECT, *TABLE_PEERS)
    out = ["| series | freq | length | " + " | ".join(methods) + " | coverage fc / ETS |",
           "|---|---|---|" + "---|" * len(methods) + "---|"]
    for s in data["series"]:
        r = sc[s["name"]]
        best = min(r[m]["mase"] for m in methods)
        cells = [f"**{r[m]['mase']:.3f}**" if r[m]["mase"] == best else f"{r[m]['mase']:.3f}"
                 for m in methods]
        cov = (f"{100 * r[PROJECT]['coverage']:.0f}% / {100 * r['AutoETS']['coverage']:.0f}%"
               if r[PROJECT].get("coverage") is not None
               and r["AutoETS"].get("coverage") is not None else "-")
        name = s["name"] + (" (short)" if s.get("short") else "")
        out.append(f"| {name} | {s['freq']} | {s['length']} | " + " | ".join(cells)
                   + f" | {cov} |")
    out.append("| **geo-mean ratio forecast / peer** | | | | "
               + " | ".join(f"**{summ['ratio'][p]:.3f}**" for p in TABLE_PEERS) + " | |")
    return out


def markdown(data: dict[str, Any]) -> str:
    """The README's tables from the JSON results: the mixed row per series, the per-period
    rows' aggregates, per frequency group, the H-step ratios, and the targets."""
    passes = data["passes"]
    mixed = next(p for p in passes if p.get("setup") == "mixed" and p["horizon"] == 1)
    out = _table(data, mixed)
    out.append("")
    out.append("| frequency group | series | forecast / AutoETS | / AutoTheta | / Comb |")
    out.append("|---|---|---|---|---|")
    for f, v in mixed["summary"]["per_freq"].items():
        out.append(f"| {f} | {v['series']} | {v['AutoETS']:.3f} | {v['AutoTheta']:.3f} | "
                   f"{v['Comb']:.3f} |")
    out.append("")
    out.append("| setup | " + " | ".join(f"/ {p}" for p in PEERS) + " | worst series |")
    out.append("|---|" + "---|" * len(PEERS) + "---|")
    for p in passes:
        if p["horizon"] != 1:
            continue
        worst, name = p["summary"]["worst_vs_best_classic"]
        label = "mixed (one version)" if p.get("setup") == "mixed" else "per period"
        out.append(f"| {label} | " + " | ".join(f"{p['summary']['ratio'][q]:.3f}" for q in PEERS)
                   + f" | {worst:.3f} ({name}) |")
    for p in passes:
        if p["horizon"] > 1:
            steps = ", ".join(f"{v:.3f}" for v in p["summary"]["per_step_ratio_autoets"])
            out.append("")
            out.append(f"H={p['horizon']} (the mixed row trained with `--horizon "
                       f"{p['horizon']}`): geo-mean MASE ratio forecast / AutoETS per step: "
                       f"{steps}; over all steps {p['summary']['ratio']['AutoETS']:.3f} "
                       f"(AutoTheta {p['summary']['ratio']['AutoTheta']:.3f}, Comb "
                       f"{p['summary']['ratio']['Comb']:.3f}).")
    out.append("")
    out.append("| target | measured | |")
    out.append("|---|---|---|")
    for t in data["targets"]:
        out.append(f"| {t['target']} | {t['figure']} | {'met' if t['met'] else 'missed'} |")
    return "\n".join(out) + "\n"
