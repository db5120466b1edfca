"""The README is the front door (at most 400 lines) and every link in it and in docs/
reaches a file, and a heading there when it names one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_the_readme_fits_on_a_few_screens() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 400


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_reaches_its_target(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target}"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.name}: {target}: no such heading"


def test_every_reference_page_is_linked_from_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    for page in (REPO / "docs").glob("*.md"):
        assert f"(docs/{page.name}" in readme, page.name


# --- Docs that work as written --------------------------------------------------------------

SHELL_LANGS = {"sh", "bash", "console", "shell"}
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
MARKER = re.compile(r"^\s*<!-- (test: (?P<test>[\w.-]+)|not run: (?P<reason>\S.*?)) -->\s*$")
TESTS = REPO / "tests"


def fenced_blocks(page: Path) -> list[tuple[int, str, str]]:
    """(line number, language, the line just before the opening fence) of every fenced block."""
    blocks, lines, inside = [], page.read_text().splitlines(), None
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if not m:
            continue
        if inside is None:
            inside = m.group(1)
            blocks.append((i + 1, m.group(2), lines[i - 1] if i else ""))
        elif m.group(1) == inside and not m.group(2):
            inside = None
    return blocks


DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shell_block_is_tested_or_says_why_not(page: Path) -> None:
    """A shell block is run by a test (`<!-- test: NAME -->` right before it) or says why
    not (`<!-- not run: REASON -->`): a reader can tell which commands are known to work."""
    unmarked = [
        f"{page.relative_to(REPO)}:{line}"
        for line, lang, before in fenced_blocks(page)
        if lang in SHELL_LANGS and not MARKER.match(before)
    ]
    assert not unmarked, (
        "shell blocks without `<!-- test: NAME -->` or `<!-- not run: REASON -->` "
        f"on the line before: {unmarked}"
    )


def test_every_tested_block_is_run_by_a_test() -> None:
    """Each `test:` name is in exactly one place and some test reads it with readme_block."""
    names: dict[str, list[str]] = {}
    for page in DOC_PAGES:
        for m in re.finditer(r"<!-- test: ([\w.-]+) -->", page.read_text()):
            names.setdefault(m.group(1), []).append(str(page.relative_to(REPO)))
    assert names, "no tested blocks found"
    users = "\n".join(
        path.read_text()
        for path in TESTS.rglob("*.py")
        if "readme_block(" in path.read_text() and path.name not in ("readme.py", "test_docs.py")
    )
    for name, where in sorted(names.items()):
        assert len(where) == 1, f"test block {name!r} marked in {where}"
        assert f'"{name}"' in users or f"'{name}'" in users, f"no test runs block {name!r}"


def test_the_markers_sit_right_before_a_block() -> None:
    """A marker followed by anything but a fence marks nothing (a blank line breaks it)."""
    for page in DOC_PAGES:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if MARKER.match(line):
                following = lines[i + 1] if i + 1 < len(lines) else ""
                assert FENCE.match(following), f"{page.relative_to(REPO)}:{i + 1}: {line}"


def flags_of(command: str) -> set[str]:
    from extauthz.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "==SUPPRESS==" and a.choices)
    assert isinstance(sub.choices, dict)
    return {
        flag
        for action in sub.choices[command]._actions
        for flag in action.option_strings
        if flag.startswith("--") and flag != "--help"
    }


@pytest.mark.parametrize("command", ["serve", "up", "admin"])
def test_every_server_flag_is_documented(command: str) -> None:
    """Every flag of `serve`, `up` and `admin` has its row (or its words) in
    docs/configuration.md."""
    page = (REPO / "docs/configuration.md").read_text()
    missing = sorted(f for f in flags_of(command) if f"`{f}`" not in page)
    assert not missing, f"extauthz {command}: flags not in docs/configuration.md: {missing}"


def test_every_metric_is_in_the_operations_table() -> None:
    """Each metric a server exposes (and the supervisor's own) has its row in
    docs/operations.md, under the name Prometheus shows (counters with `_total`)."""
    from extauthz.runtime.metrics import Metrics

    metrics = Metrics()
    metrics.watch(
        lambda: {
            "policy_version": 1,
            "redis_up": 1,
            "auth_disabled": 0,
            "serving": 1,
            "cache": {},
            "cache_entries": 0,
            "jwks": {},
            "tls": {"expiry": 2e9, "reloads": 0},  # (with TLS on the Check port only)
        }
    )
    names = {"extauthz_workers_unscraped"}
    for family in metrics.registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    page = (REPO / "docs/operations.md").read_text()
    missing = sorted(name for name in names if f"`{name}" not in page)
    assert not missing, f"metrics not in docs/operations.md: {missing}"
