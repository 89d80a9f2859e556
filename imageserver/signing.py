"""Signed URLs: with ``--secret``, only URLs signed with it are served.

A signature is the HMAC-SHA256, keyed with the secret, of the URL's path and
query string exactly as sent, without the ``sig`` parameter; it travels,
base64url-encoded without padding, in that parameter:

    /p/6e0/072/682/e66287b662827da75b244a3/w200.jpg?sig=Yk9...
    /p?source=https%3A%2F%2Fexample.com%2Fa.jpg&outputs=x300.jpg&sig=3Tq...

A URL may carry an expiry, ``exp`` (Unix seconds), placed before ``sig`` and
signed like any other parameter; past it the URL is refused. The server may
hold several secrets: the first signs, any verifies, so a secret can be
rolled in, then the old one out.

Sign with ``python -m imageserver.signing [--expires-in SECONDS] URL``
(secrets from ``IMAGESERVER_SECRET``) or `sign` in code.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import sys
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

from imageserver.naming import ascii_digits

PARAMETER = "sig"
EXPIRY = "exp"


def secrets_of(value: str) -> tuple[bytes, ...]:
    """The secrets in an option's value: separated by commas or lines (a
    file's), first the one that signs."""
    parts = value.replace("\n", ",").split(",")
    return tuple(p.strip().encode() for p in parts if p.strip())


def signature(secret: bytes, path_and_query: str) -> str:
    digest = hmac.new(secret, path_and_query.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(secret: bytes, url: str, expires: int | None = None) -> str:
    """``url`` (absolute, or a path with its query) with its signature added,
    and before it, with ``expires`` (Unix seconds), its expiry."""
    if expires is not None:
        url = f"{url}{'&' if urlsplit(url).query else '?'}{EXPIRY}={expires}"
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    joiner = "&" if parts.query else "?"
    return f"{url}{joiner}{PARAMETER}={signature(secret, target)}"


def refusal(secrets: Sequence[bytes], uri: str, now: float) -> str | None:
    """Why a request target (path and query as sent) may not be served, or
    None when it carries a good signature by one of ``secrets``, not expired."""
    path, _, query = uri.partition("?")
    given = None
    kept = []
    for item in query.split("&") if query else ():
        name, _, value = item.partition("=")
        if name == PARAMETER and given is None:
            given = value
        else:
            kept.append(item)
    if given is None:
        return "this URL needs a valid signature (sig)"
    target = path + ("?" + "&".join(kept) if kept else "")
    # Every secret is tried, so the time taken does not say which matched.
    good = False
    for secret in secrets:
        good |= hmac.compare_digest(given, signature(secret, target))
    if not good:
        return "this URL needs a valid signature (sig)"
    for item in kept:
        name, _, value = item.partition("=")
        if name == EXPIRY:
            if not ascii_digits(value):
                return f"{EXPIRY} must be Unix seconds"
            if now > int(value):
                return f"this URL expired at {value} (Unix seconds)"
    return None


def verify(secret: bytes, uri: str) -> bool:
    """Whether a request target carries a good, unexpired signature by ``secret``."""
    return refusal([secret], uri, time.time()) is None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imageserver.signing",
        description="Sign a URL with the first of IMAGESERVER_SECRET's secrets.",
    )
    parser.add_argument("url")
    parser.add_argument(
        "--expires-in",
        type=int,
        metavar="SECONDS",
        help="the URL is refused that many seconds from now",
    )
    args = parser.parse_args(argv)
    secrets = secrets_of(os.environ.get("IMAGESERVER_SECRET", ""))
    if not secrets:
        print("IMAGESERVER_SECRET is not set", file=sys.stderr)
        return 2
    expires = None
    if args.expires_in is not None:
        expires = int(time.time()) + args.expires_in
    print(sign(secrets[0], args.url, expires))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
