"""Fetching originals from source URLs with treq, within a deadline and a size limit."""

from __future__ import annotations

from urllib.parse import urlsplit

import treq
from treq.client import HTTPClient
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import (
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IResponse

from imageserver import __version__
from imageserver.errors import (
    ContentTooLarge,
    InvalidRequest,
    NotFound,
    SourceTimeout,
    SourceUnavailable,
)

log = Logger()

_HEADERS: dict[bytes | str, bytes | str] = {"User-Agent": f"imageserver/{__version__}"}
#: Every way a connection or an exchange can fail before a whole answer arrives.
_TRANSPORT_ERRORS = (
    error.ConnectError,
    error.DNSLookupError,
    error.ConnectionLost,
    error.ConnectionClosed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
    SchemeNotSupported,
)


class SourceFetcher:
    """Downloads a source URL into memory, or raises one of our errors.

    ``timeout`` bounds the whole exchange, body included (treq's own timeout
    stops counting once the headers arrive).
    """

    def __init__(
        self, client: HTTPClient, clock: IReactorTime, timeout: float, max_bytes: int
    ) -> None:
        self._client = client
        self._clock = clock
        self._timeout = timeout
        self._max_bytes = max_bytes

    async def fetch(self, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest("source must be an absolute http or https URL")
        download = defer.Deferred.fromCoroutine(self._download(url))
        download.addTimeout(self._timeout, self._clock)
        try:
            return await download
        except defer.TimeoutError:
            raise SourceTimeout(
                f"source did not answer within {self._timeout:g} seconds"
            ) from None
        except _TRANSPORT_ERRORS as e:
            log.info("source {url} failed: {error}", url=url, error=e)
            raise SourceUnavailable("source could not be downloaded") from None

    async def _download(self, url: str) -> bytes:
        response = await self._client.get(url, headers=_HEADERS, unbuffered=True)
        if response.code in (404, 410):
            _discard(response)
            raise NotFound(f"source answered {response.code}")
        if not 200 <= response.code < 300:
            _discard(response)
            raise SourceUnavailable(f"source answered {response.code}")
        if isinstance(response.length, int) and response.length > self._max_bytes:
            _discard(response)
            raise ContentTooLarge(self._too_large())
        chunks: list[bytes] = []
        received = 0

        def collect(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            if received > self._max_bytes:
                raise ContentTooLarge(self._too_large())
            chunks.append(chunk)

        await treq.collect(response, collect)
        return b"".join(chunks)

    def _too_large(self) -> str:
        return f"source is larger than the limit of {self._max_bytes} bytes"


class _Discard(Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]


def _discard(response: IResponse) -> None:
    """Drop an unwanted body without reading it; the connection is closed."""
    response.deliverBody(_Discard())
