"""Near-duplicates over HTTP: info.json's phash, GET /{namespace}/similar,
an upload's similar=refuse and similar=report, and purges."""

from __future__ import annotations

import json
import os

from PIL import ImageEnhance
from twisted.trial.unittest import SynchronousTestCase

from benchmarks import corpus
from imageserver.imaging import likeness
from tests.support import AppHarness, encode

ASTRONAUT = corpus.photo("astronaut")
ORIGINAL = encode(ASTRONAUT, "JPEG", quality=90)
SMALLER = encode(ASTRONAUT.resize((200, 200)), "PNG")
BRIGHTER = encode(ImageEnhance.Brightness(ASTRONAUT).enhance(1.1), "WEBP")
OTHER = encode(corpus.photo("coffee"), "JPEG")


def folder_of(digest: str, namespace: str = "p") -> str:
    return f"/{namespace}/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"


class SimilarRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.app = AppHarness(self, open_similar=True)
        self.infos = {}
        for name, data in (("original", ORIGINAL), ("smaller", SMALLER),
                           ("brighter", BRIGHTER), ("other", OTHER)):  # fmt: skip
            code, info = self.app.json("POST", "/p", data=data)
            self.assertEqual(code, 200)
            self.infos[name] = info

    def hashes(self, answer: dict[str, object]) -> set[str]:
        found = answer["similar"]
        assert isinstance(found, list)
        return {item["hash"] for item in found}

    def test_info_json_has_the_phash(self) -> None:
        info = self.infos["original"]
        self.assertIsNotNone(likeness.parse(info["phash"]))
        _, stored = self.app.json("GET", folder_of(info["hash"]) + "/info.json")
        self.assertEqual(stored["phash"], info["phash"])

    def test_by_phash_finds_the_copies_not_the_other(self) -> None:
        phash = self.infos["original"]["phash"]
        code, answer = self.app.json("GET", f"/p/similar?to={phash}")
        self.assertEqual(code, 200)
        copies = {self.infos[n]["hash"] for n in ("original", "smaller", "brighter")}
        self.assertEqual(self.hashes(answer), copies)
        self.assertEqual(answer["phash"], phash)
        self.assertEqual(answer["distance"], 12)
        distances = [item["distance"] for item in answer["similar"]]
        self.assertEqual(distances, sorted(distances))

    def test_by_an_images_md5_leaves_the_image_out(self) -> None:
        digest = self.infos["original"]["hash"]
        code, answer = self.app.json("GET", f"/p/similar?to={digest}")
        self.assertEqual(code, 200)
        self.assertEqual(
            self.hashes(answer),
            {self.infos[n]["hash"] for n in ("smaller", "brighter")},
        )

    def test_distance_0_is_the_same_hash_only(self) -> None:
        phash = self.infos["other"]["phash"]
        _, answer = self.app.json("GET", f"/p/similar?to={phash}&distance=0")
        self.assertEqual(self.hashes(answer), {self.infos["other"]["hash"]})

    def test_other_namespaces_are_not_searched(self) -> None:
        phash = self.infos["original"]["phash"]
        code, answer = self.app.json("GET", f"/q/similar?to={phash}")
        self.assertEqual((code, answer["similar"]), (200, []))

    def test_a_purged_image_is_not_found(self) -> None:
        digest = self.infos["smaller"]["hash"]
        response, _ = self.app.request("DELETE", folder_of(digest))
        self.assertEqual(response.code, 204)
        phash = self.infos["original"]["phash"]
        _, answer = self.app.json("GET", f"/p/similar?to={phash}")
        self.assertNotIn(digest, self.hashes(answer))

    def test_a_bad_question_is_a_400_saying_what_to_give(self) -> None:
        phash = self.infos["original"]["phash"]
        for query, message in (
            ("", "give ?to= a perceptual hash"),
            ("?to=zz", "?to= is a perceptual hash"),
            ("?to=" + phash.upper(), "?to= is a perceptual hash"),
            (f"?to={phash}&distance=21", "distance is a number of bits from 0 to 20"),
            (f"?to={phash}&distance=-1", "distance is a number of bits"),
            (f"?to={phash}&distance=\u0661", "distance is a number of bits"),
            (f"?to={phash}&distance=", "distance is a number of bits"),
        ):
            code, answer = self.app.json("GET", f"/p/similar{query}")
            self.assertEqual(code, 400, query)
            self.assertIn(message, answer["error"], query)

    def test_an_unknown_md5_is_a_404(self) -> None:
        code, _answer = self.app.json("GET", f"/p/similar?to={'0' * 32}")
        self.assertEqual(code, 404)


