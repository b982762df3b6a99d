"""The generated parts of the documentation: the settings and commands reference (from
`Settings` and the argument parser) and every figure (from the committed results files).

`docs/gen_pages.py` calls these when MkDocs builds the site; `tests/test_docs.py` checks
that the pages and the README agree with the results files. Pages name a results table
with a block marker (`<!-- results: bench -->`) and quote single figures inline between
`<!-- fig: bench.throughput -->` and `<!-- /fig -->`; `python -m cli.reference --fix`
rewrites the inline figures of the README and the pages from the results files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forecast.settings import Settings, cli_commands

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
BLOCK = re.compile(r"^<!-- results: ([\w-]+) -->$", re.M)
INLINE = re.compile(r"<!-- fig: ([\w.-]+) -->(.*?)<!-- /fig -->", re.S)


def load(name: str) -> dict[str, Any]:
    """A committed results file, `docs/results/<name>.json`."""
    data: dict[str, Any] = json.loads((RESULTS / f"{name}.json").read_text())
    return data


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def settings_page() -> str:
    """Markdown: every setting, its variable, default, flag and the commands that take it."""
    lines = ["| variable | default | flag on | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        commands = ", ".join(cli_commands(name)) or "(environment or `.env` only)"
        lines.append(f"| `FORECAST_{name.upper()}` | `{_default(field.default)}` | "
                     f"{commands} | {_cell(field.description)} |")
    return "\n".join(lines) + "\n"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands_page() -> str:
    """Markdown: the `--help` of `forecast` and of every subcommand (and action)."""
    from cli.parser import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps help at the terminal width
    root = build_parser()
    parts = [f"## forecast\n\n```\n{root.format_help()}```\n"]
    for name, sub in _subparsers(root).items():
        parts.append(f"## forecast {name}\n\n```\n{sub.format_help()}```\n")
        for action, nested in _subparsers(sub).items():
            parts.append(f"### forecast {name} {action}\n\n```\n{nested.format_help()}```\n")
    return "\n".join(parts)


def metrics_page() -> str:
    """Markdown: every Prometheus metric of the worker and the watching trainer."""
    from prometheus_client.metrics import MetricWrapperBase

    from trainer import watch_metrics
    from worker import metrics

    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for module, where in ((metrics, "worker"), (watch_metrics, "trainer")):
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase):
                suffix = {"counter": "_total", "info": "_info"}.get(str(obj._type), "")
                name = obj._name + suffix
                labels = ", ".join(f"`{x}`" for x in obj._labelnames)
                lines.append(f"| `{name}` ({where}) | {obj._type} | {labels} | "
                             f"{_cell(obj._documentation)} |")
    return "\n".join(lines) + "\n"


def _machine(data: dict[str, Any]) -> str:
    m = data.get("machine") or {}
    bits = [f"{m['cores']} cores ({m.get('cpu', '?')})" if "cores" in m else "",
            f"{round(m['memory_kb'] / 2**20)} GiB" if "memory_kb" in m else "",
            f"Python {m['python']}" if "python" in m else "",
            f"TensorFlow {m['tensorflow']}" if "tensorflow" in m else "",
            f"Redis {m['redis']}" if "redis" in m else ""]
    return ", ".join(b for b in bits if b) or "not recorded"


def provenance(data: dict[str, Any]) -> str:
    """The line under every generated table: when and where the run was made."""
    date = str(data.get("date", "not recorded"))[:10]
    return f"*Run of {date} on {_machine(data)}.*"


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def bench_block(name: str = "bench") -> str:
    """The table of a `forecast bench` results file."""
    data = load(name)
    table = _table(data["table"], ["scenario", "figure", "target", "verdict", "load"])
    return f"{table}\n\n{provenance(data)}\n"


def targets_block(name: str) -> str:
    """The targets table of a results file that has one (`target`, `figure`, `met`)."""
    data = load(name)
    rows = [{**t, "met": "met" if t["met"] else "**missed**"} for t in data["targets"]]
    return f"{_table(rows, ['target', 'figure', 'met'])}\n\n{provenance(data)}\n"


def quality_block() -> str:
    """The tables of `forecast bench --quality`: the mixed row per series, the groups, the
    setups and the targets."""
    from bench.quality_report import markdown

    data = load("quality")
    if not any(p.get("setup") == "mixed" for p in data.get("passes", [])):
        return targets_block("quality")  # a results file from before the mixed row
    return f"{markdown(data)}\n{provenance(data)}\n"


def facts_block(name: str) -> str:
    """A results file of plain figures (chaos, sentinel) as a two-column table."""
    data = load(name)
    rows = [{"figure": k.replace("_", " "), "value": v} for k, v in data.items()
            if k not in ("date", "machine") and not isinstance(v, dict | list)]
    return f"{_table(rows, ['figure', 'value'])}\n\n{provenance(data)}\n"


def gaps_block() -> str:
    """The summary of `forecast bench --gaps`: per policy, the error after gaps."""
    data = load("gaps")
    rows = [{"policy": f"`{p}`" + (" (chosen)" if p == data["summary"]["best"] else ""),
             "MASE after gaps / whole series": f"{v['ratio_to_whole']:.3f}x",
             "mean MASE after gaps": f"{v['mase_mean']:.3f}",
             "origins with a forecast": f"{100 * v['coverage']:.0f}%"}
            for p, v in data["summary"].items() if isinstance(v, dict)]
    table = _table(rows, list(rows[0]))
    return f"{table}\n\n{len(data['series'])} series. {provenance(data)}\n"


def anomaly_block() -> str:
    """The tables of `forecast bench --anomaly` (a full run): NAB scores, calibration."""
    from bench.anomaly_report import markdown

    data = load("anomaly")
    return f"{markdown(data)}\n{provenance(data)}\n"


BLOCKS: dict[str, Callable[[], str]] = {
    "bench": bench_block,
    "quality": quality_block,
    "chaos": lambda: facts_block("chaos"),
    "sentinel": lambda: facts_block("sentinel"),
    "gaps": gaps_block,
    "anomaly": anomaly_block,
    "settings": settings_page,
    "commands": commands_page,
    "metrics": metrics_page,
}


def figure(key: str) -> str:
    """One quoted figure: `file.row-prefix` names the row of a table whose scenario starts
    with the prefix (its `figure`), or `file.key` a top-level value.

    >>> figure("chaos.lost")
    '0'
    """
    name, _, what = key.partition(".")
    data = load(name)
    for row in data.get("table", []) + data.get("targets", []):
        label = str(row.get("scenario") or row.get("target"))
        if label.replace(" ", "-").lower().startswith(what.lower()):
            return str(row["figure"])
    if what == "date":
        return str(data.get("date", ""))[:10]
    if what in data:
        value = data[what]
        return f"{value:,}" if isinstance(value, int) else str(value)
    node: Any = data
    for part in what.split("."):  # a nested value: `anomaly.scores.profiles.standard.score`
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"no figure {key!r} in docs/results/{name}.json")
        node = node[part]
    return f"{node:.1f}" if isinstance(node, float) else f"{node:,}" if isinstance(
        node, int) else str(node)


def render(text: str) -> str:
    """A page with its result blocks filled in and its inline figures refreshed."""
    def block(m: re.Match[str]) -> str:
        return BLOCKS[m.group(1)]()

    text = BLOCK.sub(block, text)
    return INLINE.sub(lambda m: f"<!-- fig: {m.group(1)} -->{figure(m.group(1))}<!-- /fig -->",
                      text)


def pages() -> list[Path]:
    """The README and every hand-written page of the site."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    """`python -m cli.reference [--fix]`: list (or rewrite) the stale inline figures."""
    fix = "--fix" in (argv if argv is not None else sys.argv[1:])
    stale = 0
    for path in pages():
        text = path.read_text()
        fresh = INLINE.sub(
            lambda m: f"<!-- fig: {m.group(1)} -->{figure(m.group(1))}<!-- /fig -->", text)
        if fresh != text:
            stale += 1
            print(f"{path.relative_to(ROOT)}: figures differ from docs/results")
            if fix:
                path.write_text(fresh)
    return 1 if stale and not fix else 0


if __name__ == "__main__":
    raise SystemExit(main())
