"""Webhooks: each stored, generated, deleted or purged image told to receivers.

An event is a JSON POST, signed with ``--webhook_secret`` in the header
``X-Imageserver-Signature: sha256=<hex of HMAC-SHA256(secret, body)>``. It
is queued and sent in the background: a request never waits for a receiver
and never fails because of one. Each receiver has a bounded queue of its
own: while it fails, one event at a time is retried with backoff (1 s
doubling to 5 minutes), the others wait behind it; an event older than
``--webhook_retry_seconds``, or one that finds the queue full, is dropped and
counted. Delivery is at least once (a retry after a lost answer repeats an
event): receivers deduplicate by ``id``.

A receiver's status alone decides: 2xx is delivered, anything else (a 3xx
included: redirects are never followed, the signed event goes nowhere else)
is retried. At most `ANSWER_BYTES` of its answer are read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import treq
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool

from imageserver import __version__
from imageserver.metrics import tracing
from imageserver.metrics.events import Events
from imageserver.naming import ImageId
from imageserver.runtime.waiting import WhenIdle, drained
from imageserver.sources.fetcher import read_bounded
from imageserver.sources.outbound import BoundedEndpoints
from imageserver.storage.queue import RetryPolicy

log = Logger()

SIGNATURE_HEADER = "X-Imageserver-Signature"
#: Requests to one receiver at once while it answers.
IN_FLIGHT = 8
#: Seconds a receiver has to answer an event.
TIMEOUT = 10.0
#: Bytes of a receiver's answer read; the rest is not (the connection is closed).
ANSWER_BYTES = 4096
RETRY = backoffPolicy(initialDelay=1.0, maxDelay=300.0, factor=2.0)


def signature_of(secret: bytes, body: bytes) -> str:
    """The header's value for ``body``: what a receiver computes to check it."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class _Event:
    body: bytes
    kind: str
    created: float
    #: The trace of the work that made the event (``traceparent``), if any.
    trace: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """One URL: its queue, its requests in flight, its backoff."""

    def __init__(self, hooks: Webhooks, url: str) -> None:
        self.hooks = hooks
        self.url = url
        self.queue: deque[_Event] = deque()
        self.in_flight = 0
        self.failures = 0
        self.paused: IDelayedCall | None = None
        self.sending: set[Deferred[None]] = set()
        self.closed = False

    def pump(self) -> None:
        hooks = self.hooks
        limit = 1 if self.failures else IN_FLIGHT
        while (
            self.queue
            and self.paused is None
            and self.in_flight < limit
            and not self.closed
        ):
            event = self.queue.popleft()
            if hooks.clock.seconds() - event.created > hooks.retry_seconds:
                hooks.done("expired")
                log.warn(
                    "webhook {url}: {kind} event dropped after {seconds:g}s of "
                    "failures",
                    url=self.url,
                    kind=event.kind,
                    seconds=hooks.retry_seconds,
                )
                continue
            self.in_flight += 1
            sending = Deferred.fromCoroutine(self._send(event))
            if not sending.called:
                self.sending.add(sending)
                sending.addBoth(self._sent, sending)

    async def _send(self, event: _Event) -> None:
        hooks = self.hooks
        error = await hooks.post(self.url, event)
        self.in_flight -= 1
        if self.closed and error is not None:  # given up at shutdown
            self.queue.appendleft(event)
            return
        if error is None:
            self.failures = 0
            hooks.done("delivered")
        else:
            self.queue.appendleft(event)
            delay = hooks.retry(self.failures)
            self.failures += 1
            hooks.done("retried")
            log.warn(
                "webhook {url} failed ({error}); retrying in {delay:.3g}s",
                url=self.url,
                error=error,
                delay=delay,
            )
            if self.paused is None and not self.closed:
                self.paused = hooks.clock.callLater(delay, self._resume)
        self.pump()
        hooks.idle.check()

    def _sent(self, result: object, sending: Deferred[None]) -> None:
        self.sending.discard(sending)

    def _resume(self) -> None:
        self.paused = None
        self.pump()

    def pending(self) -> int:
        return len(self.queue) + self.in_flight

    def close(self) -> None:
        """Shutting down: nothing more is sent or retried, and what is in
        flight is given up (its event counts as not delivered)."""
        self.closed = True
        if self.paused is not None and self.paused.active():
            self.paused.cancel()
        for sending in list(self.sending):
            sending.cancel()


