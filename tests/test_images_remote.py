"""The image API over a real S3-protocol server, with the local disk as cache."""

import json
import os
import shutil
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from imageserver.storage import Storage
from imageserver.storage.queue import WriteQueue
from imageserver.storage.s3 import LazyClient, S3Settings, S3Storage
from imageserver.storage.tiered import TieredStorage
from tests.s3server import CREDENTIALS, MotoServer, shared
from tests.support import AppHarness, decode, encode, quadrants, synchronous

PHOTO = encode(quadrants((800, 600)))


class Bucket:
    """A bucket on a moto server, and a way to put the app in front of it."""

    def __init__(self, server: MotoServer, name: str | None = None) -> None:
        self.server = server
        self.name = name or server.new_bucket()
        self.clock = Clock()

    def remote(self, local: Storage) -> Storage:
        settings = S3Settings(
            bucket=self.name,
            endpoint_url=self.server.url,
            access_key_id=CREDENTIALS["aws_access_key_id"],
            secret_access_key=CREDENTIALS["aws_secret_access_key"],
            base_path="images",
            max_attempts=1,
        )
        s3 = S3Storage(settings, LazyClient(settings), synchronous)
        self.uploader = WriteQueue(s3, self.clock, 30, name="bucket")
        return TieredStorage(local, s3, self.uploader)

    def objects(self, prefix: str = "") -> dict[str, str]:
        """Every key under ``prefix`` with its Content-Type."""
        client = self.server.client()
        listing = client.list_objects_v2(Bucket=self.name, Prefix=prefix)
        return {
            item["Key"]: client.head_object(Bucket=self.name, Key=item["Key"])[
                "ContentType"
            ]
            for item in listing.get("Contents", ())
        }

    def read(self, key: str) -> bytes:
        response = self.server.client().get_object(Bucket=self.name, Key=key)
        return response["Body"].read()


class RemoteStorageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.bucket = Bucket(shared())
        self.app = self.instance()

    def instance(self, **settings: Any) -> AppHarness:
        """A server instance with a local cache of its own, on the shared bucket."""
        return AppHarness(self, remote=self.bucket.remote, **settings)

    def test_upload_stores_everything_in_the_bucket(self) -> None:
        folder = self.app.upload(PHOTO, query="?outputs=x300.jpg,x300.webp")
        prefix = "images" + folder
        objects = self.bucket.objects()
        # And the segment of the similar index, beside the namespaces.
        (segment,) = (key for key in objects if key.startswith("images/SIMILAR/p/"))
        self.assertEqual(objects.pop(segment), "application/octet-stream")
        self.assertEqual(
            objects,
            {
                f"{prefix}/original": "image/jpeg",
                f"{prefix}/info.json": "application/json",
                f"{prefix}/x300.jpg": "image/jpeg",
                f"{prefix}/x300.webp": "image/webp",
            },
        )
        self.assertEqual(self.bucket.read(f"{prefix}/original"), PHOTO)
        info = json.loads(self.bucket.read(f"{prefix}/info.json"))
        self.assertEqual((info["width"], info["height"]), (800, 600))
        self.assertEqual(
            decode(self.bucket.read(f"{prefix}/x300.webp")).size, (300, 300)
        )

    def test_variant_only_the_bucket_has_is_served(self) -> None:
        folder = self.app.upload(PHOTO, query="?outputs=x300.jpg")
        shutil.rmtree(self.app.root)  # this instance's cache is gone
        other = self.instance()
        response, body = other.request("GET", f"{folder}/x300.jpg")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, self.bucket.read(f"images{folder}/x300.jpg"))
        self.assertTrue(
            os.path.exists(os.path.join(other.root, *folder.split("/"), "x300.jpg"))
        )

    def test_new_variant_downloads_the_original_from_the_bucket(self) -> None:
        folder = self.app.upload(PHOTO)
        other = self.instance()
        response, body = other.request("GET", f"{folder}/w123.png")
        self.assertEqual((response.code, decode(body).size), (200, (123, 92)))
        local = os.path.join(other.root, *folder.split("/"))
        self.assertEqual(sorted(os.listdir(local)), ["original", "w123.png"])
        # The GET answered first; the upload followed, here at once.
        self.assertEqual(self.bucket.read(f"images{folder}/w123.png"), body)
        self.assertEqual(self.bucket.uploader.pending, 0)

    def test_info_json_from_another_instance(self) -> None:
        folder = self.app.upload(PHOTO)
        code, info = self.instance().json("GET", f"{folder}/info.json")
        self.assertEqual((code, info["width"]), (200, 800))

    def test_process_lists_the_bucket_and_skips_what_exists(self) -> None:
        folder = self.app.upload(PHOTO, query="?outputs=x300.jpg")
        key = f"images{folder}/x300.jpg"
        self.bucket.server.client().put_object(
            Bucket=self.bucket.name, Key=key, Body=b"made elsewhere"
        )
        other = self.instance()
        response, _ = other.request(
            "POST", f"{folder}/process?outputs=x300.jpg,w50.jpg"
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.bucket.read(key), b"made elsewhere")
        self.assertEqual(decode(self.bucket.read(f"images{folder}/w50.jpg")).width, 50)

    def test_upload_again_only_adds_missing_outputs(self) -> None:
        folder = self.app.upload(PHOTO, query="?outputs=x300.jpg")
        key = f"images{folder}/x300.jpg"
        self.bucket.server.client().put_object(
            Bucket=self.bucket.name, Key=key, Body=b"kept"
        )
        self.instance().upload(PHOTO, query="?outputs=x300.jpg,x10.jpg")
        self.assertEqual(self.bucket.read(key), b"kept")
        self.assertIn(f"images{folder}/x10.jpg", self.bucket.objects())

    def test_purge_and_delete_over_the_bucket(self) -> None:
        folder = self.app.upload(PHOTO, query="?outputs=x300.jpg")
        other = self.instance()
        self.assertEqual(other.request("GET", f"{folder}/w64.png")[0].code, 200)
        self.app.request("POST", f"{folder}/notes.txt", data=b"hello")
        prefix = "images" + folder
        self.assertEqual(
            sorted(self.bucket.objects(prefix)),
            [f"{prefix}/{n}" for n in
             ("info.json", "notes.txt", "original", "w64.png", "x300.jpg")],
        )  # fmt: skip
        response, _ = self.app.request("DELETE", f"{folder}/w64.png")
        self.assertEqual(response.code, 204)
        self.assertNotIn(f"{prefix}/w64.png", self.bucket.objects(prefix))
        response, _ = self.app.request("DELETE", folder)
        self.assertEqual(response.code, 204)
        self.assertEqual(self.bucket.objects(prefix), {})
        self.assertEqual([f for _, _, f in os.walk(self.app.root) if f], [])
        # Another instance with nothing cached finds nothing either.
        fresh = self.instance()
        self.assertEqual(fresh.request("GET", f"{folder}/x300.jpg")[0].code, 404)
        self.assertEqual(self.app.upload(PHOTO), folder)
        self.assertIn(f"{prefix}/original", self.bucket.objects(prefix))


