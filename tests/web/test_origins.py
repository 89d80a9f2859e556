"""Origins through the real app: a directory and a web server as namespaces."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

from PIL import Image
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests import s3server
from tests.support import RED, AppHarness, TestCaseMixin, encode, quadrants


class Served(Resource):
    """A web origin: objects by path, with ETags and 304s; it can change an
    object, lose it, or fail."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[bytes, bytes] = {}
        self.redirects: dict[bytes, bytes] = {}
        self.asked: list[tuple[bytes, bytes | None]] = []
        self.failing = False
        #: Whether answers carry an ETag (and 304s are given).
        self.validators = True

    def render_GET(self, request: Any) -> bytes:
        conditional = request.getHeader(b"If-None-Match")
        self.asked.append((request.path, conditional))
        if self.failing:
            request.setResponseCode(500)
            return b"down"
        if request.path in self.redirects:
            request.setResponseCode(302)
            request.setHeader(b"Location", self.redirects[request.path])
            return b""
        data = self.objects.get(request.path)
        if data is None:
            request.setResponseCode(404)
            return b"no"
        etag = b'"' + hashlib.sha1(data).hexdigest().encode() + b'"'
        if self.validators:
            request.setHeader(b"ETag", etag)
        if self.validators and conditional == etag:
            request.setResponseCode(304)
            return b""
        request.setHeader(b"Content-Type", b"image/jpeg")
        return data


def size_of(body: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(body)).size


