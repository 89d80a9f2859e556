from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from imageserver.metrics.events import Events
from imageserver.storage.local import LocalStorage
from imageserver.storage.queue import WriteQueue
from imageserver.storage.s3 import LazyClient, S3Settings, S3Storage
from imageserver.storage.tiered import TieredStorage
from tests.s3server import CREDENTIALS, free_port, shared
from tests.storage_contract import FOLDER, KEY, StorageContract
from tests.support import Gate, sample, synchronous


class Network:
    """Which real S3 endpoint the storage's client reaches: up or down."""

    def __init__(self, up_url: str, bucket: str) -> None:
        self.up = LazyClient(self.settings(up_url, bucket))
        self.down = LazyClient(self.settings(f"http://127.0.0.1:{free_port()}", bucket))
        self.current = self.up

    @staticmethod
    def settings(url: str, bucket: str) -> S3Settings:
        return S3Settings(
            bucket=bucket,
            endpoint_url=url,
            access_key_id=CREDENTIALS["aws_access_key_id"],
            secret_access_key=CREDENTIALS["aws_secret_access_key"],
            max_attempts=1,
        )

    def __call__(self) -> Any:
        return self.current()


class TieredStorageTests(StorageContract, SynchronousTestCase):
    def make_storage(self, s3_runner: Any = synchronous) -> TieredStorage:
        self.server = shared()
        self.bucket = self.server.new_bucket()
        self.network = Network(self.server.url, self.bucket)
        settings = Network.settings(self.server.url, self.bucket)
        self.clock = Clock()
        self.s3_runner = s3_runner
        self.remote = S3Storage(settings, self.network, s3_runner)
        self.events = Events()
        self.uploader = WriteQueue(
            self.remote,
            self.clock,
            shutdown_timeout=30,
            name="bucket",
            retry=backoffPolicy(1.0, 60.0, 2.0, jitter=lambda: 0.0),
            events=self.events,
        )
        self.local = LocalStorage(self.mktemp(), synchronous)
        return TieredStorage(self.local, self.remote, self.uploader)

    def count(self, outcome: str) -> float:
        return sample(
            self.events,
            "imageserver_background_writes_total",
            queue="bucket",
            outcome=outcome,
        )

    def in_bucket(self, key: str) -> bytes | None:
        try:
            response = self.server.client().get_object(Bucket=self.bucket, Key=key)
        except self.server.client().exceptions.NoSuchKey:
            return None
        return response["Body"].read()

    def test_durable_write_is_in_the_bucket_and_the_cache(self) -> None:
        storage = self.make_storage()
        self.result(storage.put(KEY, b"bytes", "image/jpeg"))
        self.assertEqual(self.in_bucket(KEY), b"bytes")
        self.assertEqual(self.result(self.local.get(KEY)).data, b"bytes")

    def test_same_etag_from_cache_and_bucket(self) -> None:
        storage = self.make_storage()
        put = self.result(storage.put(KEY, b"bytes", "image/jpeg"))
        self.assertEqual(put.etag, self.result(self.local.get(KEY)).etag)

    def test_read_falls_back_to_the_bucket_and_fills_the_cache(self) -> None:
        storage = self.make_storage()
        self.server.client().put_object(
            Bucket=self.bucket, Key=KEY, Body=b"remote", ContentType="image/jpeg"
        )
        stored = self.result(storage.get(KEY))
        self.assertEqual((stored.data, stored.content_type), (b"remote", "image/jpeg"))
        self.assertEqual(self.result(self.local.get(KEY)).data, b"remote")

    def test_list_joins_the_bucket_and_pending_uploads(self) -> None:
        storage = self.make_storage(s3_runner=Gate())
        self.result(self.local.put(f"{FOLDER}/w1.jpg", b"x", "image/jpeg"))
        self.server.client().put_object(
            Bucket=self.bucket, Key=f"{FOLDER}/w2.jpg", Body=b"x"
        )
        d = Deferred.fromCoroutine(storage.list(FOLDER))
        self.s3_runner.release()
        self.assertEqual(self.successResultOf(d), ["w1.jpg", "w2.jpg"])

    def test_non_durable_write_returns_before_the_upload(self) -> None:
        gate = Gate()
        storage = self.make_storage(s3_runner=gate)
        stored = self.result(storage.put(KEY, b"later", "image/jpeg", durable=False))
        self.assertEqual(stored.data, b"later")
        self.assertEqual(self.result(self.local.get(KEY)).data, b"later")
        self.assertEqual((self.uploader.pending, self.in_bucket(KEY)), (1, None))
        gate.release()
        self.assertEqual((self.uploader.pending, self.in_bucket(KEY)), (0, b"later"))
        self.assertEqual(self.count("written"), 1)

    def test_failed_uploads_are_retried_with_backoff_until_they_land(self) -> None:
        storage = self.make_storage()
        self.network.current = self.network.down
        self.result(storage.put(KEY, b"v", "image/jpeg", durable=False))
        self.assertEqual((self.uploader.pending, self.count("retried")), (1, 1))
        self.clock.advance(0.9)
        self.assertEqual(self.count("retried"), 1)
        self.clock.advance(0.1)  # first retry after 1 s
        self.assertEqual(self.count("retried"), 2)
        self.clock.advance(1.9)
        self.assertEqual(self.count("retried"), 2)
        self.network.current = self.network.up
        self.clock.advance(0.1)  # second retry 2 s later
        self.assertEqual((self.uploader.pending, self.in_bucket(KEY)), (0, b"v"))

    def test_a_newer_version_replaces_a_pending_one(self) -> None:
        storage = self.make_storage()
        self.network.current = self.network.down
        self.result(storage.put(KEY, b"old", "image/jpeg", durable=False))
        self.result(storage.put(KEY, b"new", "image/jpeg", durable=False))
        self.assertEqual(self.uploader.pending, 1)
        self.network.current = self.network.up
        self.clock.advance(1)
        self.assertEqual(self.in_bucket(KEY), b"new")

    def test_shutdown_waits_for_pending_uploads(self) -> None:
        storage = self.make_storage()
        self.uploader.startService()
        self.network.current = self.network.down
        self.result(storage.put(KEY, b"v", "image/jpeg", durable=False))
        stopped = self.uploader.stopService()
        self.assertNoResult(stopped)
        self.network.current = self.network.up
        self.clock.advance(1)
        self.successResultOf(stopped)
        self.assertEqual(self.in_bucket(KEY), b"v")

    def test_shutdown_gives_up_after_its_timeout_and_says_what_was_lost(self) -> None:
        storage = self.make_storage()
        self.uploader.startService()
        self.network.current = self.network.down
        self.result(storage.put(KEY, b"v", "image/jpeg", durable=False))
        with capturedLogs() as events:
            stopped = self.uploader.stopService()
            for _ in range(10):
                self.clock.advance(5)
            self.successResultOf(stopped)
        lost = [
            e
            for e in events
            if e.get("key") == KEY and "shutting down" in e["log_format"]
        ]
        self.assertEqual(len(lost), 1)
        self.assertEqual(lost[0]["log_level"].name, "error")
