"""The README is the front door (at most 400 lines); the docs work as written; and the
repository stands alone: every page and heading a page, a comment or a docstring names
exists, and nothing cites notes kept outside the repository or an issue by number."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def without_fences(text: str) -> str:
    """`text` with the lines of fenced code blocks blanked (line numbers stay)."""
    lines, fence = text.split("\n"), None
    for i, line in enumerate(lines):
        m = re.match(r"\s*(```|~~~)", line)
        if fence is None and m:
            fence, lines[i] = m.group(1), ""
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            lines[i] = ""
    return "\n".join(lines)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub makes for a page's headings (a repeated one gets -1, -2, ...)."""
    found: set[str] = set()
    for m in re.finditer(r"^#{1,6} +(.+?)(?: +#+)?$", without_fences(page.read_text()), re.M):
        base = anchor = slug(m.group(1))
        n = 0
        while anchor in found:
            n += 1
            anchor = f"{base}-{n}"
        found.add(anchor)
    return found


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def test_the_readme_fits_on_a_few_screens() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 400


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_reaches_its_target(page: Path) -> None:
    """Every markdown link reaches a file, and with `#anchor` a heading of that page."""
    text, bad = page.read_text(), []
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        problem = _missing(file, anchor)
        if problem:
            bad.append(f"{page.relative_to(REPO)}:{line_of(text, m.start())}: {target}: {problem}")
    assert not bad, "links to nothing:\n" + "\n".join(bad)


def test_every_reference_page_is_linked_from_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    for page in (REPO / "docs").glob("*.md"):
        assert f"(docs/{page.name}" in readme, page.name


# --- The repository stands alone --------------------------------------------------------------

# A page named in code, tests, benches or scripts: `docs/<page>.md`, optionally `#anchor`, or
# `<page>.md#anchor` (found under the repository's root, else under docs/), optionally followed
# by a heading in quotes (`docs/llm.md, "Figures"`). In markdown the same, besides links.
REFERENCE = re.compile(
    r"(?<![\w./-])(?P<path>[\w.-]+(?:/[\w.-]+)*\.md)(?:#(?P<anchor>[\w-]*))?"
    r'(?:,\s*"(?P<heading>[^"\n]+)")?'
)
CODE_DIRS = ("extauthz", "tests", "bench", "scripts")
# Citations of what a reader of the repository cannot open: numbered sections of design
# notes, the notes' folder next to the checkout, issues by number. (Each pattern is written
# so that this file does not match it.)
FORBIDDEN = [
    (
        re.compile(r"design\.md\s*§[\s\d,§]*\d|§\s*\d+"),
        "a numbered section of notes outside the repository",
    ),
    (re.compile(r"\.\./shared\b"), "a file outside the repository"),
    (
        re.compile(r"(?i)\b(?:issues?|pr|pull request)\s*#\s*\d+|(?<![\w&#/])#\d+\b"),
        "an issue by number",
    ),
]
NO_BARE_NUMBERS = {".css"}  # (a colour of hex digits is no issue; a stylesheet cites none)
SKIPPED_DIRS = {"__pycache__", "build", "dist", "node_modules"}
OUTPUTS = {REPO / "bench" / "results"}  # (what runs write, ignored by git)


def _missing(file: Path, anchor: str) -> str:
    """Why `file` (with `#anchor`, if any) is no target: '' when it is one."""
    if not file.exists():
        return "no such file"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"no heading #{anchor} there"
    return ""


def _target(path: str) -> Path:
    """A page named in code or a page's text: from the root, else under docs/."""
    for base in (REPO, REPO / "docs"):
        if (base / path).exists():
            return base / path
    return REPO / path


def bad_references(file: Path, text: str) -> list[str]:
    """`file:line: reference: why` for each named page or heading that does not exist."""
    bad = []
    if file.suffix == ".md":  # (links are the test above's: relative to their page)
        text = LINK.sub(lambda m: "]" + " " * (len(m.group()) - 1), text)
    for m in REFERENCE.finditer(text):
        path, anchor, heading = m.group("path"), m.group("anchor"), m.group("heading")
        if not path.startswith("docs/") and anchor is None:
            continue  # a bare file name (`"istio.md"`): a path in code, relative to anything
        target = _target(path)
        problem = _missing(target, anchor or "")
        named = slug(re.sub(r"\s+", " ", heading)) if heading else ""
        if not problem and named and target.suffix == ".md" and named not in anchors(target):
            problem = f'no heading "{heading}" there'
        if problem:
            named_as = " ".join(m.group().split())
            bad.append(
                f"{file.relative_to(REPO)}:{line_of(text, m.start())}: {named_as}: {problem}"
            )
    return bad


