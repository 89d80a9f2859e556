"""Live debugging on the admin port (``--profile``): CPU profile, heap, thread stacks.

Every endpoint answers with a file a standard tool reads: a pstats or
callgrind profile, or plain text.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import threading
import traceback
import tracemalloc
from typing import Any

from klein import Klein, Response
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from imageserver.errors import InvalidRequest
from imageserver.naming import ascii_digits
from imageserver.web.responses import json_response, routing_error, server_error

MAX_PROFILE_SECONDS = 300
#: Frames kept per allocation by tracemalloc: enough to see the caller.
TRACE_FRAMES = 5


class HeapTracing(Service):
    """With ``--profile``, Python allocations are traced while the server runs.

    tracemalloc slows allocation down and takes memory of its own: that is
    the price of ``/debug/heap``, paid only when profiling is on.
    """

    def startService(self) -> None:
        super().startService()
        if not tracemalloc.is_tracing():
            tracemalloc.start(TRACE_FRAMES)

    def stopService(self) -> None:
        super().stopService()
        tracemalloc.stop()


class DebugApp:
    """Mounted under ``/debug`` on the admin port when ``--profile`` is on."""

    app = Klein()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._profiling = False

    @app.route("/profile", methods=["GET"])
    async def profile(self, request: IRequest) -> Response:
        """A CPU profile of every thread for ``seconds`` (default 10)."""
        import yappi

        seconds = _int_arg(request, "seconds", 10, 1, MAX_PROFILE_SECONDS)
        kind = (_arg(request, "format") or "pstat").lower()
        if kind not in ("pstat", "callgrind"):
            raise InvalidRequest("format is pstat or callgrind")
        threads = (_arg(request, "threads") or "all").lower()
        if threads not in ("all", "reactor"):
            raise InvalidRequest("threads is all or reactor")
        if self._profiling:
            return json_response(409, {"error": "a profile is already running"})
        self._profiling = True
        try:
            yappi.clear_stats()
            yappi.set_clock_type("cpu")
            yappi.start(builtins=False, profile_threads=True)
            try:
                await deferLater(self._clock, seconds)
            finally:
                yappi.stop()
            if threads == "reactor":  # the thread that runs the reactor
                reactor = threading.main_thread().ident
                stats = yappi.get_func_stats(
                    filter={
                        "ctx_id": next(
                            t.id for t in yappi.get_thread_stats() if t.tid == reactor
                        )
                    }
                )
            else:
                stats = yappi.get_func_stats()
            data = _saved(stats, kind)
        finally:
            yappi.clear_stats()
            self._profiling = False
        name = f"imageserver-{os.getpid()}.{'prof' if kind == 'pstat' else 'callgrind'}"
        return Response(
            200,
            {
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{name}"',
                "Content-Length": str(len(data)),
            },
            data,
        )

    @app.route("/heap", methods=["GET"])
    def heap(self, request: IRequest) -> Response:
        """The top allocation sites of Python objects, and the process's RSS."""
        top = _int_arg(request, "top", 25, 1, 1000)
        group = _arg(request, "group") or "lineno"
        if group not in ("lineno", "filename", "traceback"):
            raise InvalidRequest("group is lineno, filename or traceback")
        if not tracemalloc.is_tracing():
            return json_response(409, {"error": "heap tracing is off"})
        snapshot = tracemalloc.take_snapshot()
        statistics = snapshot.statistics(group)
        current, peak = tracemalloc.get_traced_memory()
        lines = [
            f"rss: {_rss_bytes() / 2**20:.1f} MiB (Pillow's pixel buffers count here,"
            " not below)",
            f"traced Python memory: {current / 2**20:.1f} MiB, peak "
            f"{peak / 2**20:.1f} MiB",
            f"top {top} by {group}:",
        ]
        for stat in statistics[:top]:
            frame = stat.traceback[-1]  # the most recent
            where = frame.filename if group == "filename" else str(frame)
            lines.append(
                f"{stat.size / 1024:10.1f} KiB {stat.count:8d} blocks  {where}"
            )
            if group == "traceback":
                lines.extend("    " + line for line in stat.traceback.format())
        return _text("\n".join(lines) + "\n")

    @app.route("/threads", methods=["GET"])
    def threads(self, request: IRequest) -> Response:
        """Where every thread is right now: the reactor and each worker."""
        names = {t.ident: t.name for t in threading.enumerate()}
        parts = [f"process {os.getpid()}\n\n"]
        for ident, frame in sys._current_frames().items():
            parts.append(f"Thread {names.get(ident, '?')} ({ident}):\n")
            parts.extend(traceback.format_stack(frame))
            parts.append("\n")
        return _text("".join(parts))

    app.handle_errors(HTTPException)(routing_error)
    app.handle_errors(Exception)(server_error)


def _saved(stats: Any, kind: str) -> bytes:
    with tempfile.NamedTemporaryFile() as f:
        stats.save(f.name, type=kind)
        with open(f.name, "rb") as saved:
            return saved.read()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _text(body: str) -> Response:
    data = body.encode()
    return Response(
        200,
        {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(data))},
        data,
    )


def _arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _int_arg(request: IRequest, name: str, default: int, low: int, high: int) -> int:
    text = _arg(request, name)
    if text is None:
        return default
    if not ascii_digits(text) or not low <= int(text) <= high:
        raise InvalidRequest(f"{name} is a whole number from {low} to {high}")
    return int(text)
