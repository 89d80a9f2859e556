from twisted.trial.unittest import SynchronousTestCase

from imageserver.metrics.events import Events
from imageserver.storage import Storage
from imageserver.storage.local import LocalStorage
from imageserver.storage.metered import MeteredStorage
from tests.storage_contract import FOLDER, StorageContract
from tests.support import sample, synchronous


class MeteredStorageTests(StorageContract, SynchronousTestCase):
    def make_storage(self) -> Storage:
        self.events = Events()
        backend = LocalStorage(self.mktemp(), synchronous)
        return MeteredStorage(backend, "local", self.events)

    def test_purges_are_counted(self) -> None:
        storage = self.make_storage()
        self.result(storage.delete_prefix(FOLDER))
        self.assertEqual(
            sample(
                self.events,
                "imageserver_storage_operations_total",
                backend="local",
                operation="delete_prefix",
                outcome="ok",
            ),
            1,
        )
