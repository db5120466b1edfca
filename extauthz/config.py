"""Settings: defaults in one frozen dataclass; precedence command line > EXTAUTHZ_* > file.

The config file is YAML whose keys are the settings' names (`redis_url:`, `listen:`...).
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

import yaml

from extauthz.core.route_match import ROUTE_IDENTITIES
from extauthz.errors import ConfigError, shown
from extauthz.files import describe, read_regular_file
from extauthz.storage.client import redact_url
from extauthz.storage.store import DEFAULT_PREFIX

ENV_PREFIX = "EXTAUTHZ_"
MAX_CONFIG_BYTES = 1 << 20


# every command reaching Redis
REDIS = ("serve", "sync", "token", "check", "health", "audit", "admin")
SERVE = ("serve", "up")  # `up` passes these to the stack's server...
STACK_OWNED = ("serve",)  # ...but sets these itself (where it listens, its TLS files)
TLS = ("serve", "health")
LOGGING = (*SERVE, "sync")  # (`sync --watch` logs what it publishes)
ALERTS = (*SERVE, "admin")  # processes that send webhooks (docs/webhooks.md)


def setting(
    default: Any,
    help: str,
    commands: tuple[str, ...] = SERVE,
    *,
    choices: tuple[str, ...] = (),
    zero_ok: bool = False,
    maximum: float | None = None,
    secret: bool = False,
    address: bool = False,
    networks: bool = False,
    alias: str = "",
    check: Callable[[str], object] | None = None,
) -> Any:
    """A Settings field: its default, its help text, the commands that take it as a flag
    (`--name-with-dashes`), and what values are allowed (`address`: host:port, empty only
    when `zero_ok`; `networks`: comma-separated IP addresses or CIDR networks; `check`: reads
    a text value that is not empty, raising ValueError naming the rule it breaks). The CLI is
    generated from these."""
    metadata = {
        "help": help,
        "commands": commands,
        "choices": choices,
        "zero_ok": zero_ok,
        "maximum": maximum,
        "address": address,
        "networks": networks,
        "alias": alias,  # another flag for it (the contract's name, e.g. admin --listen)
        "check": check,
    }
    return field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True)
class OtlpTarget:
    """Where traces go (`--otlp-endpoint`, docs/operations.md#traces): an OTLP receiver over
    gRPC (`path` empty) or over HTTP (`path`: where it takes traces, /v1/traces)."""

    protocol: str  # "grpc" or "http"
    host: str
    port: int
    tls: bool
    path: str = ""

    @property
    def url(self) -> str:
        """The receiver as the OTLP exporters take it."""
        scheme = "https" if self.tls else "http"  # (gRPC's exporter takes these too)
        return f"{scheme}://{join_address(self.host, self.port)}{self.path}"


_OTLP_SCHEMES = {"grpc": ("grpc", False), "grpcs": ("grpc", True)}
_OTLP_SCHEMES |= {"http": ("http", False), "https": ("http", True)}
OTLP_TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class SpanBatching:
    """How spans wait for their export (docs/operations.md#traces): every `every` seconds, in
    batches of at most `batch`, at most `most` waiting; OpenTelemetry's batch span processor
    variables and defaults (`span_batching`)."""

    every: float = 5.0
    batch: int = 512
    most: int = 2048


_SPAN_BATCHING = (  # variable, field, lowest, highest, as seconds (given in ms)
    ("OTEL_BSP_SCHEDULE_DELAY", "every", 1, 3_600_000, True),
    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "batch", 1, 100_000, False),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "most", 1, 1_000_000, False),
)


def span_batching(environ: Mapping[str, str]) -> SpanBatching:
    """The OTEL_BSP_* variables of `environ` (unset or empty: the default); ConfigError
    names a variable whose value is not a whole number in its range."""
    values: dict[str, Any] = {}
    for name, key, lowest, highest, millis in _SPAN_BATCHING:
        text = environ.get(name, "").strip()
        if not text:
            continue
        if not (len(text) <= 10 and text.isascii() and text.isdigit()) or not (
            lowest <= int(text) <= highest
        ):
            raise ConfigError(
                f"{name}={shown(text)}: expected a whole number from {lowest:,} to {highest:,}"
                + (" (milliseconds)" if millis else "")
            )
        values[key] = int(text) / 1000 if millis else int(text)
    batching = SpanBatching(**values)
    if batching.batch > batching.most:
        raise ConfigError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE {batching.batch:,} is more than "
            f"OTEL_BSP_MAX_QUEUE_SIZE {batching.most:,}: give a batch no larger than the queue"
        )
    return batching


def otlp_target(text: str) -> OtlpTarget:
    """`host:port` or `grpc://host:port` (OTLP/gRPC, plaintext; `grpcs://`: TLS), or
    `http(s)://host[:port][/path]` (OTLP/HTTP; no path: /v1/traces). ValueError names the
    rule the text breaks (no credentials, query or fragment in it: a URL is logged)."""
    if not text.isprintable() or " " in text:
        raise ValueError(f"expected an OTLP endpoint URL, got {text!r}")
    if "://" not in text:
        try:
            name, number = split_address(text)
        except ValueError:
            name, number = "", 0
        if not name or not number:
            raise ValueError(f"expected host:port (OTLP/gRPC) or a URL, got {text!r}")
        return OtlpTarget("grpc", name, number, tls=False)
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        raise ValueError(f"expected an OTLP endpoint URL, got {text!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in _OTLP_SCHEMES:
        raise ValueError(f"expected grpc://, grpcs://, http:// or https://, got {text!r}")
    if parts.username is not None:  # (not echoed: it may hold a password)
        raise ValueError("no user or password in the OTLP endpoint (OTEL_EXPORTER_OTLP_HEADERS)")
    if parts.query or parts.fragment or not host:
        raise ValueError(f"expected a host, port and path only (no query), got {text!r}")
    protocol, tls = _OTLP_SCHEMES[scheme]
    try:
        given = parts.port
    except ValueError:
        given = 0
    if given == 0:
        raise ValueError(f"expected a port from 1 to 65535, got {text!r}")
    port = given if given is not None else {"grpc": 4317, "http": 443 if tls else 80}[protocol]
    path = parts.path.rstrip("/")
    if protocol == "grpc" and path:
        raise ValueError(f"an OTLP/gRPC endpoint has no path, got {text!r}")
    if protocol == "http" and not path:
        path = OTLP_TRACES_PATH
    return OtlpTarget(protocol, host, port, tls, path)


@dataclass(frozen=True)
class Settings:
    """Every setting with its default, help and bounds. Secrets are kept out of repr."""

    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        "Redis: redis://, rediss://, redis+sentinel://, redis+cluster:// (see docs/operations.md)",
        REDIS,
        secret=True,
    )
    key_prefix: str = setting(
        DEFAULT_PREFIX, "Redis key prefix ({extauthz}: with a Cluster)", REDIS
    )
    listen: str = setting(
        "127.0.0.1:9001", "host:port for gRPC (Check and health)", STACK_OWNED, address=True
    )
    workers: int = setting(0, "processes sharing the port; 0: one per CPU", zero_ok=True)
    threads: int = setting(2, "gRPC handler threads per process")
    ext_proc_streams: int = setting(
        256,
        "LLM responses followed at once per process (Envoy's ext_proc streams; each holds a "
        "thread of its own, never one of --threads; past them LLM requests get 503 "
        "counting_unavailable); 0: none",
        zero_ok=True,
    )
    log_format: str = setting(
        "text", "log lines as text or JSON", choices=("text", "json"), commands=LOGGING
    )
    log_level: str = setting(
        "info",
        "denials at info, allows at debug",
        choices=("debug", "info", "warning", "error"),
        commands=LOGGING,
    )
    redis_timeout: float = setting(0.1, "seconds per Redis command on the decision path")
    policy_refresh: float = setting(1.0, "seconds between checks for a new policy version")
    shutdown_grace: float = setting(5.0, "seconds to drain in-flight calls on SIGTERM")
    cache_ttl: float = setting(60.0, "seconds a token record stays cached; 0: off", zero_ok=True)
    stale_grace: float = setting(
        0.0, "seconds cached tokens may still allow once Redis is down", zero_ok=True
    )
    metrics_listen: str = setting(
        "127.0.0.1:9102",
        "host:port for /metrics; '' turns it off",
        STACK_OWNED,
        zero_ok=True,
        address=True,
    )
    unhealthy_after: float = setting(
        10.0, "seconds of Redis outage before health says NOT_SERVING", zero_ok=True
    )
    disable_auth: bool = setting(False, "allow every request (local use only; warns loudly)")
    route_identity: str = setting(
        "context",
        "where the route's name comes from: context (context_extensions route), metadata "
        "(route metadata extauthz.route), envoy-gateway (HTTPRoute annotation) or match "
        "(the policy's host/path rules)",
        choices=ROUTE_IDENTITIES,
    )
    jwks_refresh: float = setting(300.0, "seconds between JWKS refreshes")
    jwks_min_refetch: float = setting(
        10.0, "at most one unknown-kid JWKS refetch per key source this often (seconds)"
    )
    auth_failure_rate: float = setting(
        5.0,
        "failed authentications per second per client address, after the burst",
        (*SERVE, "admin"),
    )
    auth_failure_burst: int = setting(
        50,
        "failed authentications a client address may make at once; 0: no limit",
        (*SERVE, "admin"),
        zero_ok=True,
    )
    admin_listen: str = setting(
        "127.0.0.1:9080",
        "host:port of the management API (also --listen)",
        ("admin",),
        address=True,
        alias="--listen",
    )
    admin_trusted_proxies: str = setting(
        "",
        "proxies (Envoy) whose X-Forwarded-For names the client of the management API: "
        "comma-separated addresses or networks; empty: none",
        ("admin",),
        networks=True,
    )
    admin_request_timeout: float = setting(
        10.0,
        "seconds a client of the management API has to send a whole request (headers and "
        "body), and to read an answer that fills its connection's buffer, before its "
        "connection is closed: slow clients cannot hold the server",
        ("admin",),
        maximum=300,
    )
    admin_max_connections: int = setting(
        1000,
        "connections the management API holds at once; more are answered 503",
        ("admin",),
    )
    secret_scanning_keys: str = setting(
        "",
        "GitHub's secret scanning public keys (the JSON GitHub publishes), read again when "
        "the file changes: POST /v1/secret-scanning answers reports they sign; empty: off",
        ("admin",),
    )
    rate_limit_on_error: str = setting(
        "deny",
        "when Redis cannot count a rate limit: deny (503) or allow (let it through uncounted)",
        choices=("deny", "allow"),
    )
    usage_flush: float = setting(
        10.0,
        "seconds between writes of usage counts to Redis; 0: no usage metering",
        zero_ok=True,
        maximum=3600.0,
    )
    usage_retention_days: int = setting(90, "days usage counts are kept in Redis")
    ack_timeout: float = setting(
        2.0,
        "seconds to wait for every live server to confirm; 0: do not wait",
        ("update", "revoke", "rotate", "leaked"),
        zero_ok=True,
        maximum=60.0,
    )
    otlp_endpoint: str = setting(
        "",
        "traces (OTLP) go there: host:port or grpc://host:port (gRPC; grpcs:// with TLS), or "
        "http(s)://host:port/v1/traces (HTTP); with `up`, Envoy's too; '': no tracing",
        check=otlp_target,
    )
    tls_cert: str = setting("", "PEM certificate (chain): the gRPC port speaks TLS", TLS)
    tls_key: str = setting("", "PEM private key of --tls-cert", TLS, secret=True)
    tls_client_ca: str = setting(
        "", "PEM CA of the clients allowed to call: mutual TLS (only Envoy answers)", TLS
    )
    webhook_url: str = setting(
        "",
        "send alerts (budget thresholds, expiring and leaked tokens) as Standard Webhooks to "
        "this http:// or https:// URL; empty: none (docs/webhooks.md)",
        ALERTS,
        secret=True,
    )
    webhook_secret_file: str = setting(
        "", "file holding the webhooks' signing secret, whsec_<base64>", ALERTS
    )
    expiry_warning: str = setting(
        "7d", "send token.expiring this long before a token expires (s, m, h or d)", ALERTS
    )

    @property
    def redis_url_redacted(self) -> str:
        return redact_url(self.redis_url)


_FIELDS = {f.name: f for f in fields(Settings)}
_KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


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
        raise ConfigError(f"{source}: expected {_KIND_NAMES[kind]}, got {raw!r}") from None
    meta = _FIELDS[name].metadata
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{source}: must be one of {', '.join(meta['choices'])}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{source}: must be a finite number, got {raw!r}")
    if kind in (int, float) and (value < 0 or (value == 0 and not meta["zero_ok"])):
        raise ConfigError(f"{source}: must be positive, got {raw!r}")
    if meta["maximum"] is not None and value > meta["maximum"]:
        raise ConfigError(f"{source}: must be at most {meta['maximum']:g}, got {raw!r}")
    if meta["address"] and (value or not meta["zero_ok"]):
        try:
            split_address(value)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    if meta["networks"]:
        try:
            split_networks(value)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    if meta["check"] is not None and value:
        try:
            meta["check"](value)
        except ValueError as e:
            raise ConfigError(f"{source}: {e}") from None
    return value


def split_networks(text: str) -> list[str]:
    """`10.0.0.5, 172.30.0.0/16, ::1` as a list; ValueError names the first bad item."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"expected IP addresses or networks, got {item!r}") from None
    return items


def split_address(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` as (host without brackets, port); the host may be empty.

    Raises ValueError with a message naming the rule the text breaks.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"expected host:port with a port from 0 to 65535, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, as [::1]:9001, got {text!r}")
    return host, int(port)


def join_address(host: str, port: int) -> str:
    """The inverse of `split_address` (brackets around an IPv6 host)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def add_setting_flags(parser: Any, command: str, help_for: Mapping[str, str] | None = None) -> None:
    """Add `--name` for every setting that `command` takes, with its help, default and
    choices from the Settings field (values are converted and checked by load_settings);
    `help_for` replaces the help of settings the command treats otherwise (its own default)."""
    for f in fields(Settings):
        meta = f.metadata
        if command not in meta["commands"]:
            continue
        flags = ["--" + f.name.replace("_", "-"), *([meta["alias"]] if meta["alias"] else [])]
        text = f"{meta['help']} (default: {f.default if f.default != '' else 'none'})"
        if help_for and f.name in help_for:
            text = help_for[f.name]
        if f.default is False:
            parser.add_argument(
                *flags, dest=f.name, action="store_const", const=True, help=meta["help"]
            )
        else:
            parser.add_argument(*flags, dest=f.name, help=text, choices=meta["choices"] or None)
