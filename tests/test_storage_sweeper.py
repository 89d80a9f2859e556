import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imageserver.storage.sweeper import STALE_TEMPORARY, CacheSweeper
from tests.support import synchronous

MINUTE = 60.0


class CacheSweeperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.sweeper = CacheSweeper(self.root, 30 * MINUTE, self.clock, synchronous)

    def file(self, relative: str, age: float) -> str:
        """A file last modified ``age`` seconds before the clock's now."""
        path = os.path.join(self.root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x")
        when = self.clock.seconds() - age
        os.utime(path, (when, when))
        return path

    def test_sweeps_every_two_minutes_once_started(self) -> None:
        old = self.file("p/aaa/bbb/ccc/d/w200.jpg", 31 * MINUTE)
        self.sweeper.startService()
        self.addCleanup(self.sweeper.stopService)
        self.assertTrue(os.path.exists(old))
        self.clock.advance(119)
        self.assertTrue(os.path.exists(old))
        self.clock.advance(1)
        self.assertFalse(os.path.exists(old))
        later = self.file("p/aaa/bbb/ccc/e/w200.jpg", 31 * MINUTE)
        self.clock.advance(120)
        self.assertFalse(os.path.exists(later))
        self.assertEqual(self.sweeper.removed, 2)

    def test_removes_old_files_and_keeps_young_ones(self) -> None:
        old = self.file("p/aaa/bbb/ccc/d/original", 31 * MINUTE)
        young = self.file("p/aaa/bbb/ccc/d/w200.jpg", 29 * MINUTE)
        self.assertEqual(self.successResultOf(self.sweeper.sweep()), 1)
        self.assertFalse(os.path.exists(old))
        self.assertTrue(os.path.exists(young))

    def test_prunes_empty_folders_but_not_the_root(self) -> None:
        self.file("p/aaa/bbb/ccc/d/original", 31 * MINUTE)
        self.file("q/aaa/bbb/ccc/d/original", 1)
        self.sweeper.sweep()
        self.assertEqual(os.listdir(self.root), ["q"])
        os.unlink(os.path.join(self.root, "q/aaa/bbb/ccc/d/original"))
        self.sweeper.sweep()
        self.assertEqual(os.listdir(self.root), [])

    def test_writes_in_progress_are_left_alone(self) -> None:
        writing = self.file("p/a/.w200.jpg.x1.tmp", 31 * MINUTE)
        crashed = self.file("p/a/.w300.jpg.x2.tmp", STALE_TEMPORARY + 1)
        self.sweeper.sweep()
        self.assertTrue(os.path.exists(writing))
        self.assertFalse(os.path.exists(crashed))

    def test_missing_root_is_not_an_error(self) -> None:
        self.assertEqual(self.successResultOf(self.sweeper.sweep()), 0)

    def test_stops_with_the_service(self) -> None:
        old = self.file("p/a/original", 31 * MINUTE)
        self.sweeper.startService()
        self.sweeper.stopService()
        self.clock.advance(600)
        self.assertTrue(os.path.exists(old))
