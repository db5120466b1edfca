"""Envoy bootstrap configuration: one generator for docker-compose, the local stack and tests.

Two listeners share one route table: the external one, and an internal one whose routes
add the context extension `network: internal` (private routes answer there). A third one
serves the management console and API (`extauthz admin`). Every route
names its policy through `context_extensions: {route: NAME}`; the catch-all route names
none, so extauthz answers 404 for it (fail closed).

`envoy/envoy.yaml` is this module's output for docker-compose, and envoy/sds/ the SDS files
its mutual TLS to extauthz reads; a test keeps them equal:
    python -m extauthz.dev.envoy_config --compose > envoy/envoy.yaml
    python -m extauthz.dev.envoy_config --compose --sds-dir envoy/sds
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extauthz.config import OtlpTarget, otlp_target
from extauthz.core.identity import request_headers
from extauthz.core.llm import MAX_BODY_BYTES
from extauthz.core.llm_usage import EDIT_FILTER_METADATA, USAGE_NAMESPACE
from extauthz.core.route_match import ROUTE_IDENTITIES

EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
STREAM_USAGE_FILTER = "extauthz.stream_usage"  # a second ext_proc filter: see stream_usage_filter
LLM_FILTER = "extauthz.llm"  # the Lua filter on LLM routes: see llm_filter
LUA_SCRIPT = Path(__file__).with_name("llm_usage.lua")
T = "type.googleapis.com/envoy."  # @type prefix
EXT_AUTHZ_TIMEOUT = "0.25s"  # Redis commands time out at 0.1 s, well inside this
EXTAUTHZ_RENEW_AFTER = 1000  # requests per connection to extauthz before Envoy opens a new one


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class EnvoyPorts:
    """Where Envoy listens and where its upstreams are."""

    external: Endpoint
    internal: Endpoint
    admin: Endpoint
    extauthz: Endpoint
    model_http: Endpoint
    model_grpc: Endpoint
    console: Endpoint  # the management console and API (`extauthz admin`), own listener
    admin_api: Endpoint  # where `extauthz admin` listens


# routes whose policy reads the request body (`api: openai`): Envoy sends it on these only
BODY_ROUTES = frozenset({"llm"})

# (match, route policy name or None, cluster). Order matters: first match wins.
ROUTES: tuple[tuple[dict[str, Any], str | None, str], ...] = (
    ({"prefix": "/extauthz.demo.Predictor/", "grpc": {}}, "densenet161", "model_grpc"),
    ({"path": "/ping"}, "healthz", "model_http"),
    ({"prefix": "/predictions/densenet161"}, "densenet161", "model_http"),
    ({"prefix": "/models"}, "densenet161-management", "model_http"),
    ({"prefix": "/deployments/a/"}, "deployment-a", "model_http"),
    ({"prefix": "/deployments/b/"}, "deployment-b", "model_http"),
    ({"prefix": "/embedder/"}, "embedder", "model_http"),
    # OpenAI-compatible LLM API: the model is named in the body, which extauthz reads here
    ({"prefix": "/v1/"}, "llm", "model_http"),
    # named, but not in the policy: 404, as for a route retired from the policy file
    ({"prefix": "/retired/"}, "retired-model", "model_http"),
    ({"prefix": "/"}, None, "model_http"),
)

COMPOSE = EnvoyPorts(
    external=Endpoint("0.0.0.0", 8080),  # noqa: S104 (the container's public listener)
    # reachable on the compose network only; docker-compose.yml publishes it on 127.0.0.1
    internal=Endpoint("0.0.0.0", 8081),  # noqa: S104
    # the admin interface can stop Envoy: only the container itself reaches it
    admin=Endpoint("127.0.0.1", 9901),
    extauthz=Endpoint("extauthz", 9001),
    model_http=Endpoint("model", 8000),
    model_grpc=Endpoint("model", 8001),
    # published on 127.0.0.1 only by docker-compose.yml
    console=Endpoint("0.0.0.0", 8082),  # noqa: S104
    admin_api=Endpoint("admin", 9080),
)


def _address(ep: Endpoint) -> dict[str, Any]:
    return {"socket_address": {"address": ep.host, "port_value": ep.port}}


@dataclass(frozen=True)
class ClientTls:
    """Envoy's side of mutual TLS to extauthz: the CA that signed extauthz's certificate,
    and Envoy's own client certificate and key (file paths as Envoy sees them). Envoy reads
    them through SDS files in `sds_dir` (`sds_files` writes them), which makes it reload
    them when they change: a renewed certificate needs no restart."""

    ca: str
    cert: str
    key: str
    server_name: str  # SNI and the name extauthz's certificate must carry
    sds_dir: str  # where the SDS files naming the three are (see sds_files)


# docker-compose: the `certs` service (`extauthz certs`) writes these into a volume that
# Envoy mounts read-only; extauthz requires Envoy's client certificate (mutual TLS). The SDS
# files are envoy/sds/ (mounted read-only too).
COMPOSE_TLS = ClientTls(
    ca="/etc/envoy/certs/ca.crt",
    cert="/etc/envoy/certs/envoy.crt",
    key="/etc/envoy/certs/envoy.key",
    server_name="extauthz",
    sds_dir="/etc/envoy/sds",
)

# Envoy's client certificate and the CA it checks extauthz's with: one SDS secret each, in
# a file of its own (a file holds one secret), named here
CLIENT_SECRET, CLIENT_SDS_FILE = "extauthz_client_certificate", "extauthz-client.yaml"
CA_SECRET, CA_SDS_FILE = "extauthz_ca", "extauthz-ca.yaml"


def _cluster(
    name: str,
    ep: Endpoint,
    http2: bool,
    health: str | None = None,
    streams: int | None = None,
    tls: ClientTls | None = None,
    renew_after: int | None = None,
) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(ep)}}]}],
        },
    }
    if http2:
        options: dict[str, Any] = {
            "@type": T + "extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {
                "http2_protocol_options": {"max_concurrent_streams": streams} if streams else {}
            },
        }
        if renew_after is not None:
            options["common_http_protocol_options"] = {"max_requests_per_connection": renew_after}
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options
        }
    if tls is not None:
        cluster["transport_socket"] = _tls_socket(tls)
    if health is not None:
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": "5s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": health},
            }
        ]
    return cluster


def _sds_source(tls: ClientTls, file: str) -> dict[str, Any]:
    """An SDS secret read from a file in `tls.sds_dir` (reloaded when that file is replaced)."""
    return {
        "path_config_source": {
            "path": f"{tls.sds_dir}/{file}",
            "watched_directory": {"path": tls.sds_dir},
        },
        "resource_api_version": "V3",
    }


def _tls_socket(tls: ClientTls) -> dict[str, Any]:
    """Mutual TLS to extauthz: Envoy's certificate and the CA it trusts, both through SDS
    files (reloaded when renewed), and the name extauthz's certificate must carry."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls.server_name,
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [
                    {"name": CLIENT_SECRET, "sds_config": _sds_source(tls, CLIENT_SDS_FILE)}
                ],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": tls.server_name}}
                        ],
                    },
                    "validation_context_sds_secret_config": {
                        "name": CA_SECRET,
                        "sds_config": _sds_source(tls, CA_SDS_FILE),
                    },
                },
            },
        },
    }


