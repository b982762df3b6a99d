"""The README and the documentation site agree with the code and the committed results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cli import reference
from cli.parser import build_parser
from forecast.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()


def test_every_quoted_figure_agrees_with_its_results_file() -> None:
    quoted = 0
    for page in reference.pages():
        for key, shown in reference.INLINE.findall(page.read_text()):
            quoted += 1
            assert shown == reference.figure(key), (
                f"{page.relative_to(ROOT)}: {key} says {shown!r}, docs/results says "
                f"{reference.figure(key)!r} (python -m cli.reference --fix)")
    assert quoted >= 5


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: p.name)
def test_every_generated_table_renders_with_its_date_and_machine(page: Path) -> None:
    text = page.read_text()
    rendered = reference.render(text)
    assert not reference.BLOCK.search(rendered), "a block marker was left unrendered"
    for name in reference.BLOCK.findall(text):
        assert name in reference.BLOCKS
        if name not in ("settings", "commands", "metrics"):
            assert re.search(r"\*Run of \d{4}-\d\d-\d\d on \d+ cores", rendered), name


def test_results_tables_show_what_their_files_hold() -> None:
    bench = reference.load("bench")
    rendered = reference.bench_block()
    for row in bench["table"]:
        assert reference._cell(row["figure"]) in rendered
    chaos = reference.facts_block("chaos")
    assert f"| lost | {reference.load('chaos')['lost']} |" in chaos


def test_the_reference_names_every_setting_and_command() -> None:
    settings = reference.settings_page()
    for name, field in Settings.model_fields.items():
        assert f"`FORECAST_{name.upper()}`" in settings
        assert field.description, f"{name} has no description"
    commands = reference.commands_page()
    for name in reference._subparsers(build_parser()):
        assert f"## forecast {name}\n" in commands
    assert "--max-deliveries" in commands and "### forecast models promote" in commands
    metrics = reference.metrics_page()
    assert "`forecast_checkpoint_errors_total` (worker)" in metrics


def test_every_page_is_in_the_site_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def walk(items: list) -> list[str]:
        out: list[str] = []
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            out += walk(value) if isinstance(value, list) else [value]
        return out

    nav = set(walk(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages - nav <= {"example-report/report.md"}, pages - nav
    assert nav <= pages, nav - pages


def test_the_readme_is_short_and_has_no_lab_notes() -> None:
    assert len(README.splitlines()) <= 300
    for page in reference.pages():
        if "example-report" in page.parts:  # the output of `forecast train --report`
            continue
        text = page.read_text()
        assert not re.search(r"\bissue \d+|\(#\d+\)", text, re.I), page
        hashes = re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b", text)
        assert not hashes, (page, hashes)


def test_the_readme_documents_the_two_commands_and_the_contract() -> None:
    for text in ("make demo", "make test", "forecast:values", "forecast:predictions",
                 "forecast:latest", "forecast:deadletter", "docs/contract.md"):
        assert text in README
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).exists(), link
