"""Where originals, info.json, variants and files are kept: one interface.

Keys are ``/``-separated paths built by `imageserver.naming.ImageId.key`, so
every backend shares one layout: ``{ns}/6e0/072/682/e66287b662827da75b244a3/w200.jpg``.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from typing import Protocol

from imageserver.naming import OUTPUT_FORMATS, is_immutable, original_digest

#: Paths of generated objects are content-addressed: they never change.
IMMUTABLE = "public, max-age=31536000, immutable"
#: Files clients store under a name may be replaced: revalidate every time.
REVALIDATE = "public, no-cache"
#: What a preset, a .auto name or a watermark by its name stands for may
#: change (the operator edits it, --extensions changes): kept an hour.
PRESET_LIFETIME = "public, max-age=3600"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One stored file, read whole (every stored file is bounded in size)."""

    data: bytes
    content_type: str
    #: Seconds since the epoch.
    modified: float
    #: A strong validator, quoted as it goes in an ETag header.
    etag: str


class Storage(Protocol):
    """The operations the rest of the server needs from a backend.

    Writes are atomic: a reader sees the old object, the new one, or none,
    never part of one. Missing objects are ``None`` or ``False``, not errors.

    Every method may raise, and only raises, what a client is told as
    storage trouble (`imageserver.errors`): `StorageUnavailable` (503: cannot
    be reached or written now, try again), `StorageFull` (507: no room left)
    or `StorageFailed` (502: the backend refused, e.g. credentials or
    policy). A key outside the layout is a bug, `ValueError`.
    """

    async def get(self, key: str) -> StoredObject | None:
        """The object at ``key``, or ``None``."""
        ...

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        durable: bool = True,
        etag: str | None = None,
    ) -> StoredObject:
        """Store ``data`` at ``key``, replacing any object there.

        With ``durable=False`` the write may finish in the background (tracked,
        and readable here meanwhile); use it for what can be made again.
        ``etag`` is the data's `etag_of` when the caller has it, hashed off the
        reactor: a write that answers before it lands needs it.
        """
        ...

    async def exists(self, key: str) -> bool:
        """Whether an object is at ``key``."""
        ...

    async def list(self, folder: str) -> list[str]:
        """The names of the objects directly under ``folder``, sorted."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``, and any write of it still on its way; removing a
        missing object is not an error."""
        ...

    async def delete_prefix(self, folder: str) -> None:
        """Remove every object under ``folder``, at any depth, and every
        write under it still on its way (an image's purge).

        Nothing under ``folder`` is left once it returns, except what is
        written after it started. An empty or missing folder is not an error.
        """
        ...

    async def usage(self, folder: str) -> int:
        """The bytes of the objects under ``folder``, at any depth, writes on
        their way included (a namespace's quota): a walk or a listing of
        them all, so not for a request's path."""
        ...


def under(key: str, prefix: str) -> bool:
    """Whether ``key`` is ``prefix`` itself or inside the folder ``prefix``."""
    prefix = prefix.rstrip("/")
    return key == prefix or key.startswith(prefix + "/")


def cache_control(key: str) -> str:
    """How long a copy of the object at ``key`` may be used: by browsers and
    CDNs in front of the server, and of the bucket itself."""
    return IMMUTABLE if is_immutable(key) else REVALIDATE


def content_type_for(name: str) -> str:
    """The Content-Type a file is served with, from its name's extension."""
    ext = name.rpartition(".")[2] if "." in name else ""
    if ext in OUTPUT_FORMATS:
        return OUTPUT_FORMATS[ext]
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def etag_of(data: bytes, key: str = "") -> str:
    """The md5 of ``data``, quoted.

    An original's key already spells it (originals are stored under their
    md5), so the megabytes read to render a variant are not hashed again.
    """
    digest = (
        original_digest(key) or hashlib.md5(data, usedforsecurity=False).hexdigest()
    )
    return f'"{digest}"'
