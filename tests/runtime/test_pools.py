"""ThreadPoolService: results, failures and the busy count, with real threads."""

import os
import threading

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from imageserver.runtime.pools import ThreadPoolService


class ThreadPoolServiceTests(TestCase):
    def setUp(self) -> None:
        self.pool = ThreadPoolService(reactor, 1, "test-pool")
        self.pool.startService()
        self.addCleanup(self.pool.stopService)

    async def test_result_and_thread(self) -> None:
        name = await self.pool.run(lambda: threading.current_thread().name)
        self.assertIn("test-pool", name)
        self.assertNotEqual(name, threading.current_thread().name)
        self.assertEqual(self.pool.outstanding, 0)

    async def test_exception_becomes_the_failure(self) -> None:
        def boom() -> None:
            raise ValueError("bad pixels")

        with self.assertRaisesRegex(ValueError, "bad pixels"):
            await self.pool.run(boom)
        self.assertEqual(self.pool.outstanding, 0)

    async def test_a_cancelled_job_counts_until_its_thread_is_done(self) -> None:
        release = threading.Event()
        job = self.pool.run(release.wait, 10)
        job.cancel()
        self.failureResultOf(job, CancelledError)
        self.assertEqual(self.pool.outstanding, 1)
        release.set()
        # The late result is dropped quietly; the next job runs after it.
        self.assertEqual(await self.pool.run(lambda: "next"), "next")
        self.assertEqual(self.pool.outstanding, 0)

    async def test_jobs_submitted_before_start_wait_for_it(self) -> None:
        later = ThreadPoolService(reactor, 1, "later-pool")
        job: Deferred[int] = later.run(lambda: 7)
        self.assertNoResult(job)
        later.startService()
        self.addCleanup(later.stopService)
        self.assertEqual(await job, 7)

    async def test_stats_count_the_jobs_waiting_for_a_thread(self) -> None:
        release = threading.Event()
        jobs = [self.pool.run(release.wait, 10) for _ in range(3)]
        stats = self.pool.stats()
        self.assertEqual((stats.size(), stats.queued()), (1, 2))
        release.set()
        for job in jobs:
            await job
        self.assertEqual(stats.queued(), 0)

    async def test_threads_run_nicer_than_the_reactor_by_the_niceness(self) -> None:
        def nice() -> int:
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        niced = ThreadPoolService(reactor, 1, "niced", niceness=10)
        niced.startService()
        self.addCleanup(niced.stopService)
        ours = nice()
        self.assertEqual(await niced.run(nice), min(ours + 10, 19))
        self.assertEqual(await self.pool.run(nice), ours)
        self.assertEqual(nice(), ours)  # the reactor's thread is as it was


async def running(pool: ThreadPoolService, release: threading.Event) -> Deferred[bool]:
    """A job of ``pool`` that has started and waits for ``release``."""
    started: Deferred[None] = Deferred()

    def wait() -> bool:
        reactor.callFromThread(started.callback, None)
        return release.wait(10)

    job = pool.run(wait)
    await started
    return job


class StopTests(TestCase):
    async def test_a_job_running_past_the_deadline_is_logged_and_waited_for(
        self,
    ) -> None:
        from twisted.logger import capturedLogs

        clock = Clock()
        pool = ThreadPoolService(
            reactor, 1, "late-pool", deadline=lambda: 0.05, clock=clock
        )
        pool.startService()
        release = threading.Event()
        job = await running(pool, release)
        with capturedLogs() as logged:
            stopped = pool.stopService()
            clock.advance(0.05)
            self.assertNoResult(stopped)
            warned = [e for e in logged if e.get("pool") == "late-pool"]
            self.assertEqual([e["count"] for e in warned], [1])
            release.set()
            await stopped
        self.assertTrue(await job)

    async def test_a_stop_in_time_logs_nothing(self) -> None:
        from twisted.logger import capturedLogs

        clock = Clock()
        pool = ThreadPoolService(
            reactor, 1, "quick-pool", deadline=lambda: 0.1, clock=clock
        )
        pool.startService()
        self.assertEqual(await pool.run(lambda: 7), 7)
        with capturedLogs() as logged:
            await pool.stopService()
            self.assertEqual(clock.getDelayedCalls(), [])  # cancelled
            clock.advance(1)
        self.assertEqual([e for e in logged if e.get("pool") == "quick-pool"], [])

    async def test_a_stopped_pool_refuses_work_at_once(self) -> None:
        """Twisted's stopped pool drops a job unanswered: whoever waited
        for it would wait for ever."""
        from imageserver.errors import Overloaded

        pool = ThreadPoolService(reactor, 1, "stopped-pool")
        pool.startService()
        await pool.stopService()
        with self.assertRaisesRegex(Overloaded, "stopping"):
            await pool.run(lambda: 7)

    async def test_a_stop_runs_the_running_jobs_not_the_queued_ones(self) -> None:
        """What is queued at a stop has lost its request (answered, or its
        result would not be written): rendering it would only hold the stop
        up, by as long as the queue is."""
        from imageserver.errors import Stopping

        pool = ThreadPoolService(reactor, 1, "draining-pool")
        pool.startService()
        release, ran = threading.Event(), []
        job = await running(pool, release)
        queued = [pool.run(ran.append, n) for n in range(5)]
        stopped = pool.stopService()
        release.set()
        await stopped
        self.assertTrue(await job)
        for job in queued:
            with self.assertRaisesRegex(Stopping, "stopped before this job started"):
                await job
        self.assertEqual(ran, [])
        self.assertEqual(pool.outstanding, 0)
