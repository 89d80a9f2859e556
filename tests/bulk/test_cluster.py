"""``imageserver process --scheduler``: real processes on loopback.

A `distributed.LocalCluster` of two worker processes, the command line as a
process of its own, and the moto S3 server the suite already runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests import CHECKOUT_DIR
from tests.s3server import CREDENTIALS, MotoServer, free_port, shared

pytest.importorskip("distributed")

from distributed import Client, LocalCluster

from imageserver.bulk.cluster import shard_size
from imageserver.storage import similar

CHECKOUT = CHECKOUT_DIR
OUTPUTS = "w20.png,x16.jpg"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Two worker processes with the bucket's credentials the standard AWS way,
    as workers on other hosts would have them."""
    saved = dict(os.environ)
    os.environ.update(
        AWS_ACCESS_KEY_ID=CREDENTIALS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=CREDENTIALS["aws_secret_access_key"],
        PYTHONPATH=CHECKOUT,
    )
    try:
        yield from _cluster()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as cluster:
        yield cluster


def images(count: int) -> list[bytes]:
    out = []
    for n in range(count):
        image = Image.new("RGB", (40 + n % 17, 30 + n % 13), (n % 256, 80, 160))
        image.putpixel((0, 0), (n // 256, 0, 0))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


#: Where the command line keeps its local cache and the test its files.
WORK = os.path.join(tempfile.gettempdir(), f"imageserver-cluster-{os.getpid()}")


def command(bucket: str, moto: MotoServer, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imageserver", "process",
            "--aws_bucket", bucket, "--s3_endpoint_url", moto.url,
            "--local_base_path", os.path.join(WORK, bucket),
            *extra, "-"]  # fmt: skip


def run(
    args: list[str], stdin: str, on_line: Any = None
) -> tuple[int, list[str], list[str]]:
    """Run the command line; ``on_line`` sees each stderr line as it comes."""
    env = {**os.environ, "PYTHONPATH": CHECKOUT,
           "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
           "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"]}  # fmt: skip
    process = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    )  # fmt: skip
    errors: list[str] = []

    def read_errors() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            errors.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=read_errors)
    reader.start()
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(stdin)
    process.stdin.close()
    out = process.stdout.read()
    process.wait(300)
    reader.join()
    return process.returncode, out.splitlines(), errors


def objects(moto: MotoServer, bucket: str) -> dict[str, bytes]:
    """The bucket's objects, but for the similar index's segments, whose
    names say when and by which process they were written: `indexed`."""
    client = moto.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
            found[item["Key"]] = body.read()
    return {k: v for k, v in found.items() if not k.startswith(f"{similar.FOLDER}/")}


def indexed(moto: MotoServer, bucket: str) -> set[bytes]:
    """The records of the bucket's similar index (25 bytes each)."""
    client = moto.client()
    records = set()
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{similar.FOLDER}/")
    for item in listing.get("Contents", ()):
        data = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        records.update(data[i : i + 25] for i in range(0, len(data), 25))
    return records


@pytest.fixture(scope="module")
def stored() -> Iterator[dict[str, Any]]:
    """Two buckets holding the same 200 originals, uploaded by their hashes."""
    moto = shared()
    originals = images(200)
    buckets = [moto.new_bucket(), moto.new_bucket()]
    hashes = [hashlib.md5(data).hexdigest() for data in originals]
    # Stored the server's way, by the command line in local mode.
    folder = os.path.join(WORK, "originals")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for digest, data in zip(hashes, originals, strict=True):
        path = os.path.join(folder, f"{digest}.png")
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    for bucket in buckets:
        args = command(bucket, moto)[:-1] + paths
        code, out, err = run(args, "")
        assert code == 0, err
        assert len(out) == 200
    yield {"moto": moto, "buckets": buckets, "hashes": hashes}
    shutil.rmtree(WORK, ignore_errors=True)


