"""Storage on the local file system, every call run in the I/O thread pool."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from imageserver.errors import StorageFull, StorageUnavailable
from imageserver.runtime.pools import Runner
from imageserver.storage import StoredObject, content_type_for, etag_of

log = Logger()
T = TypeVar("T")

_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


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

    async def _call(self, f: Callable[..., T], *args: Any) -> T:
        return await self._run(translate_errors, f, *args)

    async def get(self, key: str) -> StoredObject | None:
        return await self._call(_read, self.path(key), key)

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        durable: bool = True,
        etag: str | None = None,
    ) -> StoredObject:
        return await self._call(
            _write, self.root, self.path(key), key, data, content_type, etag, durable
        )

    async def exists(self, key: str) -> bool:
        return await self._call(os.path.isfile, self.path(key))

    async def list(self, folder: str) -> list[str]:
        return await self._call(_list, self.path(folder))

    async def delete(self, key: str) -> None:
        await self._call(_delete, self.path(key))

    async def delete_prefix(self, folder: str) -> None:
        await self._call(_delete_tree, self.path(folder), self.root)

    async def usage(self, folder: str) -> int:
        return await self._call(_usage, self.path(folder))


#: What each call does, as its log lines say it (the error names the path):
#: words a reader knows, not this module's function names.
_DOING = {
    "_read": "reading",
    "_write": "writing",
    "isfile": "looking for a file",
    "_list": "listing",
    "_delete": "deleting",
    "_delete_tree": "deleting a folder",
    "_usage": "adding up the sizes in a folder",
    "_open": "opening a lock file",  # imageserver.storage.hostlocks
    "_try": "taking a lock",
}


def translate_errors(f: Callable[..., T], *args: Any) -> T:
    """The file system's failures as the two a client is told about.

    A full disk (or quota) is 507; a disk that cannot be written (read-only,
    no permission) or that fails is 503. Either is storage trouble, not a bug.
    """
    try:
        return f(*args)
    except OSError as e:
        log.warn(
            "local storage failed {operation}: {error}",
            operation=_DOING.get(f.__name__, "working"),
            error=e,
        )
        if e.errno in _FULL:
            raise StorageFull("the storage is full") from None
        raise StorageUnavailable(
            f"the storage cannot be used right now ({e.strerror or e})"
        ) from None


class WritableCheck(Service):
    """Writes a small hidden file under ``root`` every ``interval`` seconds.

    ``problem`` says why the last attempt failed (a full or read-only disk),
    or is None: readiness reports it, so a load balancer stops sending work
    to a server whose disk cannot take it.
    """

    def __init__(
        self, root: str, clock: IReactorTime, run: Runner, interval: float = 10.0
    ) -> None:
        self._root = root
        self._run = run
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock
        self._interval = interval
        self.problem: str | None = None

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def check(self) -> Deferred[None]:
        def failed(failure: Any) -> None:
            failure.trap(OSError)
            error = failure.value
            problem = f"the storage cannot be written: {error.strerror or error}"
            if problem != self.problem:
                log.error("{problem}", problem=problem)
            self.problem = problem

        def worked(_: None) -> None:
            if self.problem is not None:
                log.info("the storage can be written again")
            self.problem = None

        return self._run(check_writable, self._root).addCallbacks(worked, failed)


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
    root: str,
    path: str,
    key: str,
    data: bytes,
    content_type: str,
    etag: str | None,
    durable: bool,
) -> StoredObject:
    folder, name = os.path.split(path)
    try:
        fd, temporary = _temporary_file(folder, name)
    except OSError:
        _prune(folder, root)
        raise
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
        _prune(folder, root)
        raise
    if durable:
        _fsync_folder(folder)
    modified = os.stat(path).st_mtime
    return StoredObject(data, content_type, modified, etag or etag_of(data, key))


#: The most bytes of a name its temporary file repeats: the rest of that
#: file's name (a dot, 8 random characters, ".tmp") must fit a disk's 255.
_TEMPORARY_NAME_BYTES = 64


def _temporary_file(folder: str, name: str) -> tuple[int, str]:
    # Named after the file it becomes, as far as a short name goes.
    prefix = name.encode()[:_TEMPORARY_NAME_BYTES].decode(errors="ignore")
    # The cache sweeper may prune an empty folder between makedirs and
    # mkstemp: make it again then.
    for _ in range(3):
        os.makedirs(folder, exist_ok=True)
        try:
            return tempfile.mkstemp(prefix=f".{prefix}.", suffix=".tmp", dir=folder)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"{folder} keeps disappearing")


def _prune(folder: str, root: str) -> None:
    """Remove ``folder`` and its parents up to ``root`` while they are empty.

    A write that failed leaves no empty chain of folders behind. A folder
    another write has just made is not empty once its file is in, and a
    write that loses its folder this way makes it again (`_temporary_file`).
    """
    while folder.startswith(root + os.sep):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


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


def _usage(folder: str) -> int:
    """The sizes of the files under ``folder`` that are objects (not hidden:
    a temporary file is not stored yet)."""
    total = 0
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except _MISSING:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def _delete(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _delete_tree(folder: str, root: str) -> None:
    """Remove ``folder`` with everything in it (temporary files included),
    then its parents up to ``root`` while they are empty.

    A write that lands meanwhile makes a folder not empty: it is removed on
    the next pass.
    """
    for _ in range(3):
        try:
            for parent, folders, files in os.walk(folder, topdown=False):
                for name in files:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(parent, name))
                for name in folders:
                    with contextlib.suppress(FileNotFoundError):
                        os.rmdir(os.path.join(parent, name))
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(folder)
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise
            continue
        break
    else:
        raise OSError(errno.ENOTEMPTY, "writes keep landing in the folder", folder)
    _prune(os.path.dirname(folder), root)
