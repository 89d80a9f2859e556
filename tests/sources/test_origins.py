"""Origin paths and the directory origin: one grammar, no way out of a root."""

from __future__ import annotations

import os
import socketserver
import tempfile
import threading
import time
import unittest

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase as TwistedTestCase

from imageserver.errors import (
    ContentTooLarge,
    InvalidRequest,
    NotFound,
    SourceTimeout,
    SourceUnavailable,
)
from imageserver.sources.origins import (
    MAX_PATH_BYTES,
    OriginRefused,
    OriginSpec,
    OriginUnconfirmed,
    check_bucket_origin,
    file_root,
    object_path,
    parse_origins,
    read_file,
    read_object,
)

#: Spellings that must never name anything outside a root, or be a path.
REFUSED = [
    "", "/", "a//b", "/a", "a/", ".", "..", "../x", "a/../../x", "a/./b",
    "a\\..\\b", "..\\x", "a\x00b", "a\nb", "a\rb", "\x7f", "a\u2028b",
    "a\u2029b", "\ud800", "a" * (MAX_PATH_BYTES + 1),
    "e\u0301.jpg",  # not NFC
    "gpj.\u202eexe", "a\u2066b",  # bidirectional controls
    "x" * 256,
]  # fmt: skip


class ObjectPathTests(unittest.TestCase):
    def test_every_refused_spelling(self) -> None:
        for path in REFUSED:
            with self.subTest(path=path[:40]), self.assertRaises(InvalidRequest):
                object_path(path)

    def test_ordinary_paths(self) -> None:
        for path, segments in [
            ("a.jpg", ("a.jpg",)),
            ("products/2024/red shoe.jpg", ("products", "2024", "red shoe.jpg")),
            ("%2e%2e/x", ("%2e%2e", "x")),  # decoded once, by the web layer
            ("é/ü.png", ("é", "ü.png")),
            ("...", ("...",)),
        ]:
            with self.subTest(path=path):
                self.assertEqual(object_path(path), segments)

    @given(st.text(max_size=60))
    def test_an_accepted_path_stays_under_its_root(self, path: str) -> None:
        try:
            segments = object_path(path)
        except InvalidRequest:
            return
        root = "/srv/root"
        joined = os.path.normpath(os.path.join(root, *segments))
        self.assertTrue(joined.startswith(root + "/"), joined)
        self.assertEqual(joined, root + "/" + path)


class SpecTests(unittest.TestCase):
    def test_each_kind(self) -> None:
        with tempfile.TemporaryDirectory() as root:
            spec = OriginSpec.parse(f"shop=file://{root}")
            self.assertEqual((spec.namespace, spec.url), ("shop", f"file://{root}/"))
            os.mkdir(os.path.join(root, "my images"))
            spaced = OriginSpec.parse(f"s=file://{root}/my%20images/")
            self.assertEqual(file_root(spaced.url), f"{root}/my images/")
        self.assertEqual(OriginSpec.parse("b=s3://bucket/pre").url, "s3://bucket/pre/")
        self.assertEqual(OriginSpec.parse("w=https://h/x/").scheme, "https")
        own = OriginSpec.parse(
            "b=s3://bucket/pre?profile=shop&region=eu-west-1&endpoint=http://m:9000"
        )
        self.assertEqual(
            (own.url, own.profile, own.region, own.endpoint),
            ("s3://bucket/pre/", "shop", "eu-west-1", "http://m:9000"),
        )
        self.assertFalse(own.uses_storage_settings)
        self.assertEqual(
            own.described,
            "s3://bucket/pre/?profile=shop&region=eu-west-1&endpoint=http://m:9000",
        )
        self.assertTrue(
            OriginSpec.parse("b=s3://bucket/?region=x").uses_storage_settings
        )

    def test_mistakes_say_what_is_wrong(self) -> None:
        for text, words in [
            ("shop", "NAME=URL"),
            ("=file:///tmp", "NAME=URL"),
            ("a=ftp://h/", "scheme"),
            ("a=file:///no/such/dir", "not a directory"),
            ("a=file://host/tmp", "no host"),
            ("a=https:///x", "no host"),
            ("a=https://h/?q=1", "only a bucket's URL has a query"),
            ("a=https://h/#f", "none has a fragment"),
            ("a=s3://b/?q=1", "each of profile, region, endpoint once"),
            ("a=s3://b/?profile=x&profile=y", "once"),
            ("a=s3://b/?profile=", "with a value"),
            ("a=s3://b/?profile", "with a value"),
            ("a=s3://b/?endpoint=ftp://h/", "http"),
            ("a=s3://b/?endpoint=http://u:p@h/", "no user"),
            ("a=s3://b/?endpoint=http:///x", "with a host"),
            ("a=s3://b/?endpoint=http://h:99999/", "endpoint"),
            ("a=https://user:secret@h/", "no user or password"),
            ("a=http://h:99999/", "not a URL"),
            ("a=http://exa_mple.com/", "the host 'exa_mple.com' is not a valid"),
            ("a=https://-bad-.com/", "not a valid host name"),
            ("a=http://a..b/", "not a valid host name"),
        ]:
            with self.subTest(text=text), self.assertRaisesRegex(ValueError, words):
                OriginSpec.parse(text)
        with self.assertRaisesRegex(ValueError, "twice"):
            parse_origins(["a=https://h/", "a=https://i/"])


