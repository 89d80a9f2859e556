"""Signed URLs: with ``--secret``, only URLs signed with it are served.

A signature is the HMAC-SHA256, keyed with the secret, of the URL's path and
query string exactly as sent, without the ``sig`` parameter; it travels,
base64url-encoded without padding, in that parameter:

    /p/6e0/072/682/e66287b662827da75b244a3/w200.jpg?sig=Yk9...
    /p?source=https%3A%2F%2Fexample.com%2Fa.jpg&outputs=x300.jpg&sig=3Tq...

Sign with ``python -m imageserver.signing URL`` (secret from ``IMAGESERVER_SECRET``)
or `sign` in code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys
from urllib.parse import urlsplit

PARAMETER = "sig"


def signature(secret: bytes, path_and_query: str) -> str:
    digest = hmac.new(secret, path_and_query.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(secret: bytes, url: str) -> str:
    """``url`` (absolute, or a path with its query) with its signature added."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    joiner = "&" if parts.query else "?"
    return f"{url}{joiner}{PARAMETER}={signature(secret, target)}"


def verify(secret: bytes, uri: str) -> bool:
    """Whether a request target (path and query as sent) carries a good signature."""
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
        return False
    target = path + ("?" + "&".join(kept) if kept else "")
    return hmac.compare_digest(given, signature(secret, target))


def main(argv: list[str]) -> int:
    secret = os.environ.get("IMAGESERVER_SECRET")
    if not secret or len(argv) != 1:
        print(
            "usage: IMAGESERVER_SECRET=... python -m imageserver.signing URL",
            file=sys.stderr,
        )
        return 2
    print(sign(secret.encode(), argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
