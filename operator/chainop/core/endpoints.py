"""The endpoint guard: which provider endpoints chainop may send requests to.

An operator that makes HTTP requests on behalf of anyone who can create a ProviderChain is
an SSRF tool unless it refuses some destinations. By default chainop refuses link-local
and cloud-metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254 — where instance
credentials live). The operator's config may add an allow-list of hosts (exact or
``*.suffix``) and CIDRs: when one is given, only endpoints matching it are allowed, and
an entry that names a refused address explicitly allows it.

Purely computational: the caller resolves the host name and passes the addresses in.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_DENIED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    """Allowed hosts/CIDRs (empty: anything not denied) and denied networks."""

    allow_hosts: tuple[str, ...] = ()
    allow_networks: tuple[IPNetwork, ...] = ()
    denied: tuple[IPNetwork, ...] = DEFAULT_DENIED

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> EndpointPolicy:
        """Build from operator config entries: CIDRs/IPs become networks, the rest hosts.

        Raises ValueError on an empty entry.
        """
        hosts: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                raise ValueError("empty endpoint allow-list entry")
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.append(entry)
        return cls(allow_hosts=tuple(hosts), allow_networks=tuple(networks))

    @property
    def restricted(self) -> bool:
        """Whether an allow-list is in force."""
        return bool(self.allow_hosts or self.allow_networks)


def host_of(endpoint: str) -> str:
    """The host name or IP literal of an endpoint URL, lower-cased, without brackets."""
    return (urlsplit(endpoint).hostname or "").lower()


def _host_allowed(host: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def refusal(endpoint: str, addresses: Sequence[str], policy: EndpointPolicy) -> str | None:
    """Why requests to ``endpoint`` are refused, or None when they are allowed.

    ``addresses`` are what the host resolves to (empty if it did not resolve; an IP
    literal host is checked as itself). Purely computational.
    """
    host = host_of(endpoint)
    if not host:
        return f"endpoint {endpoint!r} has no host"
    ips: list[IPAddress] = []
    literal = _literal(host)
    if literal is not None:
        ips.append(literal)
    for address in addresses:
        parsed = _literal(address.split("%", 1)[0])
        if parsed is not None and parsed not in ips:
            ips.append(parsed)
    host_listed = _host_allowed(host, policy.allow_hosts)

    def ip_listed(ip: IPAddress) -> bool:
        return any(ip in network for network in policy.allow_networks)

    for ip in ips:
        for network in policy.denied:
            if ip in network and not ip_listed(ip):
                return (
                    f"host {host} is {ip}, in {network} (link-local / cloud metadata), "
                    "which chainop refuses unless the operator's allow-list names it"
                )
    if policy.restricted and not host_listed and not (ips and all(ip_listed(ip) for ip in ips)):
        return f"host {host} is not in the operator's endpoint allow-list"
    return None
