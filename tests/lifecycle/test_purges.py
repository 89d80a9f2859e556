"""Purge markers: one process's purge reaches the others (Clock, real disk)."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from imageserver.errors import Stopping, StorageUnavailable
from imageserver.lifecycle.purges import FOLDER, PurgeLog, image_of
from imageserver.naming import ImageId
from imageserver.storage.local import LocalStorage
from imageserver.storage.queue import WriteQueue
from tests.support import synchronous

IMAGE = ImageId("p", "6e0072682e66287b662827da75b244a3")


class PurgeLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000 + 50)  # 50 s into a minute
        self.root = self.mktemp()
        self.shared = LocalStorage(self.root, synchronous)
        self.forgotten: dict[str, list[ImageId]] = {"a": [], "b": []}
        self.a = self.log("a")
        self.b = self.log("b")

    def log(self, name: str, lookback: int = 0) -> PurgeLog:
        async def forget(image: ImageId) -> None:
            self.forgotten.setdefault(name, []).append(image)

        markers = WriteQueue(self.shared, self.clock, 30, name="purges")
        log = PurgeLog(self.clock, self.shared, markers, forget, 5, lookback)
        log.startService()
        self.addCleanup(log.stopService)
        return log

    def markers(self) -> list[str]:
        folder = os.path.join(self.root, FOLDER)
        return sorted(
            os.path.relpath(os.path.join(p, n), folder)
            for p, _, names in os.walk(folder)
            for n in names
        )

    def test_a_purge_is_forgotten_by_the_others_within_an_interval(self) -> None:
        self.a.purged(IMAGE, [])
        self.assertEqual(len(self.markers()), 1)
        (marker,) = self.markers()
        self.assertEqual(image_of(marker.split("/")[1]), (self.a.process, IMAGE))
        self.clock.advance(5)
        self.assertEqual(self.forgotten, {"a": [], "b": [IMAGE]})
        self.clock.advance(5)  # once only
        self.assertEqual(self.forgotten["b"], [IMAGE])

    def test_a_purge_at_the_end_of_a_minute_is_seen_in_the_next(self) -> None:
        self.clock.advance(9.9)  # 59.9 s
        self.a.purged(IMAGE, [])
        self.clock.advance(0.2)  # the checks now run in the next minute
        self.clock.advance(5)
        self.assertEqual(self.forgotten["b"], [IMAGE])

    def test_a_process_started_later_reads_back_its_lookback(self) -> None:
        self.a.purged(IMAGE, [])
        self.clock.advance(600)
        late = self.log("late", lookback=30)
        self.assertEqual(late.forgotten, 1)
        self.assertEqual(self.log("later", lookback=0).forgotten, 0)

    def test_old_marker_folders_are_deleted(self) -> None:
        self.a.purged(IMAGE, [])
        self.assertEqual(len(self.markers()), 1)
        for _ in range(3 * 12):
            self.clock.advance(5)
        self.assertEqual(self.markers(), [])

    def test_a_failing_check_is_logged_and_the_next_one_runs(self) -> None:
        calls = []

        async def broken(image: ImageId) -> None:
            calls.append(image)
            raise RuntimeError("a bug in forgetting")

        markers = WriteQueue(self.shared, self.clock, 30, name="purges")
        log = PurgeLog(self.clock, self.shared, markers, broken, 5)
        log.startService()
        self.addCleanup(log.stopService)
        listing = self.shared.list

        async def unavailable(folder: str) -> list[str]:
            raise StorageUnavailable("the storage cannot be used right now")

        self.patch(self.shared, "list", unavailable)
        self.a.purged(IMAGE, [])
        self.clock.advance(5)  # the storage fails: a warning
        self.assertEqual(calls, [])
        self.patch(self.shared, "list", listing)
        self.clock.advance(5)  # the forgetting fails: logged, once
        self.assertEqual(calls, [IMAGE])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(5)
        self.assertEqual(calls, [IMAGE])
        other = ImageId("p", "0" * 32)
        self.a.purged(other, [])
        self.clock.advance(5)  # and the checks go on
        self.assertEqual(calls, [IMAGE, other])
        self.flushLoggedErrors(RuntimeError)

    def test_a_check_under_way_when_the_server_stops_ends_quietly(self) -> None:
        # The pools stop before the check's storage call comes back (CI saw a
        # worker log a traceback for it): nothing is wrong, nothing is logged.
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        async def stopped(folder: str) -> list[str]:
            raise Stopping("the server is stopping")

        self.patch(self.shared, "list", stopped)
        self.patch(self.shared, "delete_prefix", stopped)
        self.a.purged(IMAGE, [])
        self.clock.advance(5)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(
            [e for e in events if e.get("log_namespace", "").endswith("purges")], []
        )

    def test_storage_trouble_while_forgetting_is_tried_again(self) -> None:
        attempts = []

        async def flaky(image: ImageId) -> None:
            attempts.append(image)
            if len(attempts) == 1:
                raise StorageUnavailable("the disk cache cannot be used right now")

        markers = WriteQueue(self.shared, self.clock, 30, name="purges")
        log = PurgeLog(self.clock, self.shared, markers, flaky, 5)
        log.startService()
        self.addCleanup(log.stopService)
        self.a.purged(IMAGE, [])
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(attempts, [IMAGE, IMAGE])
        self.assertEqual(log.forgotten, 1)

    def test_other_names_are_ignored(self) -> None:
        self.assertIsNone(image_of("notes.txt"))
        self.assertIsNone(image_of("a.b.c"))

    def test_a_deleted_name_is_forgotten_with_its_folder(self) -> None:
        self.a.deleted(IMAGE, [IMAGE.key("notes.txt")])
        self.clock.advance(5)
        self.assertEqual(self.forgotten["b"], [IMAGE])