class FileOriginTests(TestCaseMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.root, "products", "red"))
        self.photo = encode(quadrants((64, 48)))
        self.write("products/red/shoe.jpg", self.photo)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.app = AppHarness(
            self, clock=self.clock, origin=(f"shop=file://{self.root}",)
        )

    def write(self, path: str, data: bytes) -> None:
        with open(os.path.join(self.root, path), "wb") as f:
            f.write(data)

    def checks(self, outcome: str) -> float:
        return self.app.events.origins.labels("shop", outcome)._value.get()  # type: ignore[no-any-return]

    def gets(self) -> float:
        return self.app.events.storage.labels("local", "get", "ok")._value.get()  # type: ignore[no-any-return]

    def test_a_record_read_is_used_again_for_a_second(self) -> None:
        url = "/shop/products/red/shoe.jpg/w32.png"
        self.app.request("GET", url)
        before = self.gets()
        self.app.request("GET", url)
        self.assertEqual(self.gets() - before, 1)  # the variant alone
        self.clock.advance(1)
        before = self.gets()
        self.app.request("GET", url)
        self.assertEqual(self.gets() - before, 2)  # the record read again

    def test_a_variant_of_a_path(self) -> None:
        response, body = self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(size_of(body), (32, 24))
        self.assertColour(Image.open(io.BytesIO(body)).convert("RGB"), (4, 4), RED)
        digest = hashlib.md5(self.photo).hexdigest()
        folder = f"/shop/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
        headers = response.headers
        self.assertEqual(
            headers.getRawHeaders("Content-Location"), [f"{folder}/w32.png"]
        )
        self.assertEqual(
            headers.getRawHeaders("Cache-Control"), ["public, max-age=3600"]
        )
        # The hash folder's URL serves the same bytes, for ever.
        hashed, same = self.app.request("GET", f"{folder}/w32.png")
        self.assertEqual((hashed.code, same), (200, body))
        self.assertIn("immutable", hashed.headers.getRawHeaders("Cache-Control")[0])
        code, info = self.app.json("GET", "/shop/products/red/shoe.jpg/info.json")
        self.assertEqual((code, info["width"], info["hash"]), (200, 64, digest))

    def test_a_changed_file_is_served_after_the_ttl(self) -> None:
        self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        self.write("products/red/shoe.jpg", encode(quadrants((40, 40))))
        _, same = self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        self.assertEqual(size_of(same), (32, 24))  # within the TTL: as stored
        self.clock.advance(3601)
        _, stale = self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        # Served from what was stored while it is checked in the background;
        # checked (synchronously here), the next request has the new image.
        self.assertEqual(size_of(stale), (32, 24))
        _, new = self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        self.assertEqual(size_of(new), (32, 32))
        self.assertEqual((self.checks("fetched"), self.checks("changed")), (1, 1))
        stale = self.app.events.origin_stale.labels("shop", "revalidating")
        self.assertEqual(stale._value.get(), 1)

    def test_a_purge_by_hash_is_fetched_again_by_path(self) -> None:
        response, _ = self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        folder = response.headers.getRawHeaders("Content-Location")[0].rsplit("/", 1)[0]
        self.assertEqual(self.app.request("DELETE", folder)[0].code, 204)
        response, body = self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        self.assertEqual((response.code, size_of(body)), (200, (32, 24)))
        self.assertEqual(
            self.app.events.origins.labels("shop", "fetched")._value.get(), 2
        )
        # A name that is not there is a 404 that asks the origin nothing.
        status, _ = self.app.json("GET", "/shop/products/red/shoe.jpg/notes.txt")
        self.assertEqual(status, 404)
        self.assertEqual(
            self.app.events.origins.labels("shop", "fetched")._value.get(), 2
        )

    def test_two_paths_with_the_same_bytes_share_one_folder(self) -> None:
        self.write("copy.jpg", self.photo)
        first, _ = self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        second, _ = self.app.request("GET", "/shop/copy.jpg/w32.png")
        self.assertEqual(
            first.headers.getRawHeaders("Content-Location"),
            second.headers.getRawHeaders("Content-Location"),
        )
        self.assertEqual(self.app.events.originals.labels("stored")._value.get(), 1)

    def test_missing_and_refused_paths(self) -> None:
        for path, code in [
            ("/shop/products/red/none.jpg/w32.png", 404),  # asks the origin
            ("/shop/products/../red/shoe.jpg/w32.png", 400),
            ("/shop/products/%2e%2e/red/shoe.jpg/w32.png", 400),
            ("/shop/products//red/shoe.jpg/w32.png", 400),
            ("/shop/shoe.jpg", 404),
            ("/shop/products/red/shoe.jpg", 404),
            ("/shop/products/red/shoe.jpg/", 404),
            ("/shop/products/red/shoe.jpg/bogus", 404),
            ("/shop/products/red/shoe.jpg/w0.png", 400),
            ("/elsewhere/products/red/shoe.jpg/w32.png", 404),
        ]:
            with self.subTest(path=path):
                status, body = self.app.json("GET", path)
                self.assertEqual(status, code, body)
                self.assertIn("error", body)
        # Only the first asked the origin; nothing was written for it.
        self.assertEqual(self.checks("missing"), 1)
        self.assertFalse(os.path.exists(os.path.join(self.app.root, "shop", "paths")))
        status, body = self.app.json("GET", "/shop/products/red/shoe.jpg")
        self.assertIn("/shop/products/red/shoe.jpg/w200.jpg", body["error"])

    def test_the_missing_answer_is_remembered_then_asked_again(self) -> None:
        status, _ = self.app.json("GET", "/shop/later.jpg/w32.png")
        self.assertEqual(status, 404)
        self.write("later.jpg", self.photo)
        status, _ = self.app.json("GET", "/shop/later.jpg/w32.png")
        self.assertEqual(status, 404)
        self.clock.advance(61)
        response, _ = self.app.request("GET", "/shop/later.jpg/w32.png")
        self.assertEqual(response.code, 200)

    def test_a_batch_of_paths_fetches_them_and_makes_the_outputs(self) -> None:
        self.write("copy.jpg", encode(quadrants((40, 40))))
        body = b"products/red/shoe.jpg\n\ncopy.jpg\nnone.jpg\n"
        status, answer = self.app.json("POST", "/shop/batch?outputs=w20.png", data=body)
        self.assertEqual(status, 202, answer)
        status, report = self.app.json("GET", f"/shop/batch/{answer['job_id']}")
        self.assertEqual((status, report["total"], report["failed"]), (200, 3, 1))
        self.assertEqual(
            [(i["path"], i["width"], i["error"] is None) for i in report["items"]],
            [("products/red/shoe.jpg", 64, True), ("copy.jpg", 40, True),
             ("none.jpg", None, False)],
        )  # fmt: skip
        gets = self.gets()
        response, _ = self.app.request("GET", "/shop/copy.jpg/w20.png")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.checks("fetched"), 2)  # made by the batch
        self.assertEqual(self.gets() - gets, 1)  # stored: read, not rendered
        for bad in (b"../x.jpg\n", b"\n\n"):
            status, answer = self.app.json("POST", "/shop/batch", data=bad)
            self.assertEqual(status, 400, answer)

    def test_uploads_into_an_origin_namespace_are_refused(self) -> None:
        status, body = self.app.json("POST", "/shop", data=self.photo)
        self.assertEqual(status, 403)
        self.assertIn("--origin", body["error"])
        # Nor a client file into one of its images' folders.
        response, _ = self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        folder = response.headers.getRawHeaders("Content-Location")[0].rsplit("/", 1)[0]
        status, body = self.app.json("POST", f"{folder}/notes.txt", data=b"hi")
        self.assertEqual(status, 403, body)
        # A batch lists the origin's paths: a URL is an upload, refused.
        status, body = self.app.json(
            "POST", "/shop/batch", data=b"a.jpg\nhttp://127.0.0.1/a.jpg\n"
        )
        self.assertEqual(status, 403)
        self.assertIn("--origin", body["error"])

    def test_a_path_gone_from_the_origin_is_still_purged_by_its_delete(
        self,
    ) -> None:
        response, _ = self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        folder = response.headers.getRawHeaders("Content-Location")[0].rsplit("/", 1)[0]
        os.remove(os.path.join(self.root, "products", "red", "shoe.jpg"))
        self.clock.advance(3601)
        self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")  # stale
        status, _ = self.app.json("GET", "/shop/products/red/shoe.jpg/w32.png")
        self.assertEqual(status, 404)
        self.assertEqual(self.app.request("GET", f"{folder}/w32.png")[0].code, 200)
        response, _ = self.app.request("DELETE", "/shop/products/red/shoe.jpg")
        self.assertEqual(response.code, 204)
        self.assertEqual(self.app.request("GET", f"{folder}/original")[0].code, 404)

    def test_delete_forgets_the_path_and_purges_its_image(self) -> None:
        response, _ = self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        folder = response.headers.getRawHeaders("Content-Location")[0].rsplit("/", 1)[0]
        response, _ = self.app.request("DELETE", "/shop/products/red/shoe.jpg")
        self.assertEqual(response.code, 204)
        self.assertEqual(self.app.request("GET", f"{folder}/w32.png")[0].code, 404)
        self.write("products/red/shoe.jpg", encode(quadrants((40, 40))))
        _, new = self.app.request("GET", "/shop/products/red/shoe.jpg/w32.png")
        self.assertEqual(size_of(new), (32, 32))  # fetched again at once
        status, _ = self.app.json("DELETE", "/shop/never/fetched.jpg")
        self.assertEqual(status, 404)

    def test_a_delete_of_a_path_whose_image_is_gone_already_is_done(self) -> None:
        """Two paths, one image: the second path's DELETE forgets it (204)
        although the first one's purged the image."""
        self.write("copy.jpg", self.photo)
        for path in ("/shop/products/red/shoe.jpg", "/shop/copy.jpg"):
            self.app.request("GET", f"{path}/w32.png")
        for path in ("/shop/products/red/shoe.jpg", "/shop/copy.jpg"):
            response, _ = self.app.request("DELETE", path)
            self.assertEqual(response.code, 204, path)
        status, answer = self.app.json("DELETE", "/shop/copy.jpg")
        self.assertEqual(status, 404)
        self.assertIn("never fetched", answer["error"])

    def test_a_batch_body_is_utf8_its_byte_order_mark_no_part_of_a_path(
        self,
    ) -> None:
        status, body = self.app.json("POST", "/shop/batch", data=b"a.jpg\n\xff.jpg\n")
        self.assertEqual(status, 400, body)
        self.assertIn("line 2: the body is not UTF-8", body["error"])
        status, body = self.app.json(
            "POST", "/shop/batch", data="\ufeffproducts/red/shoe.jpg\n".encode()
        )
        self.assertEqual(status, 202, body)
        status, report = self.app.json("GET", f"/shop/batch/{body['job_id']}")
        self.assertEqual(report["items"][0]["path"], "products/red/shoe.jpg")
        self.assertIsNone(report["items"][0]["error"])
        self.assertNotIn("detail", report["items"][0])

    def test_an_empty_segment_is_a_400_that_says_so(self) -> None:
        status, body = self.app.json("GET", "/shop//products/red/shoe.jpg/w32.png")
        self.assertEqual(status, 400, body)
        self.assertIn("empty", body["error"])

    def test_the_object_without_a_name_is_told_how_to_name_one(self) -> None:
        for url in ("/shop/products/red/shoe.jpg", "/shop/products/red/shoe.jpg/"):
            status, answer = self.app.json("GET", url)
            self.assertEqual(status, 404, url)
            self.assertIn("e.g. /shop/products/red/shoe.jpg/w200.jpg", answer["error"])


