"""What a listening endpoint description binds, decided by Twisted's own parser.

Options are checked when they are parsed, before any port opens; a check that
read the text itself could disagree with the parser (``interface=`` given
twice: the parser binds the last). Here the parser's endpoint listens on a
reactor that only records what it was asked to bind.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor


@dataclass(frozen=True)
class Binding:
    """One listening socket: ``kind`` is ``tcp`` or ``unix``."""

    kind: str
    address: str
    port: int | None = None
    backlog: int | None = None

    @property
    def is_loopback(self) -> bool:
        """Reachable from this host only: a unix socket or a loopback address."""
        if self.kind == "unix":
            return True
        return bool(self.address) and ipaddress.ip_address(self.address).is_loopback


def bindings(description: str) -> list[Binding]:
    """Every socket ``description`` would listen on; ValueError if it is not valid.

    The message says what is wrong in one line.
    """
    reactor = MemoryReactor()
    try:
        serverFromString(reactor, description).listen(Factory())
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise ValueError(f"{description!r} is not a valid endpoint ({e})") from None
    found = [
        Binding("tcp", interface, port, backlog)
        for port, _, backlog, interface in reactor.tcpServers
    ]
    found += [
        Binding("tcp", interface, port, backlog)
        for port, _, _, backlog, interface in reactor.sslServers
    ]
    found += [
        Binding("unix", path, None, backlog)
        for path, _, backlog, *_ in reactor.unixServers
    ]
    if not found:
        raise ValueError(f"{description!r} does not listen on TCP or a unix socket")
    for binding in found:
        if binding.kind != "tcp":
            continue
        if binding.port is None or not 0 <= binding.port <= 65535:
            raise ValueError(f"{description!r}: {binding.port} is not a port number")
        if binding.address:
            try:
                ipaddress.ip_address(binding.address)
            except ValueError:
                raise ValueError(
                    f"{description!r}: {binding.address!r} is not an IP address"
                ) from None
    return found


def is_loopback(description: str) -> bool:
    """Whether all that ``description`` listens on is reachable from this host only."""
    return all(binding.is_loopback for binding in bindings(description))


def require_loopback(
    what: str, description: str | None, allowed: bool, flag: str
) -> None:
    """ValueError, in one line, if ``description`` listens beyond this host
    and ``allowed`` (the option ``flag``) does not say it may: for what runs
    code or shows the process's insides (the manhole, ``/debug/*``)."""
    if description is None or allowed or is_loopback(description):
        return
    raise ValueError(
        f"{what} must listen on loopback (tcp:PORT:interface=127.0.0.1) unless {flag}"
    )
