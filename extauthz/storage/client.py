"""Redis connections: one URL names a standalone server, a Sentinel-managed primary or a Cluster.

    redis://[user:password@]host[:port][/db]                   standalone
    rediss://...?ssl_ca_certs=/path/ca.crt                     standalone over TLS
    unix:///path/redis.sock?db=0                               standalone, Unix socket
    redis+sentinel://[user:password@]host:port[,host:port...]/<primary name>[/db]
    redis+cluster://[user:password@]host:port[,host:port...]
    rediss+sentinel://..., rediss+cluster://...                TLS to every node

user:password authenticate to the data nodes. Query parameters: the TLS options
ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs (required|optional|none) and
ssl_check_hostname (true|false); for Sentinel also sentinel_username and sentinel_password.

In a Cluster every extauthz key must live in one slot (token writes, rotation and policy
publication are transactions), so the key prefix must hold a hash tag: `{extauthz}:`.
"""

# ruff: noqa: E402 (redis is imported after the guard below)
from __future__ import annotations

import sys
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# redis-py imports OpenTelemetry's metrics SDK whenever it is installed (it is, for traces:
# runtime/tracing.py) to offer metrics of its own that extauthz never turns on: ~50 ms at the
# start of every command. While redis is first imported the SDK reads as absent, which
# redis-py takes as not installed; afterwards it imports as usual.
_METRICS_SDK = "opentelemetry.sdk.metrics"
if "redis" not in sys.modules and _METRICS_SDK not in sys.modules:
    sys.modules[_METRICS_SDK] = None  # type: ignore[assignment]
    try:
        import redis
    finally:
        del sys.modules[_METRICS_SDK]

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from extauthz.errors import ConfigError

STANDALONE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
_SECRET_OPTIONS = ("password", "sentinel_password")
# Replies as str; bytes that are not UTF-8 (a record written by hand) become lone surrogates,
# which record validation refuses, instead of a UnicodeDecodeError in the middle of a reply.
DECODING: dict[str, Any] = {"decode_responses": True, "encoding_errors": "surrogateescape"}


