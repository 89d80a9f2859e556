"""thumbor's URLs through the real app, on a file origin: each answers the
canonical variant it maps to, stored once and shared with the native URL."""

from __future__ import annotations

import io
import json
import os

from libthumbor import CryptoURL
from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from tests.support import AppHarness, encode, quadrants

KEY = "secret"
IMAGE = "photos/landscape.jpg"


def signed(key: str = KEY, **options: object) -> str:
    """What libthumbor makes of ``options`` for the test's image."""
    return str(CryptoURL(key=key).generate(image_url=IMAGE, **options))


class ThumborEndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.folder, "photos"))
        with open(os.path.join(self.folder, "photos", "landscape.jpg"), "wb") as f:
            f.write(encode(quadrants((400, 300))))
        self.app = AppHarness(
            self,
            origin=(f"files=file://{self.folder}/",),
            thumbor=True,
            thumbor_loader="files",
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

    def test_healthcheck(self) -> None:
        status, _, body = self.get("/healthcheck")
        self.assertEqual((status, body), (200, b"WORKING"))
