"""docs/gateways: every YAML block parses, policy blocks pass `sync`'s validation, and what
the guides tell a gateway (service, port, the key naming the route, the Secrets and names of
mutual TLS) is what extauthz and deploy/kubernetes actually use."""

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
PORT_NAME = "grpc"
PORT = next(p["port"] for p in SERVICE["spec"]["ports"] if p["name"] == PORT_NAME)
# deploy/kubernetes/tls.yaml: what cert-manager issues, in NAMESPACE
CERTIFICATES = {
    d["metadata"]["name"]: d
    for d in yaml.safe_load_all((REPO / "deploy/kubernetes/tls.yaml").read_text())
    if d["kind"] == "Certificate"
}
CLIENT = CERTIFICATES["extauthz-gateway-client"]
CLIENT_SECRET = CLIENT["spec"]["secretName"]
SERVER_NAMES = set(CERTIFICATES["extauthz-server"]["spec"]["dnsNames"])
# Secrets holding the CA that signs extauthz's certificate as ca.crt, and no CA key
LEAF_SECRETS = {c["spec"]["secretName"] for c in CERTIFICATES.values() if not c["spec"].get("isCA")}
# what each kind a guide shows must say it is
API_VERSIONS = {
    "SecurityPolicy": "gateway.envoyproxy.io/v1alpha1",
    "Gateway": "gateway.networking.k8s.io/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
    "BackendTLSPolicy": "gateway.networking.k8s.io/v1",
    "ReferenceGrant": "gateway.networking.k8s.io/v1beta1",
    "IstioOperator": "install.istio.io/v1alpha1",
    "AuthorizationPolicy": "security.istio.io/v1",
    "PeerAuthentication": "security.istio.io/v1",
    "DestinationRule": "networking.istio.io/v1",
    "Certificate": "cert-manager.io/v1",
    "ExtensionService": "projectcontour.io/v1alpha1",
    "HTTPProxy": "projectcontour.io/v1",
    "AuthService": "getambassador.io/v3alpha1",
    "Mapping": "getambassador.io/v3alpha1",
    "TLSContext": "getambassador.io/v3alpha1",
    "ConfigMap": "v1",
    "Secret": "v1",
}


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


@pytest.mark.parametrize("guide", sorted(p.name for p in GUIDES.glob("*.md")))
def test_every_manifest_is_a_known_kind_of_its_api(guide: str) -> None:
    for doc in blocks(guide):
        if isinstance(doc, dict) and "kind" in doc:
            assert doc.get("apiVersion") == API_VERSIONS[doc["kind"]], (guide, doc["kind"])
            if doc["kind"] != "IstioOperator":  # (installed by istioctl, not applied)
                assert doc["metadata"]["name"] and doc["metadata"]["namespace"], doc


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
    (policy,) = [p for p in by_kind("istio.md", "AuthorizationPolicy") if p["spec"].get("provider")]
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


# --- mutual TLS: each gateway presents the client certificate cert-manager renews ------------


def test_envoy_gateway_presents_the_renewed_client_certificate() -> None:
    (backend_tls,) = by_kind("envoy-gateway.md", "BackendTLSPolicy")
    assert backend_tls["metadata"]["namespace"] == NAMESPACE  # beside the Service
    (target,) = backend_tls["spec"]["targetRefs"]
    assert (target["kind"], target["name"], target["sectionName"]) == ("Service", NAME, PORT_NAME)
    validation = backend_tls["spec"]["validation"]
    (ca,) = validation["caCertificateRefs"]
    assert ca["kind"] == "Secret" and ca["name"] in LEAF_SECRETS
    assert validation["hostname"] in SERVER_NAMES
    (gateway,) = by_kind("envoy-gateway.md", "Gateway")
    ref = gateway["spec"]["tls"]["backend"]["clientCertificateRef"]
    assert (ref["kind"], ref["name"], ref["namespace"]) == ("Secret", CLIENT_SECRET, NAMESPACE)
    (grant,) = by_kind("envoy-gateway.md", "ReferenceGrant")
    assert grant["metadata"]["namespace"] == NAMESPACE
    assert grant["spec"]["from"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "namespace": gateway["metadata"]["namespace"],
        }
    ]
    assert grant["spec"]["to"] == [{"group": "", "kind": "Secret", "name": CLIENT_SECRET}]
    (route,) = by_kind("envoy-gateway.md", "HTTPRoute")
    (parent,) = route["spec"]["parentRefs"]
    assert (parent["name"], parent["namespace"]) == (
        gateway["metadata"]["name"],
        gateway["metadata"]["namespace"],
    )