class HttpOriginTests(TestCaseMixin, SynchronousTestCase):
    def setUp(self) -> None:
        self.web = Served()
        self.photo = encode(quadrants((64, 48)))
        self.web.objects[b"/img/a%20b.jpg"] = self.photo  # as sent
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.app = AppHarness(
            self,
            sources=self.web,
            clock=self.clock,
            origin=("cms=http://origin.example/img/",),
        )

    def test_fetched_once_then_revalidated_with_its_etag(self) -> None:
        for _ in range(3):
            response, body = self.app.request("GET", "/cms/a%20b.jpg/w32.png")
            self.assertEqual((response.code, size_of(body)), (200, (32, 24)))
        self.assertEqual(self.web.asked, [(b"/img/a%20b.jpg", None)])
        self.clock.advance(3601)
        self.app.request("GET", "/cms/a%20b.jpg/w32.png")
        etag = b'"' + hashlib.sha1(self.photo).hexdigest().encode() + b'"'
        self.assertEqual(self.web.asked[1:], [(b"/img/a%20b.jpg", etag)])
        self.app.request("GET", "/cms/a%20b.jpg/w32.png")
        self.assertEqual(len(self.web.asked), 2)  # a 304 renewed the record

    def test_an_origin_down_serves_what_is_stored(self) -> None:
        _, first = self.app.request("GET", "/cms/a%20b.jpg/w32.png")
        self.web.failing = True
        self.clock.advance(3601)
        response, body = self.app.request("GET", "/cms/a%20b.jpg/w32.png")
        self.assertEqual((response.code, body), (200, first))
        self.assertEqual(self.app.events.origins.labels("cms", "error")._value.get(), 1)
        # Never fetched and the origin down: it says so.
        status, answer = self.app.json("GET", "/cms/other.jpg/w32.png")
        self.assertEqual(status, 502, answer)

    def test_a_failing_origin_is_asked_once_a_pause(self) -> None:
        self.app.request("GET", "/cms/a%20b.jpg/w32.png")
        self.web.failing = True
        self.clock.advance(3601)
        for _ in range(5):
            response, _ = self.app.request("GET", "/cms/a%20b.jpg/w32.png")
            self.assertEqual(response.code, 200)
        self.assertEqual(len(self.web.asked), 2)  # the fetch, one failed check
        stale = self.app.events.origin_stale
        self.assertEqual(
            [stale.labels("cms", why)._value.get()
             for why in ("revalidating", "origin_failing")],
            [1, 4],
        )  # fmt: skip
        self.clock.advance(3601)
        self.app.request("GET", "/cms/a%20b.jpg/w32.png")
        self.assertEqual(len(self.web.asked), 3)
        # Never fetched: the failure is the answer, for the pause too (5 s,
        # not the TTL: nothing is served meanwhile), and it names no address.
        for _ in range(3):
            status, answer = self.app.json("GET", "/cms/new.jpg/w32.png")
            self.assertEqual(status, 502)
            self.assertNotIn("origin.example", answer["error"])
            self.assertIn("'cms'", answer["error"])
            self.assertIn("asked again in 5 seconds", answer["error"])
        self.assertEqual(len(self.web.asked), 4)
        self.clock.advance(5)
        self.web.failing = False
        self.web.objects[b"/img/new.jpg"] = self.photo
        response, _ = self.app.request("GET", "/cms/new.jpg/w32.png")
        self.assertEqual((response.code, len(self.web.asked)), (200, 5))

    def test_an_origin_without_validators_is_fetched_whole_at_each_check(
        self,
    ) -> None:
        """No ETag, no Last-Modified: nothing to ask conditionally; the same
        bytes again count as not modified, other bytes as changed."""
        self.web.validators = False
        self.app.request("GET", "/cms/a%20b.jpg/w32.png")
        self.clock.advance(3601)
        self.app.request("GET", "/cms/a%20b.jpg/w32.png")
        self.web.objects[b"/img/a%20b.jpg"] = encode(quadrants((40, 40)))
        self.clock.advance(3601)
        self.app.request("GET", "/cms/a%20b.jpg/w32.png")
        self.assertEqual([c for _, c in self.web.asked], [None, None, None])
        counts = self.app.events.origins
        self.assertEqual(
            [counts.labels("cms", o)._value.get()
             for o in ("fetched", "not_modified", "changed")],
            [1, 1, 1],
        )  # fmt: skip

    def test_html_served_as_an_image_is_refused_like_an_upload(self) -> None:
        self.web.objects[b"/img/page.jpg"] = b"<html>not an image</html>"
        for _ in range(2):  # the second within the pause: not asked again
            status, body = self.app.json("GET", "/cms/page.jpg/w32.png")
            self.assertEqual(status, 415, body)
            self.assertIn(
                "the origin's object 'page.jpg' is not an image", body["error"]
            )
        self.assertEqual(len(self.web.asked), 1)


