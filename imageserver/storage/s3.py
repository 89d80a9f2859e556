"""Storage in an S3 bucket (AWS or any S3-compatible store), through boto3.

boto3 blocks, so every call (body reads included) runs in a thread pool of its
own: slow uploads never take threads from image processing, and the reactor
never waits on the network.
"""

from __future__ import annotations

import builtins
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from twisted.logger import Logger

from imageserver.errors import StorageFailed, StorageUnavailable
from imageserver.metrics import tracing
from imageserver.runtime.pools import Runner
from imageserver.storage import StoredObject, cache_control

log = Logger()
T = TypeVar("T")

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
#: Error codes that mean "try again later" rather than "this is refused".
_TRANSIENT = frozenset(
    {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown"}
)


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    base_path: str = ""
    acl: str | None = None
    max_connections: int = 10
    timeout: float = 10.0
    max_attempts: int = 3
    #: A named AWS profile: its credentials, region and endpoint (from the
    #: AWS files) unless given here.
    profile: str | None = None


class LazyClient:
    """Makes the boto3 client on first use, in a pool thread, once.

    Making one reads AWS configuration files and loads service models: work
    for a worker thread, not for start-up on the reactor.
    """

    def __init__(self, settings: S3Settings) -> None:
        self._settings = settings
        self._client: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = make_client(self._settings)
            return self._client


def make_client(settings: S3Settings) -> Any:
    """A boto3 S3 client; what is not given comes from the standard AWS chain
    (of the settings' profile, if named)."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.timeout,
        read_timeout=settings.timeout,
        max_pool_connections=settings.max_connections,
        # S3-compatible stores (MinIO, Ceph, R2 ...) want bucket-in-path URLs;
        # otherwise what the profile says (the default: auto).
        s3={"addressing_style": "path"} if settings.endpoint_url else None,
    )
    session = boto3.session.Session(profile_name=settings.profile)
    client = session.client(
        "s3",
        region_name=settings.region or session.region_name or "us-east-1",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=config,
    )
    client.meta.events.register("before-send.s3", _send_trace)
    return client


def _send_trace(request: Any, **kwargs: Any) -> None:
    """Each call to the store carries the trace of the work that made it
    (its thread runs in a copy of the caller's context: see the pools)."""
    trace: dict[str, str] = {}
    tracing.inject(trace)
    for name, value in trace.items():
        request.headers[name] = value


class S3Storage:
    """Keeps each key as an object under ``base_path`` in one bucket.

    ``client`` is called to get the boto3 client, so it can be made when the
    service starts rather than when the tree is built.
    """

    def __init__(
        self, settings: S3Settings, client: Callable[[], Any], run: Runner
    ) -> None:
        self._settings = settings
        self._client = client
        self._run = run
        self._prefix = settings.base_path.strip("/") + "/" if settings.base_path else ""

    def object_key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> StoredObject | None:
        return await self._call(self._get, self.object_key(key))

    async def put(
        self,
        key: str,
        data: bytes,
        content_type: str,
        *,
        durable: bool = True,
        etag: str | None = None,
    ) -> StoredObject:
        return await self._call(self._put, self.object_key(key), data, content_type)

    async def exists(self, key: str) -> bool:
        return await self._call(self._exists, self.object_key(key))

    async def list(self, folder: str) -> list[str]:
        return await self._call(self._list, self.object_key(folder) + "/")

    async def delete(self, key: str) -> None:
        await self._call(self._delete, self.object_key(key))

    async def delete_prefix(self, folder: str) -> None:
        await self._call(self._delete_prefix, self.object_key(folder) + "/")

    async def usage(self, folder: str) -> int:
        return await self._call(self._usage, self.object_key(folder) + "/")

    async def _call(self, f: Callable[..., T], *args: Any) -> T:
        return await self._run(_translate_errors, f, *args)

    def doing(self, f: Callable[..., Any], key: str) -> str:
        """A call said in words, for the log: "listing p/ in bucket photos"."""
        return f"{_DOING[f.__name__]} {key} in bucket {self._settings.bucket}"

    # The methods below run in the S3 thread pool.

    def _get(self, key: str) -> StoredObject | None:
        try:
            response = self._client().get_object(Bucket=self._settings.bucket, Key=key)
        except ClientError as e:
            if _code(e) in _MISSING:
                return None
            raise
        with response["Body"] as body:
            data = body.read()
        return StoredObject(
            data,
            response.get("ContentType") or "application/octet-stream",
            response["LastModified"].timestamp(),
            response["ETag"],
        )

    def _put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        extra = {"ACL": self._settings.acl} if self._settings.acl else {}
        response = self._client().put_object(
            Bucket=self._settings.bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            CacheControl=cache_control(key),
            **extra,
        )
        return StoredObject(data, content_type, time.time(), response["ETag"])

    def _exists(self, key: str) -> bool:
        try:
            self._client().head_object(Bucket=self._settings.bucket, Key=key)
        except ClientError as e:
            if _code(e) in _MISSING:
                return False
            raise
        return True

    def _list(self, prefix: str) -> builtins.list[str]:
        pages = (
            self._client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self._settings.bucket, Prefix=prefix, Delimiter="/")
        )
        return sorted(
            item["Key"][len(prefix) :]
            for page in pages
            for item in page.get("Contents", ())
        )

    def _usage(self, prefix: str) -> int:
        pages = (
            self._client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self._settings.bucket, Prefix=prefix)
        )
        return sum(item["Size"] for page in pages for item in page.get("Contents", ()))

    def _delete(self, key: str) -> None:
        self._client().delete_object(Bucket=self._settings.bucket, Key=key)

    def _delete_prefix(self, prefix: str) -> None:
        """Every key under ``prefix``, a page (at most 1000) per request."""
        client = self._client()
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=self._settings.bucket, Prefix=prefix
        )
        for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
            if not keys:
                continue
            response = client.delete_objects(
                Bucket=self._settings.bucket,
                Delete={"Objects": keys, "Quiet": True},
            )
            errors = response.get("Errors") or ()
            if errors:
                raise ClientError(
                    {"Error": {"Code": errors[0].get("Code", ""), "Message": ""}},
                    "DeleteObjects",
                )


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


