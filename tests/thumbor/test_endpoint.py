"""thumbor's URLs through the real app, on a file origin: each answers the
canonical variant it maps to, stored once and shared with the native URL."""

from __future__ import annotations

import io
import json
import os
from typing import Any

from libthumbor import CryptoURL
from PIL import Image
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from imageserver.web.access import AccessPolicy
from imageserver.web.app import is_thumbor_path
from tests.support import AppHarness, encode, quadrants

KEY = "secret"
IMAGE = "photos/landscape.jpg"


def signed(key: str = KEY, **options: object) -> str:
    """What libthumbor makes of ``options`` for the test's image."""
    return str(CryptoURL(key=key).generate(image_url=IMAGE, **options))


def file_origin(
    case: SynchronousTestCase, files: dict[str, bytes], under: str = "", **settings: Any
) -> tuple[str, AppHarness]:
    """A directory holding ``files`` (by their paths in it), its folder
    ``under`` the origin ``files`` that thumbor's URLs read, and the app."""
    root = os.path.abspath(case.mktemp())
    os.makedirs(os.path.join(root, under), exist_ok=True)
    for path, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "wb") as f:
            f.write(data)
    origin = f"files=file://{os.path.join(root, under).rstrip('/')}/"
    app = AppHarness(
        case, origin=(origin,), thumbor=True, thumbor_loader="files", **settings
    )
    return root, app


class ThumborEndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        _, self.app = file_origin(
            self,
            {IMAGE: encode(quadrants((400, 300)))},
            thumbor_security_key=f"old,{KEY}",
        )

    def get(self, url: str, **headers: str) -> tuple[int, dict[str, list[str]], bytes]:
        response, body = self.app.request(
            "GET", url, headers={k: [v] for k, v in headers.items()}
        )
        found = {
            k.decode(): [v.decode() for v in vs]
            for k, vs in response.headers.getAllRawHeaders()
        }
        return response.code, found, body

    def test_a_signed_url_answers_thumbors_size_and_shares_the_variant(self) -> None:
        url = signed(width=200, height=100)
        status, headers, body = self.get(url)
        self.assertEqual(status, 200, body[:200])
        picture = Image.open(io.BytesIO(body))
        self.assertEqual((picture.format, picture.size), ("JPEG", (200, 100)))
        [location] = headers["Content-Location"]
        self.assertTrue(
            location.endswith("/200x100-crop0_50_400_250-q80.jpg"), location
        )
        status, _, native = self.get(location)
        self.assertEqual((status, native), (200, body))

    def test_signatures(self) -> None:
        url = signed(width=100)
        for given, status in [
            (url, 200),
            (signed("old", width=100), 200),  # a key being rotated
            (signed("wrong", width=100), 400),
            (url.replace("100x0", "101x0"), 400),
            (f"/unsafe/100x0/{IMAGE}", 400),  # --thumbor_allow_unsafe is off
        ]:
            self.assertEqual(self.get(given)[0], status, given)

    def test_meta(self) -> None:
        url = signed(meta=True, width=200, height=100)
        status, headers, body = self.get(url)
        self.assertEqual((status, headers["Content-Type"]), (200, ["application/json"]))
        answer = json.loads(body)["thumbor"]
        self.assertEqual(answer["target"], {"width": 200, "height": 100})
        self.assertEqual(
            answer["operations"][0],
            {"type": "crop", "left": 0, "top": 50, "right": 400, "bottom": 250},
        )

    def test_a_missing_image_is_a_404(self) -> None:
        url = str(CryptoURL(key=KEY).generate(width=100, image_url="photos/no.jpg"))
        self.assertEqual(self.get(url)[0], 404)

    def test_a_thumbor_url_is_not_deleted_and_says_what_is(self) -> None:
        status, body = self.app.json("DELETE", signed(width=100))
        self.assertEqual(status, 404)
        self.assertIn("DELETE its origin path", body["error"])

    def test_healthcheck(self) -> None:
        status, _, body = self.get("/healthcheck")
        self.assertEqual((status, body), (200, b"WORKING"))


