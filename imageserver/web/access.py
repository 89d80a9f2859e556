"""Who may do what on the main port: write tokens for writes, signatures for reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers

from imageserver.access.rates import RateLimiter
from imageserver.access.signing import refusal
from imageserver.access.tokens import WriteTokens
from imageserver.errors import TooMany
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
    signature; so does ``GET /{namespace}/similar``, the one read that lists
    a namespace's images. With ``secrets``, every other request needs a URL signed by
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
        rates: RateLimiter | None = None,
    ) -> None:
        self._clock = clock
        self._rates = rates
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
        path = target.partition(b"?")[0]
        if self._tokens is not None and (method not in READS or lists(path)):
            values = headers.getRawHeaders(b"Authorization", [])
            return self._token_refusal(values, method in READS) or self._rate_refusal(
                method, path, _token(values[0])
            )
        return self._signature_refusal(method, target) or self._rate_refusal(
            method, path, None
        )

    def _signature_refusal(self, method: bytes, target: bytes) -> Refusal | None:
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

    def _rate_refusal(
        self, method: bytes, path: bytes, token: str | None
    ) -> Refusal | None:
        """A 429 for a write past its token's rate, or an upload past its
        namespace's (uploads and batches: ``POST /{namespace}[/batch]``)."""
        if self._rates is None or method in READS:
            return None
        parts = path.split(b"/")[1:]
        try:
            if token is not None:
                self._rates.write(token)
            if method == b"POST" and (
                len(parts) == 1 or (len(parts) == 2 and parts[1] == b"batch")
            ):
                self._rates.upload(unquote_to_bytes(parts[0]).decode("latin-1"))
        except TooMany as e:
            retry = str(e.retry_after or 1).encode()
            return Refusal(429, str(e), ((b"Retry-After", retry),))
        return None

    def _token_refusal(
        self, values: Sequence[bytes], listing: bool = False
    ) -> Refusal | None:
        assert self._tokens is not None
        if not values:
            does = "lists a namespace's images" if listing else "writes"
            return _unauthorized(
                f"this request {does}: it needs Authorization: Bearer <token>"
            )
        if len(values) > 1:
            return _unauthorized("send one Authorization header, not several")
        token = _token(values[0])
        if token is None:
            return _unauthorized("the Authorization header must be: Bearer <token>")
        if not self._tokens.allows(token):
            return Refusal(403, f"this token may not {'list' if listing else 'write'}")
        return None


def lists(path: bytes) -> bool:
    """Whether ``path`` (as the router reads it: escapes decoded) is
    ``/{namespace}/similar``, which tells which images a namespace holds."""
    parts = unquote_to_bytes(path).split(b"/")[1:]
    return len(parts) == 2 and parts[1] == b"similar"


def _token(value: bytes) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, or None."""
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(message: str) -> Refusal:
    return Refusal(401, message, ((b"WWW-Authenticate", CHALLENGE.encode()),))
