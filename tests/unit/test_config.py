from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from extauthz.cli import _parser
from extauthz.config import Settings, join_address, load_settings, split_address
from extauthz.errors import ConfigError


def test_defaults() -> None:
    s = load_settings({}, env={})
    assert s == Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0"


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("listen: 0.0.0.0:1\nthreads: 3\nlog_format: json\nredis_timeout: 0.2\n")
    env = {"EXTAUTHZ_CONFIG": str(f), "EXTAUTHZ_LISTEN": "0.0.0.0:2", "EXTAUTHZ_THREADS": "5"}
    s = load_settings({"listen": "0.0.0.0:3", "threads": None}, env=env)
    assert (s.listen, s.threads, s.log_format, s.redis_timeout) == ("0.0.0.0:3", 5, "json", 0.2)


def test_password_not_in_repr() -> None:
    s = load_settings({"redis_url": "redis://u:hunter2@h:6379/0"}, env={})
    assert "hunter2" not in repr(s)
    assert s.redis_url_redacted == "redis://u:***@h:6379/0"


@pytest.mark.parametrize(
    ("cli", "env", "fragment"),
    [
        ({}, {"EXTAUTHZ_THREADS": "many"}, "EXTAUTHZ_THREADS: expected a whole number"),
        ({}, {"EXTAUTHZ_LOG_FORMAT": "xml"}, "must be one of"),
        ({"redis_timeout": -1.0}, {}, "--redis-timeout: must be positive"),
        ({"config": "/nonexistent/c.yaml"}, {}, "cannot read config file"),
    ],
)
def test_errors(cli: dict[str, object], env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_settings(cli, env=env)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("redis_uri: x\n")
    with pytest.raises(ConfigError, match="unknown setting 'redis_uri'"):
        load_settings({"config": str(f)}, env={})


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), ("true", True), ("on", True), ("0", False), ("no", False)]
)
def test_boolean_settings(raw: str, value: bool) -> None:
    assert load_settings({}, env={"EXTAUTHZ_DISABLE_AUTH": raw}).disable_auth is value


def test_boolean_setting_rejects_garbage() -> None:
    with pytest.raises(ConfigError, match="EXTAUTHZ_DISABLE_AUTH"):
        load_settings({}, env={"EXTAUTHZ_DISABLE_AUTH": "maybe"})


def test_every_setting_has_help_and_a_command() -> None:
    for f in fields(Settings):
        assert f.metadata["help"], f.name
        assert f.metadata["commands"], f.name


def test_up_help_gives_the_stacks_own_worker_default() -> None:
    """`extauthz up` runs one server process unless told otherwise, whatever serve's default
    (one per CPU) is: its --help says so."""
    import io
    import re
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        _parser().parse_args(["up", "--help"])
    text = " ".join(out.getvalue().split())
    workers = re.search(r"--workers WORKERS (.*?) --", text)
    assert workers and "(default: 1;" in workers.group(1), text


