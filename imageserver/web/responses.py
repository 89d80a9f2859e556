"""JSON responses and the one mapping from errors to HTTP statuses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from klein import Response
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from imageserver import errors

log = Logger()
# Twisted knows no reason phrase for 429 (RFC 6585): it would say "Unknown
# Status" on the status line of every rate limit's answer.
http.RESPONSES.setdefault(429, b"Too Many Requests")

Headers = dict[str | bytes, str | bytes | Sequence[str | bytes]]
#: Seconds a client is asked to wait after a 503.
RETRY_AFTER = "5"
#: How long a redirect to a canonical name is kept: one from a concrete name
#: for ever; one from a ``.auto`` name (whose answers vary) for an hour.
IMMUTABLE_REDIRECT = "public, max-age=31536000, immutable"
REDIRECT_CACHE = "public, max-age=3600"

STATUS_FOR: dict[type[errors.ImageServerError], int] = {
    errors.InvalidRequest: 400,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.ContentTooLarge: 413,
    errors.UnsupportedImage: 415,
    errors.ImageTooLarge: 422,
    errors.SourceUnavailable: 502,
    errors.StorageFailed: 502,
    errors.StorageUnavailable: 503,
    errors.Overloaded: 503,
    errors.StorageFull: 507,
    errors.TooMany: 429,
    errors.SourceTimeout: 504,
}


def json_response(
    code: int, body: dict[str, Any] | bytes, headers: Headers | None = None
) -> Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers: Headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(data)),
    }
    all_headers.update(headers or {})
    return Response(code=code, headers=all_headers, body=data)


def status_for(error: errors.ImageServerError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return 500


# The handlers below take the app instance first, as Klein calls them.


def server_error(self: Any, request: IRequest, failure: Failure) -> Response:
    """Map our errors to their status; anything else is a bug: log it, say 500."""
    error = failure.value
    if isinstance(error, errors.NotCanonical):
        return _to_canonical(request, error)
    if isinstance(error, errors.ImageServerError):
        status = status_for(error)
        headers: Headers = {"Retry-After": RETRY_AFTER} if status == 503 else {}
        if isinstance(error, errors.TooMany) and error.retry_after is not None:
            headers["Retry-After"] = str(error.retry_after)
        return json_response(status, {"error": str(error)}, headers)
    log.failure(
        "{method} {uri} failed",
        failure,
        method=request.method.decode(),
        uri=request.uri.decode("utf-8", "replace"),
    )
    return json_response(500, {"error": "internal server error"})


def _to_canonical(request: IRequest, error: errors.NotCanonical) -> Response:
    """301 to the one spelling of a variant name; the grammar never changes, so
    neither does the redirect, except from a ``.auto`` name: what such a name
    answers depends on Accept (the route says ``Vary: Accept``), so its
    redirect is kept for a while, not for ever."""
    folder = request.path.decode("utf-8", "replace").rpartition("/")[0]
    # A header is ASCII: anything else in the path is sent percent-encoded.
    location = quote(f"{folder}/{error.canonical}", safe="/%@")
    negotiated = error.canonical.endswith(".auto")
    return json_response(
        301,
        {"message": str(error), "location": location},
        {
            "Location": location,
            "Cache-Control": REDIRECT_CACHE if negotiated else IMMUTABLE_REDIRECT,
        },
    )


def routing_error(self: Any, request: IRequest, failure: Failure) -> Response:
    """No route or a wrong method: werkzeug's status and headers, a JSON body."""
    error = failure.value
    assert isinstance(error, HTTPException)
    code = error.code or 500
    response = error.get_response()
    headers: Headers = {
        name: value
        for name, value in response.headers.items()
        if name.lower() in ("allow", "location")
    }
    message = (error.name or "error").lower()
    return json_response(code, {"error": message}, headers)
