"""WriteBehind over real local storage whose disk work is held by a gate."""

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from imageserver.metrics.events import Events
from imageserver.storage import Storage, etag_of
from imageserver.storage.behind import WriteBehind
from imageserver.storage.local import LocalStorage
from imageserver.storage.queue import WriteQueue
from tests.storage_contract import FOLDER, KEY, StorageContract
from tests.support import Gate, block_writes, sample, synchronous

DATA = b"rendered jpeg bytes"


class WriteBehindContractTests(StorageContract, SynchronousTestCase):
    """With writes that land at once, it is a Storage like any other."""

    def make_storage(self) -> Storage:
        disk = LocalStorage(self.mktemp(), synchronous)
        return WriteBehind(disk, WriteQueue(disk, Clock(), 30, name="behind"))


class WriteBehindTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gate = Gate()
        self.disk = LocalStorage(self.mktemp(), self.gate)
        self.clock = Clock()
        self.events = Events()
        self.queue = WriteQueue(
            self.disk, self.clock, 30, name="behind", events=self.events
        )
        self.storage = WriteBehind(self.disk, self.queue)

    def run_(self, coroutine: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(coroutine)

    def on_disk(self, key: str) -> bytes | None:
        stored = self.successResultOf(
            self.run_(LocalStorage(self.disk.root, synchronous).get(key))
        )
        return None if stored is None else stored.data

    def test_a_non_durable_write_answers_before_it_lands(self) -> None:
        put = self.run_(
            self.storage.put(KEY, DATA, "image/jpeg", durable=False, etag=etag_of(DATA))
        )
        stored = self.successResultOf(put)
        self.assertEqual((stored.data, stored.etag), (DATA, etag_of(DATA)))
        self.assertIsNone(self.on_disk(KEY))
        self.assertEqual(self.queue.pending, 1)
        self.assertEqual(
            sample(
                self.events, "imageserver_background_writes_pending", queue="behind"
            ),
            1,
        )
        # Readable meanwhile, from memory: no disk work is asked for.
        self.assertIs(self.successResultOf(self.run_(self.storage.get(KEY))), stored)
        self.assertTrue(self.successResultOf(self.run_(self.storage.exists(KEY))))
        self.assertEqual(self.gate.calls, ["_write"])

        self.gate.release()
        self.assertEqual(self.on_disk(KEY), DATA)
        self.assertEqual(self.queue.pending, 0)
        self.assertEqual(
            sample(
                self.events,
                "imageserver_background_writes_total",
                queue="behind",
                outcome="written",
            ),
            1,
        )
        self.assertEqual(
            sample(
                self.events, "imageserver_background_writes_pending", queue="behind"
            ),
            0,
        )

    def test_a_pending_write_is_listed_with_its_folder(self) -> None:
        self.run_(
            self.storage.put(
                f"{FOLDER}/w1.jpg", DATA, "image/jpeg", durable=False, etag="e"
            )
        )
        self.run_(
            self.storage.put(
                f"{FOLDER}/sub/w2.jpg", DATA, "image/jpeg", durable=False, etag="e"
            )
        )
        self.run_(
            self.storage.put(
                f"{FOLDER}0/w3.jpg", DATA, "image/jpeg", durable=False, etag="e"
            )
        )
        listing = self.run_(self.storage.list(FOLDER))
        self.gate.release()
        self.assertEqual(self.successResultOf(listing), ["w1.jpg"])

    def test_durable_writes_and_writes_without_an_etag_wait(self) -> None:
        for kwargs in ({"durable": True, "etag": "e"}, {"durable": False}):
            put = self.run_(self.storage.put(KEY, DATA, "image/jpeg", **kwargs))
            self.assertNoResult(put)
            self.gate.release()
            self.assertEqual(self.successResultOf(put).data, DATA)
        self.assertEqual(self.queue.pending, 0)

    def test_a_durable_write_lands_after_the_pending_one_of_its_key(self) -> None:
        self.run_(self.storage.put(KEY, b"old", "image/jpeg", durable=False, etag="e"))
        durable = self.run_(self.storage.put(KEY, b"new", "image/jpeg"))
        self.gate.release_first()  # the old write lands...
        self.assertNoResult(durable)
        self.gate.release()  # ...then the durable one
        self.successResultOf(durable)
        self.assertEqual(self.on_disk(KEY), b"new")

    def test_a_newer_version_replaces_one_on_its_way(self) -> None:
        self.run_(
            self.storage.put(KEY, b"first", "image/jpeg", durable=False, etag="1")
        )
        self.run_(
            self.storage.put(KEY, b"second", "image/jpeg", durable=False, etag="2")
        )
        self.assertEqual(
            self.successResultOf(self.run_(self.storage.get(KEY))).data, b"second"
        )
        self.gate.release()
        self.assertEqual(self.on_disk(KEY), b"second")
        self.assertEqual(self.queue.pending, 0)

    def test_delete_waits_for_the_write_on_its_way(self) -> None:
        self.run_(self.storage.put(KEY, DATA, "image/jpeg", durable=False, etag="e"))
        deleted = self.run_(self.storage.delete(KEY))
        self.assertNoResult(deleted)
        self.gate.release()
        self.successResultOf(deleted)
        self.assertIsNone(self.on_disk(KEY))

    def test_a_failed_write_is_logged_and_forgotten(self) -> None:
        block_writes(self.disk.root)  # every attempt fails
        with capturedLogs() as logged:
            self.run_(
                self.storage.put(KEY, DATA, "image/jpeg", durable=False, etag="e")
            )
            self.gate.release()
        self.assertEqual(
            [e["log_format"] for e in logged if e.get("key") == KEY],
            ["{queue}: writing {key} failed ({error}); it will be generated "
             "again when requested"],
        )  # fmt: skip
        self.assertEqual(self.queue.pending, 0)
        got = self.run_(self.storage.get(KEY))  # from the disk again
        self.gate.release()
        self.assertIsNone(self.successResultOf(got))
        self.assertEqual(
            sample(
                self.events,
                "imageserver_background_writes_total",
                queue="behind",
                outcome="failed",
            ),
            1,
        )

    def test_stopping_waits_for_pending_writes(self) -> None:
        self.queue.startService()
        self.run_(self.storage.put(KEY, DATA, "image/jpeg", durable=False, etag="e"))
        stopped = self.queue.stopService()
        self.assertNoResult(stopped)
        self.gate.release()
        self.successResultOf(stopped)
        self.assertEqual(self.on_disk(KEY), DATA)

    def test_stopping_gives_up_after_the_timeout_and_names_what_is_lost(self) -> None:
        self.queue.startService()
        self.run_(self.storage.put(KEY, DATA, "image/jpeg", durable=False, etag="e"))
        logged: list[dict[str, object]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        stopped = self.queue.stopService()
        self.clock.advance(30)
        self.successResultOf(stopped)
        self.assertIn(KEY, [event.get("key") for event in logged])