class HttpLoaderTests(SynchronousTestCase):
    """Without --thumbor_loader an image is a URL, read from the web origin
    it starts with (thumbor's HTTP loader with ALLOWED_SOURCES)."""

    def setUp(self) -> None:
        from tests.web.test_origins import Served

        self.web = Served()
        self.web.objects[b"/img/a.jpg"] = encode(quadrants((400, 300)))
        self.app = AppHarness(
            self,
            sources=self.web,
            origin=("cms=http://origin.example/img/",),
            thumbor=True,
            thumbor_allow_unsafe=True,
            thumbor_auto_webp=True,
        )

    def get(self, path: str, accept: str = "") -> tuple[int, Any, bytes]:
        headers = {"Accept": [accept]} if accept else {}
        response, body = self.app.request("GET", path, headers=headers)
        return response.code, response.headers, body

    def test_an_image_url_under_a_web_origin(self) -> None:
        for image in (
            "http://origin.example/img/a.jpg",
            "origin.example/img/a.jpg",  # thumbor reads it as http://
            "http%3A%2F%2Forigin.example%2Fimg%2Fa.jpg",  # encoded whole
        ):
            status, _, body = self.get(f"/unsafe/100x0/{image}")
            self.assertEqual(status, 200, (image, body[:200]))
            self.assertEqual(Image.open(io.BytesIO(body)).size, (100, 75))

    def test_an_image_url_elsewhere_is_refused_as_thumbor_refuses_it(self) -> None:
        for image in (
            "http://elsewhere.example/img/a.jpg",
            "http://origin.example/other/a.jpg",
            "http://origin.example/img/",
        ):
            status, _, body = self.get(f"/unsafe/100x0/{image}")
            self.assertEqual(status, 400, image)
            self.assertIn(b"web origins", body)
        self.assertEqual(self.web.asked, [])

    def test_auto_webp_by_accept_with_vary(self) -> None:
        path = "/unsafe/100x0/origin.example/img/a.jpg"
        for accept, kind in (("image/webp,*/*", "WEBP"), ("image/*", "JPEG")):
            status, headers, body = self.get(path, accept)
            self.assertEqual((status, Image.open(io.BytesIO(body)).format), (200, kind))
            self.assertEqual(headers.getRawHeaders("Vary"), ["Accept"])
        status, headers, body = self.get(
            "/unsafe/100x0/filters:format(png)/origin.example/img/a.jpg", "image/webp"
        )
        self.assertEqual(Image.open(io.BytesIO(body)).format, "PNG")
        self.assertIsNone(headers.getRawHeaders("Vary"))


class FileLoaderBoundsTests(SynchronousTestCase):
    """The file loader's image is a path under its root, checked as an
    origin's path is: no way out of the directory, in any spelling."""

    def setUp(self) -> None:
        picture = encode(quadrants((40, 30)))
        _, self.app = file_origin(
            self,
            {"in/a.jpg": picture, "secret.jpg": picture},
            under="in",
            thumbor_allow_unsafe=True,
        )

    def test_no_way_out_of_the_root(self) -> None:
        self.assertEqual(self.app.request("GET", "/unsafe/10x0/a.jpg")[0].code, 200)
        for image in ("../secret.jpg", "%2E%2E/secret.jpg", "..%2Fsecret.jpg",
                      "/../secret.jpg", "a/../../secret.jpg"):  # fmt: skip
            response, body = self.app.request("GET", f"/unsafe/10x0/{image}")
            self.assertIn(response.code, (400, 404), (image, body))


class RememberedUrlTests(SynchronousTestCase):
    """A thumbor URL asked again is served from what it was found to mean,
    while its origin path stands for the same image: after a purge, or once
    the origin's object has changed, it is found again."""

    def setUp(self) -> None:
        self.root, self.app = file_origin(
            self,
            {"a.jpg": encode(quadrants((40, 30)))},
            origin_ttl=60,
            thumbor_allow_unsafe=True,
        )

    def test_remembered_until_purged_or_changed(self) -> None:
        response, body = self.app.request("GET", "/unsafe/20x0/a.jpg")
        self.assertEqual(response.code, 200)
        [location] = response.headers.getRawHeaders("Content-Location")
        folder = location.rsplit("/", 1)[0]
        again, same = self.app.request("GET", "/unsafe/20x0/a.jpg")
        self.assertEqual((again.code, same), (200, body))
        self.assertEqual(self.app.request("DELETE", folder)[0].code, 204)
        after, made = self.app.request("GET", "/unsafe/20x0/a.jpg")
        self.assertEqual(
            (after.code, Image.open(io.BytesIO(made)).size), (200, (20, 15))
        )
        with open(os.path.join(self.root, "a.jpg"), "wb") as f:
            f.write(encode(quadrants((80, 30))))  # the origin's object changes
        self.app.clock.advance(61)
        self.app.request("GET", "/unsafe/20x0/a.jpg")  # checked in the background
        self.app.clock.advance(1)
        _, changed = self.app.request("GET", "/unsafe/20x0/a.jpg")
        self.assertEqual(Image.open(io.BytesIO(changed)).size, (20, 8))


