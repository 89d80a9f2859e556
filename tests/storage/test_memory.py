import errno
import os
import signal
import subprocess
import sys
from typing import Any
from unittest import SkipTest

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from imageserver.naming import is_generated
from imageserver.storage.local import LocalStorage
from imageserver.storage.memory import Generations, MemoryCache
from tests.storage_contract import FOLDER, StorageContract
from tests.support import Gate, synchronous

VARIANT = f"{FOLDER}/w200.jpg"


class MemoryCacheTests(StorageContract, SynchronousTestCase):
    def make_storage(self, max_bytes: int = 1000) -> MemoryCache:
        self.root = self.mktemp()
        self.backend = LocalStorage(self.root, synchronous)
        return MemoryCache(self.backend, max_bytes, is_generated, max_object_bytes=400)

    def on_disk(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def test_hot_objects_are_served_from_memory(self) -> None:
        cache = self.make_storage()
        self.result(cache.put(VARIANT, b"v" * 100, "image/jpeg"))
        os.unlink(self.on_disk(VARIANT))  # behind the cache's back
        self.assertEqual(self.result(cache.get(VARIANT)).data, b"v" * 100)
        self.assertTrue(self.result(cache.exists(VARIANT)))
        self.assertEqual(cache.size, 100)

    def test_objects_read_from_the_backend_are_kept(self) -> None:
        cache = self.make_storage()
        self.result(self.backend.put(VARIANT, b"disk", "image/jpeg"))
        self.assertEqual(self.result(cache.get(VARIANT)).data, b"disk")
        os.unlink(self.on_disk(VARIANT))
        self.assertEqual(self.result(cache.get(VARIANT)).data, b"disk")

    def test_client_files_are_never_cached(self) -> None:
        cache = self.make_storage()
        key = f"{FOLDER}/notes.txt"
        self.result(cache.put(key, b"one", "text/plain"))
        self.result(self.backend.put(key, b"two", "text/plain"))  # another instance
        self.assertEqual(self.result(cache.get(key)).data, b"two")
        self.assertEqual(cache.size, 0)

    def test_least_recently_used_go_first(self) -> None:
        cache = self.make_storage(max_bytes=1000)
        keys = [f"{FOLDER}/w{n}.jpg" for n in range(1, 5)]
        for key in keys:
            self.result(cache.put(key, b"x" * 300, "image/jpeg"))
        self.assertEqual(cache.size, 900)  # the first was evicted at the fourth
        self.result(cache.get(keys[1]))  # now most recently used
        self.result(cache.put(f"{FOLDER}/w9.jpg", b"x" * 300, "image/jpeg"))
        for key in keys:
            os.unlink(self.on_disk(key))
        held = [key for key in keys if self.result(cache.get(key)) is not None]
        self.assertEqual(held, [keys[1], keys[3]])
        self.assertLessEqual(cache.size, 1000)

    def test_large_objects_bypass_the_cache(self) -> None:
        cache = self.make_storage()
        self.result(cache.put(VARIANT, b"x" * 401, "image/jpeg"))
        self.assertEqual(cache.size, 0)

    def test_delete_evicts(self) -> None:
        cache = self.make_storage()
        self.result(cache.put(VARIANT, b"x", "image/jpeg"))
        self.result(cache.delete(VARIANT))
        self.assertIsNone(self.result(cache.get(VARIANT)))
        self.assertEqual(cache.size, 0)

    def test_failed_write_keeps_nothing(self) -> None:
        cache = self.make_storage()
        self.result(cache.put(VARIANT, b"old", "image/jpeg"))
        d = Deferred.fromCoroutine(cache.put(VARIANT, "not bytes", "image/jpeg"))  # type: ignore[arg-type]
        self.failureResultOf(d, TypeError)
        self.assertEqual(cache.size, 0)
        self.assertEqual(self.result(cache.get(VARIANT)).data, b"old")


class ReadsDuringDeletesTests(SynchronousTestCase):
    """A read on its way to the backend while its folder is forgotten or
    deleted may hold the deleted bytes: it is answered, not kept."""

    def test_a_read_in_flight_is_not_kept(self) -> None:
        root = self.mktemp()
        disk = LocalStorage(root, synchronous)
        Deferred.fromCoroutine(disk.put(VARIANT, b"old", "image/jpeg"))
        gate = Gate()
        cache = MemoryCache(LocalStorage(root, gate), 1000, is_generated)
        for forget in (
            lambda: cache.drop_prefix(FOLDER),
            lambda: Deferred.fromCoroutine(cache.delete_prefix(FOLDER)),
        ):
            read = Deferred.fromCoroutine(cache.get(VARIANT))
            forget()
            gate.release_first()  # the read ends after the forgetting began
            self.assertEqual(self.successResultOf(read).data, b"old")
            self.assertEqual(cache.size, 0)
            gate.release()
        # With nothing deleted meanwhile, a read is kept as before.
        Deferred.fromCoroutine(disk.put(VARIANT, b"new", "image/jpeg"))
        read = Deferred.fromCoroutine(cache.get(VARIANT))
        gate.release()
        self.assertEqual(self.successResultOf(read).data, b"new")
        self.assertEqual(cache.size, 3)


class HostGenerationsTests(SynchronousTestCase):
    """Two processes' caches (here two caches mapping one generations file,
    as a host's workers do): a delete through one is the other's next miss,
    and a read the other had on its way meanwhile is not kept."""

    def caches(self) -> tuple[MemoryCache, MemoryCache, Gate]:
        root = self.root = self.mktemp()
        path = os.path.join(root, ".locks", "generations")
        gate = Gate()
        first, second = Generations(path), Generations(path)
        first.open()
        second.open()
        return (
            MemoryCache(LocalStorage(root, synchronous), 1000, is_generated,
                        generations=first),
            MemoryCache(LocalStorage(root, gate), 1000, is_generated,
                        generations=second),
            gate,
        )  # fmt: skip

    def read(self, cache: MemoryCache, gate: Gate, key: str) -> bytes | None:
        d = Deferred.fromCoroutine(cache.get(key))
        gate.release()  # a disk read, if it is one
        stored = self.successResultOf(d)
        return None if stored is None else stored.data

    def test_a_delete_by_one_is_a_miss_for_the_other(self) -> None:
        one, other, gate = self.caches()
        other_name = f"{FOLDER}/w300.jpg"
        for purge in (True, False):
            for key in (VARIANT, other_name):
                self.result(one.put(key, b"v", "image/jpeg"))
                self.assertEqual(self.read(other, gate, key), b"v")  # kept
            if purge:
                self.result(one.delete_prefix(FOLDER))
            else:
                self.result(one.delete(VARIANT))
            self.assertIsNone(self.read(other, gate, VARIANT))
            d = Deferred.fromCoroutine(other.exists(VARIANT))
            gate.release()
            self.assertFalse(self.successResultOf(d))
            # The rest of the folder is read again, and kept if still there.
            self.assertEqual(
                self.read(other, gate, other_name), None if purge else b"v"
            )
            self.assertEqual(other.size, 0 if purge else 1)

    def test_a_read_on_its_way_during_a_delete_elsewhere_is_not_kept(self) -> None:
        one, other, gate = self.caches()
        self.result(one.put(VARIANT, b"old", "image/jpeg"))
        read = Deferred.fromCoroutine(other.get(VARIANT))  # on its way
        self.result(one.delete_prefix(FOLDER))  # by another process
        # The read found the bytes before they went: here, put back behind
        # both caches' backs.
        self.result(
            LocalStorage(self.root, synchronous).put(VARIANT, b"old", "image/jpeg")
        )
        gate.release()
        self.assertEqual(self.successResultOf(read).data, b"old")
        self.assertEqual(other.size, 0)  # answered, not kept

    def result(self, coroutine: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))