class BucketOriginTests(TestCaseMixin, SynchronousTestCase):
    """A bucket on moto_server, apart from where images are stored."""

    def setUp(self) -> None:
        self.moto = s3server.shared()
        self.bucket = self.moto.new_bucket()
        self.s3 = self.moto.client()
        self.photo = encode(quadrants((64, 48)))
        self.put("pre/a/b.jpg", self.photo)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.app = AppHarness(
            self,
            clock=self.clock,
            origin=(f"b=s3://{self.bucket}/pre/",),
            s3_endpoint_url=self.moto.url,
            aws_region="us-east-1",
            aws_access_key_id=s3server.CREDENTIALS["aws_access_key_id"],
            aws_secret_key=s3server.CREDENTIALS["aws_secret_access_key"],
            max_source_bytes=100_000,
        )

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def checks(self, outcome: str) -> float:
        return self.app.events.origins.labels("b", outcome)._value.get()  # type: ignore[no-any-return]

    def test_fetched_once_then_checked_by_its_etag(self) -> None:
        for _ in range(2):
            response, body = self.app.request("GET", "/b/a/b.jpg/w32.png")
            self.assertEqual((response.code, size_of(body)), (200, (32, 24)))
        self.assertEqual(self.checks("fetched"), 1)
        self.clock.advance(3601)
        self.app.request("GET", "/b/a/b.jpg/w32.png")
        self.assertEqual(self.checks("not_modified"), 1)
        self.put("pre/a/b.jpg", encode(quadrants((40, 40))))
        self.clock.advance(3601)
        self.app.request("GET", "/b/a/b.jpg/w32.png")  # stale, checked
        _, new = self.app.request("GET", "/b/a/b.jpg/w32.png")
        self.assertEqual(size_of(new), (32, 32))

    def test_missing_and_too_large(self) -> None:
        status, body = self.app.json("GET", "/b/a/none.jpg/w32.png")
        self.assertEqual(status, 404, body)
        self.put("pre/big.jpg", b"\xff\xd8" + bytes(100_000))
        status, body = self.app.json("GET", "/b/big.jpg/w32.png")
        self.assertEqual(status, 413, body)
        self.assertIn("--max_source_bytes", body["error"])