class UploadPolicyTests(SynchronousTestCase):
    def test_refuse_stores_nothing_and_names_the_like_image(self) -> None:
        app = AppHarness(self, open_similar=True)
        _, first = app.json("POST", "/p", data=ORIGINAL)
        before = sorted(os.walk(app.root))
        code, answer = app.json("POST", "/p?similar=refuse", data=SMALLER)
        self.assertEqual(code, 409)
        self.assertIn(first["hash"], answer["error"])
        self.assertEqual(sorted(os.walk(app.root)), before)
        # Not like anything stored: stored.
        code, _ = app.json("POST", "/p?similar=refuse", data=OTHER)
        self.assertEqual(code, 200)
        # The same bytes again are no near-duplicate of themselves.
        code, _ = app.json("POST", "/p?similar=refuse", data=ORIGINAL)
        self.assertEqual(code, 200)

    def test_report_stores_and_names_them(self) -> None:
        app = AppHarness(self, open_similar=True)
        _, first = app.json("POST", "/p", data=ORIGINAL)
        code, answer = app.json("POST", "/p?similar=report", data=SMALLER)
        self.assertEqual(code, 200)
        self.assertEqual([s["hash"] for s in answer["similar"]], [first["hash"]])
        # Kept in the store: info.json does not keep the report.
        code, stored = app.json("GET", folder_of(answer["hash"]) + "/info.json")
        self.assertNotIn("similar", stored)
        code, answer = app.json("POST", "/p?similar=report", data=OTHER)
        self.assertEqual(answer["similar"], [])

    def test_an_unknown_policy_is_a_400(self) -> None:
        app = AppHarness(self, open_similar=True)
        for value in ("", "reject", "REFUSE", "refuse "):
            code, answer = app.json("POST", f"/p?similar={value}", data=ORIGINAL)
            self.assertEqual(code, 400, value)
            self.assertIn("similar is refuse or report", answer["error"])

    def test_an_older_image_is_indexed_when_its_info_json_is_completed(self) -> None:
        # Stored before phash existed: its info.json lacks it.
        app = AppHarness(self, open_similar=True)
        _, info = app.json("POST", "/p", data=ORIGINAL)
        path = os.path.join(app.root, folder_of(info["hash"]).lstrip("/"), "info.json")
        old = {k: info[k] for k in ("hash", "width", "height", "content_type")}
        with open(path, "w") as f:
            json.dump(old, f)
        for segment in os.listdir(os.path.join(app.root, "SIMILAR", "p")):
            os.remove(os.path.join(app.root, "SIMILAR", "p", segment))
        fresh = app  # its index has read nothing of p yet
        _, answer = fresh.json("GET", f"/p/similar?to={info['phash']}")
        self.assertEqual(answer["similar"], [])
        _, completed = fresh.json("GET", folder_of(info["hash"]) + "/info.json")
        self.assertEqual(completed["phash"], info["phash"])
        _, answer = fresh.json("GET", f"/p/similar?to={info['phash']}")
        self.assertEqual([s["hash"] for s in answer["similar"]], [info["hash"]])


