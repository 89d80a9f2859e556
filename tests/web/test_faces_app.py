"""Faces over HTTP: ?faces=1 on upload and process, info.json keeping what
was found, and the crops that read it."""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from benchmarks import corpus
from tests.support import AppHarness, decode, encode, mean_difference

ASTRONAUT = encode(corpus.photo("astronaut"), "JPEG", quality=90)
COFFEE = encode(corpus.photo("coffee"), "PNG")  # 600x400, no one


def _face_of(info: dict[str, object]) -> list[int]:
    faces = info["faces"]
    assert isinstance(faces, list)
    (face,) = faces
    assert isinstance(face, list)
    return face


def _astronaut_face_kept(
    case: SynchronousTestCase, app: AppHarness, folder: str
) -> None:
    """info.json has the astronaut's face."""
    _, info = app.json("GET", f"{folder}/info.json")
    case.assertTrue(corpus.matches(tuple(_face_of(info)), corpus.ASTRONAUT_FACE))


class FacesOnUploadTests(SynchronousTestCase):
    def test_asked_for_on_upload(self) -> None:
        app = AppHarness(self)
        code, info = app.json("POST", "/p?faces=1", data=ASTRONAUT)
        self.assertEqual(code, 200)
        self.assertTrue(corpus.matches(tuple(_face_of(info)), corpus.ASTRONAUT_FACE))
        # Kept: info.json says it from now on.
        folder = app.upload(ASTRONAUT)
        code, stored = app.json("GET", f"{folder}/info.json")
        self.assertEqual(stored["faces"], info["faces"])

    def test_none_found_is_an_empty_list(self) -> None:
        app = AppHarness(self)
        _, info = app.json("POST", "/p?faces=1", data=COFFEE)
        self.assertEqual(info["faces"], [])

    def test_not_asked_for_not_looked_for(self) -> None:
        app = AppHarness(self)
        _, info = app.json("POST", "/p", data=ASTRONAUT)
        self.assertNotIn("faces", info)
        _, info = app.json("POST", "/p?faces=0", data=ASTRONAUT)
        self.assertNotIn("faces", info)

    def test_asked_for_on_a_second_upload_of_the_same_image(self) -> None:
        app = AppHarness(self)
        _, first = app.json("POST", "/p", data=ASTRONAUT)
        _, second = app.json("POST", "/p?faces=1", data=ASTRONAUT)
        self.assertNotIn("faces", first)
        self.assertEqual(len(second["faces"]), 1)

    def test_a_flag_that_is_not_1_or_0_is_refused(self) -> None:
        app = AppHarness(self)
        folder = app.upload(ASTRONAUT)
        for value in ("yes", "true", "2", "", "\u0661"):
            for method, path in (
                ("POST", f"/p?faces={value}"),
                ("POST", f"{folder}/process?faces={value}"),
            ):
                code, answer = app.json(method, path, data=ASTRONAUT)
                self.assertEqual(code, 400, (method, path))
                self.assertIn("the faces parameter is 1 or 0", answer["error"])


class FacesOnProcessTests(SynchronousTestCase):
    def test_process_finds_them_without_outputs(self) -> None:
        app = AppHarness(self)
        folder = app.upload(ASTRONAUT)
        response, _ = app.request("POST", f"{folder}/process?faces=1")
        self.assertEqual(response.code, 200)
        _astronaut_face_kept(self, app, folder)

    def test_process_without_outputs_or_faces_says_what_to_give(self) -> None:
        app = AppHarness(self)
        folder = app.upload(ASTRONAUT)
        code, answer = app.json("POST", f"{folder}/process")
        self.assertEqual(code, 400)
        self.assertIn("?faces=1", answer["error"])

    def test_process_of_an_image_not_stored_is_404(self) -> None:
        app = AppHarness(self)
        code, _ = app.json("POST", f"/p/{'0' * 3}/000/000/{'0' * 23}/process?faces=1")
        self.assertEqual(code, 404)


class CropsReadTheFacesTests(SynchronousTestCase):
    def test_a_smart_crop_keeps_what_it_found_in_info_json(self) -> None:
        app = AppHarness(self)
        folder = app.upload(ASTRONAUT)
        response, _ = app.request("GET", f"{folder}/300x100-smart.jpg")
        self.assertEqual(response.code, 200)
        _astronaut_face_kept(self, app, folder)

    def test_a_crop_that_does_not_crop_looks_for_none(self) -> None:
        app = AppHarness(self)
        folder = app.upload(ASTRONAUT)
        app.request("GET", f"{folder}/x100-smart.jpg")  # square of a square
        _, info = app.json("GET", f"{folder}/info.json")
        self.assertNotIn("faces", info)

    def test_crops_use_the_faces_info_json_keeps(self) -> None:
        # A face at the right edge of a picture of no one, as info.json
        # says (an earlier render found it): the crops go there.
        app = AppHarness(self)
        _, info = app.json("POST", "/p?faces=1", data=COFFEE)
        folder = app.upload(COFFEE)
        path = os.path.join(app.root, folder.lstrip("/"), "info.json")
        info["faces"] = [[500, 0, 600, 100]]
        with open(path, "w") as f:
            json.dump(info, f)
        picture = corpus.photo("coffee")
        right = picture.crop((200, 0, 600, 400)).resize((100, 100))
        for name in ("x100-faces.png", "x100-smart.png"):
            _, body = app.request("GET", f"{folder}/{name}")
            self.assertLess(mean_difference(decode(body), right), 4, name)

    def test_info_json_is_revalidated_not_immutable(self) -> None:
        # It gains the faces after it is first served.
        app = AppHarness(self)
        folder = app.upload(ASTRONAUT)
        response, _ = app.request("GET", f"{folder}/info.json")
        self.assertEqual(
            response.headers.getRawHeaders("Cache-Control"), ["public, no-cache"]
        )
        (before,) = response.headers.getRawHeaders("ETag")
        app.request("GET", f"{folder}/300x100-faces.jpg")
        response, _ = app.request(
            "GET", f"{folder}/info.json", headers={"If-None-Match": before}
        )
        self.assertEqual(response.code, 200)