@pytest.mark.parametrize("f", fields(Settings), ids=lambda f: f.name)
def test_the_cli_is_generated_from_the_settings(f: Any) -> None:
    # every command that takes the setting has its flag, and the value reaches Settings
    value = {bool: True, int: 7, float: 1.5, str: "x"}[type(f.default)]
    if f.metadata["choices"]:
        value = f.metadata["choices"][-1]
    if f.metadata["address"]:
        value = "[::1]:7"
    if f.metadata["networks"]:
        value = "10.0.0.5, 172.30.0.0/16,::1"
    if f.metadata["check"] is not None:  # (values it reads, see tests of each)
        value = {"otlp_endpoint": "collector:4317"}[f.name]
    for command in f.metadata["commands"]:
        argv = {
            "serve": ["serve"],
            "up": ["up"],
            "audit": ["audit"],
            "admin": ["admin"],
            "sync": ["sync", "p.yaml"],
            "token": ["token", "list"],
            "check": ["check", "--route", "r"],
            "health": ["health"],
            "revoke": ["token", "revoke", "t1"],
            "update": ["token", "update", "t1"],
            "rotate": ["token", "rotate", "t1"],
            "leaked": ["token", "leaked", "-"],
        }[command]
        flag = "--" + f.name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
        settings = load_settings(vars(_parser().parse_args(argv)), env={})
        assert getattr(settings, f.name) == value, (command, f.name)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9001", "127.0.0.1", 9001),
        (":9001", "", 9001),
        ("[::1]:0", "::1", 0),
        ("[::]:65535", "::", 65535),
        ("localhost:80", "localhost", 80),
    ],
)
def test_split_address(text: str, host: str, port: int) -> None:
    assert split_address(text) == (host, port)
    assert join_address(host, port) == (text if host else f":{port}")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "9001",
        "host",
        "host:",
        "host:x",
        "host:65536",
        "host:99999999999999999999",
        "host:-1",
        "host:+1",
        "host:٩٠",
        "host: 90",
        "::1:9001",
        "host:9001\n",
    ],
)
def test_addresses_that_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"host:port|brackets"):
        split_address(text)
    with pytest.raises(ConfigError, match=r"^--listen: "):
        load_settings({"listen": text}, env={})


def test_an_empty_metrics_address_turns_metrics_off_but_listen_needs_one() -> None:
    assert load_settings({"metrics_listen": ""}, env={}).metrics_listen == ""
    with pytest.raises(ConfigError, match="EXTAUTHZ_METRICS_LISTEN"):
        load_settings({}, env={"EXTAUTHZ_METRICS_LISTEN": "nope"})


@pytest.mark.parametrize(
    "value",
    ["*", "localhost", "10.0.0.256", "10.0.0.0/33", "10.0.0.5;rm", "::1/129", "10.0.0.5 10.0.0.6"],
)
def test_trusted_proxies_are_addresses_or_networks(value: str) -> None:
    with pytest.raises(ConfigError, match="expected IP addresses or networks"):
        load_settings({"admin_trusted_proxies": value}, env={})


# Command lines users and scripts rely on (docs/design.md#what-users-and-scripts-rely-on), as
# the pages it names write them.
CONTRACT = [
    "serve --listen 127.0.0.1:9001 --redis-url redis://r:6379/0 --workers 2 "
    "--metrics-listen 127.0.0.1:9102 --log-format json --config c.yaml",
    "serve --tls-cert a.pem --tls-key k.pem --tls-client-ca ca.pem",
    "sync policy.yaml --dry-run --prune",
    "token create --route a --route b --scope inference --ttl 1h --name n --json",
    "token list --route a --limit 5 --json",
    "token show tok_1 --json",
    "token revoke tok_1 --json",
    "token rotate tok_1 --grace 10m --json",
    "token update tok_1 --route a --scope s --name n --ttl 1h --rate-limit 600/m",
    "token update tok_1 --no-expiry --rate-limit none",
    "token create --route llm --model demo-small --model 'qwen2-*'",
    "token update tok_1 --model demo-small",
    "token update tok_1 --all-models",
    "token usage tok_1 --days 7 --json",
    "token reindex",
    "token export --route a",
    "token import f.jsonl --dry-run",
    "check --route densenet161 --header authorization:x",
    "audit --limit 5 --json",
    "admin --listen 127.0.0.1:9080",
    "admin --admin-listen 127.0.0.1:9080",
    "up",
]


@pytest.mark.parametrize("line", CONTRACT)
def test_the_cli_takes_the_contracts_command_lines(line: str) -> None:
    args = _parser().parse_args(line.split())
    assert callable(args.func)


def test_admin_listen_is_also_listen() -> None:
    args = vars(_parser().parse_args(["admin", "--listen", "0.0.0.0:9999"]))
    assert load_settings(args, {}).admin_listen == "0.0.0.0:9999"
