"""DELETE of an image or of one name: over the real app, local disk and S3.

The race tests hold renders and background writes with gates and release them
in every order hypothesis can think of around a purge: whatever the order,
nothing of the image is left afterwards, locally or in the bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imageserver.config import Config
from imageserver.errors import InvalidRequest, NotCanonical, NotFound
from imageserver.images import Coordination, Images, RenderPolicy
from imageserver.naming import INFO, ImageId, is_generated
from imageserver.sources.fetcher import SourceFetcher
from imageserver.storage import Storage, similar
from imageserver.storage.behind import WriteBehind
from imageserver.storage.hostlocks import HostLocks
from imageserver.storage.local import LocalStorage
from imageserver.storage.memory import Generations, MemoryCache
from imageserver.storage.queue import WriteQueue
from imageserver.storage.s3 import LazyClient, S3Settings, S3Storage
from imageserver.storage.tiered import TieredStorage
from tests.s3server import CREDENTIALS, shared
from tests.support import AppHarness, Gate, encode, quadrants, sample, synchronous

PHOTO = encode(quadrants((400, 300)))
PHOTO_HASH = hashlib.md5(PHOTO).hexdigest()
IMAGE = ImageId("p", PHOTO_HASH)
FOLDER = "/" + IMAGE.folder


def files_under(root: str) -> list[str]:
    """Every file below ``root`` (hidden ones too), relative to it."""
    return sorted(
        os.path.relpath(os.path.join(parent, name), root)
        for parent, _, names in os.walk(root)
        for name in names
    )


class PurgeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.app = AppHarness(
            self,
            remote=lambda s: MemoryCache(s, 1 << 20, is_generated),
        )
        self.app.upload(PHOTO, query="?outputs=x100.jpg")

    def status(self, method: str, path: str, **kwargs: Any) -> int:
        response, _ = self.app.request(method, path, **kwargs)
        return int(response.code)

    def test_purge_removes_everything_of_the_image(self) -> None:
        self.assertEqual(self.status("GET", f"{FOLDER}/w50.webp"), 200)
        self.assertEqual(self.status("POST", f"{FOLDER}/notes.txt", data=b"hi"), 200)
        response, body = self.app.request("DELETE", FOLDER)
        self.assertEqual((response.code, body), (204, b""))
        for name in ("info.json", "original", "x100.jpg", "w50.webp", "notes.txt"):
            self.assertEqual(self.status("GET", f"{FOLDER}/{name}"), 404, name)
        # Nothing on disk, not even the empty folders of the layout.
        self.assertEqual(files_under(self.app.root), [])
        self.assertEqual(
            sample(self.app.events, "imageserver_deletes_total", what="image"), 1
        )

    def test_the_same_bytes_can_be_uploaded_again(self) -> None:
        self.assertEqual(self.status("DELETE", FOLDER), 204)
        self.assertEqual(self.app.upload(PHOTO), FOLDER)
        response, _body = self.app.request("GET", f"{FOLDER}/x100.jpg")
        self.assertEqual(response.code, 200)

    def test_a_second_purge_and_a_purge_of_nothing_are_404(self) -> None:
        self.assertEqual(self.status("DELETE", FOLDER), 204)
        code, body = self.app.json("DELETE", FOLDER)
        self.assertEqual((code, body), (404, {"error": "image not found"}))
        other = FOLDER.replace(PHOTO_HASH[9:], "0" * 23)
        self.assertEqual(self.app.json("DELETE", other)[0], 404)

    def test_a_purge_clears_what_an_interrupted_upload_left(self) -> None:
        # An original without info.json: an upload that died half-way.
        os.unlink(os.path.join(self.app.root, *FOLDER.split("/"), "info.json"))
        self.assertEqual(self.status("DELETE", FOLDER), 204)
        self.assertEqual(files_under(self.app.root), [])

    def test_delete_one_variant_and_it_is_made_again(self) -> None:
        path = os.path.join(self.app.root, *FOLDER.split("/"), "x100.jpg")
        self.assertEqual(self.status("GET", f"{FOLDER}/x100.jpg"), 200)  # in memory
        self.assertEqual(self.status("DELETE", f"{FOLDER}/x100.jpg"), 204)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(self.status("GET", f"{FOLDER}/x100.jpg"), 200)
        self.assertTrue(os.path.exists(path))
        self.assertEqual(self.status("GET", f"{FOLDER}/info.json"), 200)

    def test_delete_one_client_file(self) -> None:
        self.assertEqual(self.status("POST", f"{FOLDER}/notes.txt", data=b"hi"), 200)
        self.assertEqual(self.status("DELETE", f"{FOLDER}/notes.txt"), 204)
        self.assertEqual(self.status("GET", f"{FOLDER}/notes.txt"), 404)
        self.assertEqual(self.status("GET", f"{FOLDER}/x100.jpg"), 200)

    def test_another_spelling_deletes_the_variant_it_names(self) -> None:
        self.assertEqual(self.status("DELETE", f"{FOLDER}/x100@1x.jpg"), 204)
        path = os.path.join(self.app.root, *FOLDER.split("/"), "x100.jpg")
        self.assertFalse(os.path.exists(path))

    def test_names_that_cannot_be_deleted_alone(self) -> None:
        cases = {
            "original": (400, "original goes only with the whole image"),
            "info.json": (400, "info.json goes only with the whole image"),
            "w100.auto": (400, "is chosen by Accept, not stored"),
            "w999.jpg": (404, "is not stored"),
            "nothing.txt": (404, "is not stored"),
        }
        for name, (status, message) in cases.items():
            code, body = self.app.json("DELETE", f"{FOLDER}/{name}")
            self.assertEqual(code, status, name)
            self.assertIn(message, body["error"], name)
        self.assertEqual(self.status("GET", f"{FOLDER}/original"), 200)

    def test_a_name_of_a_missing_image_is_404(self) -> None:
        other = FOLDER.replace(PHOTO_HASH[9:], "0" * 23)
        code, body = self.app.json("DELETE", f"{other}/x100.jpg")
        self.assertEqual((code, body), (404, {"error": "image not found"}))


def _s3(bucket: str) -> S3Settings:
    return S3Settings(
        bucket=bucket,
        endpoint_url=shared().url,
        access_key_id=CREDENTIALS["aws_access_key_id"],
        secret_access_key=CREDENTIALS["aws_secret_access_key"],
        max_attempts=1,
    )


class Stack:
    """The server's storage stack with every slow step held by a gate.

    ``processing`` holds renders, ``disk`` the local disk's work and ``s3``
    the bucket's (with a bucket): work is then released in any order.
    """

    def __init__(
        self,
        case: SynchronousTestCase,
        bucket: str | None,
        resweep_after: float | None = None,
    ) -> None:
        self.case = case
        self.clock = Clock()
        self.processing, self.disk, self.s3 = Gate(), Gate(), Gate()
        self.root = case.mktemp()
        self.queues: list[WriteQueue] = []
        local: Storage = LocalStorage(self.root, self.disk)
        self.bucket = bucket
        if bucket is not None:
            settings = _s3(bucket)
            remote = S3Storage(settings, LazyClient(settings), self.s3)
            uploads = WriteQueue(remote, self.clock, 30, name="bucket")
            self.queues.append(uploads)
            local = TieredStorage(local, remote, uploads)
        behind = WriteQueue(local, self.clock, 30, name="behind")
        self.queues.append(behind)
        storage = MemoryCache(WriteBehind(local, behind), 1 << 20, is_generated)
        config = Config(local_base_path=self.root)
        self.images = Images(
            storage=storage,
            sources=SourceFetcher(None, self.clock, 5, 1 << 20),  # type: ignore[arg-type]
            process=self.processing,
            policy=RenderPolicy(config.rules, config.decode_limits),
            coordination=Coordination(resweep_after=resweep_after),
            events=None,
            clock=self.clock,
        )
        self.storage = storage

    def gates(self) -> list[Gate]:
        return [self.processing, self.disk, self.s3]

    def settle(self) -> None:
        """Release everything until no work is held."""
        while any(g.held for g in self.gates()):
            for gate in self.gates():
                gate.release()

    def upload(self) -> None:
        body = _Body(PHOTO)
        d = Deferred.fromCoroutine(self.images.upload("p", body=body))  # type: ignore[arg-type]
        self.settle()
        self.case.successResultOf(d)

    def left(self) -> list[str]:
        """What is left of the image: on the disk and in the bucket."""
        found = files_under(self.root)
        if self.bucket is not None:
            client = shared().client()
            listing = client.list_objects_v2(Bucket=self.bucket, Prefix="p/")
            found += [f"s3:{o['Key']}" for o in listing.get("Contents", ())]
        return found


class _Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def seek(self, offset: int) -> None:
        pass

    def read(self) -> bytes:
        return self.data


#: Steps of a race: start a GET of a new variant, or release one job held by
#: a gate: the oldest, or with "!" the newest (thread pools run jobs at once,
#: so they may end in any order).
STEPS = st.lists(
    st.one_of(
        st.sampled_from(["w10.jpg", "w20.png", "x30.webp", "w40.jpg"]),
        st.sampled_from(["processing", "disk", "s3", "processing!", "disk!", "s3!"]),
    ),
    max_size=16,
)


class PurgeRaceTests(SynchronousTestCase):
    """Renders, background writes and uploads racing a purge never outlive it."""

    def race(self, stack: Stack, before: list[str], after: list[str]) -> None:
        results: list[Deferred[Any]] = []

        def play(steps: list[str]) -> None:
            for step in steps:
                if step.rstrip("!") in ("processing", "disk", "s3"):
                    gate = getattr(stack, step.rstrip("!"))
                    if gate.held:
                        gate.release_at(-1 if step.endswith("!") else 0)
                else:
                    results.append(
                        Deferred.fromCoroutine(stack.images.get(IMAGE, step))
                    )

        play(before)
        purged = Deferred.fromCoroutine(stack.images.purge(IMAGE))
        play(after)
        # The rest in the worst order: the newest first.
        while any(g.held for g in stack.gates()):
            for gate in stack.gates():
                while gate.held:
                    gate.release_at(-1)
        for queue in stack.queues:
            self.successResultOf(queue.wait_idle())
        self.successResultOf(purged)
        self.assertEqual(stack.left(), [])
        for d in results:
            # Served before the purge, or 404 after it: never a failure else.
            d.addErrback(lambda f: f.trap(NotFound))
            self.successResultOf(d)

    @settings(max_examples=60, deadline=None)
    @given(before=STEPS, after=STEPS)
    def test_local_disk(self, before: list[str], after: list[str]) -> None:
        stack = Stack(self, bucket=None)
        stack.upload()
        self.race(stack, before, after)

    @settings(max_examples=20, deadline=None)
    @given(before=STEPS, after=STEPS)
    def test_bucket_and_its_local_cache(
        self, before: list[str], after: list[str]
    ) -> None:
        stack = Stack(self, bucket=shared().new_bucket())
        stack.upload()
        self.race(stack, before, after)

    def test_an_upload_to_the_bucket_on_its_way_is_cancelled(self) -> None:
        stack = Stack(self, bucket=shared().new_bucket())
        stack.upload()
        got = Deferred.fromCoroutine(stack.images.get(IMAGE, "w10.jpg"))

        def upload_held() -> bool:
            return any(args[0].__name__ == "_put" for _, _, args in stack.s3.held)

        while not (got.called and upload_held()):
            next(
                g
                for g in stack.gates()
                if g.held and not (g is stack.s3 and upload_held())
            ).release_first()
        self.successResultOf(got)  # answered; in the local cache; upload held
        purged = Deferred.fromCoroutine(stack.images.purge(IMAGE))
        # The purge's work overtakes the upload held before it.
        while not purged.called:
            next(g for g in stack.gates() if g.held).release_at(-1)
        stack.settle()
        self.successResultOf(purged)
        self.assertEqual(stack.left(), [])

    def test_purge_of_an_image_being_uploaded(self) -> None:
        stack = Stack(self, bucket=shared().new_bucket())
        body = _Body(PHOTO)
        upload = Deferred.fromCoroutine(stack.images.upload("p", body=body))  # type: ignore[arg-type]
        while "_rendered" not in stack.processing.calls:
            # Read, hashed, looked up: then its decode is held.
            next(g for g in stack.gates() if g.held).release_first()
        purge = Deferred.fromCoroutine(stack.images.purge(IMAGE))
        stack.settle()
        # The upload finished first (the purge waited for it), then went.
        info = json.loads(self.successResultOf(upload))
        self.assertEqual(info["hash"], PHOTO_HASH)
        self.assertEqual(
            self.successResultOf(purge),
            [IMAGE.key("info.json"), IMAGE.key("original")],
        )
        self.assertEqual(stack.left(), [])
        got = Deferred.fromCoroutine(stack.images.get(IMAGE, INFO))
        stack.settle()
        self.failureResultOf(got, NotFound)


class ResweepTests(SynchronousTestCase):
    """What another instance's render stores after a purge is swept later."""

    def stack(self) -> Stack:
        stack = Stack(self, bucket=None, resweep_after=90)
        stack.upload()
        purged = Deferred.fromCoroutine(stack.images.purge(IMAGE))
        stack.settle()
        self.successResultOf(purged)
        return stack

    def put(self, stack: Stack, name: str) -> None:
        put = Deferred.fromCoroutine(
            stack.storage.put(IMAGE.key(name), b"late", "image/jpeg")
        )
        stack.settle()
        self.successResultOf(put)

    def test_a_late_variant_is_removed(self) -> None:
        stack = self.stack()
        self.put(stack, "w10.jpg")  # as another instance's render would
        stack.clock.advance(89)
        self.assertEqual(len(stack.left()), 1)
        stack.clock.advance(1)
        stack.settle()
        self.assertEqual(stack.left(), [])

    def test_an_image_uploaded_again_is_left_alone(self) -> None:
        stack = self.stack()
        stack.upload()
        stack.clock.advance(90)
        stack.settle()
        self.assertEqual(
            [
                name.rpartition("/")[2]
                for name in stack.left()
                if not name.startswith(f"{similar.FOLDER}/")
            ],
            ["info.json", "original"],
        )