def aws_files(case: SynchronousTestCase, profiles: dict[str, dict[str, str]]) -> None:
    """AWS configuration and credentials files naming ``profiles`` (each its
    keys, region, endpoint), and no credentials anywhere else, for the test."""
    folder = case.mktemp()
    os.makedirs(folder)
    config, credentials = [], []
    for name, values in profiles.items():
        config += [f"[profile {name}]", f"region = {values['region']}"]
        if "endpoint" in values:
            config += [f"endpoint_url = {values['endpoint']}", "s3 =",
                       "  addressing_style = path"]  # fmt: skip
        credentials += [f"[{name}]", f"aws_access_key_id = {values['key']}",
                        f"aws_secret_access_key = {values['secret']}"]  # fmt: skip
    for variable, lines in [("AWS_CONFIG_FILE", config),
                            ("AWS_SHARED_CREDENTIALS_FILE", credentials)]:  # fmt: skip
        path = os.path.join(folder, variable.lower())
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        _set(case, variable, path)
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                     "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):  # fmt: skip
        _set(case, variable, None)


def _set(case: SynchronousTestCase, variable: str, value: str | None) -> None:
    """An environment variable set (None: removed) for the test's time."""
    before = os.environ.pop(variable, None)
    if value is not None:
        os.environ[variable] = value
    case.addCleanup(
        lambda: (
            os.environ.pop(variable, None)
            if before is None
            else os.environ.__setitem__(variable, before)
        )
    )


