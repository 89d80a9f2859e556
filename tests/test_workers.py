"""``--workers``: real twistd processes sharing one port on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from imageserver import workers
from imageserver.config import Config
from tests.support import encode, quadrants
from tests.test_twistd import OperationsTests, TwistdCase


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def worker_number(pid: int) -> int:
    """The number the supervisor gave worker process ``pid``."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
    return int(env[workers.WORKER_ID.encode()])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class WorkerConfigTests(TwistdCase):
    def test_a_worker_runs_the_supervisor_s_config_as_one_process(self) -> None:
        config = Config(
            workers=2,
            processor_concurrency=5,
            outputs=("x64.webp",),
            memory_cache_bytes=1000,
            profile=True,
            manhole="tcp:0:interface=127.0.0.1",
            manhole_keys="keys",
            debug_worker=2,
        )

        def of(number: int) -> Config:
            env = {workers.WORKER_CONFIG: workers.worker_config(config, number)}
            worker = workers.config_of_worker(env)
            assert worker is not None
            return worker

        first, second = of(1), of(2)
        for worker in (first, second):
            self.assertEqual((worker.workers, worker.processor_concurrency), (1, 5))
            self.assertEqual(worker.outputs, ("x64.webp",))
            self.assertEqual(worker.memory_cache_bytes, 500)  # the host's, shared
        # The debug worker alone runs the manhole and the profiler, whose
        # /debug/* the supervisor's admin port forwards to a loopback port.
        self.assertEqual((first.manhole_endpoint, first.profile), (None, False))
        self.assertIsNone(first.admin_endpoint)
        self.assertEqual(second.manhole_endpoint, config.manhole_endpoint)
        self.assertTrue(second.profile)
        self.assertEqual(second.admin_endpoint, workers.DEBUG_ADMIN_PORT)
        self.assertIsNone(workers.config_of_worker({}))