def sds_files(tls: ClientTls) -> dict[str, str]:
    """The SDS files `_tls_socket` names (file name in `tls.sds_dir` → YAML): Envoy's
    certificate and key, and the CA bundle, each reloaded when anything is moved into the
    directory that holds it (an atomic rename, or a Kubernetes Secret's `..data` swap)."""
    secret = T + "extensions.transport_sockets.tls.v3.Secret"

    def watched(path: str) -> dict[str, str]:
        return {"path": str(Path(path).parent)}

    certificate = {
        "certificate_chain": {"filename": tls.cert},
        "private_key": {"filename": tls.key},
        "watched_directory": watched(tls.cert),
    }
    validation = {"trusted_ca": {"filename": tls.ca}, "watched_directory": watched(tls.ca)}
    header = (
        "# Envoy's mutual TLS to extauthz, read through SDS so that renewed files are reloaded.\n"
        "# Generated by extauthz/dev/envoy_config.py (for envoy/sds/: --compose --sds-dir).\n"
    )
    files = {
        CLIENT_SDS_FILE: {"@type": secret, "name": CLIENT_SECRET, "tls_certificate": certificate},
        CA_SDS_FILE: {"@type": secret, "name": CA_SECRET, "validation_context": validation},
    }
    return {
        name: header + yaml.safe_dump({"resources": [resource]}, sort_keys=False)
        for name, resource in files.items()
    }


# LiteLLM's per-request controls: never from a client
MODEL_SERVER_CONTROL_HEADERS = (
    "x-litellm-timeout",
    "x-litellm-stream-timeout",
    "x-litellm-num-retries",
    "x-litellm-tags",
)


