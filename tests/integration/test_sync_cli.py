"""`extauthz sync` against a real redis-server: diff, idempotence, prune, dry run, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.procs import REPO, RedisServer, run_cli

pytestmark = pytest.mark.redis

ENV = {"DENSENET161_SECRET": "the-basic-secret-value"}
EXAMPLE = REPO / "examples/policy.yaml"

BAD_FILES = {
    "unknown key": (
        "version: 1\nroutes:\n  a: {access: public, colour: red}\n",
        ":3: routes.a.colour: unknown key",
    ),
    "wrong type": (
        "version: 1\nroutes:\n  a:\n    access: protected\n    scopes: 7\n",
        ":5: routes.a.scopes: must be a list",
    ),
    "duplicate route": (
        "version: 1\nroutes:\n  a: {access: public}\n  a: {access: private}\n",
        ":4: routes.a: duplicate key",
    ),
    "missing secret": (
        EXAMPLE.read_text(),
        # the line of `from_env:` in the example file
        f":{EXAMPLE.read_text().splitlines().index('    from_env: DENSENET161_SECRET') + 1}: "
        "secrets[0].from_env: environment variable DENSENET161_SECRET is not set",
    ),
    "yaml syntax": ("version: 1\nroutes: [\n", ":3: YAML syntax error"),
    "empty": ("", ": the file is empty"),
}


def test_sync_diff_idempotent_prune_dry_run(redis_server: RedisServer, tmp_path: Path) -> None:
    url = redis_server.url
    first = run_cli(url, "sync", str(EXAMPLE), env=ENV).stdout
    assert "+ route densenet161\n" in first and "+ secret densenet161-basic\n" in first
    assert first.strip().endswith("published policy version 1")
    assert ENV["DENSENET161_SECRET"] not in redis_server.cli("HGET", "extauthz:policy", "snapshot")
    assert (
        run_cli(url, "sync", str(EXAMPLE), env=ENV).stdout.strip() == "no change (policy version 1)"
    )

    smaller = tmp_path / "smaller.yaml"
    smaller.write_text("version: 1\nroutes:\n  healthz: {access: private}\n")
    dry = run_cli(url, "sync", str(smaller), "--prune", "--dry-run").stdout
    assert "~ route healthz" in dry and "- route densenet161" in dry
    assert dry.strip().endswith("dry run: would publish policy version 2")
    assert redis_server.cli("HGET", "extauthz:policy", "version") == "1"

    pruned = run_cli(url, "sync", str(smaller), "--prune").stdout
    assert "- secret densenet161-basic" in pruned
    assert redis_server.cli("HGET", "extauthz:policy", "version") == "2"


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_policy_files_change_nothing(
    redis_server: RedisServer, tmp_path: Path, case: str
) -> None:
    run_cli(redis_server.url, "sync", str(EXAMPLE), env=ENV)
    before = redis_server.cli("HGETALL", "extauthz:policy")
    text, expected = BAD_FILES[case]
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    result = run_cli(
        redis_server.url,
        "sync",
        str(policy),
        check=False,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert len(lines) == 1 and lines[0].startswith(f"extauthz: error: {policy}")
    assert expected in lines[0], lines[0]
    assert redis_server.cli("HGETALL", "extauthz:policy") == before