class BucketOriginSettingsTests(TestCaseMixin, SynchronousTestCase):
    """A bucket origin reached its own way (?profile=, ?endpoint=), while the
    images are stored on the local disk with no AWS settings at all."""

    def setUp(self) -> None:
        self.moto = s3server.shared()
        self.bucket = self.moto.new_bucket()
        self.moto.client().put_object(
            Bucket=self.bucket, Key="pre/a.jpg", Body=encode(quadrants((64, 48)))
        )
        aws_files(self, {"shop": {"region": "eu-west-1", "endpoint": self.moto.url,
                                  **_keys()}})  # fmt: skip

    def test_a_profile_gives_credentials_region_and_endpoint(self) -> None:
        """Nothing else names credentials or the endpoint: the fetch works
        only with the profile's."""
        app = AppHarness(self, origin=(f"b=s3://{self.bucket}/pre/?profile=shop",))
        response, body = app.request("GET", "/b/a.jpg/w32.png")
        self.assertEqual((response.code, size_of(body)), (200, (32, 24)))

    def test_an_endpoint_of_its_own_with_the_storages_credentials(self) -> None:
        app = AppHarness(
            self,
            origin=(f"b=s3://{self.bucket}/pre/?endpoint={self.moto.url}",),
            s3_endpoint_url="http://127.0.0.1:9",  # the storage's: not used
            aws_access_key_id="k",
            aws_secret_key="s",
        )
        response, body = app.request("GET", "/b/a.jpg/w32.png")
        self.assertEqual((response.code, size_of(body)), (200, (32, 24)))

    def test_the_start_up_check(self) -> None:
        """A bucket origin that cannot be used stops the start in one line
        naming the option; one that cannot be reached now is a warning."""
        from imageserver.assembly import check_origins
        from imageserver.config import Config
        from imageserver.runtime.listening import StartupFailed

        def check(url: str) -> None:
            check_origins(Config(origin=(f"b={url}",), http_timeout=2.0))

        check(f"s3://{self.bucket}/pre/?profile=shop")  # fine: no error
        check(f"s3://{self.bucket}/?profile=shop")
        for url, words in [
            ("s3://no-such-bucket/?profile=shop", "no such bucket"),
            (f"s3://{self.bucket}/?profile=nobody", "nobody"),
            (f"s3://{self.bucket}/", "credentials"),
        ]:
            with self.subTest(url=url), self.assertRaises(StartupFailed) as raised:
                check(url)
            self.assertIn("--origin b=s3://", str(raised.exception))
            self.assertIn(words, str(raised.exception))
            self.assertNotIn("\n", str(raised.exception))
        with capturedLogs() as logged:
            check(f"s3://{self.bucket}/?profile=shop&endpoint=http://127.0.0.1:9")
        warned = [formatEvent(e) for e in logged]
        self.assertTrue(any("cannot be reached" in w for w in warned), warned)


