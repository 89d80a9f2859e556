"""Who may do what on the main port: write tokens for writes, signatures for reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers

from imageserver.access.signing import refusal
from imageserver.access.tokens import WriteTokens
from imageserver.web.site import OPTIONS, READS, Refusal

CHALLENGE = 'Bearer realm="imageserver"'


class AccessPolicy:
    """Who may do what: the site asks it of every request once the request's
    head has arrived (`imageserver.web.site.BoundedSite`), so a refused
    request's body is never read.

    Every method but GET and HEAD writes (the site lets only the methods it
    implements through, spelt exactly, so this decides from the same value as
    the routes). With ``tokens``, a write needs one ``Authorization: Bearer
    <token>`` with one of them (401 without, 403 with a wrong one) and no URL
    signature. With ``secrets``, every other request needs a URL signed by
    one of them for its method (a read's signature does not write), not past
    its ``exp``, except the (method, path) pairs in ``unsigned`` (HEAD goes
    with GET), such as the health check, and reads of the paths
    ``signed_otherwise`` says carry a signature of their own (thumbor's).
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        secrets: Sequence[bytes] = (),
        tokens: WriteTokens | None = None,
        unsigned: frozenset[tuple[bytes, bytes]] = frozenset(),
        signed_otherwise: Callable[[bytes], bool] | None = None,
    ) -> None:
        self._clock = clock
        self._secrets = tuple(secrets)
        self._tokens = tokens
        self._unsigned = unsigned
        self._signed_otherwise = signed_otherwise

    def __call__(
        self, method: bytes, target: bytes, headers: Headers
    ) -> Refusal | None:
        if method == OPTIONS:
            return None  # a preflight carries no credentials; it changes nothing
        method = b"GET" if method == b"HEAD" else method
        if self._tokens is not None and method not in READS:
            return self._token_refusal(headers.getRawHeaders(b"Authorization", []))
        path = target.partition(b"?")[0]
        if (
            self._secrets
            and (method, path) not in self._unsigned
            and not (
                method == b"GET"
                and self._signed_otherwise is not None
                and self._signed_otherwise(path)
            )
        ):
            why = refusal(
                self._secrets,
                target.decode("latin-1"),
                self._clock.seconds(),
                method.decode("latin-1"),
            )
            return None if why is None else Refusal(403, why)
        return None

    def _token_refusal(self, values: Sequence[bytes]) -> Refusal | None:
        assert self._tokens is not None
        if not values:
            return _unauthorized(
                "this request writes: it needs Authorization: Bearer <token>"
            )
        if len(values) > 1:
            return _unauthorized("send one Authorization header, not several")
        scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _unauthorized("the Authorization header must be: Bearer <token>")
        if not self._tokens.allows(token.strip()):
            return Refusal(403, "this token may not write")
        return None


def _unauthorized(message: str) -> Refusal:
    return Refusal(401, message, ((b"WWW-Authenticate", CHALLENGE.encode()),))
