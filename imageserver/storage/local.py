"""Storage on the local file system, every call run in the I/O thread pool."""

from __future__ import annotations

import contextlib
import os
import tempfile

from imageserver.pools import Runner
from imageserver.storage import StoredObject, content_type_for, etag_of

_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class LocalStorage:
    """Keeps each key as a file under ``root``.

    A write goes to a hidden temporary file in the target folder and is
    renamed over the target; names starting with ``.`` are never listed or
    served, so a crash mid-write leaves nothing visible. A durable write is
    flushed to disk (file, then folder) before it returns; a non-durable one
    (what can be made again) skips the flushes, which cost more CPU than
    writing a thumbnail, and may be lost or cut short by a power loss.
    """

    def __init__(self, root: str, run: Runner) -> None:
        self.root = os.path.abspath(root)
        self._run = run

    def path(self, key: str) -> str:
        path = os.path.normpath(os.path.join(self.root, key))
        if not path.startswith(self.root + os.sep) or any(
            part.startswith(".") for part in key.split("/")
        ):
            raise ValueError(f"key {key!r} is outside the storage root")
        return path

    async def get(self, key: str) -> StoredObject | None:
        return await self._run(_read, self.path(key), key)

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        durable: bool = True,
        etag: str | None = None,
    ) -> StoredObject:
        return await self._run(
            _write, self.path(key), key, data, content_type, etag, durable
        )

    async def exists(self, key: str) -> bool:
        return await self._run(os.path.isfile, self.path(key))

    async def list(self, folder: str) -> list[str]:
        return await self._run(_list, self.path(folder))

    async def delete(self, key: str) -> None:
        await self._run(_delete, self.path(key))


def check_writable(root: str) -> None:
    """Make ``root`` if needed and write a file in it; OSError if that fails."""
    os.makedirs(root, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=".writable.", dir=root)
    try:
        os.write(fd, b"ok")
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


def _read(path: str, key: str) -> StoredObject | None:
    try:
        with open(path, "rb") as f:
            modified = os.fstat(f.fileno()).st_mtime
            data = f.read()
    except _MISSING:
        return None
    return StoredObject(data, content_type_for(path), modified, etag_of(data, key))


def _write(
    path: str,
    key: str,
    data: bytes,
    content_type: str,
    etag: str | None,
    durable: bool,
) -> StoredObject:
    folder, name = os.path.split(path)
    fd, temporary = _temporary_file(folder, name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o644)
            if durable:
                os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    if durable:
        _fsync_folder(folder)
    modified = os.stat(path).st_mtime
    return StoredObject(data, content_type, modified, etag or etag_of(data, key))


def _temporary_file(folder: str, name: str) -> tuple[int, str]:
    # The cache sweeper may prune an empty folder between makedirs and
    # mkstemp: make it again then.
    for _ in range(3):
        os.makedirs(folder, exist_ok=True)
        try:
            return tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"{folder} keeps disappearing")


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _list(folder: str) -> list[str]:
    try:
        entries = list(os.scandir(folder))
    except _MISSING:
        return []
    return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())


def _delete(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
