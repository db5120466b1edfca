"""deploy/kubernetes: every manifest is valid against the Kubernetes 1.37 schemas (offline,
kubernetes-validate, strict: unknown fields fail), and what they say agrees with the CLI,
the server and each other: commands, ports, probes, settings, labels, security."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from extauthz.cli import _parser
from extauthz.config import ENV_PREFIX, Settings, split_address
from extauthz.core.policy import parse_policy
from extauthz.runtime.server import AUTHORIZATION_SERVICE, LIVENESS_SERVICE

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy/kubernetes"
K8S_VERSION = "1.37.0"
KUSTOMIZATION = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
DOCS: list[dict[str, Any]] = [
    doc
    for name in KUSTOMIZATION["resources"]
    for doc in yaml.safe_load_all((DEPLOY / name).read_text())
    if doc
]
SETTINGS = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.__dataclass_fields__}


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def labels(workload: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return found


def test_every_file_is_listed_and_every_manifest_is_valid() -> None:
    assert set(KUSTOMIZATION["resources"]) == {
        p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml"
    }
    for doc in DOCS:
        if doc["apiVersion"].startswith("cert-manager.io/"):
            continue  # (a CRD: its schema is not in kubernetes-validate; see test_tls below)
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for doc in DOCS:
        assert doc["metadata"]["namespace" if doc["kind"] != "Namespace" else "name"] == "extauthz"


def test_the_validator_refuses_what_is_wrong() -> None:
    deployment = find("Deployment", "extauthz")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    pod(broken)["containers"][0]["readinessProbe"]["grcp"] = {"port": 9001}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_server_command_ports_and_probes_agree() -> None:
    deployment = find("Deployment", "extauthz")
    (container,) = pod(deployment)["containers"]
    args = _parser().parse_args(container["args"])
    assert args.func.__name__ == "_cmd_serve"
    check_port = split_address(args.listen)[1]
    metrics_port = split_address(args.metrics_listen)[1]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": check_port, "http-metrics": metrics_port}
    for probe, name in (
        ("readinessProbe", AUTHORIZATION_SERVICE),
        ("livenessProbe", LIVENESS_SERVICE),
    ):
        command = container[probe]["exec"]["command"]
        health = _parser().parse_args(command[1:])
        assert command[0] == "extauthz" and health.func.__name__ == "_cmd_health"
        assert health.target == f"127.0.0.1:{check_port}" and health.service == name
    service = find("Service", "extauthz")
    assert service["spec"]["selector"].items() <= labels(deployment).items()
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert by_name["grpc"]["port"] == check_port and by_name["grpc"]["targetPort"] == "grpc"
    assert by_name["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    policy = find("NetworkPolicy", "extauthz-check-from-gateway")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels(deployment).items()
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {check_port, metrics_port}
    pdb = find("PodDisruptionBudget", "extauthz")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels(deployment).items()
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_settings_come_from_the_environment_and_workers_from_the_cpu_limit() -> None:
    for workload in (
        find("Deployment", "extauthz"),
        find("Deployment", "extauthz-sync"),
        find("Deployment", "extauthz-admin"),
    ):
        for container in pod(workload)["containers"]:
            ours = [e for e in container.get("env", []) if e["name"].startswith(ENV_PREFIX)]
            assert {e["name"] for e in ours} <= SETTINGS
            redis = next(e for e in ours if e["name"] == "EXTAUTHZ_REDIS_URL")
            assert redis["valueFrom"]["secretKeyRef"] == {"name": "extauthz-redis", "key": "url"}
    (container,) = pod(find("Deployment", "extauthz"))["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["EXTAUTHZ_WORKERS"]["valueFrom"]["resourceFieldRef"] == {
        "containerName": container["name"],
        "resource": "limits.cpu",
        "divisor": "1",
    }
    choices = Settings.__dataclass_fields__["route_identity"].metadata["choices"]
    assert env["EXTAUTHZ_ROUTE_IDENTITY"]["value"] in choices


def test_the_sync_watcher_reads_the_policy_configmap() -> None:
    job = find("Deployment", "extauthz-sync")
    (container,) = pod(job)["containers"]
    args = _parser().parse_args(container["args"])
    assert args.func.__name__ == "_cmd_sync" and args.watch and args.prune
    probe = _parser().parse_args(container["readinessProbe"]["exec"]["command"][1:])
    assert probe.check and probe.prune and probe.policy == args.policy
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in pod(job)["volumes"] if v["name"] == mount["name"]]
    configmap = find("ConfigMap", volume["configMap"]["name"])
    relative = Path(args.policy).relative_to(mount["mountPath"])
    text = configmap["data"][str(relative)]
    assert text == (REPO / "examples/policy.yaml").read_text()
    parse_policy(text)
    assert container["envFrom"] == [{"secretRef": {"name": "extauthz-route-secrets"}}]
    assert job["spec"]["replicas"] == 1  # (two watchers would only race to publish the same)


def test_redis_keeps_its_data_on_a_volume_claim() -> None:
    redis = find("StatefulSet", "redis")
    (container,) = pod(redis)["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    assert "--save" not in args or args[args.index("--save") + 1] != ""
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    (mount,) = container["volumeMounts"]
    assert mount == {"name": claim["metadata"]["name"], "mountPath": "/data"}
    assert "volumes" not in pod(redis)  # (no emptyDir shadowing the claim)
    assert pod(redis)["securityContext"]["fsGroup"] == pod(redis)["securityContext"]["runAsUser"]
    assert redis["spec"]["serviceName"] == find("Service", "redis")["metadata"]["name"]


def test_every_pod_is_locked_down() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for workload in [d for d in DOCS if d["kind"] in ("Deployment", "StatefulSet", "Job")]:
        spec = pod(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
            if container["image"] == "extauthz":
                assert f"--uid {spec['securityContext']['runAsUser']} " in dockerfile
    redis = find("NetworkPolicy", "redis-from-extauthz")
    assert redis["spec"]["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "extauthz"}}}
    ]
    for workload in (find("Deployment", "extauthz"), find("Deployment", "extauthz-sync")):
        assert labels(workload)["app.kubernetes.io/part-of"] == "extauthz"


def test_the_check_port_speaks_mutual_tls() -> None:
    """cert-manager issues extauthz's certificate (with the names the gateway and the probes
    dial) and the gateway's client certificate from one CA; extauthz requires client
    certificates and reads the files from the Secret it mounts."""
    server = find("Certificate", "extauthz-server")
    client = find("Certificate", "extauthz-gateway-client")
    ca = find("Certificate", "extauthz-ca")
    assert ca["spec"]["isCA"] is True
    issuer = find("Issuer", "extauthz-ca")
    assert issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert find("Issuer", ca["spec"]["issuerRef"]["name"])["spec"] == {"selfSigned": {}}
    for cert in (server, client):
        assert cert["spec"]["issuerRef"] == {"name": "extauthz-ca", "kind": "Issuer"}
    assert "client auth" in client["spec"]["usages"] and "server auth" in server["spec"]["usages"]
    service = find("Service", "extauthz")["metadata"]
    assert f"{service['name']}.{service['namespace']}.svc" in server["spec"]["dnsNames"]
    assert "extauthz" in server["spec"]["dnsNames"]  # `extauthz health`'s default name
    assert server["spec"]["ipAddresses"] == ["127.0.0.1"]  # what the probes dial
    deployment = find("Deployment", "extauthz")
    (container,) = pod(deployment)["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (volume,) = [v for v in pod(deployment)["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == server["spec"]["secretName"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    for setting, file in (("CERT", "tls.crt"), ("KEY", "tls.key"), ("CLIENT_CA", "ca.crt")):
        assert env[f"EXTAUTHZ_TLS_{setting}"] == f"{mount['mountPath']}/{file}"
    assert pod(deployment)["securityContext"]["fsGroup"] == 10001


def test_the_admin_api_is_deployed_and_reached_from_the_gateway_only() -> None:
    deployment = find("Deployment", "extauthz-admin")
    (container,) = pod(deployment)["containers"]
    args = _parser().parse_args(container["args"])
    assert args.func.__name__ == "_cmd_admin"
    port = split_address(args.admin_listen)[1]
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    service = find("Service", "extauthz-admin")
    assert service["spec"]["selector"].items() <= labels(deployment).items()
    policy = find("NetworkPolicy", "extauthz-admin-from-gateway")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels(deployment).items()
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {port}
