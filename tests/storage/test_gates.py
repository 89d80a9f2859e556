"""The folder gate within a process: work together, a purge alone."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from imageserver.storage.gates import FolderGate

FOLDER = "p/6e0/072/682/e66287b662827da75b244a3"


class FolderGateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gate = FolderGate()

    def enter(self, manager: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(manager.__aenter__())

    def leave(self, manager: Any) -> None:
        self.successResultOf(
            Deferred.fromCoroutine(manager.__aexit__(None, None, None))
        )

    def test_work_passes_together_and_a_purge_waits_for_it(self) -> None:
        first, second = self.gate.storing(FOLDER), self.gate.storing(FOLDER)
        self.successResultOf(self.enter(first))
        self.successResultOf(self.enter(second))
        purge = self.gate.purging(FOLDER)
        purged = self.enter(purge)
        self.assertNoResult(purged)
        # Work arriving while a purge waits waits too: the purge goes first.
        late = self.gate.storing(FOLDER)
        entered = self.enter(late)
        self.leave(first)
        self.assertNoResult(purged)
        self.leave(second)
        self.successResultOf(purged)
        self.assertNoResult(entered)
        self.leave(purge)
        self.successResultOf(entered)
        self.leave(late)
        self.assertFalse(self.gate.busy(FOLDER))

    def test_other_folders_never_wait(self) -> None:
        purge = self.gate.purging(FOLDER)
        self.successResultOf(self.enter(purge))
        other = self.gate.storing(FOLDER + "0")
        self.successResultOf(self.enter(other))
        self.leave(other)
        self.leave(purge)

    def test_a_purge_given_up_while_waiting_lets_the_work_behind_it_go(
        self,
    ) -> None:
        work = self.gate.storing(FOLDER)
        self.successResultOf(self.enter(work))
        purged = self.enter(self.gate.purging(FOLDER))
        late = self.gate.storing(FOLDER)
        entered = self.enter(late)
        purged.cancel()  # its client hung up
        self.failureResultOf(purged, CancelledError)
        self.successResultOf(entered)
        self.leave(late)
        self.leave(work)
        self.assertFalse(self.gate.busy(FOLDER))
