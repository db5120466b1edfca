"""`allowed_cidrs`, pure: the client addresses a token or a team may be used from
(docs/tokens.md#allowed-addresses).

Parsed once, when the record is read (the token cache keeps the parsed value), into integer
(network, mask) pairs per IP version: a request costs one address parse and a few integer
operations, never a CIDR parse.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_CIDRS = 32  # per token or team: a list to read at a glance, not an address database
_MAX_ITEM = 64  # characters: the longest IPv6 CIDR is 43
CIDRS_RULE = (
    f"1 to {MAX_CIDRS} networks such as 203.0.113.0/24, 2001:db8::/32 or 198.51.100.7 "
    "(no host bits set)"
)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (socket.inet_pton parses an address in C: a tenth of ipaddress.ip_address's time)
_inet_pton = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_V4_MAPPED = bytes(10) + b"\xff\xff"
_from_bytes = int.from_bytes


@dataclass(frozen=True, slots=True)
class AllowedCidrs:
    """A non-empty list of networks; `allows(address)` says whether an address is in one."""

    networks: tuple[IPNetwork, ...]
    _v4: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)
    _v6: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def parse(cls, items: Iterable[str]) -> AllowedCidrs:
        """Parse CIDRs (or bare addresses, as /32 or /128); ValueError saying what is wrong
        with the first bad one. Duplicates are dropped; the order is kept."""
        networks: list[IPNetwork] = []
        for item in items:
            networks.append(parse_cidr(item))
            if len(networks) > MAX_CIDRS:
                raise ValueError(f"more than {MAX_CIDRS} networks: {CIDRS_RULE}")
        if not networks:
            raise ValueError(f"no network given: {CIDRS_RULE}")
        unique = tuple(dict.fromkeys(networks))
        v4 = tuple((int(n.network_address), int(n.netmask)) for n in unique if n.version == 4)
        v6 = tuple((int(n.network_address), int(n.netmask)) for n in unique if n.version == 6)
        return cls(unique, v4, v6)

    def allows(self, address: str) -> bool:
        """Whether `address` (as Envoy gives it: an IPv4 or IPv6 address) is in one of the
        networks. Anything that is not an address (empty: not known) is not allowed; an
        IPv4-mapped IPv6 address (::ffff:a.b.c.d) counts as its IPv4 address."""
        try:
            packed = _inet_pton(_AF_INET, address)
            v4 = True
        except OSError:  # (not IPv4; also a null character: ValueError, below)
            try:
                packed = _inet_pton(_AF_INET6, address)
            except (OSError, ValueError):
                return False
            v4 = packed[:12] == _V4_MAPPED
            if v4:
                packed = packed[12:]
        except ValueError:
            return False
        n = _from_bytes(packed, "big")
        return any(n & mask == net for net, mask in (self._v4 if v4 else self._v6))

    def texts(self) -> list[str]:
        """The networks as text (compressed form), in their order."""
        return [str(n) for n in self.networks]

    def __str__(self) -> str:
        """The Redis field's value: the networks, comma-separated."""
        return ",".join(self.texts())


def parse_cidr(text: str) -> IPNetwork:
    """One network, strictly: ASCII, no zone (`%eth0`), no host bits set; ValueError says
    which rule it breaks, quoting at most 64 characters of it."""
    shown = text[:_MAX_ITEM].encode("ascii", "backslashreplace").decode()
    if not text or len(text) > _MAX_ITEM or not text.isascii() or not text.isprintable():
        raise ValueError(f"{shown!r} is not a network: {CIDRS_RULE}")
    if "%" in text:
        raise ValueError(f"{shown!r}: a zone (%...) is not allowed: {CIDRS_RULE}")
    try:
        return ipaddress.ip_network(text.strip(" "), strict=True)
    except ValueError as e:
        if "host bits set" in str(e):
            loose = ipaddress.ip_network(text.strip(" "), strict=False)
            raise ValueError(f"{shown!r} has host bits set: did you mean {loose}?") from None
        raise ValueError(f"{shown!r} is not a network: {CIDRS_RULE}") from None
