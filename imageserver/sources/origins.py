"""Origins: where the originals of a namespace already live.

An origin answers one question, "the bytes at this path, unless they are
still the ones I have", for a directory (`FileOrigin`), a web server or a
bucket. Paths come from URLs: `object_path` is the one grammar every kind
reads them by, so no spelling reaches past an origin's root.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from twisted.internet import defer

from imageserver.errors import (
    ContentTooLarge,
    Forbidden,
    InvalidRequest,
    NotFound,
    SourceTimeout,
    SourceUnavailable,
)
from imageserver.metrics import tracing
from imageserver.runtime.pools import Runner
from imageserver.sources.addresses import source_host

#: The longest path accepted, in bytes of UTF-8, and the longest segment.
MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255
#: Origin URL schemes, by kind.
SCHEMES = ("file", "http", "https", "s3")
#: Unicode categories refused in a path: controls (NUL among them), lone
#: surrogates, line and paragraph separators. The same in every Python.
_REFUSED = frozenset({"Cc", "Cs", "Zl", "Zp"})
#: Bidirectional controls: they make a path read otherwise than it is
#: (in logs, in error messages).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                  "\u2066\u2067\u2068\u2069")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Fetched:
    """An origin's object: its bytes and the validator that names them."""

    data: bytes
    #: What the origin says identifies these bytes (an ETag, or for a file
    #: its inode, size and modification time); None when it says nothing.
    validator: str | None


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(text: str) -> bool:
    """Whether ``text`` is a URL (what uploads name), not an origin path."""
    return _URL.match(text) is not None


def object_path(path: str) -> tuple[str, ...]:
    """The segments of an origin path, or `InvalidRequest` saying what is
    wrong: no empty, ``.`` or ``..`` segment, no backslash, NUL or control
    character, NFC-normal, at most `MAX_PATH_BYTES`. Whatever an origin does
    with the segments, they name one object under its root."""
    if not path:
        raise InvalidRequest("an origin path is empty: name an object, e.g. a/b.jpg")
    if is_url(path):
        raise InvalidRequest(
            f"{path[:200]!r} is a URL: an origin path names an object under "
            "the origin, e.g. a/b.jpg"
        )
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidRequest(f"an origin path is at most {MAX_PATH_BYTES} bytes")
    if unicodedata.normalize("NFC", path) != path:
        raise InvalidRequest("an origin path must be NFC-normalised Unicode")
    segments = tuple(path.split("/"))
    for segment in segments:
        if segment in ("", ".", ".."):
            raise InvalidRequest(
                f"{path[:200]!r}: empty, '.' and '..' segments are not origin paths"
            )
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise InvalidRequest(
                f"a segment of an origin path is at most {MAX_SEGMENT_BYTES} bytes"
            )
        if any(
            c == "\\" or c in _BIDI or unicodedata.category(c) in _REFUSED
            for c in segment
        ):
            raise InvalidRequest(
                f"{path[:200]!r}: backslashes, control, bidirectional and "
                "separator characters are not allowed in origin paths"
            )
    return segments


#: What a bucket origin's URL may say after ``?``: how that bucket is
#: reached, when not as the storage's bucket is (docs/origins.md).
BUCKET_SETTINGS = ("profile", "region", "endpoint")


