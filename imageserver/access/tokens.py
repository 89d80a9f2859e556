"""Write tokens: who may upload, process, store files, run batches and delete.

``--write_tokens FILE`` holds one token per line, or its SHA-256 as
``sha256:<64 hex digits>`` so the file need not hold the secret itself;
blank lines and ``#`` comments are skipped. Only digests are kept in memory,
and a presented token is compared, in constant time, with every one.

The file is read again when it changes (checked every few seconds) and on
SIGHUP, so tokens are added and revoked without a restart. A file that
cannot be read or holds no valid token then is logged and ignored: the
tokens already loaded stay in force.

``python -m imageserver.tokens new`` prints a fresh token and its line for
the file; ``python -m imageserver.tokens hash`` reads a token on standard
input and prints its line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sys

from twisted.logger import Logger

log = Logger()

#: Shorter tokens can be guessed; such a line is refused.
MIN_LENGTH = 16
_HASHED = re.compile(r"sha256:([0-9a-f]{64})\Z")
_TOKEN = re.compile(r"[\x21-\x7e]+")
#: The largest token file read (about 50,000 hashed lines): it is read
#: again every few seconds to see whether it changed.
MAX_FILE_BYTES = 4 * 1024 * 1024


def digest_of(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse(text: str) -> frozenset[bytes]:
    """The digests of a token file's lines; ValueError naming a bad line."""
    digests = set()
    # A byte order mark (editors on Windows write one) is not part of a token.
    text = text.removeprefix("\ufeff")
    # Lines end at a line feed only: U+2028 or NEL inside a line is refused
    # with it, not read as a line break.
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        hashed = _HASHED.match(line)
        if hashed:
            digests.add(bytes.fromhex(hashed[1]))
        elif line.startswith("sha256:"):
            raise ValueError(
                f"line {number}: sha256: must be followed by 64 hex digits"
            )
        elif len(line) < MIN_LENGTH or not _TOKEN.fullmatch(line):
            # A header carries ASCII: a token with any other character
            # could never be presented.
            raise ValueError(
                f"line {number}: a token is at least {MIN_LENGTH} visible ASCII "
                "characters (no spaces)"
            )
        else:
            digests.add(digest_of(line))
    if not digests:
        raise ValueError("no tokens")
    return frozenset(digests)


class WriteTokens:
    """The tokens of a file, kept current with it."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._digests: frozenset[bytes] = frozenset()
        #: The SHA-256 of the file's bytes last read: a rewrite is noticed
        #: even when its size and modification time are the same, and one
        #: that is refused is logged once.
        self._seen: bytes | None = None

    def load(self, data: bytes | None = None) -> None:
        """Read the file; OSError or ValueError (with the reason) if it is unusable."""
        if data is None:
            data = self._read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"the file is not UTF-8 ({e.reason})") from None
        digests = parse(text)
        self._digests, self._seen = digests, hashlib.sha256(data).digest()
        log.info(
            "{count} write tokens loaded from {path}",
            count=len(digests),
            path=self.path,
        )

    def refresh(self, force: bool = False) -> None:
        """Read the file again if it changed (or ``force``); keep the tokens
        in force when it cannot be used. Runs in a thread: it reads a file."""
        try:
            data = self._read()
            seen = hashlib.sha256(data).digest()
            if not force and seen == self._seen:
                return  # unchanged since last read, loaded or refused
            self._seen = seen
            self.load(data)
        except (OSError, ValueError) as e:
            log.error(
                "--write_tokens {path} not reloaded, the tokens loaded before "
                "stay in force: {error}",
                path=self.path,
                error=e,
            )

    def allows(self, token: str) -> bool:
        presented = digest_of(token)
        allowed = False
        for digest in self._digests:
            allowed |= hmac.compare_digest(presented, digest)
        return allowed

    def _read(self) -> bytes:
        with open(self.path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"the file is larger than {MAX_FILE_BYTES} bytes")
        return data


def main(argv: list[str]) -> int:
    if argv == ["new"]:
        token = secrets.token_urlsafe(32)
        print(f"token: {token}")
        print(f"line for the file: sha256:{digest_of(token).hex()}")
        return 0
    if argv == ["hash"]:
        token = sys.stdin.readline().strip()
        if len(token) < MIN_LENGTH:
            print(f"a token is at least {MIN_LENGTH} characters", file=sys.stderr)
            return 2
        print(f"sha256:{digest_of(token).hex()}")
        return 0
    print("usage: python -m imageserver.tokens new | hash", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
