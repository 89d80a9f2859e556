"""HostLocks: flock stripes, taken without blocking a thread, released on exit."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imageserver import hostlocks
from imageserver.errors import StorageUnavailable
from imageserver.hostlocks import HostLocks
from tests.support import synchronous


class HostLocksTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        # Two holders as two workers would be: separate open files, one lock.
        self.first = HostLocks(self.root, synchronous, self.clock)
        self.second = HostLocks(self.root, synchronous, self.clock)

    def hold(self, locks: HostLocks, keys: list[str]) -> tuple[Deferred[Any], Any]:
        """Enter ``holding(keys)``; the Deferred fires once held."""
        manager = locks.holding(keys)
        return Deferred.fromCoroutine(manager.__aenter__()), manager

    def release(self, manager: Any) -> None:
        done = Deferred.fromCoroutine(manager.__aexit__(None, None, None))
        self.successResultOf(done)

    def test_a_held_key_waits_until_released(self) -> None:
        held, manager = self.hold(self.first, ["p/a/w1.jpg"])
        self.successResultOf(held)
        waiting, other = self.hold(self.second, ["p/a/w1.jpg", "p/a/w2.jpg"])
        self.clock.advance(1)
        self.assertNoResult(waiting)
        self.successResultOf(
            Deferred.fromCoroutine(manager.__aexit__(None, None, None))
        )
        self.clock.advance(hostlocks.MAX_RETRY)
        self.successResultOf(waiting)
        self.release(other)

    def test_other_keys_do_not_wait_and_files_stay_few(self) -> None:
        held, _ = self.hold(self.first, ["p/a/w1.jpg"])
        self.successResultOf(held)
        keys = [f"p/b/w{n}.jpg" for n in range(200)]
        free = [
            k for k in keys if hostlocks._stripe(k) != hostlocks._stripe("p/a/w1.jpg")
        ]
        other, _ = self.hold(self.second, free)
        self.successResultOf(other)
        files = os.listdir(os.path.join(self.root, hostlocks.FOLDER))
        self.assertLessEqual(len(files), hostlocks.STRIPES)
        self.assertEqual(
            len(files), len({hostlocks._stripe(k) for k in [*free, "p/a/w1.jpg"]})
        )

    def test_a_lock_folder_that_cannot_be_used_is_storage_trouble(self) -> None:
        os.makedirs(self.root)
        with open(os.path.join(self.root, hostlocks.FOLDER), "w") as f:
            f.write("not a folder")
        held, _ = self.hold(self.first, ["p/a/w1.jpg"])
        self.failureResultOf(held, StorageUnavailable)
