"""The route policy file: its schema and validation.

`parse_policy` validates a whole file and reports the first error with file, line and key.
What it yields is made of the types servers hold (core/route_policy.py: `RoutePolicy`,
`PolicySnapshot`, which the sync job publishes to Redis as JSON and servers keep in memory,
with route secrets only as SHA-256 hashes); they are re-exported here. A route's
`credentials:` are checked against the credential kinds registered in core/identity.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from extauthz.core.budget import Budget
from extauthz.core.credentials import ROUTE_NAME, SCOPE_NAME, TOKEN_ID
from extauthz.core.durations import parse_duration
from extauthz.core.headers import IDENTITY_HEADERS
from extauthz.core.identity import KINDS
from extauthz.core.llm import MAX_CAP, check_model_patterns
from extauthz.core.prices import (
    MAX_PRICE,
    NO_PRICES,
    PRICE_RULE,
    UNPRICED,
    Price,
    PriceTable,
    parse_usd,
)
from extauthz.core.rate_limit import RateLimit
from extauthz.core.route_match import (
    HOST_NAME,
    MatchRule,
    canonical_path,
    normal_host,
)
from extauthz.core.route_policy import (
    DEFAULT_CREDENTIALS,
    EMPTY_SNAPSHOT,
    JWT_ALGORITHMS,
    Access,
    IPNetwork,
    JwtSettings,
    PolicySnapshot,
    RoutePolicy,
)
from extauthz.core.token_limit import TokenLimit
from extauthz.errors import PolicyError
from extauthz.files import describe, read_regular_file

__all__ = [  # re-exported: the types a parsed file is made of (core/route_policy.py)
    "DEFAULT_CREDENTIALS",
    "EMPTY_SNAPSHOT",
    "JWT_ALGORITHMS",
    "Access",
    "IPNetwork",
    "JwtSettings",
    "PolicySnapshot",
    "RoutePolicy",
]

MAX_POLICY_BYTES = 4 << 20  # a policy file larger than this is a mistake, not a policy
MAX_NESTING = 32  # the schema needs 5 levels; deeper is refused before it is built
_DECIMAL = re.compile(r"-?[0-9]{1,18}", re.ASCII)


@dataclass(frozen=True, slots=True)
class SecretSpec:
    """A route secret named in the policy file; its value is read (and hashed) at sync time."""

    id: str
    routes: frozenset[str]
    scopes: frozenset[str]
    from_env: str | None
    from_file: str | None
    line: int  # of the from_env / from_file key, for errors about the source


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """A validated policy file."""

    file: str
    routes: Mapping[str, RoutePolicy]
    internal_networks: tuple[IPNetwork, ...] = ()
    secrets: tuple[SecretSpec, ...] = ()
    warnings: tuple[str, ...] = ()  # legal, but worth a look (sync prints them)
    prices: PriceTable = NO_PRICES  # `prices:` and `unpriced:`
    on_leak: str = "revoke"  # a secret reported leaked: revoke it, or only notify


# --- parsing the YAML file -----------------------------------------------------------------

_TOP_KEYS = (
    "version", "internal_networks", "routes", "secrets", "prices", "unpriced", "on_leak"
)  # fmt: skip
_PRICE_KEYS = ("input", "output", "cached_input")
MAX_PRICES = 10_000  # models priced in one file
ON_LEAK = ("revoke", "notify")  # docs/security.md#when-a-key-leaks
_ROUTE_KEYS = (
    "access",
    "credentials",
    "basic_username",
    "scopes",
    "jwt",
    "max_token_ttl",
    "rate_limit",
    "match",
    "api",
    "models",
    "token_limit",
    "stream_usage",
    "default_max_tokens",
    "budget",
)
_JWT_KEYS = (
    "issuer",
    "audiences",
    "jwks_uri",
    "jwks_file",
    "scopes_claim",
    "subject_claim",
    "models_claim",
    "team_claim",
    "algorithms",
    "leeway_seconds",
    "forward_claims",
)
FORWARD_HEADER = re.compile(r"x-extauthz-[a-z0-9][a-z0-9-]*")
CLAIM_PATH = re.compile(r"[A-Za-z0-9_:/\-]+(\.[A-Za-z0-9_:/\-]+)*")
_SECRET_KEYS = ("id", "routes", "scopes", "from_env", "from_file")
_MATCH_KEYS = ("host", "path_prefix")
MAX_MATCH_RULES = 1024  # per route
APIS = ("openai",)  # route kinds whose requests name a model in their body
STREAM_USAGE = ("require", "count")


class _Reader:
    """Walks composed YAML nodes, so that every error can name its line."""

    def __init__(self, file: str) -> None:
        self.file = file
        # every `match:` rule read so far, with where it was: two identical rules are refused
        self.match_rules: dict[MatchRule, tuple[str, int]] = {}

    def error(self, node: yaml.Node | None, key: str, message: str) -> PolicyError:
        line = node.start_mark.line + 1 if node is not None else None
        return PolicyError(self.file, line, key, message)

    def mapping(
        self, node: yaml.Node, key: str, allowed: tuple[str, ...]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, key, "must be a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            name = self.key_name(key_node, key)
            path = f"{key}.{name}" if key else name
            if name in out:
                raise self.error(key_node, path, "duplicate key")
            if allowed and name not in allowed:
                raise self.error(
                    key_node, path, f"unknown key (expected one of: {', '.join(allowed)})"
                )
            out[name] = (key_node, value_node)
        return out

    def key_name(self, node: yaml.Node, parent: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            raise self.error(node, parent, "keys must be strings")
        return str(node.value)

    def string(self, node: yaml.Node, key: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
            raise self.error(node, key, "must be a string")
        value = str(node.value)
        if not value:
            raise self.error(node, key, "must not be empty")
        if not value.isprintable():
            raise self.error(node, key, "must not contain control characters")
        return value

    def name(self, node: yaml.Node, key: str, pattern: re.Pattern[str], what: str) -> str:
        """A string that must match `pattern` (a route, scope or secret id)."""
        value = self.string(node, key)
        if not pattern.fullmatch(value):
            raise self.error(node, key, f"{value!r} is not a valid {what}")
        return value

    def integer(self, node: yaml.Node, key: str) -> int:
        # only plain decimal numbers: YAML 1.1 also reads 0x1, 0o7, 1_000 and 1:30 as ints
        if (
            not isinstance(node, yaml.ScalarNode)
            or node.tag != "tag:yaml.org,2002:int"
            or not _DECIMAL.fullmatch(str(node.value))
        ):
            raise self.error(node, key, "must be a decimal integer (e.g. 30)")
        return int(node.value)

    def choices(
        self,
        node: yaml.Node,
        key: str,
        allowed: tuple[str, ...],
        refusal: str = "{item!r} is not one of: {allowed}",
    ) -> list[str]:
        """A list of strings, each one of `allowed`; the error names the item at fault."""
        items = self.strings(node, key)
        for i, item in enumerate(items):
            if item not in allowed:
                message = refusal.format(item=item, allowed=", ".join(allowed))
                raise self.error(node.value[i], f"{key}[{i}]", message)
        return items

    def strings(self, node: yaml.Node, key: str) -> list[str]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, key, "must be a list of strings")
        return [self.string(item, f"{key}[{i}]") for i, item in enumerate(node.value)]


def load_policy_file(path: str) -> PolicyDocument:
    """Read and validate a policy file; raise PolicyError naming file, line and key."""
    try:
        text = read_regular_file(path, MAX_POLICY_BYTES).decode("utf-8")
    except OSError as e:
        raise PolicyError(path, None, "", f"cannot read the file: {describe(e)}") from e
    except UnicodeDecodeError as e:
        raise PolicyError(path, None, "", "the file is not UTF-8 text") from e
    return parse_policy(text, path)


def _check_nesting(text: str, file: str) -> None:
    """Refuse documents nested deeper than MAX_NESTING, from the event stream (which does
    not recurse), before the node tree is composed (which does)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                line = event.start_mark.line + 1 if event.start_mark is not None else None
                raise PolicyError(file, line, "", f"nested deeper than {MAX_NESTING} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def parse_policy(text: str, file: str = "<policy>") -> PolicyDocument:
    """Validate a policy document given as YAML text."""
    r = _Reader(file)
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyError(file, None, "", f"larger than {MAX_POLICY_BYTES} bytes")
    try:
        _check_nesting(text, file)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark is not None else None
        raise PolicyError(file, line, "", f"YAML syntax error: {e.problem}") from e
    except yaml.YAMLError as e:
        raise PolicyError(file, None, "", f"YAML error: {e}") from e
    if root is None:
        raise PolicyError(file, None, "", "the file is empty (expected `version: 1` and `routes:`)")
    top = r.mapping(root, "", _TOP_KEYS)

    if "version" not in top:
        raise r.error(root, "version", "missing (expected `version: 1`)")
    version_node = top["version"][1]
    if r.integer(version_node, "version") != 1:
        raise r.error(version_node, "version", "unsupported version (expected 1)")

    networks = _parse_networks(r, top["internal_networks"][1]) if "internal_networks" in top else ()

    if "routes" not in top:
        raise r.error(root, "routes", "missing (a mapping of route names to policies)")
    routes: dict[str, RoutePolicy] = {}
    for name, (key_node, value_node) in r.mapping(top["routes"][1], "routes", ()).items():
        if not ROUTE_NAME.fullmatch(name):
            raise r.error(
                key_node, f"routes.{name}", "route names use letters, digits, '.', '_', '-'"
            )
        routes[name] = _parse_route(r, name, key_node, value_node)

    secrets = _parse_secrets(r, top["secrets"][1], routes) if "secrets" in top else ()
    prices = _parse_prices(r, top)
    on_leak = "revoke"
    if "on_leak" in top:
        node = top["on_leak"][1]
        on_leak = r.string(node, "on_leak")
        if on_leak not in ON_LEAK:
            raise r.error(node, "on_leak", f"{on_leak!r} is not revoke or notify")
    return PolicyDocument(
        file, routes, networks, secrets, _shadowing(r, routes), prices=prices, on_leak=on_leak
    )


def _parse_prices(r: _Reader, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> PriceTable:
    """`prices:` (model or `prefix*` → USD per million input, output, cached input tokens)
    and `unpriced: deny|free`."""
    unpriced = "deny"
    if "unpriced" in top:
        node = top["unpriced"][1]
        unpriced = r.string(node, "unpriced")
        if unpriced not in UNPRICED:
            raise r.error(node, "unpriced", "deny (403 model_unpriced under a budget) or free")
    prices: dict[str, Price] = {}
    if "prices" in top:
        entries = r.mapping(top["prices"][1], "prices", ())
        if len(entries) > MAX_PRICES:
            raise r.error(top["prices"][1], "prices", f"more than {MAX_PRICES} models")
        for model, (key_node, node) in entries.items():
            path = f"prices.{model}"
            try:
                check_model_patterns([model])
            except ValueError as e:
                raise r.error(key_node, path, str(e)) from None
            fields = r.mapping(node, path, _PRICE_KEYS)
            values: dict[str, int] = {}
            for name, (_, value_node) in fields.items():
                values[name] = _usd(r, value_node, f"{path}.{name}")
            for needed in ("input", "output"):
                if needed not in values:
                    raise r.error(key_node, f"{path}.{needed}", "missing (USD per million tokens)")
            cached = values.get("cached_input", values["input"])
            prices[model] = Price(values["input"], values["output"], cached)
    return PriceTable(prices, unpriced)


def _usd(r: _Reader, node: yaml.Node, key: str) -> int:
    """A price: a plain YAML number (int or float, no exponent) in USD per million tokens."""
    tags = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    if not isinstance(node, yaml.ScalarNode) or node.tag not in tags:
        raise r.error(node, key, f"must be a number: {PRICE_RULE}")
    try:
        return parse_usd(str(node.value), MAX_PRICE, PRICE_RULE)
    except ValueError as e:
        raise r.error(node, key, str(e)) from None


def _shadowing(r: _Reader, routes: Mapping[str, RoutePolicy]) -> tuple[str, ...]:
    """Warnings for public match rules that cover a protected or private rule's paths: a
    request that the gateway and the rules read differently would fall back to the public
    route (with any host, or the same host, and a prefix of its path)."""
    public = [q for route in routes.values() if route.access is Access.PUBLIC for q in route.match]
    out = []
    for name, route in routes.items():
        if route.access is Access.PUBLIC:
            continue
        for rule in route.match:
            for q in public:
                prefix = q.path_prefix
                covers = prefix in ("/", rule.path_prefix) or rule.path_prefix.startswith(
                    prefix + "/"
                )
                if covers and q.host in (None, rule.host):
                    where, line = r.match_rules[q]
                    out.append(
                        f"{r.file}:{line}: {where}: public rule {q.to_json()} covers the paths "
                        f"of {name}'s rule {rule.to_json()} ({route.access.value}): give the "
                        "public route a narrower prefix or its own host"
                    )
    return tuple(out)


def _parse_networks(r: _Reader, node: yaml.Node) -> tuple[IPNetwork, ...]:
    networks: list[IPNetwork] = []
    for i, cidr in enumerate(r.strings(node, "internal_networks")):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise r.error(
                node.value[i], f"internal_networks[{i}]", f"not a network: {cidr!r}"
            ) from None
    return tuple(networks)


def _parse_secrets(
    r: _Reader, node: yaml.Node, routes: dict[str, RoutePolicy]
) -> tuple[SecretSpec, ...]:
    if not isinstance(node, yaml.SequenceNode):
        raise r.error(node, "secrets", "must be a list")
    secrets: list[SecretSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(node.value):
        spec = _parse_secret(r, f"secrets[{i}]", item, routes)
        if spec.id in seen:
            raise r.error(item, f"secrets[{i}].id", f"duplicate secret id {spec.id!r}")
        seen.add(spec.id)
        secrets.append(spec)
    return tuple(secrets)


def _parse_route(r: _Reader, name: str, key_node: yaml.Node, node: yaml.Node) -> RoutePolicy:
    """Parse one route; errors about a missing key point at the route's name."""
    path = f"routes.{name}"
    fields = r.mapping(node, path, _ROUTE_KEYS)
    if "access" not in fields:
        raise r.error(key_node, f"{path}.access", "missing (public, protected or private)")
    access_node = fields["access"][1]
    access_text = r.string(access_node, f"{path}.access")
    try:
        access = Access(access_text)
    except ValueError:
        raise r.error(
            access_node, f"{path}.access", f"{access_text!r} is not public, protected or private"
        ) from None

    credentials: tuple[str, ...] = DEFAULT_CREDENTIALS
    listed = "credentials" in fields
    if listed:
        cred_node = fields["credentials"][1]
        # the credential kinds are those registered in core/identity (read when a file is
        # parsed: a kind added to KINDS is accepted here at once)
        kinds = r.choices(cred_node, f"{path}.credentials", tuple(KINDS))
        if not kinds:
            raise r.error(cred_node, f"{path}.credentials", "must list at least one kind")
        credentials = tuple(dict.fromkeys(kinds))

    basic_username = None
    if "basic_username" in fields:
        basic_username = r.string(fields["basic_username"][1], f"{path}.basic_username")
        if ":" in basic_username:
            raise r.error(
                fields["basic_username"][1], f"{path}.basic_username", "must not contain ':'"
            )
    if "basic" in credentials and basic_username is None:
        raise r.error(key_node, f"{path}.basic_username", "required when credentials include basic")

    scopes: frozenset[str] = frozenset()
    if "scopes" in fields:
        scopes = frozenset(_scopes(r, fields["scopes"][1], f"{path}.scopes"))

    jwt = None
    if "jwt" in fields:
        jwt = _parse_jwt(r, f"{path}.jwt", *fields["jwt"])
    if "jwt" in credentials and jwt is None:
        raise r.error(key_node, f"{path}.jwt", "required when credentials include jwt")
    if jwt is not None and "jwt" not in credentials:
        raise r.error(fields["jwt"][0], f"{path}.jwt", "given, but credentials do not list jwt")

    max_ttl, limit = _parse_token_limits(r, path, fields)
    match = _parse_match(r, f"{path}.match", fields["match"][1]) if "match" in fields else ()
    api, models, token_limit, stream_usage = _parse_api(r, path, fields)
    default_max_tokens = _parse_default_cap(r, path, fields, api)
    budget = _parse_budget(r, path, fields, api)
    return RoutePolicy(
        name,
        access,
        credentials,
        listed,
        basic_username,
        scopes,
        jwt,
        max_ttl,
        limit,
        match,
        api,
        models,
        token_limit,
        stream_usage,
        default_max_tokens,
        budget,
    )


def _llm_only(
    r: _Reader, path: str, fields: dict[str, tuple[yaml.Node, yaml.Node]], api: str | None,
    name: str,
) -> tuple[yaml.Node, str] | None:  # fmt: skip
    """A route key that only an LLM route takes: its value's node and its path, or None
    when absent (an error on a route without `api: openai`)."""
    if name not in fields:
        return None
    key, node = fields[name]
    where = f"{path}.{name}"
    if api is None:
        raise r.error(key, where, "only for a route with api: openai")
    return node, where


def _parse_budget(
    r: _Reader, path: str, fields: dict[str, tuple[yaml.Node, yaml.Node]], api: str | None
) -> Budget | None:
    """`budget: AMOUNT/UNIT`: USD of LLM use per caller on the route."""
    given = _llm_only(r, path, fields, api, "budget")
    if given is None:
        return None
    node, where = given
    try:
        return Budget.parse(r.string(node, where))
    except ValueError as e:
        raise r.error(node, where, str(e)) from None


def _parse_default_cap(
    r: _Reader, path: str, fields: dict[str, tuple[yaml.Node, yaml.Node]], api: str | None
) -> int | None:
    """`default_max_tokens`: the output cap added to LLM requests that name none."""
    given = _llm_only(r, path, fields, api, "default_max_tokens")
    if given is None:
        return None
    node, where = given
    value = r.integer(node, where)
    if not 1 <= value <= MAX_CAP:
        raise r.error(node, where, f"from 1 to {MAX_CAP}")
    return value


def _parse_api(
    r: _Reader, path: str, fields: dict[str, tuple[yaml.Node, yaml.Node]]
) -> tuple[str | None, tuple[str, ...], TokenLimit | None, str]:
    """`api: openai`, the `models` it serves (names and `prefix*`), its `token_limit` and
    `stream_usage`."""
    api = None
    if "api" in fields:
        api = r.string(fields["api"][1], f"{path}.api")
        if api not in APIS:
            raise r.error(fields["api"][1], f"{path}.api", f"{api!r}: the one kind is openai")
    models: tuple[str, ...] = ()
    if "models" in fields:
        node = fields["models"][1]
        if api is None:
            raise r.error(
                fields["models"][0], f"{path}.models", "only for a route with api: openai"
            )
        try:
            models = check_model_patterns(r.strings(node, f"{path}.models"))
        except ValueError as e:
            raise r.error(node, f"{path}.models", str(e)) from None
        if not models:
            raise r.error(node, f"{path}.models", "must list at least one (or leave it out: any)")
    token_limit = None
    if "token_limit" in fields:
        node = fields["token_limit"][1]
        if api is None:
            raise r.error(
                fields["token_limit"][0], f"{path}.token_limit", "only for a route with api: openai"
            )
        try:
            token_limit = TokenLimit.parse(r.string(node, f"{path}.token_limit"))
        except ValueError as e:
            raise r.error(node, f"{path}.token_limit", str(e)) from None
    stream_usage = "count"
    if "stream_usage" in fields:
        key, node = fields["stream_usage"]
        if api is None:
            raise r.error(key, f"{path}.stream_usage", "only for a route with api: openai")
        stream_usage = r.string(node, f"{path}.stream_usage")
        if stream_usage not in STREAM_USAGE:
            raise r.error(node, f"{path}.stream_usage", "require or count")
    return api, models, token_limit, stream_usage


def _parse_match(r: _Reader, path: str, node: yaml.Node) -> tuple[MatchRule, ...]:
    """`match: [{host: models.example.com, path_prefix: /v2/models/iris}, ...]`."""
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise r.error(node, path, "must be a list of {host, path_prefix} rules")
    if len(node.value) > MAX_MATCH_RULES:
        raise r.error(node, path, f"more than {MAX_MATCH_RULES} rules")
    rules: list[MatchRule] = []
    for i, item in enumerate(node.value):
        where = f"{path}[{i}]"
        fields = r.mapping(item, where, _MATCH_KEYS)
        if "path_prefix" not in fields:
            raise r.error(item, f"{where}.path_prefix", "missing (e.g. /v2/models/iris)")
        prefix_node = fields["path_prefix"][1]
        prefix = r.string(prefix_node, f"{where}.path_prefix")
        if not prefix.startswith("/"):
            raise r.error(prefix_node, f"{where}.path_prefix", f"{prefix!r} must start with /")
        normal = canonical_path(prefix)
        if normal is None or "?" in prefix:
            raise r.error(
                prefix_node,
                f"{where}.path_prefix",
                f"{prefix!r} is not a canonical path (no ., .., //, %XX escapes, ;, ? or \\)",
            )
        host = None
        if "host" in fields:
            host_node = fields["host"][1]
            text = r.string(host_node, f"{where}.host")
            if "://" in text or "/" in text:
                raise r.error(
                    host_node,
                    f"{where}.host",
                    f"{text!r}: a host name only, without scheme or path",
                )
            host = normal_host(text)
            if host != text.lower() or not HOST_NAME.fullmatch(host) or len(host) > 253:
                raise r.error(
                    host_node,
                    f"{where}.host",
                    f"{text!r} is not a host name (no port: hosts match whatever the port)",
                )
        rule = MatchRule(host, normal)
        line = item.start_mark.line + 1
        if rule in r.match_rules:
            other, other_line = r.match_rules[rule]
            raise r.error(
                item, where, f"the same host and path_prefix as {other} (line {other_line})"
            )
        r.match_rules[rule] = (where, line)
        rules.append(rule)
    return tuple(rules)


def _parse_token_limits(
    r: _Reader, path: str, fields: dict[str, tuple[yaml.Node, yaml.Node]]
) -> tuple[int | None, RateLimit | None]:
    """`max_token_ttl` (seconds) and `rate_limit` of a route."""
    max_ttl = None
    if "max_token_ttl" in fields:
        ttl_node = fields["max_token_ttl"][1]
        try:
            max_ttl = parse_duration(r.string(ttl_node, f"{path}.max_token_ttl"))
        except ValueError as e:
            raise r.error(ttl_node, f"{path}.max_token_ttl", str(e)) from None

    limit = None
    if "rate_limit" in fields:
        limit_node = fields["rate_limit"][1]
        try:
            limit = RateLimit.parse(r.string(limit_node, f"{path}.rate_limit"))
        except ValueError as e:
            raise r.error(limit_node, f"{path}.rate_limit", str(e)) from None

    return max_ttl, limit


def _parse_jwt(r: _Reader, path: str, key_node: yaml.Node, node: yaml.Node) -> JwtSettings:
    fields = r.mapping(node, path, _JWT_KEYS)
    for required, what in (
        ("issuer", "the OIDC issuer URL"),
        ("audiences", "the `aud` values accepted"),
    ):
        if required not in fields:
            raise r.error(key_node, f"{path}.{required}", f"missing ({what})")
    text: dict[str, str] = {}
    for key in (
        "issuer", "jwks_uri", "jwks_file", "scopes_claim", "subject_claim", "models_claim",
        "team_claim",
    ):  # fmt: skip
        if key in fields:
            text[key] = r.string(fields[key][1], f"{path}.{key}")
    if "jwks_uri" in text and "jwks_file" in text:
        raise r.error(fields["jwks_file"][0], f"{path}.jwks_file", "give jwks_uri or jwks_file")
    audiences = tuple(r.strings(fields["audiences"][1], f"{path}.audiences"))
    if not audiences:
        raise r.error(fields["audiences"][1], f"{path}.audiences", "must list at least one")
    algorithms: tuple[str, ...] = JWT_ALGORITHMS
    if "algorithms" in fields:
        algorithms = tuple(
            r.choices(
                fields["algorithms"][1],
                f"{path}.algorithms",
                JWT_ALGORITHMS,
                "{item!r} is not allowed (allowed: {allowed})",
            )
        )
    leeway = 30
    if "leeway_seconds" in fields:
        leeway = r.integer(fields["leeway_seconds"][1], f"{path}.leeway_seconds")
        if not 0 <= leeway <= 300:
            raise r.error(fields["leeway_seconds"][1], f"{path}.leeway_seconds", "must be 0..300")
    forward: tuple[tuple[str, str], ...] = ()
    if "forward_claims" in fields:
        forward = _forward_claims(r, f"{path}.forward_claims", fields["forward_claims"][1])
    for key in ("scopes_claim", "subject_claim", "models_claim", "team_claim"):
        if key in text and not CLAIM_PATH.fullmatch(text[key]):
            raise r.error(
                fields[key][1], f"{path}.{key}", "not a claim path (e.g. scope, realm_access.roles)"
            )
    # (visible ASCII: it names the caller in x-extauthz-subject, `jwt:<issuer>:<sub>`)
    if not re.fullmatch(r"https?://[!-~]{1,512}", text["issuer"], re.ASCII):
        raise r.error(
            fields["issuer"][1],
            f"{path}.issuer",
            "must be an http(s) URL of visible ASCII characters (no spaces), at most 512",
        )
    return JwtSettings(
        forward_claims=forward,
        issuer=text["issuer"],
        audiences=audiences,
        jwks_uri=text.get("jwks_uri"),
        jwks_file=text.get("jwks_file"),
        scopes_claim=text.get("scopes_claim", "scope"),
        subject_claim=text.get("subject_claim", "sub"),
        models_claim=text.get("models_claim"),
        team_claim=text.get("team_claim"),
        algorithms=algorithms,
        leeway_seconds=leeway,
    )


def _forward_claims(r: _Reader, path: str, node: yaml.Node) -> tuple[tuple[str, str], ...]:
    """`forward_claims: {claim path: x-extauthz-header}`, never one of our identity headers."""
    forward = []
    for claim, (claim_node, header_node) in r.mapping(node, path, ()).items():
        key = f"{path}.{claim}"
        header = r.string(header_node, key).lower()
        if not CLAIM_PATH.fullmatch(claim):
            raise r.error(claim_node, key, "not a claim path (e.g. email, realm_access.roles)")
        if not FORWARD_HEADER.fullmatch(header) or header in IDENTITY_HEADERS:
            raise r.error(
                header_node, key, "header must be x-extauthz-<name>, not subject/route/scopes"
            )
        forward.append((claim, header))
    return tuple(forward)


def _scopes(r: _Reader, node: yaml.Node, key: str) -> list[str]:
    if not isinstance(node, yaml.SequenceNode):
        raise r.error(node, key, "must be a list of strings")
    what = "scope (letters, digits, '.', '_', ':', '/', '-'; at most 128)"
    return [r.name(item, f"{key}[{i}]", SCOPE_NAME, what) for i, item in enumerate(node.value)]


def _parse_secret(
    r: _Reader, path: str, node: yaml.Node, routes: Mapping[str, RoutePolicy]
) -> SecretSpec:
    fields = r.mapping(node, path, _SECRET_KEYS)
    for key in ("id", "routes"):
        if key not in fields:
            raise r.error(node, f"{path}.{key}", "missing")
    secret_id = r.name(
        fields["id"][1], f"{path}.id", TOKEN_ID, "id (letters, digits, '.', '_', '-'; at most 64)"
    )
    routes_node = fields["routes"][1]
    route_names = r.strings(routes_node, f"{path}.routes")
    for i, name in enumerate(route_names):
        if name != "*" and name not in routes:
            raise r.error(routes_node.value[i], f"{path}.routes[{i}]", f"no route named {name!r}")
    scopes: list[str] = []
    if "scopes" in fields:
        scopes = _scopes(r, fields["scopes"][1], f"{path}.scopes")
    from_env = r.string(fields["from_env"][1], f"{path}.from_env") if "from_env" in fields else None
    from_file = (
        r.string(fields["from_file"][1], f"{path}.from_file") if "from_file" in fields else None
    )
    if (from_env is None) == (from_file is None):
        raise r.error(node, f"{path}.from_env", "give exactly one of from_env or from_file")
    return SecretSpec(
        id=secret_id,
        routes=frozenset(route_names),
        scopes=frozenset(scopes),
        from_env=from_env,
        from_file=from_file,
        line=fields["from_env" if from_env is not None else "from_file"][0].start_mark.line + 1,
    )
