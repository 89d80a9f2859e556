"""How much a namespace or a write token may ask for: token buckets shared
by the worker processes of a host.

A bucket holds up to ``rate x burst seconds`` tokens and refills at ``rate``
a second; each request takes one, and one that finds none is a 429 saying
when to try again. The workers of a host share their buckets through one
mapped file (as they share the memory cache's generations), each update a
read and a write of 24 bytes under an exclusive ``flock``: a client cannot
get a worker's share from each worker. Several hosts each keep their own
(docs/security.md says why).
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from imageserver.errors import TooMany
from imageserver.metrics.events import Events

#: Buckets a host keeps (keys that hash alike probe the next `PROBES`
#: slots; past them, the oldest of those is given to the new key).
SLOTS = 1 << 14
PROBES = 16
#: A slot: the key's hash (0: empty), tokens, when last updated.
_SLOT = struct.Struct("<Qdd")
_SIZE = SLOTS * _SLOT.size


class TokenBuckets:
    """Token buckets by key; with ``path``, in a file every process of the
    host maps (made if missing), else in this process alone. ``now`` is the
    clock (seconds): the same for every process of the host."""

    def __init__(self, now: Callable[[], float], path: str | None = None) -> None:
        self._now = now
        self._fd: int | None = None
        if path is None:
            self._map = mmap.mmap(-1, _SIZE)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Blocks reserved: a page of a sparse map written when the disk
            # is full would kill the process (SIGBUS).
            os.posix_fallocate(fd, 0, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # kept open for the lock

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self._fd is None:
            yield  # one process: its reactor thread alone updates
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def take(self, key: str, rate: float, burst: float) -> float:
        """Take a token from ``key``'s bucket (``rate`` a second, up to
        ``burst`` held): 0 when there was one, else the seconds until there
        will be."""
        digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest())
        digest = digest or 1
        now = self._now()
        with self._locked():
            offset, tokens, stamp = self._slot(digest, now, burst)
            tokens = min(burst, tokens + max(0.0, now - stamp) * rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / rate
            _SLOT.pack_into(self._map, offset, digest, tokens, now)
        return wait

    def _slot(self, digest: int, now: float, burst: float) -> tuple[int, float, float]:
        """The offset of ``digest``'s slot and its tokens and time; a new
        slot starts full."""
        first = digest % SLOTS
        oldest, oldest_stamp = first, math.inf
        for probe in range(PROBES):
            offset = ((first + probe) % SLOTS) * _SLOT.size
            key, tokens, stamp = _SLOT.unpack_from(self._map, offset)
            if key == digest:
                return offset, tokens, stamp
            if key == 0:
                return offset, burst, now
            if stamp < oldest_stamp:
                oldest, oldest_stamp = offset, stamp
        return oldest, burst, now


@dataclass(frozen=True)
class Rates:
    """Requests a second (0: no limit) and how many seconds of them a
    bucket holds (the burst)."""

    #: Requests per namespace that find their variant not yet made.
    namespace_renders: float = 0
    #: Uploads (and batches) per namespace.
    namespace_uploads: float = 0
    #: Writes per write token.
    token_writes: float = 0
    burst_seconds: float = 5

    def __bool__(self) -> bool:
        return bool(
            self.namespace_renders or self.namespace_uploads or self.token_writes
        )


class RateLimiter:
    """`Rates` kept in `TokenBuckets`: each method takes a token or raises
    `TooMany` with the seconds to wait."""

    def __init__(
        self, rates: Rates, buckets: TokenBuckets, events: Events | None = None
    ) -> None:
        self.rates = rates
        self._buckets = buckets
        self._events = events

    def _take(self, kind: str, key: str, rate: float, what: str) -> None:
        if not rate:
            return
        burst = max(1.0, rate * self.rates.burst_seconds)
        wait = self._buckets.take(f"{kind}\0{key}", rate, burst)
        if wait:
            if self._events is not None:
                self._events.refused_by_rate(kind)
            raise TooMany(
                f"{what} than the {rate:g} a second it may: try again in "
                f"{math.ceil(wait)} s",
                retry_after=math.ceil(wait),
            )

    def render(self, namespace: str) -> None:
        """A request in ``namespace`` for a variant not made yet."""
        self._take(
            "render",
            namespace,
            self.rates.namespace_renders,
            f"namespace {namespace!r} asks for more variants not made yet",
        )

    def upload(self, namespace: str) -> None:
        self._take(
            "upload", namespace, self.rates.namespace_uploads,
            f"namespace {namespace!r} uploads more",
        )  # fmt: skip

    def write(self, token: str) -> None:
        """A write with ``token`` (its hash is the key: the token is not kept)."""
        key = hashlib.sha256(token.encode()).hexdigest()
        self._take(
            "write", key, self.rates.token_writes, "this write token writes more"
        )