#: What each call does, as its log lines say it ("listing PURGES/... in
#: bucket photos"): words a reader knows, not this module's method names.
_DOING = {
    "_get": "reading",
    "_put": "writing",
    "_exists": "looking for",
    "_list": "listing",
    "_delete": "deleting",
    "_delete_prefix": "deleting everything under",
    "_usage": "adding up the sizes under",
}


def _translate_errors(f: Callable[..., T], *args: Any) -> T:
    """Turn boto's errors into the two a client is told about (502 and 503).

    ``f`` is a method of `S3Storage` and ``args[0]`` its object key."""
    try:
        return f(*args)
    except ClientError as e:
        code = _code(e)
        log.warn(
            "storage refused {operation}: {code}", operation=_doing(f, args), code=code
        )
        if code in _TRANSIENT:
            raise StorageUnavailable(
                "storage is unavailable, try again later"
            ) from None
        raise StorageFailed(f"storage refused the request ({code})") from None
    except (BotoConnectionError, HTTPClientError) as e:
        log.warn(
            "storage unreachable {operation}: {error}",
            operation=_doing(f, args),
            error=e,
        )
        raise StorageUnavailable("storage is unavailable, try again later") from None
    except BotoCoreError as e:
        log.warn(
            "storage failed {operation}: {error}", operation=_doing(f, args), error=e
        )
        raise StorageFailed(f"storage failed ({type(e).__name__})") from None


def _doing(f: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """The call said in words (its method names are this module's business)."""
    storage = getattr(f, "__self__", None)
    if isinstance(storage, S3Storage) and args:
        return storage.doing(f, args[0])
    return _DOING.get(f.__name__, "working")


def check_bucket(settings: S3Settings) -> None:
    """Refuse, at start-up, a bucket that cannot be used, as the local path
    is refused: `StorageFailed` with one line saying why and what to do.

    One HEAD of the bucket, one attempt. A store that cannot be reached now
    is `StorageUnavailable`: the caller may warn and start anyway (readiness
    reports it), since it may come back.
    """
    checking = dataclasses.replace(
        settings, max_attempts=1, timeout=min(settings.timeout, 5.0)
    )
    where = settings.endpoint_url or "AWS"
    name = f"--aws_bucket {settings.bucket}"
    try:
        make_client(checking).head_bucket(Bucket=settings.bucket)
    except ClientError as e:
        code = _code(e)
        if code in ("404", "NoSuchBucket"):
            raise StorageFailed(
                f"{name}: no such bucket at {where}; create it, or name one that exists"
            ) from None
        if code in ("403", "AccessDenied"):
            raise StorageFailed(
                f"{name}: access denied at {where}; check the credentials "
                "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, an instance role, "
                "~/.aws) and that the bucket's policy lets them list it"
            ) from None
        if code in _TRANSIENT:
            raise StorageUnavailable(
                f"{name}: {where} is unavailable ({code})"
            ) from None
        raise StorageFailed(f"{name}: {where} refused it ({code})") from None
    except (BotoConnectionError, HTTPClientError) as e:
        raise StorageUnavailable(f"{name}: {where} cannot be reached ({e})") from None
    except BotoCoreError as e:  # no credentials found, a bad endpoint URL, ...
        raise StorageFailed(f"{name}: {e}") from None