def test_a_backfill_on_the_cluster_stores_what_local_mode_stores(
    cluster: LocalCluster, stored: dict[str, Any]
) -> None:
    moto, (local_bucket, cluster_bucket) = stored["moto"], stored["buckets"]
    lines = "\n".join(stored["hashes"]) + "\n"
    code, local_out, err = run(command(local_bucket, moto, "--outputs", OUTPUTS), lines)
    assert code == 0, err
    code, cluster_out, err = run(
        command(cluster_bucket, moto, "--outputs", OUTPUTS,
                "--scheduler", cluster.scheduler_address, "--shard_size", "25"),
        lines,
    )  # fmt: skip
    assert code == 0, err
    assert sorted(cluster_out) == sorted(local_out)
    local, remote = objects(moto, local_bucket), objects(moto, cluster_bucket)
    assert len(remote) == 200 * 4
    assert remote == local  # byte for byte
    assert indexed(moto, cluster_bucket) == indexed(moto, local_bucket)


def test_a_worker_killed_mid_run_has_its_shard_redone(
    cluster: LocalCluster, stored: dict[str, Any]
) -> None:
    moto = stored["moto"]
    bucket = stored["buckets"][1]
    with Client(cluster.scheduler_address) as client:
        pids = list(client.run(os.getpid).values())
    killed: list[int] = []

    def kill_once(line: str) -> None:
        if not killed and line.startswith("{"):
            killed.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)

    code, out, err = run(
        command(bucket, moto, "--outputs", "w24.png",
                "--scheduler", cluster.scheduler_address, "--shard_size", "10",
                "--progress_json"),
        "\n".join(stored["hashes"]) + "\n",
        on_line=kill_once,
    )  # fmt: skip
    assert killed, "the run ended before a worker could be killed"
    assert code == 0, err
    assert len(out) == 200
    assert json.loads(err[-1]) == {"done": 200, "total": 200, "failed": 0}
    keys = objects(moto, bucket)
    assert sum(key.endswith("/w24.png") for key in keys) == 200


def test_a_bad_item_is_its_own_error_line(
    cluster: LocalCluster, stored: dict[str, Any]
) -> None:
    moto = stored["moto"]
    bucket = stored["buckets"][1]
    lines = [stored["hashes"][0], "0" * 32, "not-a-hash", stored["hashes"][1]]
    code, out, err = run(
        command(bucket, moto, "--outputs", "w12.png",
                "--scheduler", cluster.scheduler_address),
        "\n".join(lines) + "\n",
    )  # fmt: skip
    assert code == 1
    assert len(out) == 2
    assert sorted(err) == [
        f"line 2: {'0' * 32} is not in the store",
        "line 3: not a URL or a 32-hex hash: 'not-a-hash'",
    ]


def test_origin_paths_on_the_cluster_as_in_local_mode(
    cluster: LocalCluster, tmp_path: Any
) -> None:
    """Paths of a directory origin warmed by the cluster's workers (which
    fetch them, as the origin travels with the task) and in local mode: the
    same lines, the same files; a bad path is its own line."""
    origin = tmp_path / "origin"
    (origin / "sku").mkdir(parents=True)
    for n, data in enumerate(images(12)):
        (origin / "sku" / f"{n}.png").write_bytes(data)
    paths = "\n".join([f"sku/{n}.png" for n in range(12)] + ["../x", "no.png"])
    lines, files = {}, {}
    for mode in ((), ("--scheduler", cluster.scheduler_address, "--shard_size", "3")):
        store = tmp_path / f"store{len(mode)}"
        code, out, err = run(
            [sys.executable, "-m", "imageserver", "process", "--local_base_path",
             str(store), "--origin", f"shop=file://{origin}/", "--outputs",
             "w10.png", *mode, "-"],
            paths + "\n",
        )  # fmt: skip
        assert code == 1
        assert sorted(err) == [
            "../x: '../x': empty, '.' and '..' segments are not origin paths",
            "no.png: no object 'no.png' at the origin of 'shop'",
        ]
        lines[mode] = sorted(out)
        files[mode] = sorted(  # the index's segments are named by who wrote them
            str(p.relative_to(store))
            for p in store.rglob("*")
            if p.is_file() and p.relative_to(store).parts[0] != similar.FOLDER
        )
    local, remote = lines.values()
    assert local == remote and len(local) == 12
    local_files, remote_files = files.values()
    assert local_files == remote_files
    assert sum(f.endswith("/w10.png") for f in local_files) == 12
    assert sum(f.startswith("shop/paths/") for f in local_files) == 12


