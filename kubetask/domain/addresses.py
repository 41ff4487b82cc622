"""Which addresses a RemoteFile fetch may connect to: public ones, and what the operator allows.

The run worker fetches on behalf of a tenant, from inside the platform: a URL naming loopback, a
link-local metadata service, a private or CGNAT network, a cluster Service or pod would read what
only the platform can reach (security review H2). ``AddressPolicy.refusal`` answers for one resolved
address; the HTTP edge (``kubetask.kube.http``) asks it for every address of every hop and connects
to the very address it checked, so a name that resolves differently the second time gains nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Names of cloud metadata services, refused whatever they resolve to.
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.azure.internal", "instance-data"})


def _kind(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one, or None when it is."""
    for test, what in (
        ("is_unspecified", "an unspecified"),
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local (cloud metadata)"),
        ("is_multicast", "a multicast"),
        ("is_private", "a private"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(address, test):
            return f"{what} address"
    if not address.is_global:  # CGNAT 100.64.0.0/10, benchmarking, documentation ranges...
        return "a non-public address"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses only, minus ``denied`` networks (the cluster's pod and Service CIDRs), plus
    ``allowed`` networks and ``allowed_endpoints`` (address, port) the operator lists."""

    allowed: tuple[IPNetwork, ...] = ()
    allowed_endpoints: frozenset[tuple[IPAddress, int]] = frozenset()
    denied: tuple[IPNetwork, ...] = ()
    metadata_hosts: frozenset[str] = field(default=METADATA_HOSTS)

    @classmethod
    def parse(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> AddressPolicy:
        """From the operator's lists: ``10.1.0.0/16``, ``192.0.2.7`` or ``127.0.0.1:8080`` entries."""
        networks, endpoints = [], set()
        for entry in (e.strip() for e in allow):
            if not entry:
                continue
            host, sep, port = entry.rpartition(":")
            if sep and port.isdigit() and not entry.endswith("]") and "/" not in entry and host.count(":") == 0:
                endpoints.add((ipaddress.ip_address(host), int(port)))
            else:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        denied = tuple(ipaddress.ip_network(e.strip(), strict=False) for e in deny if e.strip())
        return cls(tuple(networks), frozenset(endpoints), denied)

    def name_refusal(self, host: str) -> str | None:
        """Why ``host`` is refused by name alone (before anything resolves it), or None."""
        if host.rstrip(".").lower() in self.metadata_hosts:
            return f"{host} is a cloud metadata service"
        return None

    def refusal(self, host: str, address: str, port: int) -> str | None:
        """Why connecting to ``address``:``port`` (which ``host`` resolved to) is refused, or None."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if (ip, port) in self.allowed_endpoints or any(ip in net for net in self.allowed):
            return None
        if any(ip in net for net in self.denied):
            return f"{host} resolves to {ip}, in the cluster's networks"
        kind = _kind(ip)
        return None if kind is None else f"{host} resolves to {ip}, {kind}"
