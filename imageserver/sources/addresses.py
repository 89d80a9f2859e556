"""Which network addresses a source URL may reach: the SSRF policy, pure Python."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Cloud metadata services, named so the refusal says what was at stake.
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)


def _embedded(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), if any."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def source_host(raw: str) -> str:
    """The host of a URL as the policy checks it and a connection uses it.

    Percent-encoding is decoded (``%31%32%37.0.0.1`` is 127.0.0.1), IPv6
    brackets are dropped (``[::1]`` is ``::1``, a zone id stays), an address is
    written the standard way, and anything else must be a valid host name.
    ValueError says what is wrong.
    """
    try:
        host = unquote(raw, errors="strict").strip()
    except UnicodeDecodeError:
        raise ValueError(f"source host {raw!r} is not valid UTF-8") from None
    if not host:
        raise ValueError("the source URL has no host")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if ":" in host or "%" in host:
        raise ValueError(f"source host {raw!r} is not a valid address")
    try:
        host.encode("idna")
        # What the request will carry (hyperlink encodes with this): a name
        # it cannot encode is refused here, said in our words.
        idna.encode(host, uts46=True)
    except UnicodeError as e:
        raise ValueError(
            f"source host {raw!r} is not a valid host name: {_idna_reason(host, e)}"
        ) from None
    return host.lower()


def _idna_reason(host: str, e: UnicodeError) -> str:
    """What is wrong with a host name, in words rather than a codec's."""
    found = re.search(r"Codepoint U\+([0-9A-F]{4,6})", str(e))
    if found and chr(int(found[1], 16)) in host:
        return (
            f"{chr(int(found[1], 16))!r} (U+{found[1]}) is not allowed; a host "
            "name is letters, digits and hyphens, in labels separated by dots"
        )
    if isinstance(e, idna.IDNAError) and not found:
        return str(e)[:1].lower() + str(e)[1:]
    return "a label is empty, longer than 63 characters or not IDNA-encodable"


def refusal(text: str) -> str | None:
    """Why ``text`` (an IP address) may not be fetched from, or None if it may."""
    address = _embedded(ipaddress.ip_address(text))
    if address in _METADATA:
        return "a cloud metadata address"
    for test, reason in (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
    ):
        if test:
            return reason
    if not address.is_global:
        return "not publicly routable"
    return None


@dataclass(frozen=True)
class SourcePolicy:
    """What the source fetcher may connect to.

    ``allow_private`` lets every address through (tests, trusted networks);
    ``allowed_networks`` lets just these networks through (an intranet image
    host); ``allowlist`` limits host names to these glob patterns.
    """

    allow_private: bool = False
    allowlist: Sequence[str] = ()
    allowed_networks: Sequence[str] = ()
    #: An origin's scheme, host and port: the one place its fetches
    #: (redirects included) reach.
    origin: tuple[str, str, int] | None = None

    def endpoint_refusal(self, scheme: str, host: str, port: int) -> str | None:
        """Why a connection to ``scheme://host:port`` is refused, if it is:
        anywhere but an origin's own place."""
        if self.origin is None:
            return None
        pinned = self.origin[0], self.origin[1].lower(), self.origin[2]
        if (scheme, host.lower(), port) != pinned:
            return (
                f"the origin at {pinned[1]} redirected to {scheme}://{host}:{port}:"
                " an origin's objects are fetched from its own scheme, host and "
                "port alone"
            )
        return None

    def host_refusal(self, host: str) -> str | None:
        if self.allowlist and not any(
            fnmatch.fnmatchcase(host.lower(), pattern.lower())
            for pattern in self.allowlist
        ):
            return f"source host {host} is not in the allowlist"
        return None

    def address_refusal(self, host: str, address: str) -> str | None:
        if self.allow_private:
            return None
        ip = ipaddress.ip_address(address)
        if any(
            ip in ipaddress.ip_network(n, strict=False) for n in self.allowed_networks
        ):
            return None
        reason = refusal(address)
        if reason is None:
            return None
        return (
            f"source host {host} resolves to {address}, which is {reason}; "
            "such sources are fetched only when the server runs with "
            "--allow_private_sources or --allow_networks"
        )