SIZES = st.one_of(
    st.integers(1, 500).map(lambda n: f"w{n}"),
    st.integers(1, 500).map(lambda n: f"x{n}"),
    st.tuples(st.integers(1, 500), st.integers(1, 500)).map(lambda s: f"{s[0]}x{s[1]}"),
)
OPTIONS = st.lists(
    st.sampled_from(["fit", "gray", "flip", "flop", "q50", "r90", "trim", "noup"]),
    unique=True,
    max_size=4,
).flatmap(st.permutations)


class DeleteNameSweepTests(SynchronousTestCase):
    """Any spelling of any variant deletes its canonical file and no other."""

    def setUp(self) -> None:
        self.app = AppHarness(self)
        self.app.upload(PHOTO)

    def on_disk(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.app.root, *FOLDER.split("/"), name))

    @settings(max_examples=150, deadline=None)
    @given(
        size=SIZES,
        options=OPTIONS,
        dpr=st.sampled_from(["", "@1x", "@2x"]),
        ext=st.sampled_from(["jpg", "png", "webp"]),
    )
    def test_any_spelling(
        self, size: str, options: list[str], dpr: str, ext: str
    ) -> None:
        name = "-".join([size, *options]) + f"{dpr}.{ext}"
        try:
            variant = self.app.images.rules.parse(name)
        except NotCanonical as e:
            # Its spelling may be a density's (x1@2x.jpg): stored as x2.jpg.
            variant = self.app.images.rules.parse(e.canonical)
            assert variant is not None
            canonical = variant.name
        except (InvalidRequest, NotFound):
            code, _ = self.app.json("DELETE", f"{FOLDER}/{name}")
            self.assertIn(code, (400, 404), name)
            return
        else:
            assert variant is not None
            canonical = variant.name
        neighbour = "w1.gif"
        for stored in (canonical, neighbour):
            put = self.app.local.put(IMAGE.key(stored), b"x", "image/jpeg")
            self.successResultOf(Deferred.fromCoroutine(put))
        response, _ = self.app.request("DELETE", f"{FOLDER}/{name}")
        self.assertEqual(response.code, 204, name)
        self.assertFalse(self.on_disk(canonical), name)
        self.assertTrue(self.on_disk(neighbour), name)
        self.assertEqual(self.app.json("DELETE", f"{FOLDER}/{name}")[0], 404)


class HostWorkerTests(SynchronousTestCase):
    """Two workers of one host, as the server builds them (one store, host
    locks, shared purge generations), in one process with held renders: a
    render that began on one worker before the other's purge, and finished
    after the purge was asked for, neither stays on disk nor in memory."""

    def worker(self, root: str, clock: Clock) -> tuple[Images, Gate]:
        processing = Gate()
        generations = Generations(os.path.join(root, ".locks", "generations"))
        generations.open()
        config = Config(local_base_path=root)
        images = Images(
            storage=MemoryCache(
                LocalStorage(root, synchronous), 1 << 20, is_generated,
                generations=generations,
            ),
            sources=SourceFetcher(None, clock, 5, 1 << 20),  # type: ignore[arg-type]
            process=processing,
            policy=RenderPolicy(config.rules, config.decode_limits),
            coordination=Coordination(host_locks=HostLocks(root, synchronous, clock)),
            clock=clock,
        )  # fmt: skip
        return images, processing

    def test_a_render_under_way_on_the_other_worker(self) -> None:
        root, clock = self.mktemp(), Clock()
        a, a_processing = self.worker(root, clock)
        b, b_processing = self.worker(root, clock)

        def run(coroutine: Any) -> Deferred[Any]:
            d = Deferred.fromCoroutine(coroutine)
            for _ in range(50):  # renders and lock retries, until it is done
                a_processing.release()
                b_processing.release()
                clock.advance(0.1)
            return d

        run(a.upload("p", body=_Body(PHOTO)))  # type: ignore[arg-type]
        for name in ("original", INFO, "w64.jpg"):  # kept in b's memory
            self.successResultOf(run(b.get(IMAGE, name)))
        render = Deferred.fromCoroutine(b.get(IMAGE, "w10.jpg"))  # held
        self.assertEqual(len(b_processing.held), 1)
        purge = Deferred.fromCoroutine(a.purge(IMAGE))
        clock.advance(1)
        self.assertNoResult(purge)  # waits for b's render to store
        b_processing.release()
        self.successResultOf(render)
        for _ in range(20):
            clock.advance(0.1)
        self.successResultOf(purge)
        self.assertEqual(files_under(os.path.join(root, "p")), [])
        # b remembers nothing of it, and stores nothing into it.
        for name in ("original", INFO, "w64.jpg", "w10.jpg", "w20.png"):
            self.failureResultOf(run(b.get(IMAGE, name)), NotFound)
        self.failureResultOf(
            run(b.put_file(IMAGE, "notes.txt", _Body(b"hi"))),  # type: ignore[arg-type]
            NotFound,
        )
        self.assertEqual(files_under(os.path.join(root, "p")), [])