def test_local_workers_of_its_own(tmp_path: Any) -> None:
    """``--scheduler local:2``: the command line starts two workers here."""
    paths = []
    for n, data in enumerate(images(6)):
        path = tmp_path / f"{n}.png"
        path.write_bytes(data)
        paths.append(str(path))
    lines = {}
    for mode in ((), ("--scheduler", "local:2")):
        store = tmp_path / f"store{len(mode)}"
        code, out, err = run(
            [sys.executable, "-m", "imageserver", "process", "--local_base_path",
             str(store), "--outputs", "w10.png", *mode, *paths, paths[0]],
            "",
        )  # fmt: skip
        assert code == 0, err
        lines[mode] = sorted(out)
        files = sorted(p.name for p in store.rglob("*") if p.is_file())
        assert files.count("w10.png") == 6
        assert "store-probe" not in files  # found by the workers, then removed
    assert lines[()] == lines[("--scheduler", "local:2")]
    assert len(lines[()]) == 6  # the repeated file once


def test_scheduler_values() -> None:
    from imageserver.config import Config

    assert Config(scheduler="local:3").local_workers == 3
    shared = "/srv/images"  # a relative path cannot be shared: refused
    assert (
        Config(scheduler="tcp://10.0.0.5:8786", local_base_path=shared).local_workers
        is None
    )
    for bad in ("local:0", "local:x", "10.0.0.5:8786", "http://x"):
        with pytest.raises(ValueError, match="--scheduler"):
            Config(scheduler=bad)


def serve(
    root: str, port: int, bucket: str, moto: MotoServer, scheduler: str, *more: str
) -> Any:
    env = {**os.environ, "PYTHONPATH": CHECKOUT,
           "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
           "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"]}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
         "-n", "--pidfile=", "--logfile=-", "imageserver", "--workers", "1",
         "--port", str(port), "--admin_port", "none", "--local_base_path", root,
         "--aws_bucket", bucket, "--s3_endpoint_url", moto.url,
         "--scheduler", scheduler, "--shard_size", "5", *more],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status_check").read()
            return process
        except OSError:
            time.sleep(0.05)  # a process starting: nothing to wait on but time
    process.kill()
    raise RuntimeError("the server did not start")


def status(port: int, path: str) -> tuple[int, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, json.loads(response.read())


def test_server_batches_run_on_the_cluster_and_outlive_a_restart(
    cluster: LocalCluster, stored: dict[str, Any], tmp_path: Any
) -> None:
    moto, bucket = stored["moto"], stored["buckets"][0]
    hashes = stored["hashes"][:60]
    port = free_port()
    server = serve(str(tmp_path / "a"), port, bucket, moto, cluster.scheduler_address)
    try:
        body = ("\n".join(hashes) + "\n" + "0" * 32 + "\n").encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/p/batch?outputs=w9.png", data=body
        )
        with urllib.request.urlopen(request) as response:
            job = json.loads(response.read())["job_id"]
        while status(port, f"/p/batch/{job}")[1]["done"] < 5:
            time.sleep(0.05)
        server.kill()  # mid-job, without a word
        server.wait()
        server = serve(
            str(tmp_path / "b"), port, bucket, moto, cluster.scheduler_address
        )
        for _ in range(1200):
            code, report = status(port, f"/p/batch/{job}")  # resumes it
            if code == 200:
                break
            time.sleep(0.05)
        assert code == 200, report
        assert (report["done"], report["failed"]) == (60, 1)
        assert report["items"][-1]["error"] == f"{'0' * 32} is not in the store"
        assert [i["hash"] for i in report["items"][:60]] == hashes
        keys = objects(moto, bucket)
        assert sum(key.endswith("/w9.png") for key in keys) == 60
        # The cluster's workers did them: the server's bucket is in their use.
        with Client(cluster.scheduler_address) as client:
            used = client.run(_buckets_in_use)
        assert any(bucket in buckets for buckets in used.values()), used
    finally:
        server.kill()
        server.wait()


