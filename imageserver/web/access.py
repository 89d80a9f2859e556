"""Who may do what on the main port: write tokens for writes, signatures for reads."""

from __future__ import annotations

import json
from collections.abc import Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource
from twisted.web.server import Request
from zope.interface import implementer

from imageserver.signing import refusal
from imageserver.tokens import WriteTokens
from imageserver.web.site import READS

CHALLENGE = 'Bearer realm="imageserver"'


@implementer(IResource)
class AccessGuard:
    """Lets a request through to ``wrapped`` only if it may be served.

    Every method but GET and HEAD writes (the site in front lets only the
    methods it implements through, spelt exactly, so this decides from the
    same value as the routes). With ``tokens``, a write needs
    ``Authorization: Bearer <token>`` with one of them (401 without, 403 with
    a wrong one) and no URL signature. With ``secrets``, every other request
    needs a URL signed by one of them for its method (a read's signature does
    not write), not past its ``exp``, except the (method, path) pairs in
    ``unsigned`` (HEAD goes with GET), such as the health check. Refusals are
    JSON.
    """

    isLeaf = True

    def __init__(
        self,
        wrapped: IResource,
        clock: IReactorTime,
        *,
        secrets: Sequence[bytes] = (),
        tokens: WriteTokens | None = None,
        unsigned: frozenset[tuple[bytes, bytes]] = frozenset(),
    ) -> None:
        self._wrapped = wrapped
        self._clock = clock
        self._secrets = tuple(secrets)
        self._tokens = tokens
        self._unsigned = unsigned

    def getChildWithDefault(self, name: bytes, request: Request) -> IResource:
        return self

    def putChild(self, path: bytes, child: IResource) -> None:
        raise NotImplementedError

    def render(self, request: Request) -> bytes | int:
        method = b"GET" if request.method == b"HEAD" else request.method
        if self._tokens is not None and method not in READS:
            refused = self._token_refusal(request)
        elif self._secrets and (method, request.path) not in self._unsigned:
            why = refusal(
                self._secrets,
                request.uri.decode("latin-1"),
                self._clock.seconds(),
                method.decode("latin-1"),
            )
            refused = None if why is None else (403, why)
        else:
            refused = None
        if refused is None:
            return self._wrapped.render(request)  # type: ignore[no-any-return]
        code, message = refused
        body = json.dumps({"error": message}).encode()
        request.setResponseCode(code)
        if code == 401:
            request.setHeader(b"WWW-Authenticate", CHALLENGE.encode())
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        return body

    def _token_refusal(self, request: Request) -> tuple[int, str] | None:
        assert self._tokens is not None
        header = request.getHeader(b"Authorization")
        if header is None:
            return 401, "this request writes: it needs Authorization: Bearer <token>"
        scheme, _, token = header.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return 401, "the Authorization header must be: Bearer <token>"
        if not self._tokens.allows(token.strip()):
            return 403, "this token may not write"
        return None
