"""Namespace quotas: counted in the store, kept up to date by the puts and
deletes that cross the counting storage, shared by a host's workers."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from imageserver.metrics.events import Events
from imageserver.storage.local import LocalStorage
from imageserver.storage.quotas import QuotaExceeded, Quotas
from imageserver.web.responses import status_for
from tests.support import AppHarness, encode, noise, sample, synchronous
from tests.test_twistd import TwistdCase

FOLDER = "p/6e0/072/682/e66287b662827da75b244a3"


class QuotaTests(SynchronousTestCase):
    def result(self, awaitable: Any) -> Any:
        if not isinstance(awaitable, Deferred):
            awaitable = Deferred.fromCoroutine(awaitable)
        return self.successResultOf(awaitable)

    def make(
        self, limit: int = 1000, root: str | None = None, shared: str | None = None
    ) -> tuple[Quotas, LocalStorage]:
        self.root = root or self.mktemp()
        self.clock = Clock()
        self.events = Events()
        backend = LocalStorage(self.root, synchronous)
        quotas = Quotas(limit, backend, synchronous, self.clock, 60, self.events,
                        shared=shared)  # fmt: skip
        return quotas, backend

    def test_a_namespace_at_its_quota_is_refused_with_a_507_saying_what_to_do(
        self,
    ) -> None:
        quotas, backend = self.make()
        storage = quotas.counting(backend)
        quotas.check("p")  # unknown: passes
        # Counted once something is stored (the count finds it).
        self.result(storage.put(f"{FOLDER}/original", b"x" * 999, "image/jpeg"))
        quotas.check("p")
        self.result(storage.put(f"{FOLDER}/w200.jpg", b"x", "image/jpeg"))
        with self.assertRaises(QuotaExceeded) as caught:
            quotas.check("p")
        self.assertEqual(status_for(caught.exception), 507)
        self.assertIn("stores 1000 bytes, its quota is 1000", str(caught.exception))
        self.assertIn("--namespace_quota_bytes", str(caught.exception))
        quotas.check("q")  # another namespace is not
        self.assertEqual(sample(self.events, "imageserver_quota_refused_total"), 1)
        self.assertEqual(
            sample(self.events, "imageserver_namespace_stored_bytes", namespace="p"),
            1000,
        )

    def test_what_stores_nothing_leaves_no_count(self) -> None:
        """A write refused for another reason (not an image, a source that
        is gone) crosses the check too: into a namespace not counted yet it
        leaves no count, no gauge series and no file behind."""
        shared = self.mktemp()
        quotas, backend = self.make(shared=shared)
        for n in range(50):
            quotas.check(f"n{n}")
        self.assertFalse(os.path.exists(shared))
        self.assertIsNone(
            self.events.registry.get_sample_value(
                "imageserver_namespace_stored_bytes", {"namespace": "n0"}
            )
        )
        storage = quotas.counting(backend)
        self.result(storage.put("n0/6e0/072/682/x/original", b"x" * 10, "image/jpeg"))
        self.assertEqual(os.listdir(shared), [os.listdir(shared)[0]])
        self.assertEqual(
            sample(self.events, "imageserver_namespace_stored_bytes", namespace="n0"),
            10,
        )

    def test_writes_at_once_hold_their_bytes_while_they_store(self) -> None:
        """Checked before any of them stored, writes at once would all pass:
        each holds its bytes while it stores, so the second is refused, and
        once the first is stored its bytes are counted instead."""
        quotas, backend = self.make(limit=1000)
        storage = quotas.counting(backend)

        async def writes() -> None:
            async with quotas.reserving("p", 1000):  # counted first: 0
                with self.assertRaises(QuotaExceeded) as caught:
                    async with quotas.reserving("p", 1):
                        self.fail("a write passed one holding the whole quota")
                self.assertIn("stores 0 bytes and is storing 1000 more",
                              str(caught.exception))  # fmt: skip
                await storage.put(f"{FOLDER}/original", b"x" * 600, "image/jpeg")
            self.assertEqual(quotas._reserved, {})
            async with quotas.reserving("p", 300):  # 600 stored, 300 more
                pass
            await storage.put(f"{FOLDER}/w1.jpg", b"x" * 400, "image/jpeg")
            with self.assertRaises(QuotaExceeded):
                async with quotas.reserving("p", 1):
                    pass

        self.result(writes())

    def test_after_a_delete_the_next_write_waits_for_its_count(self) -> None:
        """A client told to delete images and try again is not refused by
        the count from before its delete."""
        quotas, backend = self.make(limit=1000)
        storage = quotas.counting(backend)
        self.result(storage.put(f"{FOLDER}/original", b"x" * 1000, "image/jpeg"))
        self.result(storage.put(f"{FOLDER}/w1.jpg", b"x" * 10, "image/jpeg"))
        self.assertRaises(QuotaExceeded, quotas.check, "p")
        self.result(storage.delete(f"{FOLDER}/original"))
        quotas.check("p")  # not known since the delete: passes

        async def write() -> None:
            async with quotas.reserving("p", 10):  # counted: 10 bytes
                pass

        self.result(write())
        self.assertEqual(
            sample(self.events, "imageserver_namespace_stored_bytes", namespace="p"),
            10,
        )

    def test_a_delete_makes_the_next_write_count_again(self) -> None:
        quotas, backend = self.make()
        storage = quotas.counting(backend)
        quotas.check("p")
        self.result(storage.put(f"{FOLDER}/original", b"x" * 1000, "image/jpeg"))
        self.assertRaises(QuotaExceeded, quotas.check, "p")
        self.result(storage.delete_prefix(FOLDER))
        quotas.check("p")  # counted again: nothing stored
        self.assertEqual(
            sample(self.events, "imageserver_namespace_stored_bytes", namespace="p"), 0
        )

    def test_what_others_store_is_seen_at_the_next_count(self) -> None:
        quotas, backend = self.make()
        self.result(quotas.recount("p"))
        # Another host writes straight to the store.
        self.result(backend.put(f"{FOLDER}/original", b"x" * 1000, "image/jpeg"))
        quotas.check("p")  # within the interval: not seen yet
        self.clock.advance(60)  # stale: counted again (here at once)
        self.assertRaises(QuotaExceeded, quotas.check, "p")

    def test_a_host_s_workers_share_one_count(self) -> None:
        shared = self.mktemp()
        first, backend = self.make(shared=shared)
        self.result(first.recount("p"))
        self.result(backend.put(f"{FOLDER}/original", b"x" * 1000, "image/jpeg"))
        # A second worker within the interval takes the first one's count
        # (0) rather than walking the folder again (which would find 1000).
        second, _ = self.make(root=self.root, shared=shared)
        self.result(second.recount("p"))
        second.check("p")
        self.clock.advance(60)
        self.assertRaises(QuotaExceeded, second.check, "p")
        self.assertEqual(len(os.listdir(shared)), 1)

    def test_a_count_that_fails_is_logged_and_the_last_one_stands(self) -> None:
        quotas, backend = self.make()
        self.result(quotas.recount("p"))
        self.result(backend.put(f"{FOLDER}/original", b"x" * 1000, "image/jpeg"))
        self.clock.advance(60)
        os.chmod(os.path.join(self.root, "p"), 0)
        self.addCleanup(os.chmod, os.path.join(self.root, "p"), 0o755)
        if os.geteuid() == 0:  # root reads anything: break the walk otherwise
            os.chmod(os.path.join(self.root, "p"), 0o755)
            backend.usage = _failing  # type: ignore[method-assign]
        quotas.check("p")
        self.assertEqual(len(self.flushLoggedErrors()), 1)
        quotas.check("p")  # not tried again by every write
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=40, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["put", "delete", "count"]),
                st.sampled_from(["a", "b", "c"]),
                st.integers(0, 400),
            ),
            max_size=20,
        )
    )
    def test_after_a_count_the_known_bytes_are_what_the_store_holds(
        self, steps: list[tuple[str, str, int]]
    ) -> None:
        quotas, backend = self.make(limit=10**9)
        storage = quotas.counting(backend)
        quotas.check("p")
        held: dict[str, int] = {}
        for action, name, size in steps:
            key = f"{FOLDER}/{name}"
            if action == "put":
                self.result(storage.put(key, b"x" * size, "image/jpeg"))
                held[name] = size
            elif action == "delete":
                self.result(storage.delete(key))
                held.pop(name, None)
            else:
                self.result(quotas.recount("p"))
                known = sample(
                    self.events, "imageserver_namespace_stored_bytes", namespace="p"
                )
                self.assertEqual(known, sum(held.values()))
        self.result(storage.delete_prefix("p"))


class QuotaRouteTests(SynchronousTestCase):
    """Every way a client asks for something to be stored crosses the quota;
    reading does not."""

    def test_every_write_route_is_refused_past_the_quota(self) -> None:
        app = AppHarness(self, namespace_quota_bytes=1, quota_interval=60)
        folder = app.upload(encode(noise((64, 48), 1)))  # unknown yet: passes
        digest = "".join(folder.split("/")[2:])
        refused = {
            "upload": ("POST", "/p", encode(noise((64, 48), 2))),
            "process": ("POST", f"{folder}/process?outputs=w10.jpg", b""),
            "client file": ("POST", f"{folder}/notes.txt", b"hello"),
            "batch by URL": ("POST", "/p/batch", b"http://s/a.jpg\n"),
            "batch by hash with outputs": (
                "POST", "/p/batch?outputs=w11.jpg", f"{digest}\n".encode()
            ),
        }  # fmt: skip
        for what, (method, url, body) in refused.items():
            code, error = app.json(method, url, data=body)
            self.assertEqual(code, 507, what)
            self.assertIn("--namespace_quota_bytes", error["error"], what)
        self.assertNotIn("w10.jpg", os.listdir(app.local.path(folder[1:])))
        # Reads go on: a variant not made yet is made; a batch that stores
        # nothing (hashes alone) is answered.
        response, _ = app.request("GET", f"{folder}/w12.jpg")
        self.assertEqual(response.code, 200)
        code, _ = app.json("POST", "/p/batch", data=f"{digest}\n".encode())
        self.assertEqual(code, 202)
        self.assertEqual(
            sample(app.events, "imageserver_quota_refused_total"), len(refused)
        )

    def test_a_body_that_is_not_an_image_leaves_no_count(self) -> None:
        app = AppHarness(self, namespace_quota_bytes=1000)
        for body in (b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"x" * 100):
            code, _ = app.json("POST", "/x1", data=body)
            self.assertEqual(code, 415)
        self.assertEqual(dict(app.quotas._counts), {})


class QuotaTwistdTests(TwistdCase):
    """Two workers of a real server hold a namespace to its quota."""

    timeout = 90

    async def test_uploads_past_the_quota_are_507_reads_and_variants_go_on(
        self,
    ) -> None:
        await self.start_server(
            "--namespace_quota_bytes", "1", "--quota_interval", "1",
            workers=("--workers", "2"),
        )  # fmt: skip
        await self.ready()
        folders, refused = [], None
        for seed in range(40):  # each worker passes one upload before it knows
            response, body = await self.call(
                "POST", "/p", data=encode(noise((64, 48), seed))
            )
            if response.code == 507:
                refused = json.loads(body)
                break
            self.assertEqual(response.code, 200, body)
            digest = json.loads(body)["hash"]
            folders.append(f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}")
            await deferLater(reactor, 0.2)
        assert refused is not None, "never refused"
        self.assertIn("its quota is 1 (--namespace_quota_bytes)", refused["error"])
        self.assertLessEqual(len(folders), 4)
        # Reads, and variants not made yet, are served; other namespaces write.
        response, _ = await self.call("GET", f"{folders[0]}/w20.jpg")
        self.assertEqual(response.code, 200)
        response, _ = await self.call("POST", "/q", data=encode(noise((64, 48), 99)))
        self.assertEqual(response.code, 200)
        response, body = await self.call("GET", "/metrics", self.admin_port)
        self.assertRegex(
            body.decode(), r'imageserver_namespace_stored_bytes\{namespace="p"\} [1-9]'
        )
        self.assertRegex(body.decode(), r"imageserver_quota_refused_total [1-9]")
        # Emptied, the namespace takes uploads again within the interval.
        for folder in folders:
            response, _ = await self.call("DELETE", folder)
            self.assertEqual(response.code, 204)
        for _ in range(100):
            response, body = await self.call(
                "POST", "/p", data=encode(noise((64, 48), 1000))
            )
            if response.code == 200:
                break
            self.assertEqual(response.code, 507)
            await deferLater(reactor, 0.1)
        self.assertEqual(response.code, 200, body)


async def _failing(folder: str) -> int:
    raise OSError("the disk is gone")
