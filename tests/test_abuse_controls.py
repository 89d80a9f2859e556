"""Limits that keep one client from taking the server: queues, time, presets, URLs."""

import contextlib
import io
import json
import os
import re
import threading
import uuid
from typing import Any

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource

from imageserver.errors import Overloaded
from imageserver.pools import ThreadPoolService
from imageserver.signing import main, sign, signature, verify
from imageserver.web.app import UNSIGNED_ROUTES, ImageServerApp
from imageserver.web.site import BoundedSite, SignatureGuard
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
        gate = Gate()
        clock = Clock()
        app.images._process = gate  # type: ignore[method-assign]
        app.images._clock = clock
        app.images._processing_timeout = 60
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
        gate.release()  # the thread finishes later: nothing breaks


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

    def test_outputs_must_be_presets(self) -> None:
        code, _ = self.app.json("POST", f"{self.folder}/process?outputs=x10.jpg")
        self.assertEqual(code, 400)


class SigningTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        signed = sign(SECRET, "/p/6e0/072/682/e66287b662827da75b244a3/w200.jpg")
        _, _, query = signed.partition("?")
        self.assertTrue(query.startswith("sig="))
        self.assertTrue(verify(SECRET, signed))
        with_query = sign(SECRET, "http://img.example/p?source=http%3A%2F%2Fa%2Fb.jpg")
        self.assertTrue(verify(SECRET, with_query.removeprefix("http://img.example")))

    def test_anything_changed_fails(self) -> None:
        signed = sign(SECRET, "/p/6e0/072/682/e66287b662827da75b244a3/w200.jpg")
        self.assertFalse(verify(SECRET, signed.replace("w200", "w900")))
        self.assertFalse(verify(b"other secret", signed))
        self.assertFalse(verify(SECRET, signed.split("?")[0]))
        self.assertFalse(verify(SECRET, signed + "&outputs=x1.jpg"))
        self.assertFalse(verify(SECRET, signed[:-1]))

    def test_known_value(self) -> None:
        # printf /p | openssl dgst -sha256 -hmac key -binary | base64url
        self.assertEqual(
            signature(b"key", "/p"), "AYiH1gM3x-4XmQu6uTnPNwYjFoUQ-5WN2mvCmETtsqI"
        )

    def test_helper(self) -> None:
        self.patch(os, "environ", {"IMAGESERVER_SECRET": "key"})
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.assertEqual(main(["/p"]), 0)
        self.assertEqual(
            out.getvalue(), "/p?sig=AYiH1gM3x-4XmQu6uTnPNwYjFoUQ-5WN2mvCmETtsqI\n"
        )


class SignatureGuardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.app = AppHarness(self)
        self.folder = self.app.upload(PHOTO)
        self.client = StubTreq(
            SignatureGuard(self.app.resource, SECRET, UNSIGNED_ROUTES)
        )

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        response = self.successResultOf(
            self.client.request(method, "http://img" + path, **kwargs)
        )
        return response.code, self.successResultOf(self.client.content(response))

    def example_paths(self) -> list[str]:
        """A path for every route of the app, open paths used as namespaces too."""
        values = {
            "namespace": ["p", "status_check"],
            "image": [self.folder.lstrip("/")],
            "name": ["w20.png", "notes.txt", "process", "info.json"],
            "job_id": [str(uuid.uuid4())],
        }
        paths = {"/status_check", "/openapi.json", "/status_check/batch"}
        for rule in ImageServerApp.app.url_map.iter_rules():
            candidates = [""]
            for part in re.split(r"(<[^>]+>)", rule.rule):
                variable = re.fullmatch(r"<(?:\w+:)?(\w+)>", part)
                options = values[variable[1]] if variable else [part]
                candidates = [c + o for c in candidates for o in options]
            paths.update(candidates)
        return sorted(paths)

    def test_every_route_and_method_needs_a_signature(self) -> None:
        methods = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
        before = sorted(os.listdir(self.app.root))
        open_routes = {(m.decode(), p.decode()) for m, p in UNSIGNED_ROUTES}
        for path in self.example_paths():
            for method in methods:
                for query in ("", "?outputs=x10.jpg&source=http://127.0.0.1/a.jpg"):
                    code, _ = self.request(method, path + query, data=PHOTO)
                    opened = (method.replace("HEAD", "GET"), path) in open_routes
                    self.assertEqual(code, 200 if opened else 403, (method, path))
        # Nothing was stored: no namespace appeared, no source was fetched.
        self.assertEqual(sorted(os.listdir(self.app.root)), before)

    def test_signed_urls_are_served(self) -> None:
        code, body = self.get(sign(SECRET, f"{self.folder}/w20.png"))
        self.assertEqual((code, decode(body).size), (200, (20, 10)))

    def test_unsigned_or_wrongly_signed_is_403(self) -> None:
        unsigned = f"{self.folder}/w20.png"
        for path in (
            unsigned,
            sign(b"nope", unsigned),
            sign(SECRET, unsigned).replace("w20", "w21"),
        ):
            code, body = self.get(path)
            self.assertEqual(code, 403, path)
            self.assertEqual(
                json.loads(body), {"error": "this URL needs a valid signature (sig)"}
            )

    def test_status_check_stays_open(self) -> None:
        self.assertEqual(self.get("/status_check")[0], 200)


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
