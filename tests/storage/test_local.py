import errno
import os
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from imageserver.errors import StorageFull, StorageUnavailable
from imageserver.storage import content_type_for
from imageserver.storage.local import LocalStorage, WritableCheck
from tests.storage_contract import FOLDER, KEY, StorageContract
from tests.support import synchronous


class LocalStorageTests(StorageContract, SynchronousTestCase):
    def make_storage(self) -> LocalStorage:
        self.root = self.mktemp()
        return LocalStorage(self.root, synchronous)

    def test_layout_on_disk(self) -> None:
        storage = self.make_storage()
        self.result(storage.put(KEY, b"bytes", "image/jpeg"))
        with open(os.path.join(self.root, *KEY.split("/")), "rb") as f:
            self.assertEqual(f.read(), b"bytes")
        self.assertEqual(os.stat(os.path.join(self.root, KEY)).st_mode & 0o777, 0o644)

    def test_only_durable_writes_are_flushed_to_disk(self) -> None:
        # Whether data reached the platter cannot be seen from here: count the
        # flushes asked for instead.
        synced: list[int] = []
        self.patch(os, "fsync", synced.append)
        storage = self.make_storage()
        self.result(storage.put(KEY, b"variant", "image/jpeg", durable=False))
        self.assertEqual(synced, [])
        self.result(storage.put(KEY, b"original", "image/jpeg"))
        self.assertEqual(len(synced), 2)  # the file, then its folder
        self.assertEqual(self.result(storage.get(KEY)).data, b"original")

    def test_failed_write_leaves_nothing(self) -> None:
        storage = self.make_storage()
        self.result(storage.put(KEY, b"old", "image/jpeg"))
        failure = self.failureResultOf(
            Deferred.fromCoroutine(storage.put(KEY, "not bytes", "image/jpeg")),  # type: ignore[arg-type]
            TypeError,
        )
        self.assertTrue(failure)
        folder = os.path.join(self.root, FOLDER)
        self.assertEqual(sorted(os.listdir(folder)), ["w200.jpg"])
        self.assertEqual(self.result(storage.get(KEY)).data, b"old")

    def test_temporary_files_are_invisible(self) -> None:
        storage = self.make_storage()
        self.result(storage.put(KEY, b"x", "image/jpeg"))
        with open(os.path.join(self.root, FOLDER, ".w300.jpg.abc.tmp"), "wb") as f:
            f.write(b"half")
        self.assertEqual(self.result(storage.list(FOLDER)), ["w200.jpg"])
        with self.assertRaises(ValueError):
            storage.path(f"{FOLDER}/.w300.jpg.abc.tmp")

    def test_keys_cannot_leave_the_root(self) -> None:
        storage = self.make_storage()
        for key in ("../etc/passwd", "p/../../x", "/etc/passwd", "p/./../..", ".."):
            with self.assertRaises(ValueError, msg=key):
                storage.path(key)


class ContentTypeTests(SynchronousTestCase):
    def test_from_extension(self) -> None:
        self.assertEqual(content_type_for("w200.jpg"), "image/jpeg")
        self.assertEqual(content_type_for("x.avif"), "image/avif")
        self.assertEqual(content_type_for("notes.txt"), "text/plain")
        self.assertEqual(content_type_for("original"), "application/octet-stream")
        self.assertEqual(content_type_for("a.unknownext"), "application/octet-stream")


def failing(error: int) -> Any:
    """A stand-in for ``mkstemp`` on a disk that refuses with ``error``."""

    def mkstemp(*args: Any, **kwargs: Any) -> Any:
        raise OSError(error, os.strerror(error))

    return mkstemp


class DiskTroubleTests(SynchronousTestCase):
    """A full, read-only or failing disk is storage trouble, never a bug."""

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.storage = LocalStorage(self.root, synchronous)
        os.makedirs(self.root)

    def put(self) -> Any:
        put = self.storage.put(KEY, b"data", "image/jpeg")
        return self.failureResultOf(Deferred.fromCoroutine(put))

    def test_a_full_disk_is_507_and_leaves_no_folders(self) -> None:
        for error in (errno.ENOSPC, errno.EDQUOT):
            self.patch(tempfile, "mkstemp", failing(error))
            self.put().trap(StorageFull)
            self.assertEqual(os.listdir(self.root), [])
        self.flushLoggedErrors()

    def test_an_unwritable_disk_is_503(self) -> None:
        for error in (errno.EROFS, errno.EACCES, errno.EIO):
            self.patch(tempfile, "mkstemp", failing(error))
            failure = self.put()
            failure.trap(StorageUnavailable)
            self.assertIn(os.strerror(error), str(failure.value))
            self.assertEqual(os.listdir(self.root), [])

    def test_log_lines_say_what_was_being_done(self) -> None:
        """Words a reader knows, never a function name such as _write."""
        self.patch(tempfile, "mkstemp", failing(errno.EROFS))
        with capturedLogs() as events:
            self.put()
        texts = [e["log_format"].format(**e) for e in events]
        self.assertEqual(len(texts), 1)
        self.assertTrue(texts[0].startswith("local storage failed writing: "), texts[0])

    def test_a_write_failing_half_way_leaves_nothing(self) -> None:
        def replace(source: str, target: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "replace", replace)
        self.put().trap(StorageFull)
        self.assertEqual(list(os.walk(self.root)), [(self.root, [], [])])

    def test_other_folders_are_kept(self) -> None:
        self.result_of(
            self.storage.put(KEY.replace("w200", "w100"), b"x", "image/jpeg")
        )
        self.patch(tempfile, "mkstemp", failing(errno.ENOSPC))
        self.put().trap(StorageFull)
        self.assertEqual(self.result_of(self.storage.list(FOLDER)), ["w100.jpg"])

    def result_of(self, coroutine: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))


class WritableCheckTests(SynchronousTestCase):
    def test_readiness_follows_whether_the_disk_takes_writes(self) -> None:
        clock = Clock()
        root = os.path.abspath(self.mktemp())
        check = WritableCheck(root, clock, synchronous, interval=10)
        check.startService()
        self.assertIsNone(check.problem)
        self.assertEqual(os.listdir(root), [])  # the probe file is gone again
        mkstemp = tempfile.mkstemp
        self.patch(tempfile, "mkstemp", failing(errno.ENOSPC))
        clock.advance(10)
        self.assertEqual(
            check.problem, "the storage cannot be written: No space left on device"
        )
        self.patch(tempfile, "mkstemp", mkstemp)
        clock.advance(10)
        self.assertIsNone(check.problem)
        check.stopService()
        self.flushLoggedErrors()