@dataclass(frozen=True)
class OriginSpec:
    """``NAME=URL`` from the configuration, checked."""

    namespace: str
    #: The origin's URL, ending in ``/``, without a bucket's settings.
    url: str
    #: A bucket's own settings (`BUCKET_SETTINGS`): a named AWS profile
    #: (credentials, region, endpoint from the AWS files), a region, an
    #: endpoint URL. None: as the storage's bucket.
    profile: str | None = None
    region: str | None = None
    endpoint: str | None = None

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def described(self) -> str:
        """The URL as given, its bucket settings included (none is secret)."""
        settings = [
            f"{name}={value}"
            for name in BUCKET_SETTINGS
            if (value := getattr(self, name)) is not None
        ]
        return self.url + ("?" + "&".join(settings) if settings else "")

    @property
    def uses_storage_settings(self) -> bool:
        """A bucket read with the storage's credentials (no profile of its own)."""
        return self.scheme == "s3" and self.profile is None

    @classmethod
    def parse(cls, text: str) -> OriginSpec:
        """Read ``NAME=URL``; ValueError saying what is wrong."""
        name, sep, url = text.partition("=")
        if not sep or not name or not url:
            raise ValueError(
                f"--origin {text!r}: give NAME=URL, e.g. shop=file:///srv/images/"
            )
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (a port out of range raises here)
        except ValueError as e:
            raise ValueError(f"--origin {name}=...: not a URL ({e})") from None
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"--origin {text!r}: the URL's scheme must be one of "
                f"{', '.join(SCHEMES)}"
            )
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                f"--origin {name}=...: an origin URL carries no user or "
                "password (they would show in logs); put the origin behind "
                "a proxy that adds them, or give a bucket an AWS profile "
                "(?profile=NAME)"
            )
        if parts.fragment or (parts.query and parts.scheme != "s3"):
            raise ValueError(
                f"--origin {text!r}: only a bucket's URL has a query "
                f"({', '.join(BUCKET_SETTINGS)}), and none has a fragment"
            )
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ValueError(
                    f"--origin {text!r}: a file URL names no host: file:///dir/"
                )
            if not os.path.isdir(file_root(url)):
                raise ValueError(
                    f"--origin {text!r}: {file_root(url)!r} is not a directory"
                )
        elif not parts.netloc:
            raise ValueError(f"--origin {text!r}: the URL names no host or bucket")
        elif parts.scheme in ("http", "https"):
            try:
                source_host(parts.hostname or "")
            except ValueError as e:
                why = str(e).replace("source host", "the host", 1)
                raise ValueError(f"--origin {name}=...: {why}") from None
        settings = _bucket_settings(name, parts.query)
        if parts.query:
            url = parts._replace(query="").geturl()
        return cls(name, url if url.endswith("/") else url + "/", **settings)


def _bucket_settings(name: str, query: str) -> dict[str, str]:
    """A bucket origin's ``?profile=...&region=...&endpoint=...``."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        pairs = [("", "")]
    settings: dict[str, str] = {}
    for key, value in pairs:
        if key not in BUCKET_SETTINGS or key in settings or not value.strip():
            raise ValueError(
                f"--origin {name}=s3://...?{query}: a bucket's URL may name "
                f"each of {', '.join(BUCKET_SETTINGS)} once, with a value, "
                "e.g. ?profile=shop&region=eu-west-1"
            )
        settings[key] = value
    endpoint = settings.get("endpoint")
    if endpoint is not None:
        try:
            parts = urlsplit(endpoint)
            parts.port  # noqa: B018
        except ValueError:
            parts = urlsplit("")
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username is not None
            or parts.password is not None
        ):
            raise ValueError(
                f"--origin {name}=...?endpoint={endpoint}: the endpoint is an "
                "http(s) URL with a host and no user or password, e.g. "
                "https://minio.internal:9000"
            )
    return settings


def file_root(url: str) -> str:
    """The directory a ``file://`` URL names (percent-escapes decoded)."""
    return unquote(urlsplit(url).path)


def parse_origins(texts: Sequence[str]) -> dict[str, OriginSpec]:
    """Each namespace's origin; ValueError for a namespace given twice."""
    found: dict[str, OriginSpec] = {}
    for text in texts:
        spec = OriginSpec.parse(text)
        if spec.namespace in found:
            raise ValueError(f"--origin: namespace {spec.namespace!r} is given twice")
        found[spec.namespace] = spec
    return found


def read_file(
    root: str, segments: Sequence[str], max_bytes: int, known: str | None
) -> Fetched | None:
    """The file at ``segments`` under ``root``, or None when its validator is
    still ``known``. Blocking: run it in the storage pool.

    Walked one directory at a time with ``O_NOFOLLOW``, so a symbolic link
    anywhere on the way (or the file itself) is not followed: an origin's
    tree is what it holds, and nothing a link points to. Anything but a
    regular file (a FIFO, a device) is not found.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    opened: list[int] = []
    try:
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            opened.append(fd)
            for segment in segments[:-1]:
                fd = os.open(segment, flags | os.O_DIRECTORY, dir_fd=fd)
                opened.append(fd)
            fd = os.open(segments[-1], flags | os.O_NONBLOCK, dir_fd=fd)
            opened.append(fd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES,
                           errno.ENAMETOOLONG, errno.ENXIO):  # fmt: skip
                raise NotFound("no such object at the origin") from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotFound("no such object at the origin")
        validator = f"{info.st_ino:x}-{info.st_size:x}-{info.st_mtime_ns:x}"
        if validator == known:
            return None
        if info.st_size > max_bytes:
            raise ContentTooLarge(
                f"the origin's object is {info.st_size} bytes, over the "
                f"{max_bytes} allowed (--max_source_bytes)"
            )
        chunks, size = [], 0
        while size <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:  # it grew while read
            raise ContentTooLarge(
                f"the origin's object is over the {max_bytes} bytes allowed "
                "(--max_source_bytes)"
            )
        return Fetched(b"".join(chunks), validator)
    finally:
        for fd in opened:
            os.close(fd)


class Origin(Protocol):
    """Where a namespace's originals live."""

    #: What the origin is, for messages and metrics: its URL.
    url: str

    async def fetch(self, segments: Sequence[str], known: str | None) -> Fetched | None:
        """The object at ``segments``, or None when it is still what ``known``
        (a validator this origin gave) names. `NotFound` when there is none;
        `ContentTooLarge`, `SourceUnavailable`, `SourceTimeout` as for a
        source URL."""
        ...