class BucketDownTests(SynchronousTestCase):
    def test_bucket_down_is_503_and_the_server_recovers(self) -> None:
        server = MotoServer().start()
        self.addCleanup(server.stop)
        bucket = Bucket(server)
        app = AppHarness(self, remote=bucket.remote)
        folder = app.upload(PHOTO)
        shutil.rmtree(app.root)
        server.stop()

        response, body = app.request("POST", "/p", data=encode(quadrants((64, 64))))
        self.assertEqual(response.code, 503)
        self.assertEqual(
            json.loads(body), {"error": "storage is unavailable, try again later"}
        )
        self.assertEqual(response.headers.getRawHeaders("Retry-After"), ["5"])
        code, _ = app.json("GET", f"{folder}/w20.jpg")
        self.assertEqual(code, 503)
        # Nothing half-done was kept: the original goes to the bucket first.
        self.assertEqual([files for _, _, files in os.walk(app.root) if files], [])

        restarted = MotoServer(server.port).start()
        self.addCleanup(restarted.stop)
        restarted.client().create_bucket(Bucket=bucket.name)  # moto forgot it
        again = app.upload(PHOTO)
        self.assertEqual(again, folder)
        response, body = app.request("GET", f"{folder}/w20.jpg")
        self.assertEqual((response.code, decode(body).width), (200, 20))

    def test_refused_bucket_is_502(self) -> None:
        bucket = Bucket(shared(), name="bucket-that-was-never-made")
        app = AppHarness(self, remote=bucket.remote)
        code, error = app.json("POST", "/p", data=PHOTO)
        self.assertEqual(
            (code, error),
            (502, {"error": "storage refused the request (NoSuchBucket)"}),
        )

    def test_a_purge_while_the_bucket_is_down_is_503_and_can_be_retried(
        self,
    ) -> None:
        server = MotoServer().start()
        self.addCleanup(server.stop)
        bucket = Bucket(server)
        app = AppHarness(self, remote=bucket.remote)
        folder = app.upload(PHOTO, query="?outputs=x30.jpg")
        server.stop()
        code, body = app.json("DELETE", folder)
        self.assertEqual(
            (code, body), (503, {"error": "storage is unavailable, try again later"})
        )
        restarted = MotoServer(server.port).start()
        self.addCleanup(restarted.stop)
        restarted.client().create_bucket(Bucket=bucket.name)
        response, _ = app.request("DELETE", folder)
        self.assertEqual(response.code, 204)
        self.assertEqual([f for _, _, f in os.walk(app.root) if f], [])


class PurgeFailureTests(SynchronousTestCase):
    def test_an_unexpected_error_is_a_500_and_the_folder_is_free_after(
        self,
    ) -> None:
        app = AppHarness(self)
        folder = app.upload(PHOTO)
        delete_prefix = app.local.delete_prefix

        async def boom(prefix: str) -> None:
            raise RuntimeError("a bug in the storage")

        self.patch(app.local, "delete_prefix", boom)
        code, body = app.json("DELETE", folder)
        self.assertEqual((code, body), (500, {"error": "internal server error"}))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        # Nothing is held: the image is still whole and can be purged.
        self.assertEqual(app.request("GET", f"{folder}/w20.jpg")[0].code, 200)
        self.patch(app.local, "delete_prefix", delete_prefix)
        self.assertEqual(app.request("DELETE", folder)[0].code, 204)