class WorkersTests(TwistdCase):
    timeout = 90

    async def start_workers(self, *extra: str) -> tuple[object, set[int]]:
        process = await self.start_server("--workers", "2", *extra)
        await process.wait_for(rb"worker 1 is ready")
        await process.wait_for(rb"worker 2 is ready")
        pid = process.transport.pid  # type: ignore[attr-defined]
        pids = children(pid)
        self.assertEqual(len(pids), 2)
        for child in pids:
            self.addCleanup(lambda c=child: alive(c) and os.kill(c, signal.SIGKILL))
        return process, pids

    async def ready(self) -> tuple[int, dict[str, str]]:
        response, body = await self.call("GET", "/probe/ready", port=self.admin_port)
        return response.code, json.loads(body)

    async def test_two_workers_serve_one_port_and_one_dies(self) -> None:
        process, pids = await self.start_workers()
        self.assertEqual(await self.ready(), (200, {"message": "OK"}))
        photo = encode(quadrants((320, 240)))
        response, body = await self.call("POST", "/p?outputs=w64.png", data=photo)
        self.assertEqual(response.code, 200)
        digest = json.loads(body)["hash"]
        folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        await process.wait_for(rb"worker \d ended \(signal 9\)")  # type: ignore[attr-defined]
        self.assertEqual((await self.ready())[0], 503)  # one of two is starting
        for _ in range(10):  # the other worker answers meanwhile
            response, _ = await self.call("GET", f"{folder}/w64.png")
            self.assertEqual(response.code, 200)
        while len(children(process.transport.pid)) < 2:  # type: ignore[attr-defined]
            await deferLater(reactor, 0.1)
        await process.wait_for(rb"(?s)ended \(signal 9\).*is ready")  # type: ignore[attr-defined]
        self.assertEqual(await self.ready(), (200, {"message": "OK"}))
        self.assertNotIn(victim, children(process.transport.pid))  # type: ignore[attr-defined]
        response, _ = await self.call("GET", f"{folder}/w32.png")
        self.assertEqual(response.code, 200)

        process.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        self.assertEqual(await process.ended, 0)  # type: ignore[attr-defined]
        self.assertFalse(any(alive(p) for p in pids - {victim}))

    async def test_by_default_one_worker_per_cpu(self) -> None:
        cpus = len(os.sched_getaffinity(0))
        if cpus == 1:
            self.skipTest("one CPU: the default is one process, no workers")
        process = await self.start_server(workers=())
        await process.wait_for(rb"%d worker processes" % cpus)
        for number in range(1, cpus + 1):
            await process.wait_for(rb"worker %d is ready" % number)
        response, _ = await self.call("GET", "/status_check")
        self.assertEqual(response.code, 200)

    async def test_the_kernel_spreads_connections_over_the_workers(self) -> None:
        # Each worker has a socket of its own on the port, and the kernel
        # gives each new connection to one of them. (On one shared socket,
        # whichever worker woke first took every connection waiting, so a
        # burst landed on one worker.) Seen with worker 1 paused: its share of
        # 32 connections waits for it, and is served once it runs again.
        _, pids = await self.start_workers()
        paused = min(pids)
        os.kill(paused, signal.SIGSTOP)
        self.addCleanup(lambda: alive(paused) and os.kill(paused, signal.SIGCONT))
        clients = []
        for _ in range(32):
            client = socket.create_connection(("127.0.0.1", self.port))
            self.addCleanup(client.close)
            client.sendall(b"GET /status_check HTTP/1.1\r\nHost: x\r\n\r\n")
            client.setblocking(False)
            clients.append(client)

        def answered() -> int:
            count = 0
            for client in clients:
                with contextlib.suppress(BlockingIOError):
                    count += bool(client.recv(4096, socket.MSG_PEEK))
            return count

        await deferLater(reactor, 1.0)
        self.assertTrue(0 < answered() < 32, answered())
        os.kill(paused, signal.SIGCONT)
        for _ in range(100):
            if answered() == 32:
                break
            await deferLater(reactor, 0.05)
        self.assertEqual(answered(), 32)

    async def test_metrics_are_summed_over_workers(self) -> None:
        await self.start_workers()
        for _ in range(20):
            response, _ = await self.call("GET", "/status_check")
            self.assertEqual(response.code, 200)
        response, body = await self.call("GET", "/metrics", port=self.admin_port)
        self.assertEqual(response.code, 200)
        served = {
            sample.labels.get("pid", "all"): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == "imageserver_http_requests_total"
            and sample.labels.get("route") == "status_check"
        }
        self.assertEqual(served, {"all": 20.0})
        self.assertIn(b"imageserver_http_requests_in_flight 0.0", body)

    async def metric(self, name: str) -> float:
        _, body = await self.call("GET", "/metrics", port=self.admin_port)
        return sum(
            sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == name
        )

    async def test_one_render_for_concurrent_requests_over_workers(self) -> None:
        await self.start_workers()
        photo = encode(quadrants((1200, 900)))
        _, body = await self.call("POST", "/p", data=photo)
        digest = json.loads(body)["hash"]
        folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
        self.assertEqual(
            await self.metric("imageserver_processing_duration_seconds_count"), 1
        )
        for name in ("w77.png", "x50.webp"):
            requests = [
                Deferred.fromCoroutine(self.call("GET", f"{folder}/{name}"))
                for _ in range(20)
            ]
            bodies = {body for response, body in await gatherResults(requests)}
            self.assertEqual(len(bodies), 1)
        # The upload, and one render per name, whichever worker answered.
        self.assertEqual(
            await self.metric("imageserver_processing_duration_seconds_count"), 3
        )
        served = await self.metric("imageserver_http_requests_total")
        self.assertGreaterEqual(served, 41)

    async def test_a_worker_outlives_no_supervisor(self) -> None:
        process, pids = await self.start_workers()
        process.transport.signalProcess("KILL")  # type: ignore[attr-defined]
        await process.ended  # type: ignore[attr-defined]
        for _ in range(100):
            if not any(alive(p) for p in pids):
                break
            await deferLater(reactor, 0.1)
        self.assertFalse(any(alive(p) for p in pids))

    async def test_the_admin_port_forwards_debug_to_the_debug_worker(self) -> None:
        process, pids = await self.start_workers("--profile", "--debug_worker", "2")
        number = {pid: worker_number(pid) for pid in pids}
        response, body = await self.call("GET", "/debug/threads", port=self.admin_port)
        self.assertEqual(response.code, 200)
        pid = int(body.split()[1])
        self.assertEqual(number[pid], 2)
        response, body = await self.call("GET", "/debug/heap", port=self.admin_port)
        self.assertEqual(response.code, 200)
        self.assertIn(b"traced Python memory", body)
        # While the debug worker is gone, /debug/ says so; then it is back.
        os.kill(pid, signal.SIGKILL)
        response, body = await self.call("GET", "/debug/threads", port=self.admin_port)
        self.assertIn(response.code, (502, 503))
        self.assertIn("debug worker", json.loads(body)["error"])
        await process.wait_for(rb"(?s)ended \(signal 9\).*worker 2 is ready")  # type: ignore[attr-defined]
        response, body = await self.call("GET", "/debug/threads", port=self.admin_port)
        self.assertEqual(response.code, 200)
        self.assertNotEqual(int(body.split()[1]), pid)

    async def test_logs_name_the_worker(self) -> None:
        process, _ = await self.start_workers("--log_format", "json")
        await self.call("GET", "/status_check")
        process.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        self.assertEqual(await process.ended, 0)  # type: ignore[attr-defined]
        records = [json.loads(line) for line in process.output.splitlines()]  # type: ignore[attr-defined]
        access = [r for r in records if r["namespace"] == "imageserver.access"]
        self.assertEqual(len(access), 1)
        self.assertIn(access[0]["worker"], (1, 2))


class WorkerDrainTests(TwistdCase):
    """SIGTERM drains the workers' requests in flight, as one process does;
    a second signal exits at once."""

    held_upload = OperationsTests.held_upload
    test_sigterm_drains = (
        OperationsTests.test_sigterm_finishes_requests_in_flight_then_exits_0
    )
    test_second_signal = OperationsTests.test_second_signal_exits_at_once

    async def start_server(self, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        process = await super().start_server("--workers", "2", *extra, env=env)
        await process.wait_for(rb"worker 1 is ready")
        await process.wait_for(rb"worker 2 is ready")
        return process
