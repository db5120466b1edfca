"""docs/gateways: every YAML block parses, policy blocks pass `sync`'s validation, and what
the guides tell a gateway (service, port, the key naming the route) is what extauthz and
deploy/kubernetes actually use."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.core.policy import parse_policy
from extauthz.runtime.envoy_check import GATEWAY_ANNOTATION, GATEWAY_NAMESPACE

REPO = Path(__file__).resolve().parents[2]
GUIDES = REPO / "docs/gateways"
SERVICE = next(
    d
    for d in yaml.safe_load_all((REPO / "deploy/kubernetes/extauthz.yaml").read_text())
    if d["kind"] == "Service"
)
NAME, NAMESPACE = SERVICE["metadata"]["name"], SERVICE["metadata"]["namespace"]
PORT = next(p["port"] for p in SERVICE["spec"]["ports"] if p["name"] == "grpc")


def blocks(name: str) -> list[Any]:
    text = (GUIDES / name).read_text()
    found = re.findall(r"```yaml\n(.*?)```", text, re.S)
    assert found, name
    docs: list[Any] = []
    for block in found:
        docs.extend(d for d in yaml.safe_load_all(block) if d is not None)
    return docs


def by_kind(name: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in blocks(name) if isinstance(d, dict) and d.get("kind") == kind]


@pytest.mark.parametrize("guide", sorted(p.name for p in GUIDES.glob("*.md")))
def test_every_block_parses_and_policies_validate(guide: str) -> None:
    for doc in blocks(guide):
        if isinstance(doc, dict) and doc.get("version") == 1 and "routes" in doc:
            parse_policy(yaml.safe_dump(doc), guide)


def test_the_index_links_every_guide() -> None:
    index = (GUIDES / "README.md").read_text()
    for guide in GUIDES.glob("*.md"):
        if guide.name != "README.md":
            assert f"]({guide.name})" in index, guide.name


def test_istio_points_at_the_service_and_needs_match_mode() -> None:
    (operator,) = by_kind("istio.md", "IstioOperator")
    (provider,) = operator["spec"]["meshConfig"]["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert grpc["service"] == f"{NAME}.{NAMESPACE}.svc.cluster.local" and grpc["port"] == PORT
    assert grpc["failOpen"] is False
    (policy,) = by_kind("istio.md", "AuthorizationPolicy")
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == provider["name"]
    assert policy["spec"]["rules"] == [{}]  # every request
    assert "--route-identity match" in (GUIDES / "istio.md").read_text()


def test_envoy_gateway_names_the_route_as_extauthz_reads_it() -> None:
    policies = by_kind("envoy-gateway.md", "SecurityPolicy")
    assert len(policies) == 2
    for policy in policies:
        ext = policy["spec"]["extAuth"]
        assert ext["failOpen"] is False
        (ref,) = ext["grpc"]["backendRefs"]
        assert (ref["name"], ref["namespace"], ref["port"]) == (NAME, NAMESPACE, PORT)
    context, metadata = policies
    assert context["spec"]["extAuth"]["contextExtensions"][0]["name"] == "route"
    assert metadata["spec"]["extAuth"]["includeRouteMetadata"] is True
    (route,) = by_kind("envoy-gateway.md", "HTTPRoute")
    annotation = f"gateway.envoyproxy.io/{GATEWAY_ANNOTATION}"
    assert route["metadata"]["annotations"][annotation] == "iris"
    assert GATEWAY_NAMESPACE == "envoy-gateway"


def test_contour_and_emissary_name_the_route_in_the_context() -> None:
    (service,) = by_kind("contour.md", "ExtensionService")
    assert service["spec"]["protocol"] == "h2c"
    assert service["spec"]["services"] == [{"name": NAME, "port": PORT}]
    (proxy,) = by_kind("contour.md", "HTTPProxy")
    assert proxy["spec"]["virtualhost"]["authorization"]["failOpen"] is False
    for route in proxy["spec"]["routes"]:
        assert set(route["authPolicy"]["context"]) == {"route"}
    (auth,) = by_kind("emissary.md", "AuthService")
    assert auth["spec"]["auth_service"] == f"{NAME}.{NAMESPACE}:{PORT}"
    assert auth["spec"]["proto"] == "grpc" and auth["spec"]["failure_mode_allow"] is False
    (mapping,) = by_kind("emissary.md", "Mapping")
    assert set(mapping["spec"]["auth_context_extensions"]) == {"route"}