def forbidden_citations(file: Path, text: str) -> list[str]:
    """`file:line: citation: what it cites` for each citation a reader cannot follow."""
    bad = []
    for pattern, what in FORBIDDEN:
        if what == "an issue by number" and file.suffix in NO_BARE_NUMBERS:
            continue
        for m in pattern.finditer(text):
            cited = " ".join(m.group().split())
            bad.append(f"{file.relative_to(REPO)}:{line_of(text, m.start())}: {cited}: {what}")
    return bad


def repository_files(*tops: str) -> Iterator[Path]:
    """The repository's text files (under `tops`, or all of it): no hidden folders but .ci,
    no caches, builds or virtualenvs, nothing that is not UTF-8."""
    roots = [REPO / top for top in tops] if tops else [REPO]
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(
                d
                for d in dirs
                if (not d.startswith(".") or d == ".ci")
                and d not in SKIPPED_DIRS
                and not d.endswith(".egg-info")
                and Path(folder, d) not in OUTPUTS
            )
            for name in sorted(files):
                path = Path(folder, name)
                try:
                    text = path.read_text()
                except (UnicodeDecodeError, OSError):
                    continue  # (images, binaries)
                if "\0" not in text:
                    yield path


def test_every_page_and_heading_the_code_names_exists() -> None:
    """`docs/<page>.md`, `<page>.md#<anchor>` and `<page>.md, "Heading"` in the code, tests,
    benches and scripts (comments, docstrings and all) and in the text of every page."""
    bad = []
    for file in [*repository_files(*CODE_DIRS), *PAGES]:
        bad += bad_references(file, file.read_text())
    assert not bad, "references to pages or headings that do not exist:\n" + "\n".join(bad)


def test_nothing_cites_what_is_not_in_the_repository() -> None:
    """Contracts are cited by the page that states them (docs/design.md and the page of each
    topic), never by the numbered sections of notes outside the repository, a path to them,
    or an issue number."""
    bad = []
    for file in repository_files():
        bad += forbidden_citations(file, file.read_text())
    assert not bad, "citations a reader cannot follow:\n" + "\n".join(bad)


def test_the_reference_checks_catch_what_they_should() -> None:
    """The checks above, on a file written to fail them (the bad strings are built here,
    so that this file itself stays clean)."""
    docs, hash_sign, section = "docs/", "#", "\u00a7"
    lines = [
        f"ok: {docs}llm.md, {docs}llm.md{hash_sign}figures, llm.md{hash_sign}figures",
        f'ok: {docs}llm.md, "What a limit promises"; a guide("istio.md") in code',
        f"missing page: {docs}nope.md",
        f"missing heading: {docs}llm.md{hash_sign}no-such-heading",
        f"missing heading: llm.md{hash_sign}counting",
        f'missing quoted heading: {docs}llm.md, "Counting"',
        f"notes: design.md {section}14, ..{'/'}shared/notes.md",
        f"issues: (issue {hash_sign}22, 16), (see {hash_sign}25), PR {hash_sign}7",
        "fine: a colour, a URL: https://github.com/envoyproxy/envoy/issues/35623, x&#39;",
    ]
    file = REPO / "tests" / "unit" / "__reference_probe__.md"
    text = "\n".join(lines)
    found = bad_references(file, text) + forbidden_citations(file, text)
    where = sorted({int(message.split(":")[1]) for message in found})
    assert where == [3, 4, 5, 6, 7, 8], found
    assert f"tests/unit/__reference_probe__.md:4: {docs}llm.md{hash_sign}no-such-heading: " in (
        "\n".join(found)
    )
    assert len([m for m in found if m.split(":")[1] == "8"]) == 3, found
    css = REPO / "extauthz" / "admin" / "console" / "probe.css"
    assert forbidden_citations(css, "a { color: " + hash_sign + "222; }") == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("What a limit promises", "what-a-limit-promises"),
        ("OIDC / JWT routes", "oidc--jwt-routes"),
        ("Management-plane authorization", "management-plane-authorization"),
        (
            "Mutual TLS: the gateway's client certificate",
            "mutual-tls-the-gateways-client-certificate",
        ),
        ("`token list` and --json", "token-list-and---json"),
    ],
)
def test_anchors_are_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_repeated_heading_gets_a_numbered_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Envoy\n\n## Envoy\n\n```\n# not a heading\n```\n### Envoy ###\n")
    assert anchors(page) == {"envoy", "envoy-1", "envoy-2"}


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
