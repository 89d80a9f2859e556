"""Limits that keep one client from taking the server: queues, time, presets, URLs."""

import hashlib
import json
import os
import threading

from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from imageserver.config import Config
from imageserver.errors import Overloaded
from imageserver.runtime.pools import ThreadPoolService
from imageserver.web.site import BoundedSite
from tests.support import AppHarness, Gate, decode, encode, quadrants

PHOTO = encode(quadrants((200, 100)))
SECRET = b"correct horse battery staple"


class BoundedQueueTests(TestCase):
    """A real pool with real threads: one busy, one waiting, the next refused."""

    async def test_jobs_past_the_queue_bound_are_refused_at_once(self) -> None:
        pools = ThreadPoolService(reactor, 1, "test-pool", max_pending=1)
        pools.startService()
        self.addCleanup(pools.stopService)
        release = threading.Event()
        busy = pools.run(release.wait, 10)
        waiting = pools.run(lambda: "second")
        refused = pools.run(lambda: "third")
        failure = self.failureResultOf(refused, Overloaded)
        self.assertIn("busy", str(failure.value))
        self.assertEqual(pools.outstanding, 2)
        release.set()
        self.assertEqual((await busy, await waiting), (True, "second"))
        self.assertEqual(await pools.run(lambda: "later"), "later")


def slowed(app: AppHarness) -> tuple[Gate, Clock]:
    """``app``'s jobs held by a gate, on a fake clock, with a deadline of 60 s."""
    gate, clock = Gate(), Clock()
    app.images._process = gate  # type: ignore[method-assign]
    app.images._clock = clock
    app.images._processing_timeout = 60
    return gate, clock


class OverloadTests(SynchronousTestCase):
    def test_overload_is_503_with_retry_after(self) -> None:
        app = AppHarness(self)
        folder = app.upload(PHOTO)
        app.images._process = lambda *a: fail(Overloaded("the server is busy"))  # type: ignore[method-assign]
        response, body = app.request("GET", f"{folder}/w10.jpg")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("Retry-After"), ["5"])
        self.assertEqual(json.loads(body), {"error": "the server is busy"})

    def test_processing_that_takes_too_long_is_503(self) -> None:
        app = AppHarness(self)
        folder = app.upload(PHOTO)
        gate, clock = slowed(app)
        d = app.start("GET", f"{folder}/w10.jpg")
        app.flush()
        self.assertNoResult(d)
        clock.advance(60)
        app.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(app.client.content(response))
        self.assertEqual(response.code, 503)
        self.assertEqual(
            json.loads(body), {"error": "processing took longer than 60 seconds"}
        )
        gate.release()  # the job finishes later, and its result is stored
        app.flush()
        calls = len(gate.calls)
        response, body = app.request("GET", f"{folder}/w10.jpg")
        self.assertEqual((response.code, decode(body).size), (200, (10, 5)))
        self.assertEqual(len(gate.calls), calls, "made again")

    def test_work_that_fails_after_its_deadline_is_logged_and_made_again(
        self,
    ) -> None:
        app = AppHarness(self)
        folder = app.upload(PHOTO)
        gate, clock = slowed(app)
        d = app.start("GET", f"{folder}/w10.jpg")
        app.flush()
        clock.advance(60)
        app.flush()
        self.assertEqual(self.successResultOf(d).code, 503)
        held, _, _ = gate.held.pop(0)
        held.errback(RuntimeError("the render broke"))  # nobody waits for it
        app.flush()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        calls = len(gate.calls)
        d = app.start("GET", f"{folder}/w10.jpg")
        app.flush()
        self.assertEqual(len(gate.calls), calls + 1, "not made again")
        gate.release()
        app.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(app.client.content(response))
        self.assertEqual((response.code, decode(body).size), (200, (10, 5)))

    def test_an_upload_slower_than_the_timeout_is_stored_all_the_same(self) -> None:
        app = AppHarness(self)
        gate, clock = slowed(app)
        d = app.start("POST", "/p?outputs=w10.jpg", data=PHOTO)
        app.flush()
        while gate.held and gate.calls[len(gate.calls) - len(gate.held)] != "_rendered":
            gate.release_first()  # the body is read, the image identified
            app.flush()
        self.assertEqual(gate.calls[-1], "_rendered")
        self.assertNoResult(d)
        clock.advance(60)
        app.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 503)
        gate.release()
        app.flush()
        calls = len(gate.calls)
        h = hashlib.md5(PHOTO).hexdigest()
        folder = f"/p/{h[0:3]}/{h[3:6]}/{h[6:9]}/{h[9:]}"
        for name in ("info.json", "w10.jpg"):
            response, _ = app.request("GET", f"{folder}/{name}")
            self.assertEqual(response.code, 200, name)
        self.assertEqual(len(gate.calls), calls, "made again")


class PresetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.app = AppHarness(self, outputs=("x100.jpg", "w50.webp"), presets_only=True)
        self.folder = self.app.upload(PHOTO)

    def test_presets_are_served(self) -> None:
        response, body = self.app.request("GET", f"{self.folder}/w50.webp")
        self.assertEqual((response.code, decode(body).size), (200, (50, 25)))

    def test_anything_else_is_403(self) -> None:
        for name in ("w51.webp", "x100.png", "x100-q10.jpg", "full_size.jpg"):
            code, error = self.app.json("GET", f"{self.folder}/{name}")
            self.assertEqual(code, 403, name)
            self.assertIn("presets", error["error"])

    def test_another_spelling_of_a_name_not_served_is_403_not_301(self) -> None:
        """100x100.jpg is a 301 to x100.jpg, which is served; one to a name
        that is not served (x100-q80-smart.jpg, full_size@2x.jpg) was a 301
        and then a 403: it is a 403 at once."""
        for name, code in (("100x100.jpg", 301), ("x100-q80-smart.jpg", 403),
                           ("full_size@2x.jpg", 403), ("w50.webp", 200)):  # fmt: skip
            response, _ = self.app.request(
                "GET", f"{self.folder}/{name}", allow_redirects=False
            )
            self.assertEqual(response.code, code, name)

    def test_outputs_must_be_presets(self) -> None:
        code, _ = self.app.json("POST", f"{self.folder}/process?outputs=x10.jpg")
        self.assertEqual(code, 400)


class IdleTimeoutTests(SynchronousTestCase):
    def test_silent_connections_are_closed(self) -> None:
        clock = Clock()
        site = BoundedSite(Resource(), max_body_bytes=10, idle_timeout=30, clock=clock)
        protocol = site.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        # Connected, and then nothing.
        clock.advance(29)
        self.assertFalse(transport.disconnecting)
        clock.advance(2)
        self.assertTrue(transport.disconnecting)


