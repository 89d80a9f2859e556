"""Write-behind uploads to a remote store: tracked, retried, drained at shutdown."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from imageserver.errors import StorageFailed, StorageUnavailable
from imageserver.events import Events
from imageserver.storage import Storage
from imageserver.waiting import WhenIdle, drained

log = Logger()


class Uploader(Service):
    """Copies objects to ``remote`` in the background until each one lands.

    A failed attempt is retried after ``first_delay`` seconds, doubling up to
    ``max_delay``, for as long as the service runs. A newer ``submit`` of a
    key still pending replaces its bytes. At shutdown the pending uploads get
    ``shutdown_timeout`` seconds (or what a callable says is left of the
    shutdown's time); any left are logged, key by key, as errors.
    """

    def __init__(
        self,
        remote: Storage,
        clock: IReactorTime,
        shutdown_timeout: float | Callable[[], float],
        first_delay: float = 1.0,
        max_delay: float = 60.0,
        events: Events | None = None,
    ) -> None:
        self._remote = remote
        self._events = events or Events()
        self._clock = clock
        self._shutdown_timeout = shutdown_timeout
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._pending: dict[str, tuple[bytes, str]] = {}
        self._idle = WhenIdle(lambda: bool(self._pending))
        self.uploaded = 0
        self.failed_attempts = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, key: str, data: bytes, content_type: str) -> None:
        running = key in self._pending
        self._pending[key] = (data, content_type)
        self._events.upload_queued(len(self._pending))
        if not running:
            Deferred.fromCoroutine(self._upload(key))

    async def _upload(self, key: str) -> None:
        delay = self._first_delay
        while True:
            data, content_type = self._pending[key]
            try:
                await self._remote.put(key, data, content_type)
            except (StorageUnavailable, StorageFailed) as e:
                self.failed_attempts += 1
                self._events.upload_finished(False, len(self._pending))
                log.warn(
                    "upload of {key} failed ({error}); retrying in {delay:g}s",
                    key=key,
                    error=e,
                    delay=delay,
                )
                await deferLater(self._clock, delay)
                delay = min(delay * 2, self._max_delay)
                continue
            except Exception:
                log.failure("upload of {key} failed; not retried", key=key)
                uploaded = False
                break
            if self._pending[key][0] is data:
                self.uploaded += 1
                uploaded = True
                break
            # A newer version arrived while this one was on its way.
        del self._pending[key]
        self._events.upload_finished(uploaded, len(self._pending))
        self._idle.check()

    def wait_idle(self) -> Deferred[None]:
        """Fires once nothing is pending."""
        return self._idle.wait()

    async def _drain(self) -> None:
        what = f"{len(self._pending)} pending uploads"
        if self._pending and not await drained(
            self.wait_idle, self._shutdown_timeout, self._clock, what
        ):
            for key in sorted(self._pending):
                log.error(
                    "shutting down before {key} reached remote storage; "
                    "it will be generated again when requested",
                    key=key,
                )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._drain())
