"""Which other web origins' pages may read this server's answers (CORS).

A page's ``fetch()`` of an ``info.json``, or a canvas that reads a variant's
pixels, needs the answer to name the page's origin (or ``*``) in
``Access-Control-Allow-Origin`` (the Fetch standard). Only reads are opened:
a write keeps needing its token, and a page's preflight for one is refused,
so no browser sends it (a server sends writes, with a token).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

#: The methods other origins' pages may use.
READ_METHODS = ("GET", "HEAD")
#: Headers of an answer a page may read besides the CORS-safelisted ones.
EXPOSED = (
    "Content-Location",
    "Content-Range",
    "ETag",
    "Retry-After",
    "X-Image-Quality",
    "X-Image-Score",
)
#: Headers a page's read may carry that need a preflight (lower case): the
#: conditional and range requests a media element or a cache makes.
READ_HEADERS = frozenset(
    {
        "accept",
        "accept-language",
        "cache-control",
        "content-language",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "pragma",
        "range",
    }
)
#: Seconds a browser may keep a preflight's answer (Chromium keeps at most
#: 7200, Firefox 86400).
MAX_AGE = 7200

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

Lines = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class _Pattern:
    """``scheme://*.suffix[:port]``: any host under ``suffix``."""

    scheme: str
    suffix: str
    port: int | None

    def matches(self, scheme: str, host: str, port: int | None) -> bool:
        return (
            scheme == self.scheme
            and port == self.port
            and host.endswith("." + self.suffix)
        )


def parse_origin(text: str) -> tuple[str, str, int | None]:
    """``scheme://host[:port]`` as (scheme, host, port or None for the
    scheme's default), lower case; ValueError saying what is wrong.

    The host may start with ``*.`` (any host under the rest)."""
    what = f"{text!r} is not an origin"
    if not text.isascii():
        raise ValueError(f"{what}: write the host in ASCII (its punycode form)")
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"{what}: it starts with http:// or https://")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{what}: an origin has no path, query or fragment")
    if "@" in parts.netloc:
        raise ValueError(f"{what}: an origin has no user name")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{what}: its port is not a port number") from None
    labels = host.removeprefix("*.").split(".")
    bracketed = parts.netloc.partition(":")[0].startswith("[")
    if not host or not (bracketed or all(_LABEL.fullmatch(label) for label in labels)):
        raise ValueError(f"{what}: its host is not a host name or address")
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    return scheme, host, port


def _serialised(scheme: str, host: str, port: int | None) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + ("" if port is None else f":{port}")


@dataclass(frozen=True)
class Preflight:
    """The answer to a preflight: its status, why it was refused (None: it
    was not), and its CORS headers."""

    code: int
    refusal: str | None
    lines: Lines


class CorsPolicy:
    """The origins given by ``--cors_origins``: ``*`` (any page), origins
    (``https://shop.example``) and patterns (``https://*.shop.example``)."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.any = "*" in origins
        if self.any and len(origins) > 1:
            raise ValueError("* allows every origin: give it alone")
        exact: set[str] = set()
        patterns: list[_Pattern] = []
        for text in origins if not self.any else ():
            scheme, host, port = parse_origin(text)
            if host.startswith("*."):
                if "." not in host[2:]:
                    raise ValueError(
                        f"{text!r} matches every site under a top-level "
                        "domain: name a domain of your own under the *."
                    )
                patterns.append(_Pattern(scheme, host[2:], port))
            else:
                exact.add(_serialised(scheme, host, port))
        self._exact = frozenset(exact)
        self._patterns = tuple(patterns)

    def allows(self, origin: str) -> bool:
        """Whether a page of ``origin`` (a request's ``Origin``, as a browser
        serialises it) may read the answers."""
        if self.any:
            return True
        if origin in self._exact:
            return True
        if not self._patterns:
            return False
        try:
            scheme, host, port = parse_origin(origin)
        except ValueError:
            return False  # "null", or anything else no page's origin is
        if origin != _serialised(scheme, host, port) or "*" in host:
            return False  # not as a browser writes an origin
        return any(p.matches(scheme, host, port) for p in self._patterns)

    def answer_lines(self, origin: str | None) -> Lines:
        """The CORS headers of an answer to a read from ``origin`` (None: the
        request had no Origin). ``Vary: Origin`` unless every origin is
        allowed: a cache must not give one page's answer to another."""
        lines: Lines = [] if self.any else [(b"Vary", b"Origin")]
        if origin is not None and self.allows(origin):
            lines += [
                (b"Access-Control-Allow-Origin", b"*" if self.any else origin.encode()),
                (b"Access-Control-Expose-Headers", ", ".join(EXPOSED).encode()),
            ]
        return lines

    def preflight(self, origin: str, method: str, headers: Iterable[str]) -> Preflight:
        """The answer to a page of ``origin`` asking whether it may send
        ``method`` with ``headers`` (its Access-Control-Request-*)."""
        vary = (
            []
            if self.any
            else [
                (
                    b"Vary",
                    b"Origin, Access-Control-Request-Method, "
                    b"Access-Control-Request-Headers",
                )
            ]
        )
        if not self.allows(origin):
            return Preflight(
                403,
                f"pages of {origin[:200]} may not read this server's answers "
                "(--cors_origins)",
                vary,
            )
        if method not in READ_METHODS:
            return Preflight(
                403,
                "only reads (GET, HEAD) are open to other origins' pages: a "
                "write is sent by a server, with a write token",
                vary,
            )
        wanted = [h.strip().lower() for h in headers if h.strip()]
        refused = [h for h in wanted if h not in READ_HEADERS]
        if refused:
            return Preflight(
                403,
                f"other origins' reads may not send {', '.join(refused)[:200]}; "
                f"they may send {', '.join(sorted(READ_HEADERS))}",
                vary,
            )
        lines = [
            *vary,
            (b"Access-Control-Allow-Origin", b"*" if self.any else origin.encode()),
            (b"Access-Control-Allow-Methods", ", ".join(READ_METHODS).encode()),
            (b"Access-Control-Max-Age", str(MAX_AGE).encode()),
        ]
        if wanted:
            lines.append((b"Access-Control-Allow-Headers", ", ".join(wanted).encode()))
        return Preflight(204, None, lines)


def request_headers(value: str | None) -> list[str]:
    """The header names an Access-Control-Request-Headers value lists;
    ValueError if one is not a header name."""
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    for name in names:
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name[:100]!r} is not a header name")
    return names