def _routes(network: str | None, route_identity: str = "context") -> list[dict[str, Any]]:
    """The route table; each route names its policy the way `route_identity` reads it."""
    routes = []
    for match, name, cluster in ROUTES:
        extensions = {"route": name} if name is not None and route_identity == "context" else {}
        if network is not None:
            extensions["network"] = network
        route: dict[str, Any] = {
            "match": copy.deepcopy(match),  # no YAML anchors between the two listeners
            "route": {"cluster": cluster, "timeout": "30s"},
        }
        if name is not None and route_identity in ("metadata", "envoy-gateway"):
            route["metadata"] = {"filter_metadata": route_metadata(name, route_identity)}
        route["typed_per_filter_config"] = per_route_context(
            extensions, with_body=name in BODY_ROUTES
        )
        if name in BODY_ROUTES:  # (headers a model server takes as orders: retries multiply
            # what one reservation covers, a longer timeout lets it write past its bound)
            route["request_headers_to_remove"] = list(MODEL_SERVER_CONTROL_HEADERS)
        routes.append(route)
    return routes


def per_route_context(extensions: dict[str, str], with_body: bool = False) -> dict[str, Any]:
    """A route's `typed_per_filter_config`: the context extensions its ext_authz check sends
    (`route` names its policy), and whether Envoy buffers the request body and sends it
    (LLM routes only: every other route turns it off).

    The filter turns body buffering on (`with_request_body`, raw bytes) and every route but
    the LLM ones turns it off here: Envoy takes `pack_as_bytes` from the filter only (a
    per-route `with_request_body` sends the body as a string with invalid UTF-8 replaced:
    https://github.com/envoyproxy/envoy/issues/35623), and extauthz must see the bytes the
    model server will read."""
    settings: dict[str, Any] = {}
    if extensions:
        settings["context_extensions"] = extensions
    if not with_body:
        settings["disable_request_body_buffering"] = True
    config: dict[str, Any] = {
        EXT_AUTHZ_FILTER: {
            "@type": T + "extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "check_settings": settings,
        }
    }
    if not with_body:  # bodies are edited and responses read on LLM routes only
        config[LLM_FILTER] = {
            "@type": T + "extensions.filters.http.lua.v3.LuaPerRoute",
            "disabled": True,
        }
    return config


def _ext_proc(
    name: str, cluster: str, request_body: str, grpc: dict[str, Any], **settings: Any
) -> dict[str, Any]:
    """An ext_proc filter calling extauthz on `cluster`: headers both ways, the response body
    streamed, the request body as `request_body`, ext_authz's metadata forwarded (who
    called); `grpc`: more of its grpc_service."""
    return {
        "name": name,
        "typed_config": {
            "@type": T + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "5s", **grpc},
            **settings,
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": request_body,
                "response_body_mode": "STREAMED",
                "request_trailer_mode": "SKIP",
                "response_trailer_mode": "SKIP",
            },
            "metadata_options": {"forwarding_namespaces": {"untyped": [EXT_AUTHZ_FILTER]}},
        },
    }


def stream_usage_filter(cluster: str = "extauthz") -> dict[str, Any]:
    """The body-editing filter, before the counting one, on LLM routes only, named to
    extauthz by its gRPC initial metadata (`x-extauthz-filter: edit`): as ext_authz's
    metadata asks, a stream that does not ask for its usage chunk (`stream_usage: require`)
    gets `stream_options.include_usage` in its body and that chunk is taken out of the reply
    after the counting filter read it; a request that names no output cap where a limit
    applies gets one. Every other request is let go at its headers (one round trip;
    `allow_mode_override`). It fails closed: a request it cannot edit never reaches the
    model unbounded (extauthz answers 503, and so does Envoy when extauthz cannot)."""
    name, value = EDIT_FILTER_METADATA  # (how extauthz tells it from the counting filter)
    return _ext_proc(
        STREAM_USAGE_FILTER,
        cluster,
        "BUFFERED",
        {"initial_metadata": [{"key": name, "value": value}]},
        failure_mode_allow=False,
        status_on_error={"code": 503},
        allow_mode_override=True,
        message_timeout="1s",
    )


