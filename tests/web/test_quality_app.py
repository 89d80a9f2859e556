"""Quality levels through the real app: the quality and score chosen, told
in headers on every answer (the render and later reads), kept beside the
variant; ``qauto``; ``.auto``; --default_quality auto:LEVEL."""

from __future__ import annotations

import os

from PIL import Image
from twisted.trial.unittest import SynchronousTestCase

from benchmarks import corpus
from imageserver.errors import StorageUnavailable
from imageserver.naming import QUALITY_LEVELS
from tests.support import AppHarness, decode, encode

PHOTO = encode(corpus.photo("chelsea"), "PNG")


def chosen(response: object) -> tuple[int, float] | None:
    headers = response.headers  # type: ignore[attr-defined]
    quality = headers.getRawHeaders("X-Image-Quality")
    score = headers.getRawHeaders("X-Image-Score")
    if quality is None:
        assert score is None
        return None
    return int(quality[0]), float(score[0])


class LevelAppTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.app = AppHarness(self, extensions=("jpg", "png", "webp", "avif"))
        self.folder = self.app.upload(PHOTO)

    def test_told_on_every_answer(self) -> None:
        for level, target in QUALITY_LEVELS.items():
            name = f"{self.folder}/w200-q{level}.webp"
            first, body = self.app.request("GET", name)
            self.assertEqual(first.code, 200, body)
            told = chosen(first)
            assert told is not None
            self.assertGreaterEqual(told[1], target)
            self.assertEqual(decode(body).size, (200, 133))
            for method in ("GET", "HEAD"):  # from storage
                again, same = self.app.request(method, name)
                self.assertEqual(chosen(again), told, method)
                self.assertEqual(same, body if method == "GET" else b"")
            # The bytes a fixed quality gives at the quality told.
            _, fixed = self.app.request("GET", f"{self.folder}/w200-q{told[0]}.webp")
            self.assertEqual(fixed, body)

    def test_auto_is_a_redirect_to_good(self) -> None:
        response, _ = self.app.request(
            "GET", f"{self.folder}/x100-qauto.jpg", allow_redirects=False
        )
        self.assertEqual(response.code, 301)
        [location] = response.headers.getRawHeaders("Location")
        self.assertTrue(location.endswith(f"{self.folder}/x100-qgood.jpg"), location)

    def test_the_best_format_at_its_level(self) -> None:
        response, _ = self.app.request(
            "GET",
            f"{self.folder}/w120-qeco.auto",
            headers={"Accept": "image/avif,image/webp,*/*"},
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("Content-Location"),
            [f"{self.folder}/w120-qeco.avif"],
        )
        told = chosen(response)
        assert told is not None
        self.assertGreaterEqual(told[1], QUALITY_LEVELS["eco"])

    def test_a_damaged_record_is_not_told(self) -> None:
        name = "w150-qgood.jpg"
        self.app.request("GET", f"{self.folder}/{name}")
        path = os.path.join(self.app.root, self.folder.lstrip("/"), name + ".quality")
        with open(path, "rb") as f:
            quality, score = f.read().split()
        self.assertTrue(quality.isdigit() and b"." in score, (quality, score))
        for damaged in (b"junk", b"101 80.00", b"80 x", b"80 80.0", b"\xff"):
            with open(path, "wb") as f:
                f.write(damaged)
            response, _ = self.app.request("GET", f"{self.folder}/{name}")
            self.assertEqual(response.code, 200, damaged)
            self.assertIsNone(chosen(response), damaged)
        # A record without a score (a budget's): the quality alone.
        with open(path, "wb") as f:
            f.write(b"77")
        response, _ = self.app.request("GET", f"{self.folder}/{name}")
        self.assertEqual(response.headers.getRawHeaders("X-Image-Quality"), ["77"])
        self.assertIsNone(response.headers.getRawHeaders("X-Image-Score"))

    def test_a_deleted_variant_takes_its_record(self) -> None:
        name = "w160-qgood.jpg"
        self.app.request("GET", f"{self.folder}/{name}")
        path = os.path.join(self.app.root, self.folder.lstrip("/"), name)
        self.assertTrue(os.path.exists(path + ".quality"))
        response, _ = self.app.request("DELETE", f"{self.folder}/{name}")
        self.assertEqual(response.code, 204)
        self.assertFalse(os.path.exists(path + ".quality"))


class DefaultLevelTests(SynchronousTestCase):
    def test_names_without_a_quality_take_the_servers_level(self) -> None:
        app = AppHarness(self, default_quality="auto:eco")
        folder = app.upload(PHOTO)
        response, _ = app.request("GET", f"{folder}/w200.jpg")
        told = chosen(response)
        assert told is not None
        self.assertGreaterEqual(told[1], QUALITY_LEVELS["eco"])
        high, _ = app.request("GET", f"{folder}/w200-qhigh.jpg")
        self.assertGreater(chosen(high)[0], told[0])  # type: ignore[index]
        fixed, _ = app.request("GET", f"{folder}/w200-q50.jpg")
        self.assertIsNone(chosen(fixed))
        png, _ = app.request("GET", f"{folder}/w200.png")
        self.assertIsNone(chosen(png))

    def test_a_flat_picture(self) -> None:
        app = AppHarness(self, default_quality="auto:good")
        folder = app.upload(encode(Image.new("RGB", (90, 60), (200, 30, 30))))
        response, _ = app.request("GET", f"{folder}/w60.jpg")
        self.assertEqual(chosen(response)[0], 10)  # type: ignore[index]


class RecordTroubleTests(SynchronousTestCase):
    """The record of a chosen quality is told, never waited on: a store that
    cannot read it answers the variant without it, and one found missing is
    not asked for again for a minute."""

    def test_a_store_that_fails_on_the_record(self) -> None:
        app = AppHarness(self, default_quality="auto:good")
        folder = app.upload(PHOTO)
        self.assertIsNotNone(chosen(app.request("GET", f"{folder}/w90.jpg")[0]))
        real = app.local.get

        async def failing(key: str) -> object:
            if key.endswith(".quality"):
                raise StorageUnavailable("the bucket is down")
            return await real(key)

        self.patch(app.local, "get", failing)
        response, body = app.request("GET", f"{folder}/w90.jpg")
        self.assertEqual(response.code, 200)
        self.assertEqual(decode(body).size[0], 90)
        self.assertIsNone(chosen(response))

    def test_a_missing_record_is_not_asked_for_each_read(self) -> None:
        """As for a variant made before --default_quality named a level."""
        app = AppHarness(self, default_quality="auto:good")
        folder = app.upload(PHOTO)
        app.request("GET", f"{folder}/w90.jpg")
        os.remove(os.path.join(app.root, folder.lstrip("/"), "w90.jpg.quality"))
        asked = []
        real = app.local.get

        async def counting(key: str) -> object:
            asked.append(key)
            return await real(key)

        self.patch(app.local, "get", counting)
        for _ in range(3):
            response, _ = app.request("GET", f"{folder}/w90.jpg")
            self.assertEqual(response.code, 200)
            self.assertIsNone(chosen(response))
        self.assertEqual(sum(k.endswith(".quality") for k in asked), 1, asked)
        # Made again (deleted, then asked for): told again at once.
        app.request("DELETE", f"{folder}/w90.jpg")
        self.assertIsNotNone(chosen(app.request("GET", f"{folder}/w90.jpg")[0]))
