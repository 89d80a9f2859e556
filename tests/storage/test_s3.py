import os
import subprocess
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from imageserver.errors import StorageFailed, StorageUnavailable
from imageserver.storage.s3 import LazyClient, S3Settings, S3Storage, check_bucket
from tests import CHECKOUT_DIR
from tests.s3server import CREDENTIALS, free_port, shared
from tests.storage_contract import FOLDER, KEY, StorageContract
from tests.support import synchronous

CHECKOUT = CHECKOUT_DIR


def settings_of(endpoint: str, bucket: str, **settings: Any) -> S3Settings:
    return S3Settings(
        bucket=bucket,
        endpoint_url=endpoint,
        access_key_id=CREDENTIALS["aws_access_key_id"],
        secret_access_key=CREDENTIALS["aws_secret_access_key"],
        max_attempts=1,
        timeout=5,
        **settings,
    )


def s3_storage(endpoint: str, bucket: str, **settings: Any) -> S3Storage:
    config = settings_of(endpoint, bucket, **settings)
    return S3Storage(config, LazyClient(config), synchronous)


class S3StorageTests(StorageContract, SynchronousTestCase):
    def make_storage(self, **settings: Any) -> S3Storage:
        self.server = shared()
        self.bucket = self.server.new_bucket()
        return s3_storage(self.server.url, self.bucket, **settings)

    def test_objects_carry_key_layout_and_content_type(self) -> None:
        storage = self.make_storage(base_path="/images/")
        self.result(storage.put(KEY, b"jpeg", "image/jpeg"))
        head = self.server.client().head_object(Bucket=self.bucket, Key=f"images/{KEY}")
        self.assertEqual(head["ContentType"], "image/jpeg")
        self.assertEqual(head["ContentLength"], 4)
        self.assertEqual(self.result(storage.list(FOLDER)), ["w200.jpg"])

    def test_objects_say_how_long_a_cdn_may_keep_them(self) -> None:
        storage = self.make_storage(base_path="images")
        client = self.server.client()
        for key, cache_control in (
            (KEY, "public, max-age=31536000, immutable"),
            (f"{FOLDER}/original", "public, max-age=31536000, immutable"),
            (f"{FOLDER}/info.json", "public, no-cache"),
            (f"{FOLDER}/notes.txt", "public, no-cache"),
        ):
            self.result(storage.put(key, b"x", "image/jpeg"))
            head = client.head_object(Bucket=self.bucket, Key=f"images/{key}")
            self.assertEqual(head["CacheControl"], cache_control, key)

    def test_acl_is_sent_when_configured(self) -> None:
        storage = self.make_storage(acl="public-read")
        self.result(storage.put(KEY, b"jpeg", "image/jpeg"))
        grants = self.server.client().get_object_acl(Bucket=self.bucket, Key=KEY)
        uris = {g["Grantee"].get("URI", "") for g in grants["Grants"]}
        self.assertIn("http://acs.amazonaws.com/groups/global/AllUsers", uris)

    def test_list_and_delete_page_through_large_folders(self) -> None:
        storage = self.make_storage(base_path="images")
        client = self.server.client()
        names = sorted(f"w{n}.jpg" for n in range(1, 1006))
        for name in names:
            client.put_object(
                Bucket=self.bucket, Key=f"images/{FOLDER}/{name}", Body=b"x"
            )
        client.put_object(Bucket=self.bucket, Key=f"images/{FOLDER}0/x", Body=b"x")
        self.assertEqual(self.result(storage.list(FOLDER)), names)
        self.result(storage.delete_prefix(FOLDER))
        left = client.list_objects_v2(Bucket=self.bucket)["Contents"]
        self.assertEqual([o["Key"] for o in left], [f"images/{FOLDER}0/x"])

    def test_missing_bucket_is_refused(self) -> None:
        storage = s3_storage(shared().url, "no-such-bucket-here")
        for call in (lambda: storage.get(KEY), lambda: storage.list(FOLDER)):
            failure = self.failureResultOf(self.wrap(call()), StorageFailed)
            self.assertEqual(
                str(failure.value), "storage refused the request (NoSuchBucket)"
            )

    def test_unreachable_store_is_unavailable(self) -> None:
        storage = s3_storage(f"http://127.0.0.1:{free_port()}", "bucket")
        calls = (
            lambda: storage.get(KEY),
            lambda: storage.put(KEY, b"x", "image/jpeg"),
            lambda: storage.list(FOLDER),
            lambda: storage.exists(KEY),
            lambda: storage.delete_prefix(FOLDER),
        )
        for call in calls:
            failure = self.failureResultOf(self.wrap(call()), StorageUnavailable)
            self.assertEqual(
                str(failure.value), "storage is unavailable, try again later"
            )

    def wrap(self, coroutine: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(coroutine)

    def test_log_lines_say_what_was_being_done(self) -> None:
        """Operations a reader knows, the key and the bucket; never a method
        name such as _list."""
        storage = s3_storage(shared().url, "no-such-bucket-here", base_path="i")
        for call, doing in (
            (lambda: storage.get(KEY), f"reading i/{KEY}"),
            (lambda: storage.put(KEY, b"x", "image/png"), f"writing i/{KEY}"),
            (lambda: storage.list("PURGES/0000000001"), "listing i/PURGES/0000000001/"),
            (lambda: storage.delete(KEY), f"deleting i/{KEY}"),
            (lambda: storage.delete_prefix(FOLDER),
             f"deleting everything under i/{FOLDER}/"),
        ):  # fmt: skip
            with capturedLogs() as events:
                self.failureResultOf(self.wrap(call()))
            texts = [e["log_format"].format(**e) for e in events]
            refused = f"storage refused {doing} in bucket no-such-bucket-here"
            self.assertEqual(texts, [f"{refused}: NoSuchBucket"])


class BucketCheckTests(SynchronousTestCase):
    """The bucket is checked when a process starts, as the local path is."""

    def test_check_bucket(self) -> None:
        moto = shared()
        check_bucket(settings_of(moto.url, moto.new_bucket()))  # fine: no error
        with self.assertRaises(StorageFailed) as missing:
            check_bucket(settings_of(moto.url, "nosuchbucket"))
        self.assertEqual(
            str(missing.exception),
            f"--aws_bucket nosuchbucket: no such bucket at {moto.url}; create it, "
            "or name one that exists",
        )
        gone = f"http://127.0.0.1:{free_port()}"
        with self.assertRaises(StorageUnavailable) as unreachable:
            check_bucket(settings_of(gone, "photos"))
        self.assertIn(
            f"--aws_bucket photos: {gone} cannot be reached", str(unreachable.exception)
        )

    def test_a_server_with_a_missing_bucket_does_not_start(self) -> None:
        """One line, exit status 1; with one process and with workers (the
        supervisor checks before it starts any)."""
        moto = shared()
        for workers in ("1", "2"):
            done = subprocess.run(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "--logfile=-", "imageserver", "--port", "0",
                 "--admin_port", "0", "--workers", workers,
                 "--local_base_path", self.mktemp(), "--aws_bucket", "nosuchbucket",
                 "--s3_endpoint_url", moto.url],
                capture_output=True, text=True, timeout=60,
                env={**os.environ, "PYTHONPATH": CHECKOUT,
                     "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
                     "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"]},
            )  # fmt: skip
            self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
            self.assertIn(
                f"--aws_bucket nosuchbucket: no such bucket at {moto.url}; create "
                "it, or name one that exists",
                done.stdout,
            )
            self.assertNotIn("Traceback", done.stdout + done.stderr)
            self.assertNotIn("listening", done.stdout)