def ext_proc_filter(cluster: str = "extauthz") -> dict[str, Any]:
    """The ext_proc filter: on LLM routes (every other route disables it) the response
    streams past extauthz, which counts the tokens it used. Observability mode: nothing
    waits for extauthz, each chunk goes on at once; a failure never fails the response.
    The stream closes `deferred_close_timeout` after the response (the count is taken at
    its last chunk, or `data: [DONE]`; this bounds it when neither is seen)."""
    return _ext_proc(
        EXT_PROC_FILTER,
        cluster,
        "NONE",
        {},
        failure_mode_allow=True,
        observability_mode=True,
        deferred_close_timeout="1s",
    )


def llm_filter() -> dict[str, Any]:
    """The Lua filter on LLM routes (every other route disables it; extauthz/dev/llm_usage.lua):
    the request body edits ext_authz's metadata asks for (a request it cannot edit is 503
    before the model), and the response's usage read as it streams past into dynamic
    metadata `extauthz.usage`, which the access log (`usage_log`) sends to extauthz."""
    return {
        "name": LLM_FILTER,
        "typed_config": {
            "@type": T + "extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": LUA_SCRIPT.read_text()},
        },
    }


USAGE_LOG = "envoy.access_loggers.http_grpc"


def http_managers(config: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every HttpConnectionManager of a bootstrap's listeners (its typed_config, to edit)."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                yield network_filter["typed_config"]


def with_ext_proc(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a bootstrap) counting with Envoy's ext_proc filter instead of the Lua filter
    and the usage log, as gateways that run ext_proc do: on LLM routes the body-editing filter
    (`stream_usage_filter`) and the counting one (`ext_proc_filter`), disabled elsewhere."""
    out = copy.deepcopy(config)
    disabled = {
        "@type": T + "extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
        "disabled": True,
    }
    for manager in http_managers(out):
        names = [h["name"] for h in manager.get("http_filters", [])]
        if LLM_FILTER not in names:
            continue
        at = names.index(LLM_FILTER)
        manager["http_filters"][at : at + 1] = [stream_usage_filter(), ext_proc_filter()]
        manager["access_log"] = [x for x in manager["access_log"] if x["name"] != USAGE_LOG]
        for host in manager["route_config"]["virtual_hosts"]:
            for route in host["routes"]:
                per_route = route.get("typed_per_filter_config", {})
                if per_route.pop(LLM_FILTER, None) is not None:
                    for name in (STREAM_USAGE_FILTER, EXT_PROC_FILTER):
                        per_route[name] = copy.deepcopy(disabled)
    return out


def usage_log(cluster: str = "extauthz") -> dict[str, Any]:
    """Envoy's gRPC access log to extauthz (AccessLogService), for LLM responses only (those
    the Lua filter read): one entry per response, with ext_authz's and the Lua filter's
    metadata, sent as the response ends (`buffer_size_bytes: 0`: a reservation is settled
    at once, and no burst at start overflows a buffer while the stream opens)."""
    return {
        "name": USAGE_LOG,
        "filter": {
            "metadata_filter": {
                "matcher": {
                    "filter": USAGE_NAMESPACE,
                    "path": [{"key": "v"}],
                    "value": {"string_match": {"exact": "1"}},
                },
                "match_if_key_not_found": False,
            }
        },
        "typed_config": {
            "@type": T + "extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": "extauthz-llm",
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                "buffer_size_bytes": 0,
                "buffer_flush_interval": "0.1s",
            },
        },
    }


OTEL_TRACER = "envoy.tracers.opentelemetry"
OTEL_CLUSTER = "otel_collector"
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"  # (Debian's; the collector's over TLS)


def tracing(target: OtlpTarget, cluster: str = OTEL_CLUSTER) -> dict[str, Any]:
    """An HttpConnectionManager's `tracing`: Envoy's OpenTelemetry tracer, spans sent over
    OTLP (gRPC or HTTP, as `target` names) to the collector at `cluster`. Every request is
    sampled (random_sampling 100%); `x-client-trace-id` forces none (client_sampling 0).
    ext_authz's call gets a child span whose traceparent extauthz continues
    (docs/operations.md#traces)."""
    provider: dict[str, Any] = {
        "@type": T + "config.trace.v3.OpenTelemetryConfig",
        "service_name": "envoy",
    }
    if target.protocol == "grpc":
        provider["grpc_service"] = {"envoy_grpc": {"cluster_name": cluster}, "timeout": "1s"}
    else:
        uri = {"uri": target.url, "cluster": cluster, "timeout": "1s"}
        provider["http_service"] = {"http_uri": uri}
    return {
        "provider": {"name": OTEL_TRACER, "typed_config": provider},
        "random_sampling": {"value": 100},
        "client_sampling": {"value": 0},
    }


# What a client sends that would decide Envoy's sampling or join a trace of its choosing:
# its trace context (a sampled flag of 00 turns tracing off, its trace id is continued),
# `x-client-trace-id` (forces a trace) and `x-request-id` (Envoy reads a trace decision
# from its 15th digit and samples on its first 8). Removed on the external listener before
# Envoy decides (an early header mutation), so Envoy starts every trace there itself.
CLIENT_TRACE_HEADERS = ("traceparent", "tracestate", "x-client-trace-id", "x-request-id")


def fresh_traces() -> list[dict[str, Any]]:
    """An HttpConnectionManager's `early_header_mutation_extensions` removing
    CLIENT_TRACE_HEADERS from what a client sends."""
    return [
        {
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": {
                "@type": T + "extensions.http.early_header_mutation.header_mutation.v3"
                ".HeaderMutation",
                "mutations": [{"remove": header} for header in CLIENT_TRACE_HEADERS],
            },
        }
    ]