class NamedPresetTests(SynchronousTestCase):
    PRESETS = ("thumb=x30-smart-q70", "wide=90x30-gn", "avatars:thumb=x16-smart")

    def setUp(self) -> None:
        self.app = AppHarness(
            self, presets=self.PRESETS, outputs=("x12.jpg", "avatars:x14.webp")
        )

    def test_a_namespace_preset_wins_over_a_global_one(self) -> None:
        for namespace, size in (("p", 30), ("avatars", 16)):
            folder = self.app.upload(PHOTO, namespace=namespace)
            response, body = self.app.request("GET", f"{folder}/thumb.webp")
            self.assertEqual(response.code, 200)
            self.assertEqual(decode(body).size, (size, size))
            headers = response.headers
            self.assertEqual(
                headers.getRawHeaders("Cache-Control"), ["public, max-age=3600"]
            )
            spec = "x30-smart-q70" if namespace == "p" else "x16-smart"
            self.assertEqual(
                headers.getRawHeaders("Content-Location"), [f"{folder}/{spec}.webp"]
            )
            # The same bytes as the canonical name, which stays immutable.
            canonical, same = self.app.request("GET", f"{folder}/{spec}.webp")
            self.assertEqual(same, body)
            self.assertIn(
                "immutable", canonical.headers.getRawHeaders("Cache-Control")[0]
            )
        wide = self.app.request("GET", f"{folder}/wide.png")[1]
        self.assertEqual(decode(wide).size, (90, 30))

    def test_presets_go_with_auto(self) -> None:
        folder = self.app.upload(PHOTO)
        response, _ = self.app.request(
            "GET", f"{folder}/thumb.auto", headers={"Accept": "image/webp,*/*"}
        )
        self.assertEqual(response.headers.getRawHeaders("Content-Type"), ["image/webp"])
        self.assertEqual(response.headers.getRawHeaders("Vary"), ["Accept"])

    def test_outputs_per_namespace(self) -> None:
        for namespace, made in (
            ("p", ["x12.jpg"]),
            ("avatars", ["x12.jpg", "x14.webp"]),
        ):
            folder = self.app.upload(PHOTO, namespace=namespace)
            names = os.listdir(self.app.root + folder)
            self.assertEqual(sorted(n for n in names if n[0] == "x"), made)
        response, _ = self.app.request("POST", f"{folder}/process?outputs=thumb.png")
        self.assertEqual(response.code, 200)
        self.assertIn("x16-smart.png", os.listdir(self.app.root + folder))

    def test_preset_names_are_not_file_names(self) -> None:
        folder = self.app.upload(PHOTO)
        code, error = self.app.json("POST", f"{folder}/thumb.webp", data=b"x")
        self.assertEqual(
            (code, error), (400, {"error": "the name 'thumb.webp' is a preset's"})
        )

    def test_presets_only(self) -> None:
        app = AppHarness(
            self, presets=self.PRESETS, outputs=("x12.jpg",), presets_only=True
        )
        folder = app.upload(PHOTO)
        for name, code in (("thumb.jpg", 200), ("x12.jpg", 200), ("wide.auto", 200),
                           ("x30-smart-q70.jpg", 403), ("x13.jpg", 403)):  # fmt: skip
            response, _ = app.request("GET", f"{folder}/{name}")
            self.assertEqual(response.code, code, name)
            # A Content-Location names a URL served here, or is not given
            # (it named x30-smart-q70.jpg, a 403).
            for location in response.headers.getRawHeaders("Content-Location", []):
                self.assertEqual(app.request("GET", location)[0].code, 200, name)
        response, _ = app.request("GET", f"{folder}/thumb.jpg")
        self.assertIsNone(response.headers.getRawHeaders("Content-Location"))
        code, _ = app.json("POST", f"{folder}/process?outputs=x30-smart-q70.jpg")
        self.assertEqual(code, 400)
        response, _ = app.request("POST", f"{folder}/process?outputs=thumb.png")
        self.assertEqual(response.code, 200)

    def test_a_preset_is_served_in_every_format_not_redirected(self) -> None:
        """Issue 22: thumb=x20-padffffff passed the start-up check, then
        thumb.jpg was a 301 to x20-pad.jpg (a 403 with --presets_only)."""
        app = AppHarness(self, presets=("thumb=x20-padffffff", "two=x20"),
                         presets_only=True)  # fmt: skip
        folder = app.upload(PHOTO)
        for name, accept, stored in (
            ("thumb.jpg", None, "x20-pad.jpg"),
            ("thumb.png", None, "x20-padffffff.png"),
            ("thumb.webp", None, "x20-padffffff.webp"),
            ("thumb.auto", "image/webp", "x20-padffffff.webp"),
            ("thumb.auto", None, "x20-pad.jpg"),
            ("two.jpg", None, "x20.jpg"),
        ):
            response, body = app.request(
                "GET", f"{folder}/{name}", headers={"Accept": accept} if accept else {},
                allow_redirects=False,
            )  # fmt: skip
            self.assertEqual(response.code, 200, name)
            self.assertEqual(decode(body).size, (20, 20), name)
            self.assertIn(stored, os.listdir(app.root + folder), name)
            # Its canonical URL is not served (--presets_only): not named.
            self.assertIsNone(response.headers.getRawHeaders("Content-Location"), name)

    def test_preset_options_are_checked_at_start(self) -> None:
        for presets, words in (
            (("thumb",), "is not name=variant"),
            (("Thumb=x30",), "a name is a lower-case letter"),
            (("w200=x30",), "'w200' is reserved"),
            (("original=x30",), "'original' is reserved"),
            (("thumb=x30-gray-fit",), "'x30-gray-fit' is spelled 'x30-fit-gray'"),
            (("thumb=x30-foo",), "unknown option 'foo'"),
            (("thumb=x15@2x",), "'x15@2x' is spelled 'x30'"),
            (("thumb=30x30-flip-flop",), "'30x30-flip-flop' is spelled 'x30-r180'"),
            (("thumb=x30-fp" + "9" * 5000 + "_1",), "digits 0-9"),
            (("thumb=x30", "thumb=x40"), "is given twice"),
            (("Bad:thumb=x30",), "'Bad' is not a namespace"),
        ):
            with self.assertRaises(ValueError, msg=presets) as caught:
                Config(presets=presets)
            self.assertIn(words, str(caught.exception), presets)
