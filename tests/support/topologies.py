"""Real Redis deployments on loopback: TLS, Sentinel (primary, replica, 3 sentinels), Cluster."""

from __future__ import annotations

import datetime
import ipaddress
import signal
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from extauthz.dev.ports import free_ports, port_open
from tests.support.procs import RedisServer, require_binary, wait_for


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: ca.crt, server.crt, server.key."""
    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        name: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "extauthz test CA")])
    ca = certificate("extauthz test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate("127.0.0.1", key, ca_name, ca_key, ca=False)
    files = {
        "ca": directory / "ca.crt",
        "cert": directory / "server.crt",
        "key": directory / "server.key",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def cli(port: int, *args: str, tls: dict[str, Path] | None = None) -> str:
    """redis-cli against one node (-c follows Cluster redirections)."""
    extra: list[str] = []
    if tls is not None:
        extra = ["--tls", "--cacert", str(tls["ca"])]
    out = subprocess.run(
        [require_binary("redis-cli"), "-c", "-p", str(port), *extra, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip()


def replicated(port: int, marker: str) -> bool:
    """True once a replica holds everything the primary on `port` has written so far.

    WAIT counts replicas that acknowledged the *calling connection's* last write: on a fresh
    connection that wrote nothing it returns at once and proves nothing. So write a marker
    (the key must live on that node: give it the extauthz prefix, hash tag included) and WAIT
    on the same connection; replication is ordered, so earlier writes are there too.
    """
    out = subprocess.run(
        [require_binary("redis-cli"), "-p", str(port)],
        input=f"SET {marker} 1\nWAIT 1 5000\n",
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.split()[-1:] == ["1"]


def kill(server: RedisServer) -> None:
    """SIGKILL: a crash, not a clean shutdown."""
    if server.proc is not None:
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        server.proc = None


class SentinelSetup:
    """A primary, one replica and three sentinels watching them as `extauthz`."""

    name = "extauthz"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        ports = free_ports(5)
        self.primary = RedisServer(_subdir(workdir, "primary"), port=ports[0])
        self.replica = RedisServer(_subdir(workdir, "replica"), port=ports[1])
        self.sentinel_ports = ports[2:]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.name}/0"

    def start(self) -> None:
        self.primary.start()
        self.replica.extra = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        wait_for(
            lambda: "master_link_status:up" in self.replica.cli("INFO", "replication"),
            10,
            "replication",
        )
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.name} 500\n"
                f"sentinel failover-timeout {self.name} 2000\n"
                f"sentinel parallel-syncs {self.name} 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [require_binary("redis-server"), str(conf), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.sentinel_ports:
            wait_for(lambda p=port: port_open(p), 10, "redis-sentinel")  # type: ignore[misc]
        wait_for(self._sentinels_agree, 15, "sentinels to see the replica and each other")

    def _sentinels_agree(self) -> bool:
        for port in self.sentinel_ports:
            info = cli(port, "SENTINEL", "MASTER", self.name)
            fields = dict(zip(info.splitlines()[::2], info.splitlines()[1::2], strict=False))
            if fields.get("num-slaves") != "1" or fields.get("num-other-sentinels") != "2":
                return False
        return True

    def primary_port(self) -> int:
        return int(
            cli(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name).split()[1]
        )

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.terminate()
            proc.wait(10)
        self.replica.stop()
        self.primary.stop()


class ClusterSetup:
    """Three primaries with one replica each, `cluster-node-timeout` 1 s."""

    def __init__(self, workdir: Path) -> None:
        ports = free_ports(12)
        self.nodes = [
            RedisServer(
                _subdir(workdir, f"node{i}"),
                port=ports[i],
                extra=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "1000",
                    # the bus port defaults to port + 10000, past 65535 for a high free port
                    "--cluster-port", str(ports[6 + i]),
                ),
            )
            for i in range(6)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli(
            self.nodes[0].port,
            "--cluster", "create",
            *(f"127.0.0.1:{n.port}" for n in self.nodes),
            "--cluster-replicas", "1",
            "--cluster-yes",
        )  # fmt: skip
        wait_for(self._ok, 20, "cluster_state:ok on every node")

    def _ok(self) -> bool:
        return all(
            "cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes if n.proc is not None
        )

    def owner_of(self, key: str) -> RedisServer:
        """The node that serves `key` now (its slot's primary)."""
        slot = self.nodes[0].cli("CLUSTER", "KEYSLOT", key)
        for node in self.nodes:
            if node.proc is None:
                continue
            for line in node.cli("CLUSTER", "NODES").splitlines():
                fields = line.split()
                if (
                    "master" in fields[2]
                    and "fail" not in fields[2]
                    and _serves(fields[8:], int(slot))
                ):
                    port = int(fields[1].split("@")[0].split(":")[1])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no primary serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _serves(ranges: list[str], slot: int) -> bool:
    for r in ranges:
        if r.startswith("["):
            continue
        low, _, high = r.partition("-")
        if int(low) <= slot <= int(high or low):
            return True
    return False


def _subdir(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(parents=True, exist_ok=True)
    return path