class HostileCorpusTests(SynchronousTestCase):
    """The hostile corpus of tests/test_hostile_input.py, laid in an origin:
    every thumbor URL of it answers as the native origin path of the same
    object and variant does (the same checks, limits and statuses)."""

    def test_each_file_answers_as_its_native_path(self) -> None:
        from tests.test_hostile_input import corpus

        files = corpus()
        _, app = file_origin(self, files, thumbor_allow_unsafe=True)
        differ, refused = [], 0
        for name in files:
            response, body = app.request("GET", f"/unsafe/fit-in/50x50/{name}")
            native, _ = app.request("GET", f"/files/{name}/info.json")
            self.assertLess(response.code, 500, (name, body))
            if native.code != 200:
                refused += 1
                if response.code != native.code:
                    differ.append((name, response.code, native.code))
                continue
            self.assertEqual(response.code, 200, (name, body))
            self.assertLessEqual(max(Image.open(io.BytesIO(body)).size), 50, name)
        self.assertEqual(differ, [])
        self.assertGreater(refused, 20)


class LargePicturesTests(SynchronousTestCase):
    """thumbor's MAX_WIDTH is unlimited by default: a URL that does not
    resize is served at the picture's size whatever --maximum_width says;
    one that asks for more than it says so in thumbor's terms."""

    def test_unresized_is_served_and_larger_is_a_400_that_says_why(self) -> None:
        big = encode(quadrants((1600, 1200)))
        _, app = file_origin(self, {"big.jpg": big}, thumbor_allow_unsafe=True)
        for path in ("/unsafe/big.jpg", "/unsafe/fit-in/2000x2000/big.jpg",
                     "/unsafe/filters:format(webp)/big.jpg",
                     "/unsafe/-origx-orig/big.jpg"):  # fmt: skip
            response, body = app.request("GET", path)
            self.assertEqual(response.code, 200, (path, body[:200]))
            self.assertEqual(Image.open(io.BytesIO(body)).size, (1600, 1200), path)
        status, body = app.json("GET", "/unsafe/1200x0/big.jpg")
        self.assertEqual(status, 400)
        self.assertIn(
            "1200x900 picture, larger than --maximum_width (1000)", body["error"]
        )


class StartTests(SynchronousTestCase):
    def test_signed_thumbor_urls_beside_unsigned_native_ones_are_warned_of(
        self,
    ) -> None:
        from imageserver.config import Config
        from imageserver.service import thumbor_signed_alone

        def alone(**settings: Any) -> bool:
            return thumbor_signed_alone(
                Config(thumbor=True, thumbor_loader="files",
                       origin=("files=file:///tmp/",), **settings)
            )  # fmt: skip

        self.assertTrue(alone(thumbor_security_key="k"))
        self.assertFalse(alone(thumbor_security_key="k", secret="s"))
        self.assertFalse(alone(thumbor_allow_unsafe=True))


class ThumborPathsTests(SynchronousTestCase):
    """Which paths are thumbor's: any whose first segment is unsafe or no
    namespace, but never an image folder's (the image routes answer those,
    and --secret guards them, in namespace unsafe too)."""

    def test_table(self) -> None:
        folder = "6e0/072/682/e66287b662827da75b244a3"
        for path, thumbor in [
            ("/unsafe/100x0/a.jpg", True),
            ("/t8yIsABYlXNPTiT0uDySsHHeKp8=/100x0/a.jpg", True),
            ("/Foo/a.jpg", True),
            ("/shop/a.jpg/w200.jpg", False),
            (f"/unsafe/{folder}/w200.jpg", False),
            (f"/unsafe/{folder}", False),
            (f"/p/{folder}/w200.jpg", False),
            ("/unsafe/", False),
            ("/unsafe", False),
            ("/healthcheck", False),
        ]:
            self.assertEqual(is_thumbor_path(path.encode()), thumbor, path)

    def test_an_image_folder_in_namespace_unsafe_needs_this_servers_signature(
        self,
    ) -> None:
        policy = AccessPolicy(
            Clock(), secrets=(b"s",), signed_otherwise=is_thumbor_path
        )
        folder = b"/unsafe/6e0/072/682/e66287b662827da75b244a3/w200.jpg"
        refused = policy(b"GET", folder, Headers())
        assert refused is not None
        self.assertEqual(refused.code, 403)
        self.assertIsNone(policy(b"GET", b"/unsafe/100x0/a.jpg", Headers()))