def collector_cluster(target: OtlpTarget, cluster: str = OTEL_CLUSTER) -> dict[str, Any]:
    """The cluster of the OTLP collector (HTTP/2 for gRPC; TLS checked against the system's
    CAs for grpcs:// and https://)."""
    config = _cluster(cluster, Endpoint(target.host, target.port), http2=target.protocol == "grpc")
    if target.tls:
        config["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": target.host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": SYSTEM_CAS},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": target.host}}
                        ],
                    }
                },
            },
        }
    return config


def with_tracing(config: dict[str, Any], target: OtlpTarget) -> dict[str, Any]:
    """`config` (a bootstrap) tracing every request through ext_authz to `target` (the
    collector `extauthz serve --otlp-endpoint` sends its spans to): `tracing` on each
    listener that runs ext_authz, and the collector's cluster. On the external listener a
    client's trace headers are removed first (`fresh_traces`): a client can neither make
    Envoy (and so extauthz) trace its requests, nor stop it, nor choose their trace id; the
    internal listener's callers (in the cluster) continue their traces."""
    out = copy.deepcopy(config)
    for manager in http_managers(out):
        if any(h["name"] == EXT_AUTHZ_FILTER for h in manager.get("http_filters", [])):
            manager["tracing"] = tracing(target)
            if manager.get("stat_prefix") == "external":
                manager["early_header_mutation_extensions"] = fresh_traces()
    out["static_resources"]["clusters"].append(collector_cluster(target))
    return out


def route_metadata(name: str, route_identity: str) -> dict[str, Any]:
    """A route's metadata naming its policy: `metadata` mode as we document it, and
    `envoy-gateway` mode as Envoy Gateway's includeRouteMetadata generates it from the
    HTTPRoute annotation `gateway.envoyproxy.io/extauthz-route: NAME`."""
    if route_identity == "metadata":
        return {"extauthz": {"route": name}}
    resource = {
        "kind": "HTTPRoute",
        "name": name,
        "namespace": "models",
        "annotations": {"extauthz-route": name},
    }
    return {"envoy-gateway": {"resources": [resource]}}


HCM = "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


# Every HttpConnectionManager we ship or generate carries these.
EDGE_PROTECTIONS: dict[str, Any] = {
    # One path for routing, for extauthz and for the model: `/a/%2e%2e/b` and `/a/../b`
    # become `/b` before the route is chosen; `//` is merged; an escaped slash or
    # backslash (%2F, %5C), which upstreams decode differently, is refused with 400.
    "normalize_path": True,
    "merge_slashes": True,
    "path_with_escaped_slashes_action": "REJECT_REQUEST",
    # `x_extauthz_subject` would reach the model, and WSGI/CGI servers read it as
    # x-extauthz-subject: header names with underscores are dropped at the edge.
    "common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"},
}