class ServedOnlyWhereItMayBeTests(SynchronousTestCase):
    def test_not_served_without_tokens_a_secret_or_open_similar(self) -> None:
        for settings, served in (
            ({}, False),
            ({"open_similar": True}, True),
            ({"secret": "a-secret-for-signing-urls"}, True),
        ):
            app = AppHarness(self, **settings)
            code, answer = app.json("GET", f"/p/similar?to={'0' * 16}")
            self.assertEqual(code, 200 if served else 404, settings)
            if not served:
                self.assertIn("--open_similar", answer["error"])

    def test_an_answer_is_never_kept_by_a_cache(self) -> None:
        app = AppHarness(self, open_similar=True)
        response, _ = app.request("GET", f"/p/similar?to={'0' * 16}")
        self.assertEqual(response.headers.getRawHeaders("Cache-Control"), ["no-store"])


class UploadOracleTests(SynchronousTestCase):
    def test_similar_on_upload_only_where_similar_is_served(self) -> None:
        app = AppHarness(self)
        app.json("POST", "/p", data=ORIGINAL)
        before = sorted(os.walk(app.root))
        for policy in ("refuse", "report"):
            code, answer = app.json("POST", f"/p?similar={policy}", data=SMALLER)
            self.assertEqual(code, 400, policy)
            self.assertIn("--open_similar", answer["error"])
        self.assertEqual(sorted(os.walk(app.root)), before)


class DamagedInfoJsonTests(SynchronousTestCase):
    def test_info_json_out_of_shape_is_made_again_from_the_original(self) -> None:
        app = AppHarness(self, open_similar=True)
        _, info = app.json("POST", "/p?faces=1", data=ORIGINAL)
        folder = folder_of(info["hash"])
        path = os.path.join(app.root, folder.lstrip("/"), "info.json")
        unhashed = {k: v for k, v in info.items() if k != "hash"}
        damages = [b"not json", b"[]", b"[" * 100_000 + b"]" * 100_000]
        damages += [
            json.dumps(fields).encode()
            for fields in (
                {**info, "content_type": 5},
                {**info, "phash": "zz"},
                {**info, "width": "wide"},
                {**info, "content_type": "text/html"},
                unhashed,
            )
        ]
        for damage in damages:
            with open(path, "wb") as f:
                f.write(damage)
            response, _body = app.request("GET", f"{folder}/original")
            self.assertEqual(response.code, 200, damage[:40])
            self.assertEqual(
                response.headers.getRawHeaders("Content-Type"), ["image/jpeg"]
            )
            code, mended = app.json("GET", f"{folder}/info.json")
            # What the original says is made again; the faces, where the
            # file still held them.
            kept = b'"faces"' in damage
            expected = info if kept else {k: v for k, v in info.items() if k != "faces"}
            self.assertEqual((code, mended), (200, expected), damage[:40])
            for path_ in (
                f"{folder}/300x100-smart.jpg",
                f"/p/similar?to={info['hash']}",
            ):
                response, _ = app.request("GET", path_)
                self.assertEqual(response.code, 200, (path_, damage[:40]))

    def test_faces_out_of_shape_are_dropped_and_looked_for_again(self) -> None:
        app = AppHarness(self)
        _, info = app.json("POST", "/p?faces=1", data=ORIGINAL)
        folder = folder_of(info["hash"])
        path = os.path.join(app.root, folder.lstrip("/"), "info.json")
        for faces in ("oops", [[0.5, 0, 60, 60.2]], [[1, 2, 3]]):
            with open(path, "w") as f:
                json.dump({**info, "faces": faces}, f)
            _, mended = app.json("GET", f"{folder}/info.json")
            self.assertNotIn("faces", mended, faces)
            app.request("GET", f"{folder}/300x{101 + len(str(faces))}-smart.jpg")
            _, found = app.json("GET", f"{folder}/info.json")
            (again,) = found["faces"]  # from another decode: about the same
            self.assertTrue(corpus.matches(tuple(again), tuple(info["faces"][0])))
            self.assertEqual(list(found), list(info))  # the order kept
