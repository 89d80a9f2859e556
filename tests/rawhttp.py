"""Requests written byte by byte to a real listening port on loopback.

HTTP clients (treq, curl) tidy a request before sending it: they upper-case
methods, merge or drop framing headers. The server must be tested with what
a hostile client can send, so these helpers send exactly the bytes given.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure


class Exchange(Protocol):
    """A connection that sends ``data``, then whatever `send` is given, and
    collects all the server sends until it closes (``done``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(b"".join(self.received))


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` to 127.0.0.1:``port``; all the server sent until it closed."""
    return await (await connected(port, data)).done


async def connected(port: int, data: bytes) -> Exchange:
    """A connection to 127.0.0.1:``port`` that has sent ``data``."""
    protocol = Exchange(data)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), protocol)
    return protocol


def request_bytes(
    method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """One HTTP/1.1 request that asks the server to close after answering."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body


def status_of(answer: bytes) -> int:
    """The status code of the first response in ``answer``."""
    return int(answer.split(b" ", 2)[1])


def json_of(answer: bytes) -> Any:
    """The JSON body of the (only) response in ``answer``."""
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def headers_of(answer: bytes) -> dict[str, list[str]]:
    """The headers of the (only) response in ``answer``, by lower-case name."""
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1")
    found: dict[str, list[str]] = {}
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    return found


def body_of(answer: bytes) -> bytes:
    """The body of the (only) response in ``answer``."""
    return answer.partition(b"\r\n\r\n")[2]