def ext_authz_filter(
    cluster: str = "extauthz", timeout: str = EXT_AUTHZ_TIMEOUT, route_identity: str = "context"
) -> dict[str, Any]:
    """The ext_authz HTTP filter calling `cluster` over gRPC (fail closed, 503 on error);
    with route metadata sent along in the `metadata` and `envoy-gateway` modes."""
    namespaces = {"metadata": ["extauthz"], "envoy-gateway": ["envoy-gateway"]}
    extra = (
        {"route_metadata_context_namespaces": namespaces[route_identity]}
        if route_identity in namespaces
        else {}
    )
    return {
        "name": EXT_AUTHZ_FILTER,
        "typed_config": {
            "@type": T + "extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": cluster},
                "timeout": timeout,
            },
            "failure_mode_allow": False,
            "status_on_error": {"code": 503},
            # the request body, whole and as bytes, at most MAX_BODY_BYTES (a larger one:
            # 413 from Envoy); every route but the LLM ones turns it off (per_route_context)
            "with_request_body": {
                "max_request_bytes": MAX_BODY_BYTES,
                "allow_partial_message": False,
                "pack_as_bytes": True,
            },
            # send only the headers the decision reads (the body goes on LLM routes only:
            # every other route sets disable_request_body_buffering, see per_route_context)
            "allowed_headers": {
                "patterns": [
                    *({"exact": header} for header in request_headers()),
                    {"exact": "x-request-id"},  # quoted in denial bodies and log lines
                    {"exact": "content-type"},  # LLM routes read JSON bodies only
                    {"prefix": "x-extauthz-"},
                ]
            },
            **extra,
        },
    }


def access_log() -> list[dict[str, Any]]:
    """One JSON line per request on stdout, with who extauthz said was calling (the dynamic
    metadata of its allow: subject, route, scopes, token name). No path: a query string may
    hold a secret."""
    allowed = f"%DYNAMIC_METADATA({EXT_AUTHZ_FILTER}:{{}})%"
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": T + "extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {
                    "json_format": {
                        "time": "%START_TIME%",
                        "method": "%REQ(:METHOD)%",
                        "status": "%RESPONSE_CODE%",
                        "duration_ms": "%DURATION%",
                        "request_id": "%REQ(X-REQUEST-ID)%",
                        **{key: allowed.format(key) for key in ACCESS_LOG_METADATA},
                    }
                },
            },
        }
    ]


ACCESS_LOG_METADATA = ("subject", "route", "scopes", "token_name", "model")


def _listener(
    name: str, ep: Endpoint, network: str | None, route_identity: str = "context"
) -> dict[str, Any]:
    protections = copy.deepcopy(EDGE_PROTECTIONS)  # no YAML anchors between listeners
    if route_identity == "match":
        # as a mesh gateway may: paths reach extauthz as sent, and it refuses what is
        # not canonical rather than resolve it differently from the upstream
        for key in ("normalize_path", "merge_slashes", "path_with_escaped_slashes_action"):
            del protections[key]
    manager = {
        "@type": T + HCM,
        "stat_prefix": name,
        "codec_type": "AUTO",  # HTTP/1.1 and h2c (gRPC clients)
        **protections,
        "route_config": {
            "name": name,
            "virtual_hosts": [
                {"name": "models", "domains": ["*"], "routes": _routes(network, route_identity)}
            ],
        },
        "http_filters": [
            ext_authz_filter(route_identity=route_identity),
            llm_filter(),
            _router(),
        ],
        "access_log": [*access_log(), usage_log()],
    }
    return _with_manager(name, ep, manager)


def _console_listener(ep: Endpoint) -> dict[str, Any]:
    """The management console and API on a listener of their own, without ext_authz: the
    API checks the Bearer token of every /v1/ call itself (ext_authz would remove that
    header, and a browser cannot send one for the page itself). Envoy appends the client's
    address to X-Forwarded-For, which `extauthz admin --admin-trusted-proxies` reads for
    its per-client limit on failed authentications. Slow clients cannot hold the API: the
    headers must arrive within 10 s and the whole request within 30 s, and each request is
    buffered whole (at most 64 KiB, as the API takes) before it goes upstream."""
    manager = {
        "@type": T + HCM,
        "stat_prefix": "console",
        "codec_type": "AUTO",
        **copy.deepcopy(EDGE_PROTECTIONS),
        "request_headers_timeout": "10s",
        "request_timeout": "30s",
        "use_remote_address": True,  # X-Forwarded-For ends with the real client address
        "route_config": {
            "name": "console",
            "virtual_hosts": [
                {
                    "name": "console",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "route": {"cluster": "admin_api", "timeout": "10s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": T + "extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": 65536,
                },
            },
            _router(),
        ],
        "access_log": access_log(),
    }
    return _with_manager("console", ep, manager)


def _router() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": T + "extensions.filters.http.router.v3.Router"},
    }