def redact_url(url: str) -> str:
    """The Redis URL with every password (user info or query) replaced by `***`."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hosts = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{k}={'***' if k in _SECRET_OPTIONS else urllib.parse.quote(v, safe='/')}"
            for k, v in pairs
        )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL. `kind` is standalone, sentinel or cluster."""

    kind: str
    url: str = field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""  # Sentinel: the monitored primary's name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: dict[str, Any] = field(default_factory=dict)
    sentinel_auth: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def uses_tls(self) -> bool:
        return self.url.startswith("rediss")

    def node_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a connection to one data node (auth and TLS)."""
        kwargs: dict[str, Any] = {"username": self.username, "password": self.password}
        if self.uses_tls:
            kwargs["ssl"] = True
            kwargs.update(self.tls)
        return kwargs


def parse(url: str) -> RedisTarget:
    """Parse and check a Redis URL; ConfigError says what is wrong with it."""
    shown = redact_url(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in STANDALONE_SCHEMES:
        try:
            kwargs = redis.connection.parse_url(url)
        except ValueError as e:
            raise ConfigError(f"invalid Redis URL {shown}: {e}") from e
        return RedisTarget("standalone", url, db=int(kwargs.get("db") or 0))
    if scheme not in SENTINEL_SCHEMES + CLUSTER_SCHEMES:
        raise ConfigError(
            f"invalid Redis URL {shown}: the scheme must be one of "
            + ", ".join(s + "://" for s in STANDALONE_SCHEMES + SENTINEL_SCHEMES + CLUSTER_SCHEMES)
        )
    kind = "sentinel" if scheme in SENTINEL_SCHEMES else "cluster"
    parts = urllib.parse.urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = None, None
    if userinfo:
        user, sep, secret = userinfo.partition(":")
        username = urllib.parse.unquote(user) or None
        password = urllib.parse.unquote(secret) if sep else None
    default_port = 26379 if kind == "sentinel" else 6379
    nodes = tuple(_host_port(h, default_port, shown) for h in hostlist.split(","))
    path = [p for p in parts.path.split("/") if p]
    service, db = "", 0
    if kind == "sentinel":
        if not path or len(path) > 2:
            raise ConfigError(
                f"invalid Redis URL {shown}: a Sentinel URL ends in /<primary name>[/<db>]"
            )
        service = urllib.parse.unquote(path[0])
        db = _integer(path[1], "database number", shown) if len(path) == 2 else 0
    elif path:
        raise ConfigError(f"invalid Redis URL {shown}: a Cluster URL has no path (one database)")
    tls: dict[str, Any] = {}
    sentinel_auth: dict[str, str] = {}
    known = TLS_OPTIONS + (SENTINEL_OPTIONS if kind == "sentinel" else ())
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name not in known:
            raise ConfigError(
                f"invalid Redis URL {shown}: unknown option {name!r} (known: {', '.join(known)})"
            )
        if name in SENTINEL_OPTIONS:
            sentinel_auth[name.removeprefix("sentinel_")] = value
        elif name == "ssl_check_hostname":
            tls[name] = value.lower() in ("1", "true", "yes")
        else:
            tls[name] = value
    return RedisTarget(kind, url, nodes, service, db, username, password, tls, sentinel_auth)


def _host_port(text: str, default_port: int, shown: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ConfigError(f"invalid Redis URL {shown}: a host is missing")
    return host, _integer(port_text, "port", shown) if port_text else default_port


def _integer(text: str, what: str, shown: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"invalid Redis URL {shown}: {what} {text!r} is not a number") from None


def key_prefix(url: str, prefix: str, default: str) -> str:
    """The key prefix to use with this URL: in a Cluster it must hold a hash tag.

    The default prefix becomes `{extauthz}:` there; any other prefix without one is an error.
    """
    if parse(url).kind != "cluster" or _has_hash_tag(prefix):
        return prefix
    if prefix == default:
        return "{" + default.rstrip(":") + "}:"
    raise ConfigError(
        f"key prefix {prefix!r}: with Redis Cluster it must hold a hash tag, e.g. "
        f"'{{{prefix.rstrip(':')}}}:', so that every extauthz key lives in one slot"
    )


def _has_hash_tag(prefix: str) -> bool:
    """Redis hashes the text between the first `{` and the next `}`, if not empty."""
    start = prefix.find("{")
    return start >= 0 and prefix.find("}", start + 1) > start + 1


def connect(url: str, timeout: float) -> Any:
    """A client (redis.Redis or RedisCluster) whose every command fails within ~`timeout` s.

    No retries on standalone and Sentinel: on the decision path a failed command must turn
    into a fast 503, well inside Envoy's ext_authz timeout. A Cluster client may retry once,
    to follow a slot that moved.
    """
    target = parse(url)
    common: dict[str, Any] = {
        **DECODING,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "max_connections": 64,
    }
    if target.kind == "standalone":
        return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **common)
    if target.kind == "sentinel":
        return _sentinel(target, timeout).master_for(
            target.service,
            db=target.db,
            retry=Retry(NoBackoff(), 0),
            **common,
            **target.node_kwargs(),
        )
    return LazyCluster(
        lambda: RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            retry=Retry(NoBackoff(), 1),
            **common,
            **target.node_kwargs(),
        )
    )


class LazyCluster:
    """A RedisCluster client made on first use, and again after a failed attempt.

    RedisCluster() reads the slot map at once and raises when no node answers; made lazily,
    a server can start while the cluster is down (answering 503) and recover by itself.
    """

    def __init__(self, make: Callable[[], RedisCluster]) -> None:
        self._make = make
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def get(self) -> RedisCluster:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make()
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def follow_primary(client: Any) -> None:
    """Make `client` (from `connect`) find the current primary before its next command.

    After a planned failover the old primary stays up, as a replica, and pooled connections
    would keep reading from it; this drops them (Sentinel) or reloads the slot map (Cluster).
    """
    if isinstance(client, LazyCluster):
        client.get().nodes_manager.initialize()
    else:
        client.connection_pool.disconnect()


def _sentinel(target: RedisTarget, timeout: float) -> Sentinel:
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        **DECODING,
        **target.sentinel_auth,
    }
    if target.uses_tls:
        sentinel_kwargs.update(ssl=True, **target.tls)
    return Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)


class PrimaryNode:
    """The one node that holds the extauthz keys, for keyspace notifications.

    Keyspace notifications are local to a node: the listener must subscribe on the primary
    that owns the keys, and move when a failover (Sentinel or Cluster) elects another one.
    """

    def __init__(self, url: str, anchor_key: str, timeout: float = 2.0) -> None:
        self.target = parse(url)
        self.anchor_key = anchor_key
        self.timeout = timeout
        self._sentinel = _sentinel(self.target, timeout) if self.target.kind == "sentinel" else None
        self._cluster: Any = None

    @property
    def db(self) -> int:
        return self.target.db

    def locate(self) -> tuple[str, int] | None:
        """The address of the current primary; None for a standalone URL (no failover)."""
        if self._sentinel is not None:
            host, port = self._sentinel.discover_master(self.target.service)
            return str(host), int(port)
        if self.target.kind == "cluster":
            if self._cluster is None:
                self._cluster = connect(self.target.url, self.timeout)
            else:
                follow_primary(self._cluster)  # re-read the slot map
            node = self._cluster.get_node_from_key(self.anchor_key)
            return str(node.host), int(node.port)
        return None

    def open(self, address: tuple[str, int] | None) -> Any:
        """A plain client on that node (standalone: the URL's server), for pub/sub and CONFIG."""
        kwargs: dict[str, Any] = {
            **DECODING,
            "socket_connect_timeout": self.timeout,
            "socket_keepalive": True,
            "health_check_interval": 5,
            # never reconnect silently: messages sent meanwhile are lost, so the listener
            # must see the error and distrust the cache until it has subscribed again
            "retry": Retry(NoBackoff(), 0),
        }
        if address is None:
            return redis.Redis.from_url(self.target.url, **kwargs)
        host, port = address
        return redis.Redis(host=host, port=port, db=self.db, **kwargs, **self.target.node_kwargs())

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
