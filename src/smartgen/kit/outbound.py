"""Which URLs the server may call on a user's behalf (webhooks): the server-side request
forgery rules.

A URL must be `https` (plain `http` only when allowed), name a host, carry no credentials,
and every address its host resolves to must be a public one. Loopback, private,
unique-local, carrier-grade NAT, multicast, reserved and unspecified addresses are
refused unless private networks are allowed; link-local addresses and the cloud metadata
services are refused always. The host is resolved here, at registration and again at each
delivery, and the delivery connects to an address this check passed (`webhooks/sender.py`), so a
name that resolves elsewhere later (DNS rebinding) gains nothing. IPv4 written in decimal,
octal or hexadecimal (`2130706433`, `0177.0.0.1`, `0x7f.1`) is read as the address it
means, and IPv4-mapped or -embedded IPv6 as its IPv4 address."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port → the addresses the host resolves to (text)
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_CHARS: Final = 2000
# Refused whatever the settings: link-local (where the metadata services live) and the
# metadata services' other addresses.
ALWAYS_REFUSED: Final = tuple(
    ipaddress.ip_network(net)
    for net in (
        "169.254.0.0/16",  # link-local; AWS, GCP, Azure, OpenStack metadata at .169.254
        "fe80::/10",  # link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud metadata
    )
)
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


class UrlRefused(ValueError):
    """A URL that may not be called, and why (`reason`, one phrase)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"URL refused: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CheckedUrl:
    """A URL that passed, and the addresses its host had when checked."""

    url: str
    scheme: str
    host: str  # as written (a name, or an address without brackets)
    port: int
    target: str  # path and query
    addresses: list[str]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # no IPv6 zone
        if address not in found:
            found.append(address)
    return found


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, in any form a resolver would read (dotted, decimal,
    octal, hexadecimal IPv4; IPv6), or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(part and _is_number(part) for part in host.split(".")):
        try:  # inet_aton reads the historical forms (0x7f.1, 017700000001, …)
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            raise _refused(f"the host {host!r} is not a valid IP address") from None
    return None


def _is_number(part: str) -> bool:
    lowered = part.lower()
    if lowered.startswith("0x"):
        return all(c in "0123456789abcdef" for c in lowered[2:])
    return lowered.isdigit()


def effective(address: IPAddress) -> IPAddress:
    """An IPv6 address that carries an IPv4 one (mapped, compatible, NAT64, 6to4) as
    that IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        packed = int(address)
        if packed >> 32 == 0 and packed > 1:  # ::a.b.c.d (deprecated "compatible")
            return ipaddress.IPv4Address(packed)
    return address


def address_refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why a delivery may not connect to `address`, or None when it may."""
    plain = effective(address)
    for candidate in {address, plain}:
        if any(candidate in net for net in ALWAYS_REFUSED if net.version == candidate.version):
            return f"{address} is a link-local or cloud metadata address"
    if allow_private:
        return None
    if plain.is_loopback:
        return f"{address} is a loopback address"
    if plain.is_unspecified:
        return f"{address} is an unspecified address"
    if plain.is_multicast:
        return f"{address} is a multicast address"
    if plain.is_private or not plain.is_global:
        return f"{address} is a private or reserved address"
    return None


async def check_url(
    url: str, *, allow_http: bool, allow_private: bool, resolve: Resolver = system_resolver
) -> CheckedUrl:
    """`url` with the addresses it may be called at; `UrlRefused` saying why not."""
    if not isinstance(url, str) or not url.strip():
        raise _refused("the URL is empty")
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        raise _refused(f"the URL is longer than {MAX_URL_CHARS} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise _refused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise _refused(f"the URL is malformed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise _refused("the URL must start with https://")
    if scheme == "http" and not allow_http:
        raise _refused("the URL must use https (plain http is not allowed here)")
    if parts.username is not None or parts.password is not None:
        raise _refused("the URL must not carry a user name or password")
    if not host:
        raise _refused("the URL names no host")
    port = port or (443 if scheme == "https" else 80)
    if port == 0:
        raise _refused("the URL's port must be 1 to 65535")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    literal = literal_address(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            async with asyncio.timeout(5):
                addresses = await resolve(host, port)
        except (OSError, TimeoutError, UnicodeError):
            raise _refused(f"the host {host!r} does not resolve") from None
        if not addresses:
            raise _refused(f"the host {host!r} does not resolve")
    for text in addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise _refused(f"the host {host!r} resolves to {text!r}, not an address") from None
        why = address_refusal(address, allow_private=allow_private)
        if why is not None:
            suffix = "" if literal is not None else f" (the host {host!r} resolves to it)"
            raise _refused(f"{why}{suffix}")
    return CheckedUrl(
        url=url, scheme=scheme, host=host, port=port, target=target, addresses=addresses
    )


def _refused(reason: str) -> UrlRefused:
    return UrlRefused(reason)
