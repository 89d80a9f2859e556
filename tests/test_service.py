from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from imageserver.service import OrderedMultiService


class Recording(Service):
    def __init__(self, name: str, log: list[str], wait: Deferred[None] | None = None):
        self.setName(name)
        self._log = log
        self._wait = wait

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._log.append(self.name)
        return self._wait


class OrderedMultiServiceTests(SynchronousTestCase):
    def test_children_stop_one_after_another_last_first(self) -> None:
        stopped: list[str] = []
        slow: Deferred[None] = Deferred()
        top = OrderedMultiService()
        Recording("pool", stopped).setServiceParent(top)
        Recording("uploads", stopped, wait=slow).setServiceParent(top)
        Recording("port", stopped).setServiceParent(top)
        top.startService()
        done = top.stopService()
        self.assertEqual(stopped, ["port", "uploads"])
        self.assertNoResult(done)
        slow.callback(None)
        self.assertEqual(stopped, ["port", "uploads", "pool"])
        self.successResultOf(done)
