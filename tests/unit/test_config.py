from __future__ import annotations

from pathlib import Path

import pytest

from extauthz.config import Settings, load_settings
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
        ({}, {"EXTAUTHZ_THREADS": "many"}, "EXTAUTHZ_THREADS: expected a int"),
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
