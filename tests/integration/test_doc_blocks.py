"""Documented shell blocks, run as written: the README's activation line, the policy sync,
token and rate-limit commands (docs/policy.md, docs/tokens.md) and the backup and restore of
docs/operating.md, against a real redis-server.

Each block runs in bash as a reader's shell runs it after `. .venv/bin/activate`: the
virtualenv's bin directory first on PATH (so `extauthz` and `python` are the project's) and
nothing else of the test's environment but EXTAUTHZ_REDIS_URL, which points the commands at
the test's Redis as `--redis-url` would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import REPO, RedisServer, run_cli
from tests.support.readme import readme_block

VENV_BIN = Path(sys.executable).parent
SECRET = "route-secret-" + "x" * 20
LLM_FLAGS = "--model demo-small --token-limit 100000/d --rate-limit 600/m --ttl 30d --name llm"


def shell_env(tmp: Path, redis_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": str(tmp),
        "PYTHONPATH": str(REPO),  # this checkout's code, wherever the virtualenv was made
        **extra,
    }
    if redis_url:
        env["EXTAUTHZ_REDIS_URL"] = redis_url
    return env


def run_block(name: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = "set -euo pipefail\n" + readme_block(name)
    result = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"block {name!r}: {result.stderr}"
    return result


def decide(redis_url: str, route: str, token: str) -> str:
    """`extauthz check`'s outcome for a bearer token on a route (allow / deny)."""
    out = run_cli(
        redis_url, "check", "--route", route, "--header", f"authorization: Bearer {token}",
        check=False,
    )  # fmt: skip
    return str(json.loads(out.stdout)["outcome"])


def sync_example(redis_url: str) -> None:
    run_cli(
        redis_url,
        "sync",
        str(REPO / "examples/policy.yaml"),
        env={"DENSENET161_SECRET": SECRET},
    )


def test_readme_activation_block(tmp_path: Path) -> None:
    """`. .venv/bin/activate` from the checkout, in a shell where nothing else is set up."""
    if not (REPO / ".venv/bin/activate").exists():
        pytest.skip("no .venv in this checkout (scripts/install-deps.sh makes it)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    out = run_block("activate", REPO, env).stdout
    assert out.startswith("extauthz "), out


def test_prices_import_block(tmp_path: Path) -> None:
    """`extauthz prices import` prints a `prices:` block the policy reads as LiteLLM priced
    those models (docs/llm.md#budgets-in-dollars); a mistake is one line, exit 2."""
    from extauthz.core.policy import parse_policy
    from extauthz.core.prices import Price

    out = run_block("prices-import", REPO, shell_env(tmp_path)).stdout
    doc = parse_policy("version: 1\nroutes: {}\n" + out)
    assert doc.prices.of("gpt-4o-mini") == Price(150_000, 600_000, 75_000)
    assert doc.prices.of("claude-sonnet-4-5") is not None
    assert doc.prices.of("gpt-4o") is None  # (not asked for)
    for args, says in (
        (["missing.json"], "cannot read"),
        (["README.md"], "is not JSON"),
        (["tests/fixtures/litellm_prices.json", "--model", "nothing-like-it"], "no model"),
        (["tests/fixtures/litellm_prices.json", "--model", "a*b"], "invalid --model"),
    ):
        result = subprocess.run(
            [str(VENV_BIN / "extauthz"), "prices", "import", *args], cwd=REPO,
            env=shell_env(tmp_path), capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 2 and result.stdout == "", (args, result)
        assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result


@pytest.mark.redis
def test_policy_sync_block(redis_server: RedisServer, tmp_path: Path) -> None:
    out = run_block("policy-sync", REPO, shell_env(tmp_path, redis_server.url)).stdout
    assert out.strip().splitlines()[-1].startswith("no change"), out
    assert redis_server.cli("HGET", "extauthz:policy", "version") == "1"


@pytest.mark.redis
def test_token_commands_block(redis_server: RedisServer, tmp_path: Path) -> None:
    url = redis_server.url
    sync_example(url)
    result = run_block("token-commands", tmp_path, shell_env(tmp_path, url))
    out, err = result.stdout, result.stderr
    secrets = [word for word in out.split() if word.startswith("eat_") or word.startswith('"eat_')]
    assert len(secrets) == 3, out  # two creates and a rotation, each printed once
    rotated = secrets[-1]
    exported = (tmp_path / "tokens.jsonl").read_text()
    assert json.loads(exported.splitlines()[0])["id"] == "ci"
    assert "eat_" not in exported
    # the import brought back the token revoked just before, with the rotated secret
    assert decide(url, "densenet161", rotated) == "allow"
    assert "would write 1 tokens: 1 new" in out, out
    for action in ("token.rotate", "token.revoke", "token.import"):  # the audit tail
        assert f" {action} " in out, out
    # rotate and revoke say that this Redis has no replica to hold the change; nothing else
    assert {line for line in err.splitlines()} <= {
        "extauthz: warning: Redis has no replica: a failover to a new primary would not have it"
    }, err


@pytest.mark.redis
def test_rate_limit_and_usage_blocks(redis_server: RedisServer, tmp_path: Path) -> None:
    url = redis_server.url
    sync_example(url)
    run_cli(url, "token", "create", "--id", "tok_1a2b3c4d5e6f", "--route", "densenet161")
    run_block("rate-limit-commands", tmp_path, shell_env(tmp_path, url))
    shown = run_cli(url, "token", "show", "tok_1a2b3c4d5e6f", "--json").stdout
    assert json.loads(shown)["rate_limit"] == "100/s"
    usage = json.loads(run_block("token-usage", tmp_path, shell_env(tmp_path, url)).stdout)
    assert usage["id"] == "tok_1a2b3c4d5e6f" and len(usage["days"]) == 7


@pytest.mark.redis
def test_backup_and_restore_blocks(redis_server: RedisServer, tmp_path: Path) -> None:
    """Tokens of every kind and field, exported from one Redis and restored into an empty
    one with the policy file: the same records, and the secrets work there."""
    url = redis_server.url
    sync_example(url)
    made = {
        "plain": run_cli(url, "token", "create", "--route", "densenet161", "--scope", "inference"),
        "llm": run_cli(url, "token", "create", "--route", "llm", *LLM_FLAGS.split()),
        "admin": run_cli(url, "token", "create", "--route", "*", "--scope", "admin"),
    }
    secrets = {name: r.stdout.strip().splitlines()[-1] for name, r in made.items()}
    backup = tmp_path / "backup"
    backup.mkdir()
    shutil.copy(REPO / "examples/policy.yaml", backup / "policy.yaml")
    run_block("backup", backup, shell_env(tmp_path, url))

    other = RedisServer(tmp_path, extra=("--notify-keyspace-events", "Kgx"))
    other.start()
    try:
        env = shell_env(tmp_path, other.url, DENSENET161_SECRET=SECRET)
        out = run_block("restore", backup, env).stdout
        assert "wrote 3 tokens: 3 new" in out, out
        assert (
            run_cli(other.url, "token", "export").stdout == run_cli(url, "token", "export").stdout
        )
        assert other.cli("HGET", "extauthz:policy", "digest") == redis_server.cli(
            "HGET", "extauthz:policy", "digest"
        )
        assert decide(other.url, "densenet161", secrets["plain"]) == "allow"
        assert decide(other.url, "densenet161", SECRET) == "allow"  # the route secret, synced
        assert os.path.getsize(backup / "tokens.jsonl") > 0
    finally:
        other.stop()