def test_istio_presents_a_certificate_issued_in_its_namespace_or_uses_the_mesh() -> None:
    (rule,) = by_kind("istio.md", "DestinationRule")
    assert rule["spec"]["host"] == f"{NAME}.{NAMESPACE}.svc.cluster.local"
    (port,) = rule["spec"]["trafficPolicy"]["portLevelSettings"]
    assert port["port"]["number"] == PORT
    tls = port["tls"]
    assert tls["mode"] == "MUTUAL"
    assert tls["sni"] in SERVER_NAMES and set(tls["subjectAltNames"]) <= SERVER_NAMES
    # credentialName is read in the gateway's namespace: a Certificate renewed there
    (certificate,) = by_kind("istio.md", "Certificate")
    assert certificate["metadata"]["namespace"] == rule["metadata"]["namespace"]
    assert certificate["spec"]["secretName"] == tls["credentialName"]
    for field in ("usages", "duration", "renewBefore", "privateKey", "commonName"):
        assert certificate["spec"][field] == CLIENT["spec"][field], field
    assert certificate["spec"]["issuerRef"] == {"name": "extauthz-ca", "kind": "ClusterIssuer"}
    # in the mesh: STRICT mutual TLS on the extauthz pods, the Check port for the gateway only
    (peer,) = by_kind("istio.md", "PeerAuthentication")
    labels = {"app.kubernetes.io/name": NAME}
    assert peer["spec"] == {"selector": {"matchLabels": labels}, "mtls": {"mode": "STRICT"}}
    (allow,) = [
        p for p in by_kind("istio.md", "AuthorizationPolicy") if p["spec"]["action"] == "ALLOW"
    ]
    assert allow["metadata"]["namespace"] == NAMESPACE
    assert allow["spec"]["selector"] == {"matchLabels": labels}
    check = next(
        r for r in allow["spec"]["rules"] if r["to"][0]["operation"]["ports"] == [str(PORT)]
    )
    (principal,) = check["from"][0]["source"]["principals"]
    assert principal.startswith("cluster.local/ns/istio-system/sa/")


def test_contour_validates_extauthz_and_presents_the_renewed_certificate() -> None:
    (service,) = by_kind("contour.md", "ExtensionService")
    assert service["spec"]["protocol"] == "h2"  # TLS; h2c would be plaintext
    validation = service["spec"]["validation"]
    assert validation["caSecret"] in LEAF_SECRETS and validation["subjectName"] in SERVER_NAMES
    (config,) = by_kind("contour.md", "ConfigMap")
    contour = yaml.safe_load(config["data"]["contour.yaml"])
    assert contour["tls"]["envoy-client-certificate"] == {
        "name": CLIENT_SECRET,
        "namespace": NAMESPACE,
    }


def test_emissary_presents_the_renewed_certificate_and_never_the_ca_key() -> None:
    (auth,) = by_kind("emissary.md", "AuthService")
    (context,) = by_kind("emissary.md", "TLSContext")
    assert auth["spec"]["tls"] == context["metadata"]["name"]
    assert "hosts" not in context["spec"]  # originating TLS, not a listener's
    assert context["spec"]["secret"] == f"{CLIENT_SECRET}.{NAMESPACE}"
    assert context["spec"]["sni"] in SERVER_NAMES
    (ca,) = by_kind("emissary.md", "Secret")
    assert context["spec"]["ca_secret"] == ca["metadata"]["name"]
    assert ca["metadata"]["namespace"] == context["metadata"]["namespace"]
    assert set(ca["stringData"]) == {"tls.crt"}  # the CA certificate alone