def test_a_server_batch_of_origin_paths_runs_on_the_cluster(
    cluster: LocalCluster, stored: dict[str, Any], tmp_path: Any
) -> None:
    moto, bucket = stored["moto"], stored["buckets"][0]
    origin = tmp_path / "origin"
    origin.mkdir()
    originals = images(8)
    for n, data in enumerate(originals):
        (origin / f"{n}.png").write_bytes(data)
    port = free_port()
    server = serve(
        str(tmp_path / "a"), port, bucket, moto, cluster.scheduler_address,
        "--origin", f"shop=file://{origin}/",
    )  # fmt: skip
    try:
        body = "".join(f"{n}.png\n" for n in range(8)) + "none.png\n"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/shop/batch?outputs=w9.png", data=body.encode()
        )
        with urllib.request.urlopen(request) as response:
            job = json.loads(response.read())["job_id"]
        for _ in range(1200):
            code, report = status(port, f"/shop/batch/{job}")
            if code == 200:
                break
            time.sleep(0.05)
        assert code == 200, report
        assert (report["done"], report["failed"]) == (8, 1)
        assert [i["hash"] for i in report["items"][:8]] == [
            hashlib.md5(data).hexdigest() for data in originals
        ]
        assert report["items"][8] == {
            "path": "none.png", "hash": None, "width": None, "height": None,
            "error": "no object 'none.png' at the origin of 'shop'",
        }  # fmt: skip
        with Client(cluster.scheduler_address) as client:
            used = client.run(_origins_in_use)
        assert any(f"shop=file://{origin}/" in o for o in used.values()), used
    finally:
        server.kill()
        server.wait()


def _origins_in_use() -> list[str]:
    """On a worker: the origins its runtimes fetch from."""
    from imageserver.bulk.cluster import _Runtime

    return [o for config in _Runtime._runtimes for o in config.origin]


def _buckets_in_use() -> list[str]:
    """On a worker: the buckets its runtimes work on."""
    from imageserver.bulk.cluster import _Runtime

    return [config.aws_bucket for config in _Runtime._runtimes]


def test_a_server_batch_outlives_a_restart_of_the_scheduler(
    cluster: LocalCluster, stored: dict[str, Any], tmp_path: Any
) -> None:
    """The scheduler and its workers go away mid-job and come back on the
    same address: the server submits the unfinished shards again."""
    moto, bucket = stored["moto"], stored["buckets"][1]
    hashes = stored["hashes"][60:120]
    scheduler_port = free_port()
    own = _cluster_on(scheduler_port)
    port = free_port()
    server = serve(str(tmp_path), port, bucket, moto, own.scheduler_address)
    try:
        body = ("\n".join(hashes) + "\n").encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/p/batch?outputs={SLOW}", data=body
        )
        with urllib.request.urlopen(request) as response:
            job = json.loads(response.read())["job_id"]
        while (done := status(port, f"/p/batch/{job}")[1]["done"]) < 5:
            time.sleep(0.05)
        own.close()  # the whole cluster, mid-job
        assert done < 60, "the job ended before the cluster could go"
        own = _cluster_on(scheduler_port)
        for _ in range(1200):
            code, report = status(port, f"/p/batch/{job}")
            if code == 200:
                break
            time.sleep(0.05)
        assert code == 200, report
        assert (report["done"], report["failed"]) == (60, 0)
        keys = objects(moto, bucket)
        assert sum(key.endswith("/w11.png") for key in keys) == 60
    finally:
        server.kill()
        server.wait()
        own.close()


#: Outputs enough to make a job outlast the time taken to stop its cluster.
SLOW = "w11.png,w13.png,w15.webp,x14.jpg,w17.avif"


