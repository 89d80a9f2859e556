import os
import subprocess
import sys

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from imageserver.service import OrderedMultiService
from tests import CHECKOUT_DIR

CHECKOUT = CHECKOUT_DIR


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


class OpenFilesLimitTests(SynchronousTestCase):
    def test_the_soft_limit_is_raised_to_the_hard_one(self) -> None:
        script = (
            "import resource\n"
            "from imageserver.service import raise_open_files_limit\n"
            "NOFILE = resource.RLIMIT_NOFILE\n"
            "resource.setrlimit(NOFILE, (64, resource.getrlimit(NOFILE)[1]))\n"
            "print(raise_open_files_limit(), *resource.getrlimit(NOFILE))"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": CHECKOUT},
        )  # fmt: skip
        limit, soft, hard = map(int, result.stdout.split())
        self.assertEqual((limit, soft), (hard, hard))
        self.assertGreater(soft, 64)
