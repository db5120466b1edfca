"""Each `--route-identity` mode through the real Envoy (docs/design.md#route-identity): route
metadata as we document it, route metadata as Envoy Gateway generates it, and match rules
behind an Envoy with ext_authz on the whole listener and no per-route settings, as Istio
generates it."""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator

import grpc
import pytest

from extauthz.admin import tokens
from extauthz.config import Settings
from extauthz.dev import demo_model
from extauthz.dev.stack import Stack
from tests.support.procs import REPO, local_stack

pytestmark = [pytest.mark.redis, pytest.mark.envoy]

# the example policy, a host-specific route for the match mode, and a public rule for any
# host that covers its paths (what a weaker rule must never catch)
IRIS = """
  iris:
    access: protected
    match: [{host: models.example.com, path_prefix: /v2/models/iris}]
  v2-public:
    access: public
    match: [{path_prefix: /v2}]
"""


@pytest.fixture(scope="module", params=["metadata", "envoy-gateway", "match"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp(f"stack-{request.param}")
    policy = state / "policy.yaml"
    example = (REPO / "examples/policy.yaml").read_text()
    policy.write_text(example.replace("\nsecrets:", IRIS.rstrip() + "\nsecrets:"))
    settings = Settings(route_identity=request.param, auth_failure_burst=100000)
    with local_stack(state, settings, policy) as s:
        yield s


def status(port: int, path: str, token: str | None = None, host: str = "127.0.0.1") -> int:
    """One request with the path and Host exactly as given (no client-side normalizing)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def mint(stack: Stack, routes: list[str], scopes: tuple[str, ...] = ()) -> str:
    return tokens.create(stack.store(), routes, scopes, now=time.time()).token


def test_the_decision_table_is_the_same_in_every_mode(stack: Stack) -> None:
    external, internal = stack.ports.external.port, stack.ports.internal.port
    inference = mint(stack, ["densenet161"], ("inference",))
    deployment_a = mint(stack, ["deployment-a"])
    assert status(external, "/predictions/densenet161") == 401
    assert status(external, "/predictions/densenet161", inference) == 200
    assert status(external, "/predictions/densenet161", "eat_" + "x" * 43) == 401
    assert status(external, "/models", inference) == 403
    assert status(external, "/deployments/a/predict", deployment_a) == 200
    assert status(external, "/deployments/b/predict", deployment_a) == 403
    assert status(external, "/ping") == 200
    assert status(external, "/embedder/embed") == 404  # private, from outside
    assert status(internal, "/embedder/embed") == 200  # network: internal still works
    # gRPC through Envoy
    reply = demo_model.call(f"127.0.0.1:{external}", inference)
    assert reply["metadata"]["x-extauthz-route"] == "densenet161"
    with pytest.raises(grpc.RpcError) as info:
        demo_model.call(f"127.0.0.1:{external}", None)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_fail_closed(stack: Stack) -> None:
    external = stack.ports.external.port
    everything = mint(stack, ["*"], ("inference", "management"))
    if stack.settings.route_identity == "match":
        assert status(external, "/nothing/matches/this", everything) == 404
    else:
        # Envoy names a route the policy does not have: 404
        assert status(external, "/retired/predict", everything) == 404
        # the catch-all route carries no identifier: 404
        assert status(external, "/nothing/names/this", everything) == 404
        # a client cannot name a route with a header in any mode
        conn = http.client.HTTPConnection("127.0.0.1", external, timeout=10)
        conn.request("GET", "/nothing", headers={"x-extauthz-route": "healthz"})
        assert conn.getresponse().status == 404
        conn.close()


@pytest.mark.parametrize("stack", ["match"], indirect=True)
def test_match_rules_behind_a_gateway_that_leaves_paths_alone(stack: Stack) -> None:
    external = stack.ports.external.port
    iris = mint(stack, ["iris"])
    host = "models.example.com"
    assert status(external, "/v2/models/iris/infer", host=host) == 401
    assert status(external, "/v2/models/iris/infer", iris, host=host) == 200
    assert status(external, "/v2/models/iris/infer?x=1", iris, host=host) == 200
    # the host is matched in any case and with any port
    assert status(external, "/v2/models/iris", iris, host="MODELS.Example.COM:8443") == 200
    # another host has no rule of iris's; another prefix is another segment: the public
    # rule for any host takes them
    assert status(external, "/v2/models/iris", host="other.example.com") == 200
    assert status(external, "/v2/models/iris2", host=host) == 200
    # an escape or an odd host never falls back to the public rule (it would reach iris
    # anonymously): denied
    for path in ("/v2/models/ir%69s/infer", "/v2/%6dodels/iris/infer", "/v2/models/iris/%41"):
        assert status(external, path, host=host) == 404, path
    for odd in ("models.example.com:", "models.example.com:abc", "user@models.example.com",
                "models%2eexample.com"):  # fmt: skip
        assert status(external, "/v2/models/iris/infer", host=odd) in (400, 404), odd
    # not canonical: denied, never resolved differently from the model server
    for path in (
        "/v2/models/iris/../x", "/v2/models/iris/%2e%2e/x", "/v2//models/iris", "//v2/models/iris",
        "/v2/models%2Firis", "/v2/models/iris%5Cx", "/v2/models/iris;a=b",
        "/predictions/densenet161/../../models",
    ):  # fmt: skip
        assert status(external, path, iris, host=host) == 404, path
    # the model's own paths, the catch-all and a public route
    assert status(external, "/predictions/densenet161/../../ping") == 404
    assert status(external, "/ping") == 200
