"""The batch API: create, progress, results, and resuming after a restart."""

import hashlib
import io
import json
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.static import Data

from imageserver.bulk import batches
from imageserver.bulk.batches import Batches, batch_key
from imageserver.errors import NotFound
from imageserver.imaging import renderer
from tests.support import AppHarness, Gate, encode, quadrants, synchronous

PHOTO = encode(quadrants((400, 300)))
PHOTO_HASH = hashlib.md5(PHOTO).hexdigest()
OTHER = encode(quadrants((120, 90)), "PNG")
OTHER_HASH = hashlib.md5(OTHER).hexdigest()


class Counting(Data):
    def __init__(self, data: bytes, content_type: str) -> None:
        super().__init__(data, content_type)
        self.fetches = 0

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        self.fetches += 1
        return super().render_GET(request)


class BatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sources = Resource()
        self.photo = Counting(PHOTO, "image/jpeg")
        self.other = Counting(OTHER, "image/png")
        self.sources.putChild(b"photo.jpg", self.photo)
        self.sources.putChild(b"other.png", self.other)
        self.app = AppHarness(self, sources=self.sources)
        self.body = (
            f"http://s/photo.jpg\n\n{OTHER_HASH}\thttp://s/other.png\n"
            "0123456789abcdef0123456789abcdef\n"
        ).encode()

    def test_lifecycle(self) -> None:
        gate = Gate()
        self.app.images._process = gate  # type: ignore[method-assign]
        created = self.app.start("POST", "/p/batch?outputs=x50.jpg", data=self.body)
        gate.release_first()  # reading the body; the first item waits
        self.app.flush()
        response = self.successResultOf(created)
        job = json.loads(self.successResultOf(self.app.client.content(response)))
        self.assertEqual(response.code, 202)
        url = f"/p/batch/{job['job_id']}"

        code, progress = self.app.json("GET", url)
        self.assertEqual(
            (code, progress),
            (202, {"state": "running", "total": 3, "done": 0, "failed": 0}),
        )
        gate.release()
        self.app.flush()
        code, report = self.app.json("GET", url)
        self.assertEqual(code, 200)
        self.assertEqual(
            (report["state"], report["done"], report["failed"]), ("done", 2, 1)
        )
        self.assertEqual(report["items"], [
            {"hash": PHOTO_HASH, "url": "http://s/photo.jpg", "width": 400,
             "height": 300, "error": None},
            {"hash": OTHER_HASH, "url": "http://s/other.png", "width": 120,
             "height": 90, "error": None},
            {"hash": "0123456789abcdef0123456789abcdef", "url": None, "width": None,
             "height": None,
             "error": "0123456789abcdef0123456789abcdef is not in the store"},
        ])  # fmt: skip
        root = self.app.root
        for digest in (PHOTO_HASH, OTHER_HASH):
            folder = os.path.join(
                root, "p", digest[:3], digest[3:6], digest[6:9], digest[9:]
            )
            self.assertIn("x50.jpg", os.listdir(folder))

    def test_a_job_resumes_after_a_restart_without_redoing_items(self) -> None:
        storage = self.app.storage
        job_id = "6f1c1d3e-4a8b-4c2d-9e0f-1a2b3c4d5e6f"
        job = {"id": job_id, "namespace": "p", "outputs": "", "created": 0,
               "items": [{"url": "http://s/photo.jpg", "hash": None},
                         {"url": "http://s/other.png", "hash": None}]}  # fmt: skip
        # The state a server left when it died after the first item.
        done_before = {"hash": PHOTO_HASH, "url": "http://s/photo.jpg", "width": 400,
                       "height": 300, "error": None}  # fmt: skip
        state = {"state": "running", "results": {"0": done_before}}
        for name, value in (("job.json", job), ("state.json", state)):
            put = storage.put(
                batch_key("p", job_id, name),
                json.dumps(value).encode(),
                "application/json",
            )
            self.successResultOf(Deferred.fromCoroutine(put))
        self.app.json("GET", f"/p/batch/{job_id}")  # finds it unfinished: resumes
        # With no thread pool in the way the resumed job finishes at once.
        code, report = self.app.json("GET", f"/p/batch/{job_id}")
        self.assertEqual((code, report["done"]), (200, 2))
        self.assertEqual(report["items"][0], done_before)
        self.assertEqual(report["items"][1]["hash"], OTHER_HASH)
        self.assertEqual((self.photo.fetches, self.other.fetches), (0, 1))

    def test_unexpected_failures_fail_their_item_alone(self) -> None:
        """A bug in decoding, storage or fetching: that item fails, the job ends."""
        third = encode(quadrants((60, 40)), "PNG")
        good = encode(quadrants((64, 48)), "PNG")
        self.sources.putChild(b"third.png", Data(third, "image/png"))
        self.sources.putChild(b"good.png", Data(good, "image/png"))
        render_many = renderer.render_many
        put = self.app.local.put
        fetch = self.app.images._sources.fetch

        def broken_decoder(data: bytes, *args: Any) -> Any:
            if data == PHOTO:
                raise RuntimeError("decoder bug")
            return render_many(data, *args)

        async def broken_storage(key: str, *args: Any, **kwargs: Any) -> Any:
            if OTHER_HASH[9:] in key:
                raise RuntimeError("storage bug")
            return await put(key, *args, **kwargs)

        async def broken_fetch(url: str) -> bytes:
            if url.endswith("third.png"):
                raise RuntimeError("fetcher bug")
            return await fetch(url)

        self.patch(renderer, "render_many", broken_decoder)
        self.patch(self.app.local, "put", broken_storage)
        self.patch(self.app.images._sources, "fetch", broken_fetch)
        body = b"http://s/photo.jpg\nhttp://s/other.png\nhttp://s/third.png\n"
        code, job = self.app.json(
            "POST", "/p/batch?outputs=x20.jpg", data=body + b"http://s/good.png\n"
        )
        self.assertEqual(code, 202)
        code, report = self.app.json("GET", f"/p/batch/{job['job_id']}")
        self.assertEqual(code, 200)
        self.assertEqual((report["state"], report["done"], report["failed"]),
                         ("done", 1, 3))  # fmt: skip
        internal = "internal error while processing this item"
        self.assertEqual(
            [item["error"] for item in report["items"]],
            [internal, internal, internal, None],
        )
        self.assertEqual(report["items"][3]["hash"], hashlib.md5(good).hexdigest())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)

    def test_errors(self) -> None:
        for path, body, status, message in (
            ("/p/batch", b"", 400, "the body lists no hashes or URLs"),
            ("/p/batch", b"\nnot a url\n", 400,
             "line 2: not a URL or a 32-hex hash: 'not a url'"),
            ("/p/batch?outputs=w0.jpg", b"http://s/photo.jpg", 400,
             "output 'w0.jpg': width must be at least 1"),
            ("/P/batch", b"http://s/photo.jpg", 404, "unknown namespace 'P'"),
        ):  # fmt: skip
            self.assertEqual(
                self.app.json("POST", path, data=body), (status, {"error": message})
            )
        for path in (
            "/p/batch/not-a-uuid",
            "/p/batch/6f1c1d3e-4a8b-4c2d-9e0f-1a2b3c4d5e6f",
        ):
            self.assertEqual(
                self.app.json("GET", path), (404, {"error": "unknown batch"})
            )


