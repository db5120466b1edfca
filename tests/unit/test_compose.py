"""docker-compose.yml and Dockerfile: every service, port, file and command they name exists.

Docker cannot run on this machine; the same envoy.yaml is exercised by the real Envoy binary
in tests/integration/test_envoy_e2e.py.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml

from extauthz.cli import _parser
from extauthz.dev.envoy_config import COMPOSE, COMPOSE_TLS, sds_files

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE_FILE["services"]


def test_services_and_dependencies() -> None:
    assert set(SERVICES) == {"redis", "sync", "certs", "extauthz", "admin", "model", "envoy"}
    one_shot = {"certs"}
    for name, svc in SERVICES.items():
        assert "image" in svc or svc.get("build") == ".", name
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in SERVICES, (name, dep)
            expected = "service_completed_successfully" if dep in one_shot else "service_healthy"
            assert cond == {"condition": expected}, (name, dep)
        if name in one_shot:
            assert svc["restart"] == "no"  # one-shot: gated by its exit code, not a health check
        else:
            assert svc["healthcheck"]["test"][0] == "CMD", name
    assert SERVICES["sync"]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_host_files_exist() -> None:
    assert (REPO / "Dockerfile").is_file()
    for name, svc in SERVICES.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), (name, source)
            else:
                assert source in COMPOSE_FILE["volumes"], (name, source)
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source


def test_ports_match_envoy_yaml() -> None:
    envoy_yaml = yaml.safe_load((REPO / "envoy/envoy.yaml").read_text())
    hosts = {
        c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ]
        for c in envoy_yaml["static_resources"]["clusters"]
    }
    assert hosts["extauthz"] == {"address": "extauthz", "port_value": 9001}
    assert hosts["model_http"] == {"address": "model", "port_value": 8000}
    assert hosts["model_grpc"] == {"address": "model", "port_value": 8001}
    assert "0.0.0.0:9001" in SERVICES["extauthz"]["command"]
    model_cmd = " ".join(SERVICES["model"]["command"])
    assert (
        f"0.0.0.0:{COMPOSE.model_http.port}" in model_cmd
        and f"0.0.0.0:{COMPOSE.model_grpc.port}" in model_cmd
    )
    published = {p.split(":")[-1] for p in SERVICES["envoy"]["ports"]}
    assert published == {
        str(COMPOSE.external.port),
        str(COMPOSE.internal.port),
        str(COMPOSE.console.port),
    }
    assert hosts["admin_api"] == {"address": "admin", "port_value": 9080}
    admin_cmd = SERVICES["admin"]["command"]
    assert admin_cmd[admin_cmd.index("--admin-listen") + 1] == "0.0.0.0:9080"
    # the one proxy the admin trusts for X-Forwarded-For is Envoy's fixed address
    proxies = admin_cmd[admin_cmd.index("--admin-trusted-proxies") + 1]
    assert proxies == SERVICES["envoy"]["networks"]["default"]["ipv4_address"]
    subnet = COMPOSE_FILE["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(proxies) in ipaddress.ip_network(subnet)
    assert SERVICES["envoy"]["volumes"][0] == "./envoy/envoy.yaml:/etc/envoy/envoy.yaml:ro"
    assert re.fullmatch(r"envoyproxy/envoy:v1\.40\.\d+", SERVICES["envoy"]["image"])


def test_extauthz_commands_parse() -> None:
    parser = _parser()
    for name in ("sync", "extauthz", "admin"):
        args = parser.parse_args(SERVICES[name]["command"])
        assert callable(args.func)
    certs = SERVICES["certs"]["command"][0].split(" && ")
    assert parser.parse_args(certs[0].split()[1:]).func.__name__ == "_cmd_certs"
    args = parser.parse_args(SERVICES["extauthz"]["healthcheck"]["test"][2:])
    assert args.target == "127.0.0.1:9001"
    host, _, mounted = SERVICES["sync"]["volumes"][0].partition(":")
    assert mounted == "/etc/extauthz:ro" and (REPO / host / "policy.yaml").is_file()
    watch = parser.parse_args(SERVICES["sync"]["command"])
    assert watch.watch and watch.prune and watch.policy == "/etc/extauthz/policy.yaml"
    check = parser.parse_args(SERVICES["sync"]["healthcheck"]["test"][2:])
    assert check.check and check.prune and check.policy == watch.policy


def test_redis_keeps_every_write() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert SERVICES["redis"]["volumes"][0].endswith(":/data")


def _host_binding(mapping: str) -> str:
    """The host address a compose port mapping binds ('' = every interface)."""
    parts = mapping.split(":")
    return parts[0] if len(parts) == 3 else ""


def test_only_the_external_listener_is_published_on_every_interface() -> None:
    # private routes need no credential on the internal listener; Envoy's admin can stop it
    for name, svc in SERVICES.items():
        for mapping in svc.get("ports", []):
            container_port = mapping.split(":")[-1]
            if name == "envoy" and container_port == str(COMPOSE.external.port):
                continue
            assert _host_binding(mapping) == "127.0.0.1", (name, mapping)
        assert "network_mode" not in svc, name  # host networking would publish everything
    for name in ("redis", "extauthz", "admin", "model", "sync", "certs"):
        assert "ports" not in SERVICES[name], name
    assert COMPOSE.admin.host == "127.0.0.1"  # inside the container only
    envoy_yaml = yaml.safe_load((REPO / "envoy/envoy.yaml").read_text())
    assert envoy_yaml["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_the_console_listener_holds_no_slow_client() -> None:
    """The console listener bounds how long a request may take to arrive and buffers each whole
    (at most the API's 64 KiB) before it goes to `extauthz admin`, so slow clients hold no
    upstream connection."""
    envoy_yaml = yaml.safe_load((REPO / "envoy/envoy.yaml").read_text())
    (console,) = [
        listener
        for listener in envoy_yaml["static_resources"]["listeners"]
        if listener["name"] == "console"
    ]
    manager = console["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["request_headers_timeout"] == "10s" and manager["request_timeout"] == "30s"
    names = [f["name"] for f in manager["http_filters"]]
    assert names == ["envoy.filters.http.buffer", "envoy.filters.http.router"]
    assert manager["http_filters"][0]["typed_config"]["max_request_bytes"] == 65536


def test_the_check_port_speaks_mutual_tls() -> None:
    """extauthz answers only Envoy's client certificate; both read the files the `certs`
    service writes, each key owned by the one user that reads it."""
    env = SERVICES["extauthz"]["environment"]
    assert env["EXTAUTHZ_TLS_CERT"] == "/certs/extauthz.crt"
    assert env["EXTAUTHZ_TLS_KEY"] == "/certs/extauthz.key"
    assert env["EXTAUTHZ_TLS_CLIENT_CA"] == "/certs/ca.crt"  # client certificates required
    assert "certs:/certs:ro" in SERVICES["extauthz"]["volumes"]
    assert "certs:/etc/envoy/certs:ro" in SERVICES["envoy"]["volumes"]
    command = SERVICES["certs"]["command"][0]
    assert "chown 10001 /certs/extauthz.key" in command and "chown 101 /certs/envoy.key" in command
    envoy_yaml = yaml.safe_load((REPO / "envoy/envoy.yaml").read_text())
    (cluster,) = [c for c in envoy_yaml["static_resources"]["clusters"] if c["name"] == "extauthz"]
    context = cluster["transport_socket"]["typed_config"]["common_tls_context"]
    # Envoy reads its certificate and the CA through SDS files, which compose mounts
    (client,) = context["tls_certificate_sds_secret_configs"]
    validation = context["combined_validation_context"]["validation_context_sds_secret_config"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["envoy"]["volumes"]}
    secrets: dict[str, Any] = {}
    for config in (client, validation):
        path = config["sds_config"]["path_config_source"]["path"]
        assert mounted[path].startswith("./envoy/sds/"), path
        (secret,) = yaml.safe_load((REPO / mounted[path]).read_text())["resources"]
        assert secret["name"] == config["name"]
        secrets[config["name"]] = secret
    chain = secrets[client["name"]]["tls_certificate"]
    assert chain["certificate_chain"]["filename"] == "/etc/envoy/certs/envoy.crt"
    assert chain["private_key"]["filename"] == "/etc/envoy/certs/envoy.key"
    assert chain["watched_directory"]["path"] == "/etc/envoy/certs"  # renewed: reloaded
    trusted = secrets[validation["name"]]["validation_context"]
    assert trusted["trusted_ca"]["filename"] == "/etc/envoy/certs/ca.crt"
    assert trusted["watched_directory"]["path"] == "/etc/envoy/certs"


def test_the_sds_files_are_generated() -> None:
    """envoy/sds/ is extauthz/dev/envoy_config.py's output, as envoy/envoy.yaml is."""
    expected = sds_files(COMPOSE_TLS)
    assert sorted(p.name for p in (REPO / "envoy/sds").iterdir()) == sorted(expected)
    for name, text in expected.items():
        assert (REPO / "envoy/sds" / name).read_text() == text, (
            "regenerate: python -m extauthz.dev.envoy_config --compose --sds-dir envoy/sds"
        )
