from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from imageserver.storage.flights import Flights


class FlightsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.flights: Flights[str, int] = Flights()
        self.started: list[list[str]] = []
        self.gates: list[Deferred[dict[str, int]]] = []

    async def work(self, keys: list[str]) -> dict[str, int]:
        self.started.append(keys)
        gate: Deferred[dict[str, int]] = Deferred()
        self.gates.append(gate)
        return await gate

    def test_identical_requests_run_once(self) -> None:
        first = self.flights.run(["a"], self.work)["a"]
        second = self.flights.run(["a"], self.work)["a"]
        self.assertEqual(self.started, [["a"]])
        self.gates[0].callback({"a": 7})
        self.assertEqual(
            (self.successResultOf(first), self.successResultOf(second)), (7, 7)
        )

    def test_only_keys_not_running_start_work(self) -> None:
        self.flights.run(["a"], self.work)
        waiting = self.flights.run(["a", "b", "b"], self.work)
        self.assertEqual(self.started, [["a"], ["b"]])
        self.gates[1].callback({"b": 2})
        self.assertEqual(self.successResultOf(waiting["b"]), 2)
        self.assertNoResult(waiting["a"])

    def test_finished_work_is_not_reused(self) -> None:
        self.flights.run(["a"], self.work)
        self.gates[0].callback({"a": 1})
        self.flights.run(["a"], self.work)
        self.assertEqual(self.started, [["a"], ["a"]])

    def test_failure_reaches_every_waiter(self) -> None:
        first = self.flights.run(["a"], self.work)["a"]
        second = self.flights.run(["a"], self.work)["a"]
        self.gates[0].errback(ValueError("broken"))
        self.failureResultOf(first, ValueError)
        self.failureResultOf(second, ValueError)

    def test_cancelling_one_waiter_leaves_the_work_and_others(self) -> None:
        first = self.flights.run(["a"], self.work)["a"]
        second = self.flights.run(["a"], self.work)["a"]
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.assertFalse(self.gates[0].called)
        self.gates[0].callback({"a": 3})
        self.assertEqual(self.successResultOf(second), 3)

    def test_failure_with_nobody_waiting_is_logged(self) -> None:
        waiter = self.flights.run(["a"], self.work)["a"]
        waiter.cancel()
        self.failureResultOf(waiter, CancelledError)
        self.gates[0].errback(ValueError("nobody saw this"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
