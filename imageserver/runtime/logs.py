"""Logs as JSON lines: one flat object per event, for log shippers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer

#: Keys of twisted.logger's own bookkeeping, and of the legacy log API.
_SKIP = frozenset({"message", "time", "system", "isError", "format", "why"})


@implementer(ILogObserver)
class JSONLines:
    """Writes ``{"time", "level", "namespace", "message", ...fields}`` per line.

    The fields are the event's own (route, status, duration, hash, ...), so a
    log pipeline can filter on them; a failure adds its traceback.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
            "level": getattr(level, "name", "info"),
            "namespace": event.get("log_namespace", ""),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in _SKIP and key not in record:
                record[key] = value
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self._out.write(json.dumps(record, default=repr) + "\n")
        self._out.flush()


def tagged(observer: ILogObserver, worker: int) -> ILogObserver:
    """``observer``, with every event marked as worker ``worker``'s: its
    system in text logs (``[worker 2]``), a ``worker`` field in JSON ones."""

    @implementer(ILogObserver)
    def observe(event: LogEvent) -> None:
        observer({**event, "log_system": f"worker {worker}", "worker": worker})

    return observe  # type: ignore[return-value]