def _cluster_on(port: int) -> LocalCluster:
    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=port,
        dashboard_address=None,
    )


@given(
    items=st.integers(1, 2_000_000),
    largest=st.integers(1, 5000),
    threads=st.integers(1, 512),
)
def test_shard_sizes(items: int, largest: int, threads: int) -> None:
    """Never above --shard_size; and while that allows, at least four shards
    per worker thread (or one item each)."""
    size = shard_size(items, largest, threads)
    assert 1 <= size <= largest
    count = -(-items // size)
    if size < largest:
        assert count >= min(items, 4 * threads)
    # ...and not many more than that asks for.
    assert count <= max(-(-items // largest), 8 * threads)


def test_an_unreachable_scheduler_is_one_error_line(tmp_path: Any) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(images(1)[0])
    address = f"tcp://127.0.0.1:{free_port()}"
    env_before = dict(os.environ)
    os.environ["DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT"] = "1s"
    try:
        code, out, err = run(
            [sys.executable, "-m", "imageserver", "process", "--local_base_path",
             str(tmp_path / "store"), "--scheduler", address, str(path)],
            "",
        )  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert (code, out) == (1, [])
    assert len(err) == 1 and err[0].startswith(
        f"cannot reach the scheduler at {address}: "
    ), err


def test_without_dask_the_option_is_a_usage_error(monkeypatch: Any) -> None:
    # Dask is installed here: its absence is the one thing faked.
    import importlib.util

    from twisted.python.usage import UsageError

    from imageserver.options import ServerOptions

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "distributed" else real(name, *a),
    )
    options = ServerOptions()
    options.environ = {}
    with pytest.raises(UsageError, match=r"pip install '\.\[cluster\]'"):
        options.parseOptions(
            ["--scheduler", "tcp://10.0.0.5:8786", "--local_base_path", "/srv/images"]
        )


#: Options that stay home, each for a reason; with `cluster.TRAVELS`, every
#: option: one added later must be put on one side or the other.
STAYS_HOME = {
    # thumbor's URLs are answered by the server, not by batch workers
    "thumbor", "thumbor_security_key", "thumbor_allow_unsafe", "thumbor_loader",
    "thumbor_quality", "thumbor_auto_webp", "thumbor_auto_avif",
    # what answers say to browsers and caches: the server's own
    "cors_origins", "client_hints", "cache_control_variants", "cache_control_files",
    "namespace_render_rate", "namespace_upload_rate", "token_write_rate", "rate_burst",
    # a namespace's quota is checked where its writes arrive (a batch: once)
    "namespace_quota_bytes", "quota_interval",
    "cache_control_presets", "preset_max_age", "origin_stale_while_revalidate",
    # credentials and access: workers have their own (environment, role)
    "aws_access_key_id", "aws_secret_key", "secret", "write_tokens", "open_similar",
    "webhook", "webhook_secret", "webhook_queue", "webhook_retry_seconds",
    "manhole", "manhole_keys", "manhole_passwords", "manhole_host_keys",
    "manhole_allow_remote",
    # the server's ports, processes and connections
    "port", "listen", "admin_port", "workers", "debug_worker", "idle_timeout",
    "request_head_timeout", "max_connections", "max_receiving_bytes",
    "listen_backlog", "batch_concurrency", "purge_check_interval",
    "serve_originals",
    # reporting and debugging
    "enable_statsd", "statsd_host", "statsd_port", "statsd_prefix",
    "log_format", "profile", "profile_allow_remote",
    "otlp_endpoint", "otlp_service_name", "otlp_sample_ratio",
    # the cluster itself
    "scheduler", "shard_size", "shard_retries",
}  # fmt: skip


def test_every_option_is_either_sent_to_workers_or_kept_home() -> None:
    from imageserver.bulk.cluster import TRAVELS
    from imageserver.config import fields

    names = {f.name for f in fields()}
    assert names == TRAVELS | STAYS_HOME
    assert not TRAVELS & STAYS_HOME
    secret = {f.name for f in fields() if f.metadata["secret"]}
    assert secret >= {"aws_access_key_id", "aws_secret_key", "manhole_passwords",
                      "secret", "webhook_secret"}  # fmt: skip
    assert not TRAVELS & secret


def test_no_secret_option_is_in_a_pickled_task(tmp_path: Any) -> None:
    """Every option marked secret set to a value of its own: none of those
    values is in the bytes of a task, of either kind (server batch shard or
    command-line shard), pickled as Dask pickles it."""
    import cloudpickle

    from imageserver.bulk.batches import Item
    from imageserver.bulk.cluster import run_batch_shard, run_shard, worker_config
    from imageserver.config import Config, fields

    values = {
        f.name: f"secret-value-of-{f.name}" for f in fields() if f.metadata["secret"]
    }
    config = Config(
        local_base_path=str(tmp_path),
        aws_bucket="photos",
        webhook=("http://127.0.0.1:9/hook",),
        manhole="7003",
        **values,
    )
    tasks = [
        (run_shard, worker_config(config), "p", "", [Item(1, url="http://x/")], 2),
        (run_batch_shard, worker_config(config), "p", "", [{"url": None}]),
    ]
    for task in tasks:
        data = cloudpickle.dumps(task)
        found = [name for name, value in values.items() if value.encode() in data]
        assert found == []
    # What does travel arrives whole.
    assert worker_config(config).aws_bucket == "photos"
    assert worker_config(config).local_base_path == str(tmp_path)


def test_credentials_given_on_the_command_line_stay_in_its_process(
    cluster: LocalCluster, stored: dict[str, Any]
) -> None:
    """The workers use their own credentials (the fixture's environment):
    those of the command line are not in the runtimes the workers built."""
    moto, bucket = stored["moto"], stored["buckets"][1]
    code, _, err = run(
        command(bucket, moto, "--outputs", "w11.png",
                "--scheduler", cluster.scheduler_address,
                "--aws_access_key_id", CREDENTIALS["aws_access_key_id"],
                "--aws_secret_key", CREDENTIALS["aws_secret_access_key"]),
        stored["hashes"][0] + "\n",
    )  # fmt: skip
    assert code == 0, err
    with Client(cluster.scheduler_address) as client:
        seen = client.run(_credentials_in_use)
    assert seen and all(keys == [] for keys in seen.values()), seen


def _credentials_in_use() -> list[str]:
    """On a worker: credentials its runtimes were given by tasks."""
    from imageserver.bulk.cluster import _Runtime

    return [
        value
        for config in _Runtime._runtimes
        for value in (config.aws_access_key_id, config.aws_secret_key)
        if value
    ]


def test_a_relative_local_path_cannot_be_shared_by_remote_workers() -> None:
    """Refused before anything runs, saying why and what to do; a bucket,
    an absolute path or workers on this host (local:N) are fine."""
    from imageserver.bulk.cluster import worker_config
    from imageserver.config import Config

    with pytest.raises(ValueError) as refused:
        Config(scheduler="tcp://10.0.0.5:8786")
    assert str(refused.value) == (
        "--scheduler tcp://10.0.0.5:8786 with the relative --local_base_path "
        "public: each Dask worker would store under its own working directory; "
        "give --aws_bucket, or an absolute path that every worker mounts at the "
        "same place"
    )
    Config(scheduler="tcp://10.0.0.5:8786", aws_bucket="photos")
    Config(scheduler="tcp://10.0.0.5:8786", local_base_path="/srv/images")
    local = worker_config(Config(scheduler="local:2"))
    assert local.local_base_path == os.path.abspath("public")


@pytest.mark.parametrize(
    ("command", "tail"),
    [
        ([sys.executable, "-m", "imageserver", "process"], ["-"]),
        ([sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
          "-n", "--pidfile=", "imageserver"], []),
    ],
)  # fmt: skip
def test_the_server_and_the_command_line_refuse_it(
    command: list[str], tail: list[str], tmp_path: Any
) -> None:
    done = subprocess.run(
        [*command, "--scheduler", "tcp://127.0.0.1:1", *tail],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={**os.environ, "PYTHONPATH": CHECKOUT},
    )  # fmt: skip
    assert done.returncode in (1, 2)  # a usage error: exit 2, twistd's is 1
    assert "each Dask worker would store under its own working directory" in (
        done.stderr + done.stdout
    )
    assert not (tmp_path / "public").exists()


def test_a_worker_that_does_not_see_the_store_fails_its_shard(
    cluster: LocalCluster, tmp_path: Any
) -> None:
    """A shard whose worker cannot read the probe its client wrote (another
    host's disk at that path, another store behind the bucket's name) fails
    with the reason, and stores nothing anywhere."""
    from imageserver.bulk.batches import Item
    from imageserver.bulk.cluster import StoreNotShared, run_shard, worker_config
    from imageserver.config import Config

    store = tmp_path / "store"
    config = worker_config(Config(local_base_path=str(store)))
    with Client(cluster.scheduler_address) as client:
        future = client.submit(
            run_shard, config, "p", "w8.png", [Item(1, url="http://x/a.png")], 1,
            "4d1c6b5e-0000-4000-8000-000000000000", pure=False,
        )  # fmt: skip
        with pytest.raises(StoreNotShared) as failed:
            future.result()
    assert str(failed.value) == (
        f"the worker on {socket.gethostname()} does not see its client's store: "
        f"--local_base_path {store} there lacks "
        "p/batch/4d1c6b5e-0000-4000-8000-000000000000/store-probe, which the "
        "client wrote; mount the same storage at that path on every worker, or "
        "use --aws_bucket"
    )
    assert not store.exists()  # nothing written elsewhere, not even a folder


def test_the_probe_is_checked_in_the_store_the_worker_uses(tmp_path: Any) -> None:
    """Written by the client, found by the worker: for a local path and a
    bucket; a bucket that does not exist is the start-up check's line."""
    from imageserver.bulk.cluster import StoreNotShared, check_probe, write_probe
    from imageserver.config import Config

    moto = shared()
    env = {"AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
           "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"]}  # fmt: skip
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        for config in (
            Config(local_base_path=str(tmp_path / "local")),
            Config(local_base_path=str(tmp_path / "cache"),
                   aws_bucket=moto.new_bucket(), s3_endpoint_url=moto.url),
        ):  # fmt: skip
            token = write_probe(config, "p")
            check_probe(config, "p", token)  # found: no error
            with pytest.raises(StoreNotShared, match="does not see its client's"):
                check_probe(config, "p", "00000000-0000-4000-8000-000000000000")
        missing = Config(
            local_base_path=str(tmp_path / "c2"),
            aws_bucket="nosuchbucket",
            s3_endpoint_url=moto.url,
        )
        with pytest.raises(StoreNotShared) as failed:
            check_probe(missing, "p", token)
        assert str(failed.value) == (
            f"the worker on {socket.gethostname()}: --aws_bucket nosuchbucket: no "
            f"such bucket at {moto.url}; create it, or name one that exists"
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_a_server_batch_whose_workers_do_not_see_the_store_fails_its_items(
    cluster: LocalCluster, tmp_path: Any
) -> None:
    """Its items fail with the reason (the job ends), not resubmitted forever."""
    from imageserver.bulk.cluster import ClusterShards
    from imageserver.config import Config

    config = Config(
        local_base_path=str(tmp_path / "store"), scheduler=cluster.scheduler_address
    )
    shards = ClusterShards(config, lambda f, *a: f(*a))
    # What a worker on another host would find: no probe at that path.
    shards._probes["p"] = "00000000-0000-4000-8000-000000000000"
    try:
        results = shards._submit("p", "", [{"url": None, "hash": "0" * 32}])
    finally:
        shards._close()
    assert len(results) == 1
    assert results[0]["error"].startswith(
        f"the worker on {socket.gethostname()} does not see its client's store"
    )
