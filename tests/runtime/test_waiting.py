from twisted.trial.unittest import SynchronousTestCase

from imageserver.runtime.waiting import WhenIdle


class WhenIdleTests(SynchronousTestCase):
    def test_fires_at_once_when_idle(self) -> None:
        self.successResultOf(WhenIdle(lambda: False).wait())

    def test_fires_when_the_work_drains(self) -> None:
        work = [1, 2]
        idle = WhenIdle(lambda: bool(work))
        first, second = idle.wait(), idle.wait()
        work.pop()
        idle.check()
        self.assertNoResult(first)
        work.pop()
        idle.check()
        self.successResultOf(first)
        self.successResultOf(second)
