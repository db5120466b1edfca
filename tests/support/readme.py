"""The documentation's tested blocks: a fenced block right after `<!-- test: NAME -->`, in
the README or a page under docs/ (each name in exactly one place)."""

from __future__ import annotations

import re

from tests.support.procs import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def readme_block(name: str, lang: str = "sh") -> str:
    """The body of the block marked `name`, fenced as ```{lang}; fails the test if it is
    absent or marked twice."""
    pattern = re.compile(rf"<!-- test: {re.escape(name)} -->\n```{re.escape(lang)}\n(.*?)```", re.S)
    found = [m.group(1) for page in PAGES for m in pattern.finditer(page.read_text())]
    assert len(found) == 1, f"documentation block {name!r} found {len(found)} times"
    return found[0]
