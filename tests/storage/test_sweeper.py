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

    def test_the_workers_lock_files_are_not_the_store_s(self) -> None:
        lock = self.file(".locks/0a1f", STALE_TEMPORARY + 1)
        self.assertEqual(self.successResultOf(self.sweeper.sweep()), 0)
        self.assertTrue(os.path.exists(lock))

    def test_missing_root_is_not_an_error(self) -> None:
        self.assertEqual(self.successResultOf(self.sweeper.sweep()), 0)

    def test_stops_with_the_service(self) -> None:
        old = self.file("p/a/original", 31 * MINUTE)
        self.sweeper.startService()
        self.sweeper.stopService()
        self.clock.advance(600)
        self.assertTrue(os.path.exists(old))


class CrashLeftoverTests(SynchronousTestCase):
    """The local disk alone is the truth: only what a crash left is swept."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.sweeper = CacheSweeper(
            self.root, None, self.clock, synchronous, interval=STALE_TEMPORARY
        )

    file = CacheSweeperTests.file

    def test_an_original_without_info_json_goes_after_an_hour(self) -> None:
        day = 24 * 60 * MINUTE
        orphan = [self.file(f"p/aaa/bbb/ccc/d/{n}", 61 * MINUTE)
                  for n in ("original", "x300.jpg")]  # fmt: skip
        young = self.file("p/aaa/bbb/ccc/e/original", 59 * MINUTE)
        names = ("original", "info.json", "w200.jpg", "notes.txt")
        whole = [self.file(f"p/aaa/bbb/ccc/f/{n}", 365 * day) for n in names]
        stale = self.file("p/aaa/bbb/ccc/f/.w100.jpg.x1.tmp", 61 * MINUTE)
        fresh = self.file("p/aaa/bbb/ccc/f/.w100.jpg.x2.tmp", 1 * MINUTE)
        self.assertEqual(self.successResultOf(self.sweeper.sweep()), 3)
        for path in [*orphan, stale]:
            self.assertFalse(os.path.exists(path), path)
        self.assertFalse(os.path.exists(os.path.dirname(orphan[0])))
        for path in [young, *whole, fresh]:
            self.assertTrue(os.path.exists(path), path)

    def test_sweeps_hourly(self) -> None:
        orphan = self.file("p/aaa/bbb/ccc/d/original", 2 * STALE_TEMPORARY)
        self.sweeper.startService()
        self.addCleanup(self.sweeper.stopService)
        self.clock.advance(STALE_TEMPORARY - 1)
        self.assertTrue(os.path.exists(orphan))
        self.clock.advance(1)
        self.assertFalse(os.path.exists(orphan))

    def test_with_a_remote_store_an_original_alone_is_just_cached(self) -> None:
        sweeper = CacheSweeper(self.root, 30 * MINUTE, self.clock, synchronous)
        cached = self.file("p/aaa/bbb/ccc/d/original", 10 * MINUTE)
        self.assertEqual(self.successResultOf(sweeper.sweep()), 0)
        self.assertTrue(os.path.exists(cached))
