"""The local stack's children (extauthz/dev/stack.py `Child`): each in its own session, dying
with the process that started it when that one is killed, and started safely from a
process that runs gRPC's threads (a test's collector, a benchmark's clients)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.procs import REPO, wait_for


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def test_a_child_has_its_own_session_and_dies_with_a_killed_parent(tmp_path: Path) -> None:
    starter = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from extauthz.dev.stack import Child\n"
        "child = Child('sleeper', ['sleep', '60'], Path(sys.argv[1]))\n"
        "child.start()\n"
        "print(child.proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starter, str(tmp_path / "sleeper.log")],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert _alive(pid) and os.getsid(pid) == pid  # (Ctrl-C reaches only the parent)
        # setpriv sets the death signal, then execs the command: once it is `sleep`, it is set
        wait_for(lambda: _command(pid) == "sleep", 5, "setpriv to exec the command")
        parent.kill()  # SIGKILL: the parent stops nothing itself
        parent.wait()
        wait_for(lambda: not _alive(pid), 5, "the child to end with its parent")
    finally:
        parent.kill()


STARTER_AMID_GRPC = """
import sys, threading
from concurrent import futures
from pathlib import Path

import grpc
from extauthz.dev.stack import Child

echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t", {"Echo": echo})])
port = server.add_insecure_port("127.0.0.1:0")
server.start()
channel = grpc.insecure_channel(f"127.0.0.1:{port}")
call = channel.unary_unary("/t/Echo")
stop = threading.Event()

def calling():
    while not stop.is_set():
        call(b"x" * 1000, timeout=5)

callers = [threading.Thread(target=calling) for _ in range(4)]
for caller in callers:
    caller.start()
children = [Child(f"c{i}", ["true"], Path(sys.argv[1]) / f"c{i}.log") for i in range(20)]
for child in children:
    child.start()
print([child.proc.wait(20) for child in children], flush=True)
stop.set()
for caller in callers:
    caller.join()
channel.close()
server.stop(None).wait()
"""


def test_children_start_from_a_process_in_the_middle_of_grpc_calls(tmp_path: Path) -> None:
    """No Python code runs in a child between fork and exec, so gRPC's fork handlers never
    run there (with calls under way, as in a test's OTLP collector, they crashed a child now
    and then): gRPC says when they run, and it does not."""
    env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "1", "GRPC_VERBOSITY": "INFO"}
    out = subprocess.run(
        [sys.executable, "-c", STARTER_AMID_GRPC, str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=30, check=False,
    )  # fmt: skip
    assert out.stdout == str([0] * 20) + "\n", out.stderr
    assert "fork" not in out.stderr, out.stderr
