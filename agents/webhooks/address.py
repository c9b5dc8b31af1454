"""The outbound address policy (SSRF): which addresses a webhook may connect to, applied
to what the endpoint's host resolves to at connect time (agents/delivery.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud instance-metadata services: a webhook URL (or a DNS answer) pointing here would
# hand the receiver's response, or a request with our signature, to the metadata API.
# 169.254.169.254 (AWS, GCP's metadata.google.internal, Azure, OpenStack, ...) is also
# link-local; fd00:ec2::254 is AWS's IPv6 endpoint (a unique-local address);
# 100.100.100.200 is Alibaba Cloud's (in the shared 100.64.0.0/10 range).
CLOUD_METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                                                           "169.254.170.2"))
# Why an address is refused (closed set, in errors and docs).
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # "this host on this network": not a destination
REFUSALS = ("cloud_metadata", "link_local", "unspecified", "multicast", "reserved", "private", "invalid")


def parse_address(host: str) -> IPAddress | None:
    """A resolved host string as an address (an IPv6 zone `%eth0` dropped, an
    IPv4-mapped IPv6 address as the IPv4 address it reaches); None if it is not one."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which resolved addresses a webhook may connect to. Refused unless an `allow`
    network covers them: cloud metadata, link-local, unspecified, multicast and
    reserved addresses; with `deny_private`, every address that is not globally
    routable too (loopback, RFC 1918, unique-local, CGNAT). Applied to the addresses
    a host resolves to, at connect time (agents/delivery.py `GuardedConnector`)."""

    allow: tuple[IPNetwork, ...] = ()
    deny_private: bool = False

    def refusal(self, host: str) -> str | None:
        """None when `host` (an IP address string) may be connected to, else why not
        (one of REFUSALS)."""
        ip = parse_address(host)
        if ip is None:
            return "invalid"
        if any(ip.version == net.version and ip in net for net in self.allow):
            return None
        if ip in CLOUD_METADATA:
            return "cloud_metadata"
        if ip.is_link_local:
            return "link_local"
        if ip.is_unspecified:
            return "unspecified"
        if ip.is_multicast:
            return "multicast"
        if isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK:
            return "unspecified"
        if ip.is_loopback or not ip.is_reserved:  # (IPv6 loopback ::1 lies in the reserved ::/8)
            return "private" if self.deny_private and not ip.is_global else None
        return "reserved"


class AddressRefused(OSError):
    """Every address the endpoint's host resolved to is refused by its policy."""

    def __init__(self, host: str, refused: Sequence[tuple[str, str]]):
        self.host = host
        self.refused = tuple(refused)
        shown = ", ".join(f"{a} ({why})" for a, why in self.refused[:4])
        super().__init__(f"address_refused: {host} resolves only to refused addresses: {shown}")