def missing(n: int) -> bytes:
    """``n`` hashes the store does not hold: items that fail at once."""
    return b"".join(b"%032x\n" % i for i in range(1, n + 1))


class BatchCostTests(SynchronousTestCase):
    """A batch's own cost: how often its state is written, and where its
    JSON is made; the caps on what one client may start."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = AppHarness(self, clock=self.clock)
        self.writes: list[int] = []
        put = self.app.local.put

        async def counting(key: str, data: bytes, *args: Any, **kw: Any) -> Any:
            if key.endswith("/state.json"):
                self.writes.append(len(data))
            return await put(key, data, *args, **kw)

        self.patch(self.app.local, "put", counting)
        self.pending: list[Deferred[Any]] = []
        self.addCleanup(self.release)

    def held(self, *args: Any, **kw: Any) -> Deferred[Any]:
        """An item that waits until `release`."""
        self.pending.append(Deferred())
        return self.pending[-1]

    def release(self) -> None:
        while self.pending:
            self.pending.pop(0).callback({"hash": "0" * 32, "width": 1, "height": 1})
        self.app.flush()

    def test_state_is_not_rewritten_after_every_item(self) -> None:
        """300 items that fail at once: the state is written when the job
        starts, after its first item and when it ends, not 300 times
        (before: 302 writes, each of the whole state)."""
        code, job = self.app.json("POST", "/p/batch", data=missing(300))
        self.assertEqual(code, 202)
        code, report = self.app.json("GET", f"/p/batch/{job['job_id']}")
        self.assertEqual((code, report["failed"]), (200, 300))
        self.assertEqual(len(self.writes), 3)

    def test_a_long_job_checkpoints_at_a_bounded_rate(self) -> None:
        """Items of one second each: one checkpoint per CHECKPOINT_SECONDS,
        and what a restart would find is every item up to the last one."""

        async def one_second(namespace: str, **kw: Any) -> Any:
            self.clock.advance(1)
            raise NotFound("not in the store")

        self.patch(self.app.images, "process_item", one_second)
        code, job = self.app.json("POST", "/p/batch", data=missing(60))
        self.assertEqual(code, 202)
        # Started, the first item, every CHECKPOINT_SECONDS of the 60 s, done.
        expected = 1 + 1 + 60 // int(batches.CHECKPOINT_SECONDS) + 1
        self.assertIn(len(self.writes), (expected - 1, expected))
        stored = self.app.local.path(batch_key("p", job["job_id"], "state.json"))
        with open(stored) as f:
            self.assertEqual(len(json.load(f)["results"]), 60)

    def test_a_large_state_is_written_less_often(self) -> None:
        self.patch(batches, "CHECKPOINT_BYTES_PER_SECOND", 1000)

        async def one_second(namespace: str, **kw: Any) -> Any:
            self.clock.advance(1)
            raise NotFound("x" * 990)  # each result about 1 kB of state

        self.patch(self.app.images, "process_item", one_second)
        self.app.json("POST", "/p/batch", data=missing(100))
        checkpoints, final = self.writes[1:-1], self.writes[-1]
        # A state of n kB waits n seconds for the next write, while it grows
        # by 1 kB a second: each checkpoint about twice the last, so all of
        # them together about the final state's size, not 20 of 5 s each.
        self.assertEqual(len(checkpoints), 5)
        self.assertLess(sum(checkpoints), 1.1 * final)

    def test_json_is_made_off_the_reactor(self) -> None:
        inside: list[bool] = [False]
        encoded: list[bool] = []

        def runner(f: Any, *args: Any) -> Deferred[Any]:
            inside[0] = True
            try:
                return synchronous(f, *args)
            finally:
                inside[0] = False

        dumps = json.dumps

        def watched(*args: Any, **kw: Any) -> str:
            encoded.append(inside[0])
            return dumps(*args, **kw)

        self.app.batches = Batches(
            self.app.images, self.app.storage, clock=self.clock, run=runner
        )
        self.patch(batches.json, "dumps", watched)
        job_id = self.successResultOf(
            Deferred.fromCoroutine(
                self.app.batches.create("p", io.BytesIO(missing(3)), None)
            )
        )
        self.patch(batches.json, "dumps", dumps)
        # The job, its first state, after its first item, its final state.
        self.assertEqual(encoded, [True, True, True, True])
        finished, _ = self.successResultOf(
            Deferred.fromCoroutine(self.app.batches.status("p", job_id))
        )
        self.assertTrue(finished)

    def test_a_running_job_is_reported_from_memory(self) -> None:
        self.patch(self.app.images, "process_item", self.held)
        reads: list[str] = []
        get = self.app.local.get

        async def counting(key: str) -> Any:
            reads.append(key)
            return await get(key)

        self.patch(self.app.local, "get", counting)
        _, job = self.app.json("POST", "/p/batch", data=missing(2))
        for _ in range(3):
            code, report = self.app.json("GET", f"/p/batch/{job['job_id']}")
            self.assertEqual((code, report["total"], report["done"]), (202, 2, 0))
        self.assertEqual(reads, [])
        self.assertEqual(
            self.app.json("GET", f"/q/batch/{job['job_id']}"),
            (404, {"error": "unknown batch"}),
        )

    def test_caps(self) -> None:
        self.patch(batches, "MAX_ITEMS", 3)
        self.patch(batches, "MAX_BODY_BYTES", 200)
        self.patch(batches, "MAX_RUNNING_PER_NAMESPACE", 2)
        self.patch(batches, "MAX_RUNNING", 3)
        self.assertEqual(
            self.app.json("POST", "/p/batch", data=missing(4)),
            (400, {"error": "at most 3 items per batch; split the list into "
                            "several batches"}),
        )  # fmt: skip
        self.assertEqual(
            self.app.json("POST", "/p/batch", data=b"\n" * 150 + missing(2)),
            (413, {"error": "a batch body may have at most 200 bytes; split the "
                            "list into several batches"}),
        )  # fmt: skip
        self.patch(self.app.images, "process_item", self.held)
        for namespace in ("p", "p", "q"):
            code, _ = self.app.json("POST", f"/{namespace}/batch", data=missing(1))
            self.assertEqual(code, 202)
        self.assertEqual(
            self.app.json("POST", "/p/batch", data=missing(1)),
            (429, {"error": "2 batches are running in namespace 'p', the most at "
                            "once; wait for one to finish (GET its "
                            "/batch/{job_id} until it answers 200) and try again"}),
        )  # fmt: skip
        self.assertEqual(
            self.app.json("POST", "/r/batch", data=missing(1)),
            (429, {"error": "3 batches are running on this server, the most at "
                            "once; try again when one has finished"}),
        )  # fmt: skip
        self.release()
        self.app.flush()
        code, _ = self.app.json("POST", "/p/batch", data=missing(1))
        self.assertEqual(code, 202)
