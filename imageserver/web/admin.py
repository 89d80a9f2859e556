"""The admin port: probes for load balancers, metrics for Prometheus."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from klein import Klein, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from twisted.application.service import Service
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException

from imageserver.web.responses import json_response, routing_error, server_error


class Check(Protocol):
    @property
    def problem(self) -> str | None: ...


class Readiness(Service):
    """Ready while running and every check passes; not ready from the moment
    shutdown begins.

    Each check has a ``problem``: None, or why the server cannot take work
    (a storage that cannot be written). Added to the application last, so it
    is the first service stopped.
    """

    def __init__(self, checks: Sequence[Check] = ()) -> None:
        self.ready = False
        self._checks = tuple(checks)

    def problem(self) -> str | None:
        """Why the server is not ready now, or None."""
        if not self.ready:
            return "Shutting down"
        return next((c.problem for c in self._checks if c.problem), None)

    def startService(self) -> None:
        super().startService()
        self.ready = True

    def stopService(self) -> None:
        self.ready = False
        super().stopService()


class AdminApp:
    app = Klein()

    def __init__(
        self,
        readiness: Readiness,
        registry: CollectorRegistry,
        debug: Callable[[], IResource | None] | None = None,
    ) -> None:
        self._readiness = readiness
        self._registry = registry
        self._debug = debug

    @app.route("/probe/live", methods=["GET"])
    def live(self, request: IRequest) -> Response:
        return json_response(200, {"message": "OK"})

    @app.route("/probe/ready", methods=["GET"])
    def ready(self, request: IRequest) -> Response:
        problem = self._readiness.problem()
        if problem is None:
            return json_response(200, {"message": "OK"})
        return json_response(503, {"message": problem})

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: IRequest) -> Response:
        """Prometheus text format, or OpenMetrics when the scraper asks for it."""
        encode, content_type = choose_encoder(request.getHeader("Accept") or "")
        body = encode(self._registry)
        return Response(
            200,
            {"Content-Type": content_type, "Content-Length": str(len(body))},
            body,
        )

    @app.route("/debug/", branch=True, methods=["GET"])
    def debug(self, request: IRequest) -> Any:
        if self._debug is None:
            return json_response(404, {"error": "profiling is off (--profile)"})
        resource = self._debug()
        if resource is None:
            return json_response(503, {"error": "the debug worker is starting"})
        return resource

    app.handle_errors(HTTPException)(routing_error)
    app.handle_errors(Exception)(server_error)
