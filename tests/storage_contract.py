"""What every Storage must do: each backend's and wrapper's tests mix this in.

One module, so a rule added here holds for the local disk, the bucket, the
tiered pair, the memory cache, the write-behind and the metered wrapper alike.
"""

import hashlib
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from imageserver.naming import MAX_NAME_BYTES, ORIGINAL, QUALITY_SUFFIX, ImageId
from imageserver.storage import Storage, etag_of

KEY = "p/6e0/072/682/e66287b662827da75b244a3/w200.jpg"
FOLDER = "p/6e0/072/682/e66287b662827da75b244a3"


if TYPE_CHECKING:
    _Case = SynchronousTestCase
else:
    _Case = object


class StorageContract(_Case):
    """What every Storage must do; a backend's tests mix this in."""

    def make_storage(self) -> Storage:
        raise NotImplementedError

    def result(self, coroutine: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def test_missing_objects(self) -> None:
        storage = self.make_storage()
        self.assertIsNone(self.result(storage.get(KEY)))
        self.assertFalse(self.result(storage.exists(KEY)))
        self.assertEqual(self.result(storage.list(FOLDER)), [])
        self.result(storage.delete(KEY))

    def test_put_then_get(self) -> None:
        storage = self.make_storage()
        put = self.result(storage.put(KEY, b"jpeg bytes", "image/jpeg"))
        got = self.result(storage.get(KEY))
        for stored in (put, got):
            self.assertEqual(stored.data, b"jpeg bytes")
            self.assertEqual(stored.content_type, "image/jpeg")
            self.assertEqual(stored.etag, etag_of(b"jpeg bytes"))
        self.assertEqual(int(put.modified), int(got.modified))
        self.assertTrue(self.result(storage.exists(KEY)))

    def test_an_originals_etag_is_its_md5(self) -> None:
        data = b"original image bytes"
        digest = hashlib.md5(data).hexdigest()
        key = ImageId("p", digest).key(ORIGINAL)
        storage = self.make_storage()
        self.assertEqual(
            self.result(storage.put(key, data, "image/jpeg")).etag, f'"{digest}"'
        )
        self.assertEqual(self.result(storage.get(key)).etag, f'"{digest}"')

    def test_the_longest_names(self) -> None:
        """A canonical name of MAX_NAME_BYTES with its quality beside it:
        a file name of 248 bytes (a temporary file of the whole name and a
        random part would be over a disk's 255)."""
        storage = self.make_storage()
        name = "w10-" + "t" * (MAX_NAME_BYTES - 8) + ".jpg"
        self.assertEqual(len(name), MAX_NAME_BYTES)
        for key in (f"{FOLDER}/{name}", f"{FOLDER}/{name}{QUALITY_SUFFIX}"):
            self.result(storage.put(key, b"bytes", "image/jpeg"))
            self.assertEqual(self.result(storage.get(key)).data, b"bytes")
        self.assertEqual(
            sorted(self.result(storage.list(FOLDER))),
            [name, name + QUALITY_SUFFIX],
        )

    def test_put_replaces(self) -> None:
        storage = self.make_storage()
        self.result(storage.put(KEY, b"one", "image/jpeg"))
        self.result(storage.put(KEY, b"two", "image/jpeg"))
        self.assertEqual(self.result(storage.get(KEY)).data, b"two")

    def test_list_names_directly_in_folder(self) -> None:
        storage = self.make_storage()
        for name in ("w200.jpg", "original", "info.json"):
            self.result(storage.put(f"{FOLDER}/{name}", b"x", "image/jpeg"))
        self.result(storage.put(f"{FOLDER}0/other", b"x", "image/jpeg"))
        self.assertEqual(
            self.result(storage.list(FOLDER)), ["info.json", "original", "w200.jpg"]
        )

    def test_delete(self) -> None:
        storage = self.make_storage()
        self.result(storage.put(KEY, b"x", "image/jpeg"))
        self.result(storage.delete(KEY))
        self.assertIsNone(self.result(storage.get(KEY)))

    def test_delete_prefix_removes_the_folder_at_every_depth(self) -> None:
        storage = self.make_storage()
        for name in ("original", "info.json", "w200.jpg", "notes.txt"):
            self.result(storage.put(f"{FOLDER}/{name}", b"x", "image/jpeg"))
        self.result(storage.put(f"{FOLDER}/deeper/x.jpg", b"x", "image/jpeg"))
        self.result(storage.delete_prefix(FOLDER))
        self.assertEqual(self.result(storage.list(FOLDER)), [])
        self.assertEqual(self.result(storage.list(f"{FOLDER}/deeper")), [])
        for name in ("original", "info.json", "w200.jpg", "deeper/x.jpg"):
            self.assertIsNone(self.result(storage.get(f"{FOLDER}/{name}")), name)
            self.assertFalse(self.result(storage.exists(f"{FOLDER}/{name}")), name)

    def test_delete_prefix_keeps_neighbours(self) -> None:
        # A folder whose name starts with the deleted one's is another image.
        storage = self.make_storage()
        neighbour = f"{FOLDER}0/w200.jpg"
        self.result(storage.put(KEY, b"x", "image/jpeg"))
        self.result(storage.put(neighbour, b"kept", "image/jpeg"))
        self.result(storage.delete_prefix(FOLDER))
        self.assertEqual(self.result(storage.get(neighbour)).data, b"kept")

    def test_delete_prefix_of_nothing_is_not_an_error(self) -> None:
        storage = self.make_storage()
        self.result(storage.delete_prefix(FOLDER))
        self.result(storage.delete_prefix(FOLDER))

    def test_usage_adds_up_the_bytes_under_a_folder_at_every_depth(self) -> None:
        storage = self.make_storage()
        namespace = FOLDER.split("/")[0]
        self.assertEqual(self.result(storage.usage(namespace)), 0)
        self.result(storage.put(f"{FOLDER}/original", b"x" * 1000, "image/jpeg"))
        self.result(storage.put(f"{FOLDER}/w200.jpg", b"x" * 10, "image/jpeg"))
        self.result(storage.put(f"{FOLDER}/w200.jpg", b"x" * 20, "image/jpeg"))
        self.result(storage.put(f"{namespace}0/a/b", b"x" * 7, "image/jpeg"))
        self.assertEqual(self.result(storage.usage(namespace)), 1020)
        self.assertEqual(self.result(storage.usage(FOLDER)), 1020)
        self.assertEqual(self.result(storage.usage(f"{namespace}0")), 7)
        self.result(storage.delete(f"{FOLDER}/w200.jpg"))
        self.assertEqual(self.result(storage.usage(namespace)), 1000)
        self.result(storage.delete_prefix(FOLDER))
        self.assertEqual(self.result(storage.usage(namespace)), 0)

    def test_a_deleted_folder_can_be_written_again(self) -> None:
        storage = self.make_storage()
        self.result(storage.put(KEY, b"old", "image/jpeg"))
        self.result(storage.delete_prefix(FOLDER))
        self.result(storage.put(KEY, b"new", "image/jpeg"))
        self.assertEqual(self.result(storage.get(KEY)).data, b"new")
        self.assertEqual(self.result(storage.list(FOLDER)), ["w200.jpg"])