class FileOrigin:
    """A directory: `read_file` in the storage pool."""

    def __init__(self, url: str, run: Runner, max_bytes: int) -> None:
        self.url = url
        self._root = file_root(url)
        self._run = run
        self._max_bytes = max_bytes

    async def fetch(self, segments: Sequence[str], known: str | None) -> Fetched | None:
        return await self._run(read_file, self._root, segments, self._max_bytes, known)


class ObjectFetcher(Protocol):
    async def fetch_object(self, url: str, known: str | None) -> Fetched | None: ...


class HttpOrigin:
    """A web server: the path's segments, percent-encoded, under the URL,
    fetched by a fetcher whose agent connects to the origin's host alone
    (every redirect included), under the server's address policy."""

    def __init__(self, url: str, fetcher: ObjectFetcher) -> None:
        self.url = url
        self._fetcher = fetcher

    def object_url(self, segments: Sequence[str]) -> str:
        return self.url + "/".join(quote(s, safe="") for s in segments)

    async def fetch(self, segments: Sequence[str], known: str | None) -> Fetched | None:
        try:
            return await self._fetcher.fetch_object(self.object_url(segments), known)
        except Forbidden as e:
            # The server's own configuration refused it, not the client's
            # request: a gateway's failure.
            raise SourceUnavailable(f"origin {self.url}: {e}") from None
        except (SourceUnavailable, SourceTimeout) as e:
            raise type(e)(f"origin {self.url}: {e}") from None


#: A bucket object is read this many bytes at a time, the deadline checked
#: between reads.
READ_CHUNK = 64 * 1024


