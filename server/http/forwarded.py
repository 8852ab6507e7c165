"""Which address a request came from: the peer, or behind trusted proxies, X-Forwarded-For.

Only a proxy listed in ``server.trusted_proxies`` may say who its client is; anyone
else could write any address into the header. Each proxy appends the address it got
the request from, so the header is read from the right: past every trusted proxy,
the first address is the client (nginx's ``real_ip_recursive``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or CIDR ranges (``10.0.0.5``, ``10.0.0.0/8``, ``::1``); ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR range: {value!r}") from None
    return tuple(networks)


class ClientAddresses:
    """Resolves each request's client address with a fixed set of trusted proxies."""

    def __init__(self, trusted: Iterable[Network] = ()) -> None:
        self._trusted = tuple(trusted)

    def trusted(self, address: str | None) -> bool:
        """Whether ``address`` is a trusted proxy (its X-Forwarded-For is believed)."""
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self._trusted)

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: ``peer`` unless it is a trusted proxy that says otherwise."""
        if not forwarded_for or not self._trusted or not self.trusted(peer):
            return peer
        client = peer
        for hop in reversed(forwarded_for.split(",")):
            ip = _ip(hop.strip())
            if ip is None:  # garbage a trusted proxy passed on: believe no further
                return client
            client = str(ip)
            if not any(ip in network for network in self._trusted):
                return client
        return client


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    # an IPv4 client of a dual-stack socket: ::ffff:10.0.0.5 is 10.0.0.5
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip
