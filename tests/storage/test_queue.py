"""The write queue's cancel: what a purge relies on, over real local storage."""

from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imageserver.metrics.events import Events
from imageserver.storage import StoredObject
from imageserver.storage.local import LocalStorage
from imageserver.storage.queue import WriteQueue
from tests.storage_contract import FOLDER, KEY
from tests.support import Gate, block_writes, sample, synchronous


def stored(data: bytes) -> StoredObject:
    return StoredObject(data, "image/jpeg", 0.0, '"e"')


class WriteQueueCancelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gate = Gate()
        self.disk = LocalStorage(self.mktemp(), self.gate)
        self.clock = Clock()
        self.events = Events()
        self.queue = WriteQueue(
            self.disk,
            self.clock,
            30,
            name="bucket",
            retry=backoffPolicy(1.0, 60.0, 2.0, jitter=lambda: 0.0),
            events=self.events,
        )

    def on_disk(self, key: str) -> bytes | None:
        got = Deferred.fromCoroutine(LocalStorage(self.disk.root, synchronous).get(key))
        found = self.successResultOf(got)
        return None if found is None else found.data

    def cancel(self, prefix: str) -> Deferred[Any]:
        return Deferred.fromCoroutine(self.queue.cancel(prefix))

    def test_cancel_waits_for_the_write_in_flight_and_drops_the_newer_one(
        self,
    ) -> None:
        self.queue.submit(KEY, stored(b"first"))  # in flight, held by the gate
        self.queue.submit(KEY, stored(b"second"))  # queued behind it
        cancelled = self.cancel(FOLDER)
        self.assertNoResult(cancelled)
        self.assertIsNone(self.queue.peek(KEY))
        self.gate.release()
        self.successResultOf(cancelled)
        # The write in flight landed; the queued one never did.
        self.assertEqual(self.on_disk(KEY), b"first")
        self.assertEqual(self.gate.calls, ["_write"])
        self.assertEqual(self.queue.pending, 0)
        self.assertEqual(
            sample(
                self.events,
                "imageserver_background_writes_total",
                queue="bucket",
                outcome="cancelled",
            ),
            1,
        )

    def test_cancel_ends_a_write_waiting_to_retry(self) -> None:
        block_writes(self.disk.root)  # every attempt fails
        self.queue.submit(KEY, stored(b"x"))
        self.gate.release()  # the first attempt fails; a retry waits 1 s
        self.assertEqual(self.queue.pending, 1)
        self.successResultOf(self.cancel(FOLDER))
        self.clock.advance(3600)
        self.assertEqual(self.gate.calls, ["_write"])  # never tried again
        self.successResultOf(self.queue.wait_idle())
        self.flushLoggedErrors()

    def test_cancel_leaves_other_keys_alone(self) -> None:
        other = f"{FOLDER}0/w200.jpg"
        self.queue.submit(KEY, stored(b"x"))
        self.queue.submit(other, stored(b"kept"))
        cancelled = self.cancel(KEY)
        self.gate.release()
        self.successResultOf(cancelled)
        self.assertEqual(self.on_disk(other), b"kept")

    def test_cancel_of_nothing_returns_at_once(self) -> None:
        self.successResultOf(self.cancel(FOLDER))

    def test_a_write_that_fails_after_its_cancel_ends_quietly(self) -> None:
        queue = WriteQueue(self.disk, self.clock, 30, name="behind", events=self.events)
        block_writes(self.disk.root)  # every attempt fails
        queue.submit(KEY, stored(b"x"))
        cancelled = Deferred.fromCoroutine(queue.cancel(FOLDER))
        self.gate.release()  # the write fails after it was cancelled
        self.successResultOf(cancelled)
        self.successResultOf(queue.wait_idle())
        self.assertEqual(queue.pending, 0)
        self.flushLoggedErrors()

    def test_a_write_after_the_shutdown_s_writes_is_said_not_lost(self) -> None:
        """A render that outlasted the shutdown's time answers; its write
        comes after the queue's drain: logged as an error and counted, not
        left waiting on pools that are gone."""
        from twisted.logger import capturedLogs

        self.queue.startService()
        self.successResultOf(self.queue.stopService())
        with capturedLogs() as logged:
            self.queue.submit(KEY, stored(b"late"))
        self.assertEqual(self.queue.pending, 0)
        self.assertEqual(self.gate.calls, [])
        self.assertIsNone(self.on_disk(KEY))
        [error] = [e for e in logged if e.get("key") == KEY]
        self.assertIn("after the shutdown's writes", error["log_format"])
        self.assertEqual(
            sample(self.events, "imageserver_background_writes_total",
                   queue="bucket", outcome="failed"), 1
        )  # fmt: skip
