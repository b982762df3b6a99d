"""MkDocs build step (mkdocs-gen-files): fill in every page's generated parts (settings and
commands reference, result tables, quoted figures) with `cli.reference.render`."""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

from cli.reference import render

DOCS = Path(__file__).resolve().parent

for page in sorted(DOCS.rglob("*.md")):
    text = page.read_text()
    rendered = render(text)
    if rendered != text:
        with mkdocs_gen_files.open(str(page.relative_to(DOCS)), "w") as out:
            out.write(rendered)
