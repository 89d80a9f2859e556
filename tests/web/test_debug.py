import marshal
import pstats
import tempfile
import threading
import tracemalloc

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imageserver.metrics.events import Events
from imageserver.web.admin import AdminApp, Readiness
from imageserver.web.debug import DebugApp, HeapTracing


def busy_reactor_function() -> int:
    return sum(i * i for i in range(200_000))


def busy_worker_function() -> int:
    """CPU work in a thread of its own, as the processing pool does it."""
    return sum(i * i for i in range(300_000))


class DebugTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        debug = DebugApp(self.clock).app.resource
        app = AdminApp(Readiness(), Events().registry, debug)
        self.client = StubTreq(app.app.resource())

    def get(self, path: str) -> tuple[int, bytes, object]:
        d = self.client.get("http://admin" + path)
        self.client.flush()
        response = self.successResultOf(d)
        return (
            response.code,
            self.successResultOf(self.client.content(response)),
            response,
        )

    def test_cpu_profile_covers_worker_threads(self) -> None:
        d = self.client.get("http://admin/debug/profile?seconds=2")
        worker = threading.Thread(target=busy_worker_function, name="worker")
        worker.start()
        worker.join()
        self.assertNoResult(d)
        self.clock.advance(2)
        self.client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(self.client.content(response))
        self.assertEqual(response.code, 200)
        self.assertIn(
            "attachment", response.headers.getRawHeaders("Content-Disposition")[0]
        )
        with tempfile.NamedTemporaryFile() as f:
            f.write(body)
            f.flush()
            stats = pstats.Stats(f.name)
        functions = {name for (_, _, name) in stats.stats}  # type: ignore[attr-defined]
        self.assertIn("busy_worker_function", functions)
        self.assertIsInstance(marshal.loads(body), dict)

    def test_a_profile_of_the_reactor_thread_alone(self) -> None:
        d = self.client.get("http://admin/debug/profile?seconds=2&threads=reactor")
        worker = threading.Thread(target=busy_worker_function, name="worker")
        worker.start()
        worker.join()
        busy_reactor_function()
        self.clock.advance(2)
        self.client.flush()
        body = self.successResultOf(self.client.content(self.successResultOf(d)))
        with tempfile.NamedTemporaryFile() as f:
            f.write(body)
            f.flush()
            stats = pstats.Stats(f.name)
        functions = {name for (_, _, name) in stats.stats}  # type: ignore[attr-defined]
        self.assertIn("busy_reactor_function", functions)
        self.assertNotIn("busy_worker_function", functions)

    def test_callgrind_format(self) -> None:
        d = self.client.get("http://admin/debug/profile?seconds=1&format=callgrind")
        self.clock.advance(1)
        self.client.flush()
        body = self.successResultOf(self.client.content(self.successResultOf(d)))
        self.assertTrue(body.startswith(b"version: 1"))

    def test_one_profile_at_a_time(self) -> None:
        first = self.client.get("http://admin/debug/profile?seconds=5")
        code, _, _ = self.get("/debug/profile?seconds=5")
        self.assertEqual(code, 409)
        self.clock.advance(5)
        self.client.flush()
        self.assertEqual(self.successResultOf(first).code, 200)

    def test_bad_profile_arguments(self) -> None:
        # Issue 22: str.isdigit() took the last three, then int() raised (a
        # 500) or read another script's digits.
        long = "seconds=" + "1" * 5000
        for query in ("seconds=0", "seconds=301", "seconds=x", "format=svg",
                      "seconds=%C2%B2", "seconds=%D9%A2", "threads=pool",
                      long):  # fmt: skip
            code, _, _ = self.get(f"/debug/profile?{query}")
            self.assertEqual(code, 400, query)

    def test_heap_top_allocations(self) -> None:
        tracing = HeapTracing()
        tracing.startService()
        self.addCleanup(tracing.stopService)
        kept = [bytearray(1024) for _ in range(2000)]  # noqa: F841
        code, body, _ = self.get("/debug/heap?top=5")
        text = body.decode()
        self.assertEqual(code, 200)
        self.assertIn("rss:", text)
        self.assertIn("web/test_debug.py", text)
        self.assertEqual(len([line for line in text.splitlines() if "KiB" in line]), 5)

    def test_heap_needs_tracing(self) -> None:
        self.assertFalse(tracemalloc.is_tracing())
        self.assertEqual(self.get("/debug/heap")[0], 409)

    def test_thread_stacks(self) -> None:
        code, body, _ = self.get("/debug/threads")
        self.assertEqual(code, 200)
        self.assertIn(b"Thread MainThread", body)
        self.assertIn(b"test_thread_stacks", body)

    def test_off_without_profile(self) -> None:
        client = StubTreq(AdminApp(Readiness(), Events().registry).app.resource())
        response = self.successResultOf(client.get("http://admin/debug/threads"))
        self.assertEqual(response.code, 404)