class WebOriginStartTests(SynchronousTestCase):
    def test_an_origin_the_policy_refuses_is_refused_at_start(self) -> None:
        """Not a 502 on every request: one line at start naming the policy's
        options; allowed, or a name that does not resolve now, it starts."""
        from imageserver.assembly import check_origins
        from imageserver.config import Config
        from imageserver.runtime.listening import StartupFailed

        for url in ("http://127.0.0.1:9/", "http://localhost/img/",
                    "https://10.1.2.3/", "http://[::1]:8080/"):  # fmt: skip
            with self.subTest(url=url), self.assertRaises(StartupFailed) as raised:
                check_origins(Config(origin=(f"cms={url}",)))
            self.assertIn(f"--origin cms={url}: source host", str(raised.exception))
            self.assertIn("--allow_networks", str(raised.exception))
        check_origins(Config(origin=("cms=http://127.0.0.1:9/",),
                             allow_networks=("127.0.0.0/8",)))  # fmt: skip
        check_origins(Config(origin=("cms=http://10.1.2.3/",),
                             allow_private_sources=True))  # fmt: skip
        with capturedLogs() as logged:
            check_origins(Config(origin=("cms=http://no-such-host.invalid/",)))
        self.assertIn("does not resolve now", formatEvent(logged[0]))


def _keys() -> dict[str, str]:
    return {"key": s3server.CREDENTIALS["aws_access_key_id"],
            "secret": s3server.CREDENTIALS["aws_secret_access_key"]}  # fmt: skip


class Held(Served):
    """A web origin that answers only when told."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.asked.append((request.path, None))
        self.held.append(request)
        return NOT_DONE_YET

    def release(self) -> None:
        held, self.held = self.held, []
        for request in held:
            request.setHeader(b"Content-Type", b"image/jpeg")
            request.write(self.objects[request.path])
            request.finish()


class FetchLimitTests(TestCaseMixin, SynchronousTestCase):
    def test_fetches_wait_their_turn(self) -> None:
        web = Held()
        photo = encode(quadrants((64, 48)))
        for i in range(5):
            web.objects[f"/img/{i}.jpg".encode()] = photo
        app = AppHarness(
            self,
            sources=web,
            origin=("cms=http://origin.example/img/",),
            max_source_bytes=1000,
            max_receiving_bytes=2000,
        )
        pending = [app.start("GET", f"/cms/{i}.jpg/w32.png") for i in range(5)]
        app.flush()
        self.assertEqual(len(web.asked), 2)  # 2000 // 1000 at once
        while web.held:
            web.release()
            app.flush()
        self.assertEqual(len(web.asked), 5)
        for d in pending:
            self.assertEqual(self.successResultOf(d).code, 200)