def read_object(
    client: Any,
    bucket: str,
    key: str,
    max_bytes: int,
    known: str | None,
    deadline: float | None = None,
) -> Fetched | None:
    """The object at ``key`` in ``bucket``, or None when its ETag is still
    ``known``. Blocking (boto3): run it in a pool. At most ``max_bytes`` are
    read, the size checked from the answer's head first; past ``deadline``
    (`time.monotonic`), `SourceTimeout` (each read also times out by the
    client's own read timeout, so a silent bucket ends too)."""
    import urllib3
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        ReadTimeoutError,
    )

    def late() -> SourceTimeout:
        return SourceTimeout(f"the origin bucket {bucket} did not answer in time")

    request = {"Bucket": bucket, "Key": key}
    if known is not None:
        request["IfNoneMatch"] = known
    try:
        answer = client.get_object(**request)
    except ClientError as e:
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 304 or code in ("304", "NotModified"):
            return None
        if code in ("NoSuchKey", "404", "NotFound"):
            raise NotFound("no such object at the origin") from None
        raise SourceUnavailable(f"the origin bucket {bucket} answered {code}") from None
    except (ConnectTimeoutError, ReadTimeoutError):
        raise late() from None
    except BotoCoreError as e:
        raise SourceUnavailable(f"the origin bucket {bucket} failed ({e})") from None
    body = answer["Body"]
    try:
        if answer.get("ContentLength", 0) > max_bytes:
            raise ContentTooLarge(
                f"the origin's object is {answer['ContentLength']} bytes, over "
                f"the {max_bytes} allowed (--max_source_bytes)"
            )
        # What has arrived, a read at a time (``read1``): a read for a fixed
        # count would wait for all of it however slowly it trickles in.
        raw: Any = getattr(body, "_raw_stream", None)
        read = raw.read1 if hasattr(raw, "read1") else body.read
        chunks, size = [], 0
        while size <= max_bytes:
            if deadline is not None and time.monotonic() > deadline:
                raise late()
            chunk = read(min(READ_CHUNK, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except (ConnectTimeoutError, ReadTimeoutError, urllib3.exceptions.TimeoutError):
        raise late() from None
    except (BotoCoreError, urllib3.exceptions.HTTPError, OSError) as e:
        # A body cut short, a connection reset: no object, whole or not.
        raise SourceUnavailable(f"the origin bucket {bucket} failed ({e})") from None
    finally:
        body.close()
    if len(data) > max_bytes:
        raise ContentTooLarge(
            f"the origin's object is over the {max_bytes} bytes allowed "
            "(--max_source_bytes)"
        )
    declared = answer.get("ContentLength")
    if declared is not None and len(data) != declared:
        # Counted here: not every urllib3 raises for a body cut short.
        raise SourceUnavailable(
            f"the origin bucket {bucket} sent {len(data)} of {declared} bytes"
        )
    return Fetched(data, answer.get("ETag"))


#: Error codes of a bucket that says the credentials themselves are wrong.
_BAD_CREDENTIALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "InvalidClientTokenId"}
)  # fmt: skip
#: ... and that it is not there, or cannot answer now.
_NO_BUCKET = frozenset({"NoSuchBucket"})
_TRANSIENT = frozenset(
    {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown"}
)


class OriginRefused(Exception):
    """A bucket origin that cannot be used at all (no such bucket, refused
    credentials): a start-up error."""


class OriginUnconfirmed(Exception):
    """A bucket origin that could not be confirmed now (unreachable, access
    to a missing key denied): a start-up warning."""


def bucket_and_prefix(url: str) -> tuple[str, str]:
    """A bucket origin's bucket and key prefix (percent-escapes decoded)."""
    parts = urlsplit(url)
    return parts.netloc, unquote(parts.path).lstrip("/")


def check_bucket_origin(client: Callable[[], Any], url: str) -> None:
    """At start-up: read one key under the origin's prefix, which need not
    exist. "No such key" or an object means the bucket is there and the
    credentials read it. Blocking (boto3).

    A GET, not a HEAD of the bucket: an origin's credentials often may only
    read objects (``s3:GetObject``), and a GET's error names its cause
    where a HEAD's is a bare 403. Without ``s3:ListBucket`` a missing key
    is "access denied", so that is `OriginUnconfirmed`, not refused.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        HTTPClientError,
    )

    bucket, prefix = bucket_and_prefix(url)
    try:
        client().get_object(Bucket=bucket, Key=prefix + ".imageserver-check")[
            "Body"
        ].close()
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchKey":
            return
        if code in ("404", "NotFound"):
            raise OriginUnconfirmed(
                "a missing key answered 404 without S3's NoSuchKey: is the "
                "endpoint an S3-compatible server?"
            ) from None
        if code in _NO_BUCKET:
            raise OriginRefused(f"no such bucket {bucket!r}") from None
        if code in _BAD_CREDENTIALS:
            raise OriginRefused(
                f"the credentials are refused ({code}); check the "
                "origin's profile (?profile=) or the AWS credentials"
            ) from None
        if code in ("AccessDenied", "403"):
            raise OriginUnconfirmed(
                "reading a key that may not exist was denied (as "
                "it is without s3:ListBucket); reads of objects may still work"
            ) from None
        if code in _TRANSIENT:
            raise OriginUnconfirmed(f"unavailable ({code})") from None
        raise OriginRefused(f"refused ({code})") from None
    except (ConnectionError, HTTPClientError) as e:
        raise OriginUnconfirmed(f"cannot be reached ({e})") from None
    except BotoCoreError as e:  # no credentials, no such profile, a bad endpoint
        raise OriginRefused(str(e)) from None


class S3Origin:
    """A bucket and a prefix, read with the storage's credentials and
    endpoint (a boto3 client made on first use), in a pool."""

    def __init__(
        self,
        url: str,
        client: Callable[[], Any],
        run: Runner,
        max_bytes: int,
        timeout: float | None = None,
        clock: Any = None,
    ) -> None:
        self.url = url
        self._clock = clock
        #: Seconds a whole fetch may take (--http_timeout), from its start.
        self._timeout = timeout
        self.bucket, self.prefix = bucket_and_prefix(url)
        self._client = client
        self._run = run
        self._max_bytes = max_bytes

    def key(self, segments: Sequence[str]) -> str:
        return self.prefix + "/".join(segments)

    async def fetch(self, segments: Sequence[str], known: str | None) -> Fetched | None:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout

        def read() -> Fetched | None:
            return read_object(
                self._client(),
                self.bucket,
                self.key(segments),
                self._max_bytes,
                known,
                deadline,
            )

        with tracing.span("fetch", {"imageserver.bucket": self.bucket}):
            reading = self._run(read)
            if self._timeout is not None and self._clock is not None:
                # The answer's head and an error's body are read by boto3
                # with a timeout per read alone: the client is answered at
                # the deadline all the same (the thread ends by its read
                # timeouts).
                reading.addTimeout(self._timeout, self._clock)
            try:
                return await reading
            except defer.TimeoutError:
                raise SourceTimeout(
                    f"the origin bucket {self.bucket} did not answer in time"
                ) from None
