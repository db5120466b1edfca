"""The README's tested blocks: a fenced block right after `<!-- test: NAME -->`."""

from __future__ import annotations

import re

from tests.support.procs import REPO


def readme_block(name: str, lang: str = "sh") -> str:
    """The body of the block marked `name`, fenced as ```{lang}; fails the test if absent."""
    text = (REPO / "README.md").read_text()
    m = re.search(rf"<!-- test: {re.escape(name)} -->\n```{re.escape(lang)}\n(.*?)```", text, re.S)
    assert m, f"README block {name!r} not found"
    return m.group(1)