class Webhooks(Service):
    """A `imageserver.lifecycle.listeners.Lifecycle` that posts events to ``urls``."""

    def __init__(
        self,
        reactor: Any,
        urls: Sequence[str],
        secret: bytes,
        *,
        max_queued: int,
        retry_seconds: float,
        shutdown_timeout: Any,
        events: Events | None = None,
        retry: RetryPolicy = RETRY,
    ) -> None:
        self.clock = reactor
        self._secret = secret
        self._max_queued = max_queued
        self.retry_seconds = retry_seconds
        self.retry = retry
        self._shutdown_timeout = shutdown_timeout
        self._events = events or Events()
        self._receivers = [_Receiver(self, url) for url in urls]
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._client = treq.client.HTTPClient(
            Agent.usingEndpointFactory(
                reactor, BoundedEndpoints(reactor), pool=self._pool
            )
        )
        self.idle = WhenIdle(lambda: self.pending > 0)

    @property
    def pending(self) -> int:
        return sum(r.pending() for r in self._receivers)

    # -- Lifecycle ------------------------------------------------------------

    def stored(self, image: ImageId, keys: Sequence[str]) -> None:
        self._emit("stored", image, keys)

    def generated(self, image: ImageId, keys: Sequence[str]) -> None:
        self._emit("generated", image, keys)

    def deleted(self, image: ImageId, keys: Sequence[str]) -> None:
        self._emit("deleted", image, keys)

    def purged(self, image: ImageId, keys: Sequence[str]) -> None:
        self._emit("purged", image, keys)

    # -------------------------------------------------------------------------

    def _emit(self, kind: str, image: ImageId, keys: Sequence[str]) -> None:
        body = json.dumps(
            {
                "id": str(uuid.uuid4()),
                "type": kind,
                "namespace": image.namespace,
                "hash": image.hash,
                "keys": list(keys),
                "time": time.time(),
            }
        ).encode()
        event = _Event(body, kind, self.clock.seconds())
        tracing.inject(event.trace)
        for receiver in self._receivers:
            if receiver.pending() >= self._max_queued:
                self.done("dropped")
                log.warn(
                    "webhook {url}: {kind} event dropped, {count} events are "
                    "waiting already",
                    url=receiver.url,
                    kind=kind,
                    count=receiver.pending(),
                )
                continue
            receiver.queue.append(event)
            receiver.pump()
        self._events.webhook_pending(self.pending)

    async def post(self, url: str, event: _Event) -> str | None:
        """Send one event; None when the receiver took it, else why not."""
        headers: dict[bytes | str, bytes | str] = {
            "Content-Type": "application/json",
            "User-Agent": f"imageserver/{__version__}",
            "X-Imageserver-Event": event.kind,
            SIGNATURE_HEADER: signature_of(self._secret, event.body),
        }
        headers.update(event.trace)
        try:
            # A receiver is told, never followed: a redirect could send the
            # signed event anywhere (and treq would repeat it as a GET).
            response = await self._client.post(
                url,
                data=event.body,
                headers=headers,
                timeout=TIMEOUT,
                allow_redirects=False,
            )
            # The answer is read only to keep the connection for the next
            # event: a few KiB, then the connection is dropped, so a receiver
            # streaming without end costs nothing.
            await read_bounded(response, ANSWER_BYTES).addTimeout(TIMEOUT, self.clock)
        except Exception as e:
            # A receiver's failure is not ours: refused, reset, timed out,
            # TLS, DNS ... all mean try again later.
            return f"{type(e).__name__}: {e}"
        if 300 <= response.code < 400:
            return f"status {response.code} (redirects are not followed)"
        if not 200 <= response.code < 300:
            return f"status {response.code}"
        return None

    def done(self, outcome: str) -> None:
        self._events.webhook_done(outcome, self.pending)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        if self.pending and not await drained(
            self.idle.wait,
            self._shutdown_timeout,
            self.clock,
            f"{self.pending} webhook events",
        ):
            log.error(
                "shutting down with {count} webhook events not delivered",
                count=self.pending,
            )
        for receiver in self._receivers:
            receiver.close()
        await self._pool.closeCachedConnections()
