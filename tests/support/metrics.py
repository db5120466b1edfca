"""A server's Prometheus metrics as tests read them."""

from __future__ import annotations

import urllib.request


def scrape(address: str | int) -> str:
    """The /metrics page at `address` ("host:port", or a port on 127.0.0.1)."""
    where = f"127.0.0.1:{address}" if isinstance(address, int) else address
    with urllib.request.urlopen(f"http://{where}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the first sample `name` with `labels` (others may be there too)."""
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")