class BucketCheckTests(unittest.TestCase):
    """What a bucket's answer to the start-up check means. moto answers
    every key pair and policy alike, so the refusals it cannot make are
    given here as the bucket would (the rest run against moto, in
    tests/web/test_origins.py)."""

    def test_each_answer(self) -> None:
        from botocore.exceptions import ClientError

        for code, expected in [
            ("NoSuchKey", None),
            ("404", OriginUnconfirmed),  # a web server, not S3
            ("NoSuchBucket", OriginRefused),
            ("InvalidAccessKeyId", OriginRefused),
            ("SignatureDoesNotMatch", OriginRefused),
            ("ExpiredToken", OriginRefused),
            ("AccessDenied", OriginUnconfirmed),
            ("503", OriginUnconfirmed),
            ("SlowDown", OriginUnconfirmed),
            ("InvalidBucketName", OriginRefused),
        ]:

            class Answers:
                def get_object(self, **_: object) -> None:
                    raise ClientError({"Error": {"Code": code}}, "GetObject")  # noqa: B023

            with self.subTest(code=code):
                if expected is None:
                    check_bucket_origin(Answers, "s3://b/pre/")
                    continue
                with self.assertRaises(expected):
                    check_bucket_origin(Answers, "s3://b/pre/")


class ReadFileTests(unittest.TestCase):
    def setUp(self) -> None:
        self.outside = tempfile.mkdtemp()
        self.root = tempfile.mkdtemp()
        with open(os.path.join(self.outside, "secret.jpg"), "wb") as f:
            f.write(b"secret")
        os.mkdir(os.path.join(self.root, "d"))
        with open(os.path.join(self.root, "d", "a.jpg"), "wb") as f:
            f.write(b"image")
        os.symlink(self.outside, os.path.join(self.root, "out"))
        os.symlink(
            os.path.join(self.outside, "secret.jpg"), os.path.join(self.root, "s.jpg")
        )
        os.symlink("d/a.jpg", os.path.join(self.root, "inside.jpg"))
        os.mkfifo(os.path.join(self.root, "fifo"))

    def test_a_file(self) -> None:
        fetched = read_file(self.root, ("d", "a.jpg"), 100, None)
        assert fetched is not None
        self.assertEqual(fetched.data, b"image")
        # Unchanged: nothing is read.
        self.assertIsNone(read_file(self.root, ("d", "a.jpg"), 100, fetched.validator))
        with open(os.path.join(self.root, "d", "a.jpg"), "wb") as f:
            f.write(b"changed!")
        again = read_file(self.root, ("d", "a.jpg"), 100, fetched.validator)
        assert again is not None
        self.assertEqual(again.data, b"changed!")

    def test_no_link_is_followed_and_nothing_but_files_is_read(self) -> None:
        refused = [("out", "secret.jpg"), ("s.jpg",), ("inside.jpg",), ("fifo",),
                   ("d",), ("missing.jpg",), ("d", "a.jpg", "x")]  # fmt: skip
        for segments in refused:
            with self.subTest(segments=segments), self.assertRaises(NotFound):
                read_file(self.root, segments, 100, None)

    def test_over_the_limit_is_refused_before_reading(self) -> None:
        with self.assertRaisesRegex(ContentTooLarge, "--max_source_bytes"):
            read_file(self.root, ("d", "a.jpg"), 4, None)


class _Bucket(socketserver.BaseRequestHandler):
    """A loopback server that answers S3 GETs badly, by the key asked."""

    def handle(self) -> None:
        request = self.request.recv(65536)
        key = request.split(b" ")[1].rsplit(b"/", 1)[-1]
        if key == b"silent":
            time.sleep(3)
            return
        if key == b"headtrickle":  # a header every 0.3 s: no read times out
            self.request.sendall(b"HTTP/1.1 500 Oops\r\n")
            for n in range(10):
                try:
                    self.request.sendall(b"X-%d: y\r\n" % n)
                except OSError:
                    return
                time.sleep(0.3)
            return
        self.request.sendall(
            b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: "e"\r\n\r\n'
        )
        if key == b"short":
            self.request.sendall(b"x" * 10)
            return
        for _ in range(100):  # trickle: a byte every 50 ms
            try:
                self.request.sendall(b"x")
            except OSError:
                return
            time.sleep(0.05)


class BucketReadTests(unittest.TestCase):
    """read_object against a bucket that stalls, trickles or cuts off: each
    ends by the deadline, as a timeout, or fails; none is taken as whole."""

    def setUp(self) -> None:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Bucket)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        from imageserver.storage.s3 import S3Settings, make_client

        self.client = make_client(
            S3Settings(
                bucket="b",
                endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
                access_key_id="k",
                secret_access_key="s",
                region="us-east-1",
                timeout=0.5,
                max_attempts=1,
            )
        )

    def test_each_ends_in_time(self) -> None:
        for key, error in [
            ("trickle", SourceTimeout),
            ("silent", SourceTimeout),
            ("short", SourceUnavailable),
        ]:
            start = time.monotonic()
            with self.subTest(key=key), self.assertRaises(error):
                read_object(self.client, "b", key, 10_000, None, start + 0.5)
            self.assertLess(time.monotonic() - start, 1.5, key)


class BucketDeadlineTests(TwistedTestCase):
    """A bucket that trickles the head of its answer: boto3 times out each
    read alone, so the fetch's own deadline answers the client."""

    async def test_a_trickled_head_is_a_timeout_at_the_deadline(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThread

        from imageserver.sources.origins import S3Origin
        from imageserver.storage.s3 import S3Settings, make_client

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Bucket)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        client = make_client(
            S3Settings(
                bucket="b",
                endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
                access_key_id="k", secret_access_key="s", region="us-east-1",
                timeout=1.0, max_attempts=1,
            )
        )  # fmt: skip
        origin = S3Origin("s3://b/", lambda: client, deferToThread, 1000, 0.5, reactor)
        start = time.monotonic()
        with self.assertRaises(SourceTimeout):
            await origin.fetch(("headtrickle",), None)
        self.assertLess(time.monotonic() - start, 1.2)
