"""Signed URLs: with ``--secret``, only URLs signed with it are served.

A signature is the HMAC-SHA256, keyed with the secret, of the URL's path and
query string exactly as sent, without the ``sig`` parameter; it travels,
base64url-encoded without padding, in that parameter:

    /p/6e0/072/682/e66287b662827da75b244a3/w200.jpg?sig=Yk9...
    /p?source=https%3A%2F%2Fexample.com%2Fa.jpg&outputs=x300.jpg&sig=3Tq...

A signature for a read (GET, or HEAD) signs just that; one for any other
method signs the method, a space and the path and query, so a URL signed to
be read cannot store over or delete what it names (a request target never
holds a space, so no read's signature is a write's). URLs signed before
methods were signed are read signatures and stay valid.

A URL may carry an expiry, ``exp`` (Unix seconds), placed before ``sig`` and
signed like any other parameter; past it the URL is refused. The server may
hold several secrets: the first signs, any verifies, so a secret can be
rolled in, then the old one out.

Sign with ``python -m imageserver.signing [--method M] [--expires-in SECONDS] URL``
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
from imageserver.runtime.environment import value_of

PARAMETER = "sig"
EXPIRY = "exp"
#: Methods whose signature is the URL's alone: they only read.
READS = ("GET", "HEAD")


def secrets_of(value: str) -> tuple[bytes, ...]:
    """The secrets in an option's value: separated by commas or lines (a
    file's), first the one that signs."""
    parts = value.replace("\n", ",").split(",")
    return tuple(p.strip().encode() for p in parts if p.strip())


def signature(secret: bytes, path_and_query: str) -> str:
    digest = hmac.new(secret, path_and_query.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def signed_text(method: str, target: str) -> str:
    """What a request ``target`` (path and query) is signed as for ``method``."""
    return target if method in READS else f"{method} {target}"


def sign(
    secret: bytes, url: str, expires: int | None = None, method: str = "GET"
) -> str:
    """``url`` (absolute, or a path with its query) with its signature for
    ``method`` added, and before it, with ``expires`` (Unix seconds), its
    expiry. ValueError if the URL's path does not start with ``/`` (no request
    has such a target, and its text could pass for a write's)."""
    if expires is not None:
        url = f"{url}{'&' if urlsplit(url).query else '?'}{EXPIRY}={expires}"
    parts = urlsplit(url)
    if not parts.path.startswith("/") or " " in parts.path:
        raise ValueError(f"{url!r}: a URL to sign is a path from / or absolute")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    joiner = "&" if parts.query else "?"
    mac = signature(secret, signed_text(method, target))
    return f"{url}{joiner}{PARAMETER}={mac}"


def refusal(
    secrets: Sequence[bytes], uri: str, now: float, method: str = "GET"
) -> str | None:
    """Why a request target (path and query as sent) may not be served to
    ``method``, or None when it carries a good signature for that method by
    one of ``secrets``, not expired."""
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
    if not _matches(secrets, given, signed_text(method, target)):
        if method not in READS and _matches(secrets, given, target):
            return (
                f"this URL is signed for reading only: a {method} needs a URL "
                f"signed for {method} (python -m imageserver.signing --method "
                f"{method})"
            )
        return "this URL needs a valid signature (sig)"
    for item in kept:
        name, _, value = item.partition("=")
        if name == EXPIRY:
            if not ascii_digits(value):
                return f"{EXPIRY} must be Unix seconds"
            if now > int(value):
                return f"this URL expired at {value} (Unix seconds)"
    return None


def _matches(secrets: Sequence[bytes], given: str, text: str) -> bool:
    # Every secret is tried, so the time taken does not say which matched.
    good = False
    for secret in secrets:
        good |= hmac.compare_digest(given, signature(secret, text))
    return good


def verify(secret: bytes, uri: str, method: str = "GET") -> bool:
    """Whether a request target carries a good, unexpired signature by
    ``secret`` for ``method``."""
    return refusal([secret], uri, time.time(), method) is None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imageserver.signing",
        description="Sign a URL with the first of the server's secrets "
        "(IMAGESERVER_SECRET, or the file IMAGESERVER_SECRET_FILE names).",
    )
    parser.add_argument("url")
    parser.add_argument(
        "--method",
        choices=("GET", "HEAD", "POST", "DELETE"),
        default="GET",
        help="what the URL may be used for (default GET, which also allows "
        "HEAD; methods are case-sensitive): a URL signed for reading cannot "
        "store or delete",
    )
    parser.add_argument(
        "--expires-in",
        type=int,
        metavar="SECONDS",
        help="the URL is refused that many seconds from now",
    )
    args = parser.parse_args(argv)
    try:
        secrets = secrets_of(value_of("IMAGESERVER_SECRET", os.environ) or "")
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    if not secrets:
        print("neither IMAGESERVER_SECRET nor IMAGESERVER_SECRET_FILE is set",
              file=sys.stderr)  # fmt: skip
        return 2
    expires = None
    if args.expires_in is not None:
        expires = int(time.time()) + args.expires_in
    try:
        print(sign(secrets[0], args.url, expires, args.method))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