#: Run in a child process: a SIGBUS must end it, not the test run.
_FULL_DISK = """
import mmap, os, sys
from imageserver.storage.memory import Generations, SLOTS
root, sparse = sys.argv[1], sys.argv[2] == "sparse"
path = os.path.join(root, "generations")
generations = Generations(path)
if sparse:  # what the file was before: sized, its blocks not reserved
    with open(path, "w+b") as f:
        f.truncate(SLOTS * 8)
        generations._slots = memoryview(mmap.mmap(f.fileno(), SLOTS * 8)).cast("Q")
else:
    generations.open()
with open(os.path.join(root, "filler"), "wb") as f:  # the disk fills up
    try:
        while True:
            f.write(b"x" * 65536)
            f.flush()
    except OSError:
        pass
for slot in range(SLOTS):
    generations.change(slot)
print("changed")
"""


class FullDiskTests(SynchronousTestCase):
    """The host's generations file on a disk that fills up (a small tmpfs,
    so root only): changing any slot must not kill the process."""

    def mount(self, size: str) -> str:
        if os.geteuid() != 0:
            raise SkipTest("mounting a small tmpfs needs root")
        root = self.mktemp()
        os.makedirs(root)
        try:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", root],
                check=True,
                capture_output=True,
            )
        except (OSError, subprocess.CalledProcessError) as e:
            raise SkipTest(f"no tmpfs here: {e}") from None
        self.addCleanup(subprocess.run, ["umount", root], check=False)
        return root

    def run_child(self, root: str, mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _FULL_DISK, root, mode],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )  # fmt: skip

    def test_a_full_disk_never_kills_a_worker(self) -> None:
        # What the file was: a sparse map's page written on a full disk.
        before = self.run_child(self.mount("1m"), "sparse")
        self.assertEqual(before.returncode, -signal.SIGBUS, before.stderr)
        done = self.run_child(self.mount("1m"), "reserved")
        self.assertEqual((done.returncode, done.stdout), (0, "changed\n"), done.stderr)

    def test_no_room_for_the_file_fails_at_start(self) -> None:
        root = self.mount("64k")
        with self.assertRaises(OSError) as caught:
            Generations(os.path.join(root, "generations")).open()
        self.assertEqual(caught.exception.errno, errno.ENOSPC)
