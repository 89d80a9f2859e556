"""An image folder's gate: work that stores into it, or its purge, never both.

A purge must be the last word on a folder: an upload or a render that was
under way when it began must not store anything after it. So every piece of
work that stores into a folder passes the gate shared (many at once), and a
purge passes it alone: it waits for the work inside to finish storing, and
work that arrives meanwhile waits for the purge (a waiting purge goes first,
so a stream of renders cannot starve it). Within a process this is counted
here; across the workers of a host, ``host_locks`` adds a shared or exclusive
``flock`` on the folder's stripe.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred

from imageserver.storage.hostlocks import HostLocks


@dataclass
class _Folder:
    storing: int = 0
    purging: bool = False
    purges_waiting: int = 0
    waiters: list[Deferred[None]] = field(default_factory=list)

    def idle(self) -> bool:
        return not (self.storing or self.purging or self.purges_waiting)


class FolderGate:
    def __init__(self, host_locks: HostLocks | None = None) -> None:
        self._host_locks = host_locks
        self._folders: dict[str, _Folder] = {}

    @asynccontextmanager
    async def storing(self, folder: str) -> AsyncIterator[None]:
        """Pass with others; wait while the folder is purged or a purge waits."""
        state = self._folders.setdefault(folder, _Folder())
        while state.purging or state.purges_waiting:
            await self._changed(state)
        state.storing += 1
        try:
            async with self._host(folder, exclusive=False):
                yield
        finally:
            state.storing -= 1
            self._notify(folder, state)

    @asynccontextmanager
    async def purging(self, folder: str) -> AsyncIterator[None]:
        """Pass alone, once the work inside has stored what it stores."""
        state = self._folders.setdefault(folder, _Folder())
        state.purges_waiting += 1
        try:
            while state.purging or state.storing:
                await self._changed(state)
        except BaseException:  # cancelled: the work held back goes on
            state.purges_waiting -= 1
            self._notify(folder, state)
            raise
        state.purges_waiting -= 1
        state.purging = True
        try:
            async with self._host(folder, exclusive=True):
                yield
        finally:
            state.purging = False
            self._notify(folder, state)

    def busy(self, folder: str) -> bool:
        """Whether anything is inside or waiting at the folder's gate."""
        return folder in self._folders

    @asynccontextmanager
    async def _host(self, folder: str, *, exclusive: bool) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if self._host_locks is not None:
                await stack.enter_async_context(
                    self._host_locks.folder(folder, exclusive=exclusive)
                )
            yield

    @staticmethod
    async def _changed(state: _Folder) -> None:
        changed: Deferred[None] = Deferred()
        state.waiters.append(changed)
        await changed

    def _notify(self, folder: str, state: _Folder) -> None:
        # A waiter already called was cancelled: its client hung up.
        waiters = [w for w in state.waiters if not w.called]
        state.waiters = []
        if state.idle() and not waiters and self._folders.get(folder) is state:
            del self._folders[folder]
        for waiter in waiters:
            waiter.callback(None)
