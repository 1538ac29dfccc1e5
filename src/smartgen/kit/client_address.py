"""The client's address behind trusted proxies, as a rate-limit key.

`X-Forwarded-For` is believed only when the TCP peer is one of the configured trusted
proxies, and then read from the right: each hop a trusted proxy added is skipped, and the
first address not in the list is the client. Anything that is not a well-formed address
stops the walk (the hop that forwarded it is the client, as far as we can know), so a
spoofed header never becomes a key of the caller's choosing. IPv6 clients are keyed by
their /64, the block one subscriber controls."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A header longer than this is read from its end only (the hops nearest to us).
MAX_HEADER_CHARS = 2048
MAX_HOPS = 16
UNKNOWN = "unknown"
# Keys of peers whose key does not depend on a header (no trusted proxy between them and
# us), remembered per process: a peer sends many requests, and parsing its address (an
# IPv6 one above all) costs more than the rest of the lookup.
PEER_CACHE_SIZE = 4096


def parse_address(text: str) -> Address | None:
    """A bare IPv4/IPv6 address (IPv6 may be bracketed), else None; IPv4-mapped IPv6
    becomes IPv4."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text or len(text) > 45:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_key(address: Address) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ClientAddresses:
    def __init__(self, trusted: Iterable[str]) -> None:
        self._trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(item, strict=False) for item in trusted
        )
        self._peer_keys: dict[str, str] = {}

    def _is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self._trusted)

    def client(self, peer: str | None, forwarded_for: list[str]) -> Address | None:
        """The client's address given the TCP peer's and the X-Forwarded-For values."""
        current = parse_address(peer) if peer else None
        if current is None or not self._trusted or not self._is_trusted(current):
            return current
        joined = ",".join(forwarded_for)[-MAX_HEADER_CHARS:]
        hops = joined.split(",")[::-1][:MAX_HOPS]
        for hop in hops:
            address = parse_address(hop)
            if address is None:
                return current
            current = address
            if not self._is_trusted(address):
                return address
        return current

    def key(self, peer: str | None, forwarded_for: list[str]) -> str:
        """The rate-limit key of the client: its address (its /64 for IPv6)."""
        if peer is None:
            return UNKNOWN
        known = self._peer_keys.get(peer)
        if known is not None:
            return known
        current = parse_address(peer)
        if current is not None and self._trusted and self._is_trusted(current):
            address = self.client(peer, forwarded_for)  # from the header: not remembered
            return address_key(address) if address is not None else UNKNOWN
        key = address_key(current) if current is not None else UNKNOWN
        if len(self._peer_keys) >= PEER_CACHE_SIZE:
            # The oldest entry goes first (dicts keep insertion order).
            self._peer_keys.pop(next(iter(self._peer_keys)))
        self._peer_keys[peer] = key
        return key
