"""Route identity by match rules (`serve --route-identity match`,
docs/design.md#route-identity): for gateways that cannot name the route in the CheckRequest
(Istio CUSTOM, the Gateway API ExternalAuth filter), the policy file's `routes.NAME.match:
[{host, path_prefix}]` rules name it from the request's host and path.

- Hosts are compared lower-cased, without a port or a trailing dot; a rule without a host
  matches any host. A request's host that is not a DNS name or an IP address with an
  optional numeric port (`name:abc`, `user@name`, `name:` with an empty port, escapes,
  non-ASCII letters) matches nothing, not even the rules for any host.
- The query string is ignored; prefixes match on segment boundaries (`/v2/models/iris`
  matches `/v2/models/iris` and `/v2/models/iris/infer`, never `/v2/models/iris2`); the
  longest prefix wins, and at equal length the rule naming the host.
- A path that is not canonical (a `.` or `..` segment, `//`, any `%XX` escape, a
  backslash, `;`, anything but visible ASCII, no leading `/`) matches nothing: it is never
  decoded or normalized differently from the gateway (`/v2/models/ir%69s` would otherwise
  fall back to a shorter, weaker rule), so it is denied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# where `serve --route-identity` reads the route's name: context_extensions["route"], route
# metadata extauthz.route, Envoy Gateway's HTTPRoute annotation, or these match rules
ROUTE_IDENTITIES = ("context", "metadata", "envoy-gateway", "match")

_FORBIDDEN = re.compile(r"//|[%\\;#]|[^!-~]")
_DOT_SEGMENT = re.compile(r"/\.{1,2}(?=/|$)")
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOST_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}", re.ASCII)
_REQUEST_HOST = re.compile(
    rf"(?P<name>(?:{_LABEL}\.)*{_LABEL}\.?|\[[0-9a-f:.]{{2,45}}\])(?::[0-9]{{1,5}})?", re.ASCII
)


@dataclass(frozen=True, slots=True)
class MatchRule:
    """One `match:` item: a host (None: any) and a canonical path prefix."""

    host: str | None
    path_prefix: str

    def to_json(self) -> dict[str, str]:
        out = {"path_prefix": self.path_prefix}
        if self.host is not None:
            out["host"] = self.host
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> MatchRule:
        host = data.get("host")
        prefix = data["path_prefix"]
        if (host is not None and normal_host(host) != host) or canonical_path(prefix) != prefix:
            raise ValueError(f"match rule {dict(data)!r} is not in normal form")
        return cls(host, prefix)


def canonical_path(path: str) -> str | None:
    """The path without its query, its trailing slash removed (except for `/`); None when
    it is not canonical."""
    path = path.split("?", 1)[0]
    if not path.startswith("/") or _FORBIDDEN.search(path) or _DOT_SEGMENT.search(path):
        return None
    return path.rstrip("/") or "/"


def normal_host(host: str) -> str:
    """`Models.Example.com:8443` → `models.example.com`; `[::1]:80` → `[::1]`."""
    host = host.lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        host = name
    return host.rstrip(".")


def request_host(host: str) -> str | None:
    """A request's Host/:authority as the rules compare it (normal_host), or None when it is
    not a DNS name or an IP address with an optional numeric port."""
    host = host.lower()
    found = _REQUEST_HOST.fullmatch(host) if len(host) <= 260 else None
    return None if found is None else found["name"].rstrip(".")


class RouteMatcher:
    """Rules compiled for lookups: one dict probe per path segment, longest first."""

    __slots__ = ("_any_host", "_by_host")

    def __init__(self, rules: Iterable[tuple[MatchRule, str]]) -> None:
        self._by_host: dict[str, dict[str, str]] = {}
        self._any_host: dict[str, str] = {}
        for rule, route in rules:
            table = self._any_host if rule.host is None else self._by_host.setdefault(rule.host, {})
            table[rule.path_prefix] = route

    def resolve(self, host: str, path: str) -> str | None:
        """The route named by the longest matching prefix; None when nothing matches or the
        path is not canonical."""
        prefix = canonical_path(path)
        if prefix is None:
            return None
        name = request_host(host)
        if name is None:
            return None
        named = self._by_host.get(name) if self._by_host else None
        anyhost = self._any_host
        while True:
            if named is not None and prefix in named:
                return named[prefix]
            if prefix in anyhost:
                return anyhost[prefix]
            if prefix == "/":
                return None
            prefix = prefix[: prefix.rfind("/")] or "/"
