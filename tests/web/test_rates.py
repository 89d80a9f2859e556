"""Rate limits: token buckets against a model, shared by processes through
their file; cold renders, uploads and write tokens over the site as the
server builds it; and a real server's workers sharing one limit."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from imageserver.access.rates import (
    PROBES,
    SLOTS,
    RateLimiter,
    Rates,
    TokenBuckets,
)
from imageserver.access.tokens import WriteTokens
from imageserver.errors import TooMany
from imageserver.metrics.events import Events
from imageserver.web.access import AccessPolicy
from tests.support import AppHarness, LoopbackSite, encode, quadrants
from tests.test_twistd import TwistdCase
from tests.web.test_access import TOKEN

PHOTO = encode(quadrants((80, 60)))


class BucketTests(SynchronousTestCase):
    @settings(max_examples=300)
    @given(
        rate=st.floats(0.1, 50),
        burst=st.floats(1, 20),
        steps=st.lists(st.floats(0, 3), max_size=60),
    )
    def test_a_bucket_is_the_model(
        self, rate: float, burst: float, steps: list[float]
    ) -> None:
        """Each take is granted exactly when the model has a token, and a
        refusal says how long until it will."""
        clock = Clock()
        buckets = TokenBuckets(clock.seconds)
        tokens = burst
        for step in steps:
            clock.advance(step)
            tokens = min(burst, tokens + step * rate)
            wait = buckets.take("k", rate, burst)
            if tokens >= 1:
                tokens -= 1
                self.assertEqual(wait, 0)
            else:
                self.assertAlmostEqual(wait, (1 - tokens) / rate, places=6)
                self.assertGreater(wait, 0)

    def test_keys_are_apart_and_slots_are_given_back(self) -> None:
        clock = Clock()
        buckets = TokenBuckets(clock.seconds)
        self.assertEqual(buckets.take("a", 1, 1), 0)
        self.assertGreater(buckets.take("a", 1, 1), 0)
        self.assertEqual(buckets.take("b", 1, 1), 0)
        # More keys than slots: every key still gets its own full bucket
        # (the oldest of a probe's slots is given back), none fails.
        for n in range(SLOTS + PROBES):
            clock.advance(0.001)
            buckets.take(f"key{n}", 1, 1)

    def test_processes_share_one_file(self) -> None:
        path = os.path.join(self.mktemp(), "rates")
        first = TokenBuckets(time.time, path)
        second = TokenBuckets(time.time, path)
        self.assertEqual(first.take("k", 0.001, 2), 0)
        self.assertEqual(second.take("k", 0.001, 2), 0)
        self.assertGreater(first.take("k", 0.001, 2), 0)
        self.assertGreater(second.take("k", 0.001, 2), 0)

    def test_processes_at_once_never_get_more_than_the_bucket(self) -> None:
        path = os.path.join(self.mktemp(), "rates")
        TokenBuckets(time.time, path)
        context = multiprocessing.get_context("spawn")
        with context.Pool(4) as pool:
            granted = sum(pool.map(_take_many, [path] * 4))
        self.assertEqual(granted, 50)  # the burst; the rate adds < 1 meanwhile


def _take_many(path: str) -> int:
    buckets = TokenBuckets(time.time, path)
    return sum(buckets.take("shared", 0.01, 50) == 0 for _ in range(200))


class LimiterTests(SynchronousTestCase):
    def test_each_kind_by_its_own_key(self) -> None:
        clock, events = Clock(), Events()
        limiter = RateLimiter(
            Rates(namespace_renders=1, namespace_uploads=2, token_writes=1,
                  burst_seconds=1),
            TokenBuckets(clock.seconds),
            events,
        )  # fmt: skip
        limiter.render("a")
        limiter.render("b")
        limiter.upload("a")
        limiter.upload("a")
        limiter.write("t1")
        limiter.write("t2")
        for call, why in (
            (lambda: limiter.render("a"), "namespace 'a' asks for more variants"),
            (lambda: limiter.upload("a"), "namespace 'a' uploads more"),
            (lambda: limiter.write("t1"), "this write token writes more"),
        ):
            with self.assertRaises(TooMany) as raised:
                call()
            self.assertIn(why, str(raised.exception))
            self.assertEqual(raised.exception.retry_after, 1)
        self.assertNotIn("t1", str(raised.exception))  # a token is never said
        for kind in ("render", "upload", "write"):
            self.assertEqual(
                events.registry.get_sample_value(
                    "imageserver_rate_limited_total", {"kind": kind}
                ),
                1,
            )
        clock.advance(1)
        limiter.render("a")

    def test_no_rate_no_limit(self) -> None:
        limiter = RateLimiter(Rates(), TokenBuckets(Clock().seconds))
        for _ in range(1000):
            limiter.render("a")
            limiter.upload("a")
            limiter.write("t")


class SiteTests(TestCase):
    """The site as the server builds it, with its admission."""

    def setUp(self) -> None:
        self.app = AppHarness(
            self, namespace_render_rate=2, namespace_upload_rate=1, rate_burst=1
        )
        self.folder = self.app.upload(PHOTO)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{TOKEN}\n")
        self.tokens = WriteTokens(path)
        self.tokens.load()

    async def renders(
        self, site: LoopbackSite, method: str, targets: list[str]
    ) -> list[int]:
        """The statuses of ``targets``, each 429 checked for what it says."""
        codes = []
        for target in targets:
            code, headers, body = await site.request(method, target)
            codes.append(code)
            if code == 429:
                self.assertEqual(headers["retry-after"], ["1"])
                self.assertIn("variants not made yet", json.loads(body)["error"])
        return codes

    async def test_cold_renders_are_limited_per_namespace_cached_never(self) -> None:
        site = LoopbackSite(
            self,
            self.app.resource,
            AccessPolicy(self.app.clock, rates=self.app.images.rates),
        )
        targets = [f"{self.folder}/w{width}.png" for width in range(10, 15)]
        codes = await self.renders(site, "GET", targets)
        self.assertEqual(codes, [200, 200, 429, 429, 429])
        for _ in range(20):  # made: served whatever the rate
            code, _, _ = await site.request("GET", f"{self.folder}/w10.png")
            self.assertEqual(code, 200)
        other = self.app.upload(PHOTO, "other")
        code, _, _ = await site.request("GET", f"{other}/w10.png")
        self.assertEqual(code, 200)  # another namespace's own bucket
        self.app.clock.advance(1)
        code, _, _ = await site.request("GET", f"{self.folder}/w13.png")
        self.assertEqual(code, 200)

    async def test_process_counts_one_render_when_it_makes_any(self) -> None:
        """``process`` makes variants as a cold GET does: one render each
        (one decode makes its outputs), none when all are made."""
        site = LoopbackSite(
            self,
            self.app.resource,
            AccessPolicy(self.app.clock, rates=self.app.images.rates),
        )
        outputs = ("w10.png,w11.png", "w12.png", "w13.png", "w10.png,w12.png")
        targets = [f"{self.folder}/process?outputs={o}" for o in outputs]
        codes = await self.renders(site, "POST", targets)
        self.assertEqual(codes, [200, 200, 429, 200])
        code, _, _ = await site.request("GET", f"{self.folder}/w13.png")
        self.assertEqual(code, 429)  # the same bucket as a GET's
        self.assertFalse(
            os.path.exists(self.app.local.path(f"{self.folder[1:]}/w13.png"))
        )

    def test_outputs_of_an_image_stored_before_are_renders(self) -> None:
        """Uploading known bytes again (a batch's URL item, say) with new
        outputs makes them as a process would: counted as renders."""
        codes = [
            self.app.json("POST", f"/p?outputs=w{width}.png", data=PHOTO)[0]
            for width in (30, 31, 32)
        ]
        self.assertEqual(codes, [200, 200, 429])
        self.assertEqual(
            self.app.json("POST", "/p?outputs=w30.png", data=PHOTO)[0], 200
        )  # made: nothing to count

    async def test_uploads_and_token_writes(self) -> None:
        limiter = RateLimiter(
            Rates(namespace_uploads=1, token_writes=1, burst_seconds=2),
            TokenBuckets(self.app.clock.seconds),
        )
        site = LoopbackSite(
            self,
            self.app.resource,
            AccessPolicy(self.app.clock, tokens=self.tokens, rates=limiter),
        )
        auth = {"Authorization": f"Bearer {TOKEN}"}
        code, _, _ = await site.request("POST", "/a", auth, PHOTO)
        self.assertEqual(code, 200)
        code, _, _ = await site.request("POST", "/a", auth, PHOTO)
        self.assertEqual(code, 200)
        # The token's two writes are spent: any write, any namespace.
        code, headers, body = await site.request("POST", "/b", auth, PHOTO)
        self.assertEqual(code, 429, body)
        self.assertIn("write token", json.loads(body)["error"])
        self.assertEqual(headers["retry-after"], ["1"])
        # A refused token costs the bucket nothing and says what it is.
        code, _, _ = await site.request(
            "POST", "/b", {"Authorization": "Bearer wrong"}, PHOTO
        )
        self.assertEqual(code, 403)
        # Reads are never a write.
        code, _, _ = await site.request("GET", f"{self.folder}/info.json", auth)
        self.assertEqual(code, 200)

    async def test_uploads_per_namespace_without_tokens(self) -> None:
        limiter = RateLimiter(
            Rates(namespace_uploads=1, burst_seconds=1),
            TokenBuckets(self.app.clock.seconds),
        )
        site = LoopbackSite(
            self, self.app.resource, AccessPolicy(self.app.clock, rates=limiter)
        )
        self.assertEqual((await site.request("POST", "/a", {}, PHOTO))[0], 200)
        code, _, body = await site.request("POST", "/a", {}, PHOTO)
        self.assertEqual(code, 429, body)
        self.assertIn("namespace 'a' uploads more", json.loads(body)["error"])
        self.assertEqual((await site.request("POST", "/b", {}, PHOTO))[0], 200)
        # Not an upload: a client file in a folder.
        code, _, _ = await site.request(
            "POST", f"{self.folder}/notes.txt", {}, b"notes"
        )
        self.assertEqual(code, 200)


class WorkersShareTests(TwistdCase):
    async def test_the_workers_of_a_host_share_a_limit(self) -> None:
        """Two workers, uploads at 0.01 a second with a bucket of 3: over many
        connections (spread over both workers) no more than 3 get through at
        once, not 3 per worker."""
        await self.start_server(
            "--namespace_upload_rate", "0.01", "--rate_burst", "300",
            workers=("--workers", "2"),
        )  # fmt: skip
        codes = []
        for n in range(12):
            # A new connection each time: the kernel spreads them.
            response, _ = await self.call(
                "POST", "/p", data=encode(quadrants((8 + n, 8))),
                headers={"Connection": "close"},
            )  # fmt: skip
            codes.append(response.code)
        self.assertEqual(codes.count(200), 3, codes)
        self.assertEqual(codes.count(429), 9, codes)
