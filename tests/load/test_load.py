"""A minute of mixed load on a real server: no stray 5xx, bounded memory, live probes.

    python -m pytest -m load tests/load

Uploads (12-megapixel JPEGs and small images), never-seen variants, cached
variants and bad requests, from 32 concurrent clients against 2 processing
threads, for 60 seconds (LOAD_SECONDS to change it).
"""

from __future__ import annotations

import io
import json
import os
import random
import time
from collections import Counter

import pytest
from PIL import Image, ImageFilter
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall
from twisted.web.client import Agent, HTTPConnectionPool

from tests.test_twistd import TwistdCase

pytestmark = pytest.mark.load

SECONDS = float(os.environ.get("LOAD_SECONDS", "60"))
CLIENTS = 32
#: The RSS the server must stay under, 12-megapixel sources included.
RSS_LIMIT = 600 * 2**20
GOOD = frozenset({"upload_big", "upload_small", "cold", "cached"})


def photo(seed: int, size: tuple[int, int] = (4000, 3000)) -> bytes:
    base = Image.effect_mandelbrot(size, (-2.0 + seed / 10, -1.2, 1.0, 1.2), 60)
    image = Image.merge("RGB", (base, Image.linear_gradient("L").resize(size), base))
    out = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(2)).save(out, "JPEG", quality=85)
    return out.getvalue()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class LoadTests(TwistdCase):
    timeout = SECONDS + 240

    async def test_a_minute_of_mixed_load(self) -> None:
        process = await self.start_server(
            "--processor_concurrency", "2", "--max_pending", "8",
            "--maximum_width", "2000", "--shutdown_timeout", "5",
        )  # fmt: skip
        pid = process.transport.pid  # type: ignore[union-attr]
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = CLIENTS
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(Agent(reactor, pool=pool))
        base = f"http://127.0.0.1:{self.port}"

        big = [photo(seed) for seed in range(3)]
        folders = []
        for data in big:
            response = await client.post(f"{base}/p", data=data)
            digest = json.loads(await response.content())["hash"]
            folders.append(f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}")
        cached = f"{folders[0]}/w300.jpg"
        await (await client.get(base + cached)).content()

        statuses: Counter[tuple[str, int]] = Counter()
        strays: list[str] = []
        widths = iter(range(100, 2000))
        peak = [rss(pid)]
        probes = {"answered": 0, "late": 0}
        deadline = time.monotonic() + SECONDS

        def request() -> tuple[str, str, str, bytes | None]:
            kind = random.choices(
                [
                    "upload_big",
                    "upload_small",
                    "cold",
                    "cached",
                    "bad_name",
                    "bad_body",
                ],
                weights=[2, 10, 25, 50, 8, 5],
            )[0]
            folder = random.choice(folders)
            if kind == "upload_big":
                return kind, "POST", "/p?outputs=x200.jpg", random.choice(big)
            if kind == "upload_small":
                small = Image.effect_noise((300, 200), random.uniform(5, 80))
                out = io.BytesIO()
                small.convert("RGB").save(out, "PNG")
                return kind, "POST", "/q?outputs=w100.webp", out.getvalue()
            if kind == "cold":
                return kind, "GET", f"{folder}/w{next(widths, 150)}.jpg", None
            if kind == "cached":
                return kind, "GET", cached, None
            if kind == "bad_name":
                return kind, "GET", f"{folder}/w0.jpg", None
            return kind, "POST", "/p", b"<html>not an image</html>"

        async def worker() -> None:
            while time.monotonic() < deadline:
                kind, method, path, body = request()
                response = await client.request(method, base + path, data=body)
                await response.content()
                statuses[kind, response.code] += 1
                # 503 is the bounded queue at work: deliberate, for any kind.
                expected = {200, 503} if kind in GOOD else {400, 415, 503}
                if response.code not in expected:
                    strays.append(f"{kind} {method} {path} -> {response.code}")

        async def probe() -> None:
            started = time.monotonic()
            response = await client.get(
                f"http://127.0.0.1:{self.admin_port}/probe/live"
            )
            await response.content()
            if response.code == 200 and time.monotonic() - started < 2:
                probes["answered"] += 1
            else:
                probes["late"] += 1
            peak[0] = max(peak[0], rss(pid))

        probing = LoopingCall(lambda: Deferred.fromCoroutine(probe()))
        probing.start(1.0)
        await gatherResults([Deferred.fromCoroutine(worker()) for _ in range(CLIENTS)])
        probing.stop()

        # Once the load is gone, every kind of good request works.
        for kind, method, path, body in (
            ("upload", "POST", "/p", big[1]),
            ("cold", "GET", f"{folders[1]}/w1999.jpg", None),
            ("cached", "GET", cached, None),
        ):
            response = await client.request(method, base + path, data=body)
            await response.content()
            self.assertEqual(response.code, 200, kind)

        report = {
            "seconds": SECONDS,
            "requests": sum(statuses.values()),
            "by_kind_and_status": {
                f"{k} {c}": n for (k, c), n in sorted(statuses.items())
            },
            "peak_rss_mb": round(peak[0] / 2**20),
            "probes": probes,
        }
        print(json.dumps(report, indent=2))
        self.assertEqual(strays, [])
        self.assertEqual(probes["late"], 0)
        self.assertGreater(probes["answered"], SECONDS * 0.8)
        self.assertLess(peak[0], RSS_LIMIT)
