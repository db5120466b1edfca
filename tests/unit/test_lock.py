"""The lock files agree with pyproject.toml (README.md#dependencies): every dependency is
pinned, at a version its specifier allows, with hashes; the runtime lock and the dev lock pin
shared packages alike; the installers and the Dockerfile use them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^ \\;]+)")


def pins(name: str) -> dict[str, str]:
    """{package: version} of a lock file, checking every pin carries at least one hash."""
    text = (REPO / "requirements" / name).read_text()
    found: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2]):
        match = PIN.match(block)
        assert match, f"{name}: not a pin: {block[:60]!r}"
        assert "--hash=sha256:" in block, f"{name}: {match[1]} has no hash"
        found[canonicalize_name(match[1])] = match[2]
    return found


RUNTIME, DEV = pins("runtime.lock"), pins("dev.lock")


@pytest.mark.parametrize(
    ("requirement", "lock"),
    [(r, RUNTIME) for r in PROJECT["dependencies"]]
    + [(r, DEV) for r in PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"]],
)
def test_every_dependency_is_pinned_where_it_is_installed(
    requirement: str, lock: dict[str, str]
) -> None:
    wanted = Requirement(requirement)
    name = canonicalize_name(wanted.name)
    assert name in lock, f"{wanted.name} is not in the lock: run scripts/lock.sh"
    assert wanted.specifier.contains(lock[name], prereleases=True), (
        f"{wanted.name}=={lock[name]} does not satisfy {wanted.specifier}: run scripts/lock.sh"
    )


def test_the_litellm_lock_pins_the_test_server_with_hashes() -> None:
    assert "litellm" in pins("litellm.lock")  # (pins() checks every pin's hash)
    install = (REPO / "scripts/install-deps.sh").read_text()
    assert "--require-hashes -r requirements/litellm.lock" in install


def test_the_locks_agree_and_are_used() -> None:
    assert {p: v for p, v in DEV.items() if p in RUNTIME} == RUNTIME
    assert "extauthz" not in DEV  # (installed from the tree, with --no-deps)
    install = (REPO / "scripts/install-deps.sh").read_text()
    assert "--require-hashes -r requirements/dev.lock" in install
    docker = (REPO / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/runtime.lock" in docker
    assert re.search(r"^FROM python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?$", docker, re.M)