def _with_manager(name: str, ep: Endpoint, manager: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "address": _address(ep),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def bootstrap(
    ports: EnvoyPorts,
    authz_tls: ClientTls | None = None,
    route_identity: str = "context",
    console_source: str | None = None,
) -> dict[str, Any]:
    """The Envoy bootstrap configuration as a dict; `authz_tls`: mutual TLS to extauthz;
    routes name their policy as `extauthz serve --route-identity` will read it;
    `console_source`: the address Envoy connects to the management API from (the one
    address `extauthz admin --admin-trusted-proxies` names)."""
    admin_api = _cluster("admin_api", ports.admin_api, http2=False)
    if console_source is not None:
        admin_api["upstream_bind_config"] = {
            "source_address": {"address": console_source, "port_value": 0}
        }
    # (SDS, which reads Envoy's certificate files, needs the node named)
    node = {"node": {"id": "envoy", "cluster": "extauthz-gateway"}} if authz_tls else {}
    return {
        **node,
        "admin": {"address": _address(ports.admin)},
        "static_resources": {
            "listeners": [
                _listener("external", ports.external, None, route_identity),
                _listener("internal", ports.internal, "internal", route_identity),
                _console_listener(ports.console),
            ],
            "clusters": [
                _cluster(
                    "extauthz",
                    ports.extauthz,
                    http2=True,
                    health="envoy.service.auth.v3.Authorization",
                    # few streams per connection: under load Envoy opens more connections,
                    # which SO_REUSEPORT spreads over the extauthz worker processes; and
                    # renewed now and then, since SO_REUSEPORT (or a Kubernetes Service)
                    # places a connection for good: a few long-lived ones can load one
                    # process with most of the work
                    streams=8,
                    tls=authz_tls,
                    renew_after=EXTAUTHZ_RENEW_AFTER,
                ),
                _cluster("model_http", ports.model_http, http2=False),
                _cluster("model_grpc", ports.model_grpc, http2=True),
                admin_api,
            ],
        },
    }


TLS_COMMENT_KEY = "tls_certificate_sds_secret_configs:"
OPTIONAL_COMMENTS = frozenset({TLS_COMMENT_KEY})  # (a config without mutual TLS has no place)

# Comments put above the first place where the lines start with a key's lines (a line
# ending in $ must be whole): the generated file reads as a template to copy.
COMMENTS: tuple[tuple[str, str], ...] = (
    ("- name: external", "What clients reach. Every route below names its extauthz policy."),
    (
        "normalize_path:",
        "One path for routing, extauthz and the model: /a/%2e%2e/b and\n"
        "/a/../b become /b before the route is chosen; // is merged; %2F and %5C: 400.",
    ),
    (
        "headers_with_underscores_action:",
        "x_extauthz_subject would reach WSGI/CGI models as\n"
        "x-extauthz-subject: header names with underscores are dropped.",
    ),
    (
        "- match:\nprefix: /extauthz.demo.Predictor/",
        "A gRPC route: it names its policy like\n"
        "an HTTP route; gRPC clients send `authorization` metadata, which Envoy passes on\n"
        "like a header.",
    ),
    ("- match:\nprefix: /predictions/densenet161", "An HTTP route (TorchServe inference)."),
    (
        "context_extensions:",
        "The route's policy in examples/policy.yaml (a route that\n"
        "names none gets 404: fail closed). On the internal listener also\n"
        "`network: internal`: private routes answer there.",
    ),
    ("- match:\nprefix: /$", "The catch-all names no policy: 404 from extauthz."),
    ("- name: envoy.filters.http.ext_authz", "Calls extauthz's Check for every request."),
    (
        f"timeout: {EXT_AUTHZ_TIMEOUT}",
        "Per Check call; extauthz's Redis commands time out at\n0.1 s, well inside this.",
    ),
    ("failure_mode_allow:", "Never let a request through when extauthz cannot answer..."),
    ("status_on_error:", "...answer 503 instead."),
    (
        "with_request_body:",
        "The request body, whole and as raw bytes (over 1 MiB: 413), for the\n"
        "LLM routes, which read the model from it; every other route turns this\n"
        "off (disable_request_body_buffering), so their bodies are never sent.",
    ),
    ("allowed_headers:", "Only the headers the decision reads go to extauthz."),
    (
        "- name: console",
        "The management console and API (`extauthz admin`): no ext_authz\n"
        "here, the API checks the Bearer token of every /v1/ call itself.",
    ),
    (
        "use_remote_address:",
        "X-Forwarded-For ends with the real client's address, which\n"
        "`extauthz admin --admin-trusted-proxies` reads for its failed-login limit.",
    ),
    (
        TLS_COMMENT_KEY,
        "Envoy's client certificate and the CA it trusts for extauthz's, read\n"
        "through SDS files (envoy/sds/): renewed files are reloaded, no restart.",
    ),
    (
        "- name: extauthz",
        "extauthz over HTTP/2 (gRPC), health-checked with the gRPC health\n"
        "service; few streams per connection, each renewed after 1,000 requests,\n"
        "so that load spreads over its workers (and pods).",
    ),
)


def _starts(line: str, key: str) -> bool:
    body = line.lstrip()
    return body == key[:-1] if key.endswith("$") else body.startswith(key)


def _annotated(text: str) -> str:
    """`text` with each COMMENTS entry above the first place its key's lines start."""
    lines = text.splitlines()
    for key, comment in COMMENTS:
        keys = key.splitlines()
        for i in range(len(lines) - len(keys) + 1):
            if all(_starts(lines[i + j], k) for j, k in enumerate(keys)):
                indent = " " * (len(lines[i]) - len(lines[i].lstrip()))
                lines[i:i] = [f"{indent}# {part}" for part in comment.splitlines()]
                break
        else:
            if key not in OPTIONAL_COMMENTS:
                raise ValueError(f"no place for the comment on {key!r}")
    return "\n".join(lines) + "\n"


class _Dumper(yaml.SafeDumper):
    """YAML with multi-line strings (the Lua script) as literal blocks, readable as written."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render(
    ports: EnvoyPorts,
    authz_tls: ClientTls | None = None,
    route_identity: str = "context",
    console_source: str | None = None,
    counting: str = "lua",
    otlp: OtlpTarget | None = None,
) -> str:
    """The Envoy config as YAML (`counting`: "lua", or "ext-proc" for `with_ext_proc`;
    `otlp`: traces to that collector, `with_tracing`)."""
    header = (
        "# Envoy in front of model servers, with extauthz deciding every request (ext_authz).\n"
        "# Generated by `python -m extauthz.dev.envoy_config --compose`: edit\n"
        "# extauthz/dev/envoy_config.py and regenerate (a test checks that this file matches).\n"
    )
    config = bootstrap(ports, authz_tls, route_identity, console_source)
    if counting == "ext-proc":
        config = with_ext_proc(config)
    if otlp is not None:
        config = with_tracing(config, otlp)
    text = yaml.dump(config, Dumper=_Dumper, sort_keys=False, width=120)
    return header + (_annotated(text) if route_identity == "context" else text)


def loopback_ports(base: int) -> EnvoyPorts:
    """The local stack's layout: consecutive ports from `base` on 127.0.0.1."""

    def at(offset: int) -> Endpoint:
        return Endpoint("127.0.0.1", base + offset)

    return EnvoyPorts(
        external=at(0),
        internal=at(1),
        admin=at(2),
        extauthz=at(3),
        model_http=at(5),
        model_grpc=at(6),
        console=at(8),
        admin_api=at(9),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--compose", action="store_true", help="the docker-compose layout")
    parser.add_argument("--base-port", type=int, default=10000, help="loopback layout base")
    parser.add_argument(
        "--route-identity",
        choices=ROUTE_IDENTITIES,
        default="context",
        help="how routes name their policy (as `extauthz serve --route-identity`)",
    )
    parser.add_argument(
        "--counting",
        choices=("lua", "ext-proc"),
        default="lua",
        help="LLM responses read by a Lua filter (default), or by extauthz over ext_proc",
    )
    parser.add_argument(
        "--otlp-endpoint",
        type=otlp_target,
        help="traces to this OTLP collector (as `extauthz serve --otlp-endpoint`)",
    )
    parser.add_argument(
        "--sds-dir",
        type=Path,
        help="with --compose: write the SDS files its mutual TLS names into this directory",
    )
    args = parser.parse_args()
    if args.sds_dir is not None and not args.compose:
        parser.error("--sds-dir goes with --compose")
    if args.compose and args.sds_dir is not None:
        for name, text in sds_files(COMPOSE_TLS).items():
            (args.sds_dir / name).write_text(text)
    elif args.compose:
        text = render(
            COMPOSE,
            COMPOSE_TLS,
            args.route_identity,
            counting=args.counting,
            otlp=args.otlp_endpoint,
        )
        print(text, end="")
    else:
        ports = loopback_ports(args.base_port)
        text = render(
            ports,
            route_identity=args.route_identity,
            counting=args.counting,
            otlp=args.otlp_endpoint,
        )
        print(text, end="")
