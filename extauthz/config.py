"""Settings: defaults in one frozen dataclass; precedence command line > EXTAUTHZ_* > file.

The config file is YAML whose keys are the settings' names (`redis_url:`, `listen:`...).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from extauthz.errors import ConfigError
from extauthz.files import describe, read_regular_file
from extauthz.storage.client import redact_url
from extauthz.storage.store import DEFAULT_PREFIX

ENV_PREFIX = "EXTAUTHZ_"
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class Settings:
    """Every setting with its default. The Redis URL may hold a password: kept out of repr."""

    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    key_prefix: str = DEFAULT_PREFIX
    listen: str = "127.0.0.1:9001"
    workers: int = 0  # server processes sharing the port; 0: one per CPU
    threads: int = 2  # gRPC handler threads per process
    log_format: str = "text"  # text | json
    log_level: str = "info"
    redis_timeout: float = 0.1  # seconds, per Redis command on the decision path
    policy_refresh: float = 1.0  # seconds between checks for a new policy version
    shutdown_grace: float = 5.0  # seconds to drain in-flight calls on SIGTERM
    cache_ttl: float = 60.0  # seconds a token record stays cached; 0 disables the cache
    stale_grace: float = 0.0  # seconds cached tokens may still be used once Redis is down
    metrics_listen: str = "127.0.0.1:9102"  # Prometheus /metrics; "" turns it off
    unhealthy_after: float = 10.0  # seconds of Redis outage before health says NOT_SERVING
    disable_auth: bool = False  # allow everything (local use only): loud warnings
    jwks_refresh: float = 300.0  # seconds between JWKS refreshes
    jwks_min_refetch: float = 10.0  # at most one extra JWKS fetch (unknown kid) this often
    auth_failure_rate: float = 5.0  # failed authentications per second per client address...
    auth_failure_burst: int = 50  # ...after a burst of this many; 0 turns the limit off
    ack_timeout: float = 2.0  # token revoke|rotate: seconds to wait for servers to confirm
    tls_cert: str = ""  # PEM certificate (chain) of the Check port: TLS when set...
    tls_key: str = field(default="", repr=False)  # ...with its private key
    tls_client_ca: str = ""  # CA of the clients (Envoy) allowed to call: mutual TLS

    @property
    def redis_url_redacted(self) -> str:
        return redact_url(self.redis_url)


_FIELDS = {f.name: f for f in fields(Settings)}
_ZERO_OK = (
    "cache_ttl",
    "stale_grace",
    "workers",
    "unhealthy_after",
    "auth_failure_burst",
    "ack_timeout",
)
_MAXIMUM = {"ack_timeout": 60.0}
_CHOICES = {"log_format": ("text", "json"), "log_level": ("debug", "info", "warning", "error")}


def load_settings(cli: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
    """Merge defaults, the config file, EXTAUTHZ_* variables and command-line values.

    `cli` holds command-line values (None = not given); unknown keys are ignored, so an
    argparse namespace's vars() can be passed as it is. `config` names the config file
    (also EXTAUTHZ_CONFIG).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = cli.get("config") or env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        for name, raw in _read_config_file(config_file).items():
            values[name] = _convert(name, raw, f"{config_file}: {name}")
    for name in _FIELDS:
        env_name = ENV_PREFIX + name.upper()
        if env_name in env:
            values[name] = _convert(name, env[env_name], env_name)
    for name, raw in cli.items():
        if name in _FIELDS and raw is not None:
            values[name] = _convert(name, raw, "--" + name.replace("_", "-"))
    return Settings(**values)


def _read_config_file(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(read_regular_file(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {describe(e)}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text") from e
    except RecursionError as e:
        raise ConfigError(f"config file {path} is nested too deeply") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of setting: value")
    unknown = sorted(str(k) for k in data if k not in _FIELDS)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting {unknown[0]!r} "
            f"(known: {', '.join(sorted(_FIELDS))})"
        )
    return data


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


def _convert(name: str, raw: Any, source: str) -> Any:
    kind: type[Any] = type(_FIELDS[name].default)
    try:
        if kind is bool:
            value: Any = _boolean(raw)
        elif kind is int and not isinstance(raw, bool):
            value = int(raw)
        elif kind is float and not isinstance(raw, bool):
            value = float(raw)
        elif kind is str and isinstance(raw, str | int | float) and not isinstance(raw, bool):
            value = str(raw)
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{source}: expected a {kind.__name__}, got {raw!r}") from None
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ConfigError(f"{source}: must be one of {', '.join(_CHOICES[name])}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{source}: must be a finite number, got {raw!r}")
    if kind in (int, float) and (value < 0 or (value == 0 and name not in _ZERO_OK)):
        raise ConfigError(f"{source}: must be positive, got {raw!r}")
    if name in _MAXIMUM and value > _MAXIMUM[name]:
        raise ConfigError(f"{source}: must be at most {_MAXIMUM[name]:g}, got {raw!r}")
    return value
