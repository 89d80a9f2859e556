"""A twisted.web Site that hides tracebacks and bounds request bodies."""

from __future__ import annotations

from typing import cast

from twisted.web.resource import IResource
from twisted.web.server import Request, Site


class BoundedRequest(Request):
    """Stops keeping a request body once it passes the site's limit.

    The handler sees ``body_too_large`` and answers 413; the bytes past the
    limit are read and dropped, never held in memory or on disk.
    """

    body_too_large = False
    _received = 0

    @property
    def max_body_bytes(self) -> int:
        site = cast(BoundedSite, self.channel.site)  # type: ignore[attr-defined]
        return site.max_body_bytes

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body_bytes:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._received += len(data)
        if self._received > self.max_body_bytes:
            self.body_too_large = True
            assert self.content is not None
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


class BoundedSite(Site):
    requestFactory = BoundedRequest
    displayTracebacks = False

    def __init__(self, resource: IResource, max_body_bytes: int) -> None:
        super().__init__(resource)
        self.max_body_bytes = max_body_bytes
