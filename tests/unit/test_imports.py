"""The package's modules import one another without a circle (docs/architecture.md#the-rooms:
dependencies point inward). Every import counts, also one inside a function or under
`if TYPE_CHECKING:`: a circle hidden that way still ties the modules together."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "extauthz"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The package's modules `name` imports anywhere in its text (importing a submodule also
    runs its packages' __init__, which counts as importing them)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    with_packages: set[str] = set()
    for module in found:
        parts = module.split(".")
        with_packages.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    # (a module's own packages are already running when it is imported)
    return {m for m in with_packages if m in MODULES and not name.startswith(m + ".")} - {name}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def import_graph() -> dict[str, set[str]]:
    """`imports_of` every module, parsed in a process of its own: Python 3.11's `ast` keeps
    its recursion depth per interpreter, not per thread, and fails (SystemError: AST
    constructor recursion depth mismatch) when another thread parses meanwhile, as 3.11
    does to format any traceback (a test's leftover thread logging an exception)."""
    code = (
        "import json\n"
        "from tests.unit.test_imports import MODULES, imports_of\n"
        "print(json.dumps({name: sorted(imports_of(name)) for name in MODULES}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    return {name: set(found) for name, found in json.loads(out.stdout).items()}


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph()
    assert set(graph) == set(MODULES) and graph["extauthz.cli"]  # (it read them all)
    assert not circles(graph), f"import circles: {circles(graph)}"


def test_the_circle_finder_finds_one() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    "first", ["extauthz.core.identity", "extauthz.core.identity.base", "extauthz.core.jwt_verify"]
)
def test_policy_and_the_credential_kinds_import_in_any_order(first: str) -> None:
    """The policy validates `credentials:` against the kinds; the kinds read route policies:
    either may be imported first (core/route_policy.py holds what both need)."""
    code = f"import {first}; import extauthz.core.policy; import extauthz.core.decision"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_a_command_starts_without_what_it_never_uses() -> None:
    """A command imports neither pyjwt (only a JWT or a JWKS needs it) nor OpenTelemetry's
    metrics SDK (redis-py would, for metrics extauthz never turns on); both import after."""
    probe = (
        "import sys, extauthz.cli\n"
        "loaded = [m for m in ('jwt', 'opentelemetry.sdk.metrics') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "import jwt, opentelemetry.sdk.metrics\n"
        "import redis.observability.providers as p\n"
        "assert p.OTEL_AVAILABLE is False\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
