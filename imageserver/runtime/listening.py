"""Listening ports as services that say where they listen, or why they cannot."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class StartupFailed(Exception):
    """The server cannot start; ``str()`` says why, in one line."""


class Listening(Service):
    """Listens on an endpoint description when the service starts.

    A port that cannot be bound (in use, no permission) is `StartupFailed`
    at once, with one line saying which port and why; a bound one is logged
    with the address it really has (``tcp:0`` included).
    """

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: IProtocolFactory,
        what: str,
        scheme: str = "http",
    ) -> None:
        self._reactor = reactor
        #: What is spoken on it, for the log's address.
        self._scheme = scheme
        self._description = description
        self._factory = factory
        self.what = what
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        outcome: list[Any] = []
        listening = serverFromString(self._reactor, self._description).listen(
            self._factory
        )
        listening.addBoth(outcome.append)
        if not outcome:  # an endpoint that binds later: report it then
            listening.addBoth(self._bound)
            return
        self._bound(outcome[0])

    def _bound(self, result: IListeningPort | Failure) -> None:
        if isinstance(result, Failure):
            message = f"cannot listen on {self._description} ({self.what} port): "
            raise StartupFailed(message + result.getErrorMessage())
        self.port = result
        log.info(
            "{what} port listening on {address}",
            what=self.what,
            address=_address(result.getHost(), self._scheme),
        )

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()  # type: ignore[no-any-return]


def _address(host: Any, scheme: str) -> str:
    if hasattr(host, "port"):
        address = f"[{host.host}]" if ":" in host.host else host.host
        return f"{scheme}://{address}:{host.port}"
    return f"unix:{getattr(host, 'name', host)}"
