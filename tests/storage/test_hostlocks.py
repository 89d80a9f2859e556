"""HostLocks: locked stripes, taken without blocking a thread, released on exit."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imageserver.errors import StorageUnavailable
from imageserver.storage import hostlocks
from imageserver.storage.hostlocks import HostLocks
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
        self.successResultOf(other)  # nobody else held them
        # One file for every key's stripe, opened once by each process.
        files = os.listdir(os.path.join(self.root, hostlocks.FOLDER))
        self.assertEqual(files, [hostlocks.KEYS])

    def test_a_process_shares_its_stripe_until_its_last_holder_leaves(self) -> None:
        key = "p/a/w1.jpg"
        twin = next(
            f"p/a/w{n}.jpg"
            for n in range(2, 100_000)
            if hostlocks._stripe(f"p/a/w{n}.jpg") == hostlocks._stripe(key)
        )
        one, first_holder = self.hold(self.first, [key])
        two, second_holder = self.hold(self.first, [twin])
        self.successResultOf(one)
        self.successResultOf(two)  # its own work does not wait
        other, manager = self.hold(self.second, [twin])
        for holder in (first_holder, second_holder):
            self.clock.advance(1)
            self.assertNoResult(other)
            self.release(holder)
        self.clock.advance(hostlocks.MAX_RETRY)
        self.successResultOf(other)
        self.release(manager)

    def test_a_lock_folder_that_cannot_be_used_is_storage_trouble(self) -> None:
        os.makedirs(self.root)
        with open(os.path.join(self.root, hostlocks.FOLDER), "w") as f:
            f.write("not a folder")
        held, _ = self.hold(self.first, ["p/a/w1.jpg"])
        self.failureResultOf(held, StorageUnavailable)


class FolderLockTests(SynchronousTestCase):
    """Shared by work in any process, exclusive for a purge."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.first = HostLocks(self.root, synchronous, self.clock)
        self.second = HostLocks(self.root, synchronous, self.clock)

    def enter(self, locks: HostLocks, exclusive: bool) -> tuple[Deferred[Any], Any]:
        manager = locks.folder("p/a", exclusive=exclusive)
        return Deferred.fromCoroutine(manager.__aenter__()), manager

    def leave(self, manager: Any) -> None:
        self.successResultOf(
            Deferred.fromCoroutine(manager.__aexit__(None, None, None))
        )

    def test_work_shares_and_a_purge_waits_for_all_of_it(self) -> None:
        a, in_a = self.enter(self.first, exclusive=False)
        b, in_a_too = self.enter(self.first, exclusive=False)
        c, in_b = self.enter(self.second, exclusive=False)
        for d in (a, b, c):
            self.successResultOf(d)
        purge, purging = self.enter(self.second, exclusive=True)
        for manager in (in_a, in_b):
            self.leave(manager)
            self.clock.advance(1)
            self.assertNoResult(purge)  # this process still shares it
        self.leave(in_a_too)
        self.clock.advance(1)
        self.successResultOf(purge)
        # While the purge holds it, work in any process waits.
        work, working = self.enter(self.first, exclusive=False)
        self.clock.advance(1)
        self.assertNoResult(work)
        self.leave(purging)
        self.clock.advance(1)
        self.successResultOf(work)
        self.leave(working)
