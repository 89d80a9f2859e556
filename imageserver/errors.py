"""Errors a client caused or must be told about.

They carry no HTTP: the web layer maps each class to one status in one place.
Messages are shown to clients, so they never contain paths, secrets or tracebacks.
"""

from __future__ import annotations


class ImageServerError(Exception):
    """Base class; ``str(error)`` is the message sent to the client."""

    #: What the operator may be told beyond that (the command line's item
    #: lines): the cause a client is not told, such as an origin's address.
    detail: str | None = None


class InvalidRequest(ImageServerError):
    """A malformed variant name, parameter or option (400)."""


class NotCanonical(ImageServerError):
    """A valid variant name spelled otherwise than its canonical name (301)."""

    def __init__(self, name: str, canonical: str) -> None:
        super().__init__(f"{name!r} is spelled {canonical!r}")
        self.canonical = canonical


class Forbidden(ImageServerError):
    """The request is understood but not allowed (403)."""


class NotFound(ImageServerError):
    """No such namespace, image, file or served extension (404)."""


class ContentTooLarge(ImageServerError):
    """A body or download over ``max_source_bytes`` (413)."""


class UnsupportedImage(ImageServerError):
    """Bytes that are not a decodable image of an accepted format (415)."""


class NotAnImage(UnsupportedImage):
    """Bytes no accepted format recognises (415), said of whose bytes they
    were: the body, a download, a file (`about` says it of another)."""

    def __init__(self, formats: tuple[str, ...], subject: str = "the body") -> None:
        super().__init__(
            f"{subject} is not an image in a supported format ({', '.join(formats)})"
        )
        self.formats = formats
        self.subject = subject

    def __reduce__(self) -> tuple[type[NotAnImage], tuple[tuple[str, ...], str]]:
        return NotAnImage, (self.formats, self.subject)

    def about(self, subject: str) -> NotAnImage:
        return NotAnImage(self.formats, subject)


class ImageTooLarge(ImageServerError):
    """An image whose declared dimensions exceed ``max_source_pixels`` (422)."""


class SourceUnavailable(ImageServerError):
    """A source URL that failed other than by 404 or timeout (502)."""


class SourceTimeout(ImageServerError):
    """A source URL that did not answer within ``http_timeout`` (504)."""


class StorageFailed(ImageServerError):
    """The storage backend refused an operation: credentials, bucket, policy (502)."""


class StorageUnavailable(ImageServerError):
    """The storage backend cannot be reached, written or is overloaded (503)."""


class StorageFull(ImageServerError):
    """The storage has no room left for the write (507)."""


class Overloaded(ImageServerError):
    """Too much work is waiting already; come back shortly (503)."""


class Stopping(Overloaded):
    """The server is stopping and takes no more work (503). Background work
    that meets it during a shutdown ends quietly: nothing is wrong."""


class Conflict(ImageServerError):
    """What was asked for clashes with what is stored (409): an upload that
    refuses near-duplicates, of one."""


class TooMany(ImageServerError):
    """This client already has as many of something running as it may, such
    as batch jobs, or asks faster than it may (429): wait for one to
    finish, or ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
