"""``--workers``: real twistd processes sharing one port on loopback."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import signal
import socket
import subprocess

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from imageserver import workers
from imageserver.config import Config
from imageserver.metrics.events import Events
from tests import test_twistd
from tests.support import encode, quadrants, serve
from tests.test_twistd import TwistdCase
from tests.web.test_origins import Served


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


class StaleMetricsTests(TwistdCase):
    def test_only_folders_of_supervisors_gone_are_removed(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        gone = subprocess.Popen(["true"])
        gone.wait()
        names = {
            "gone": f"{workers.METRICS_PREFIX}{gone.pid}-abc",
            "alive": f"{workers.METRICS_PREFIX}{os.getpid()}-def",
            "no owner": f"{workers.METRICS_PREFIX}x1y2z3",  # an older version's
            "other": "imageserver-other-1",
        }
        for name in names.values():
            os.makedirs(os.path.join(directory, name))
            with open(os.path.join(directory, name, "counter_1.db"), "wb"):
                pass
        removed = workers.remove_stale_metrics(directory)
        self.assertEqual(removed, [os.path.join(directory, names["gone"])])
        left = {n for n, name in names.items() if os.path.isdir(f"{directory}/{name}")}
        self.assertEqual(left, {"alive", "no owner", "other"})


class WorkersTests(TwistdCase):
    timeout = 90

    async def start_workers(
        self, *extra: str, env: dict[str, str] | None = None
    ) -> tuple[object, set[int]]:
        process = await self.start_server("--workers", "2", *extra, env=env)
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
        # Every family a single process reports, used by a worker or not.
        reported = {f.name for f in text_string_to_metric_families(body.decode())}
        alone = generate_latest(Events().registry).decode()
        single = {
            f.name
            for f in text_string_to_metric_families(alone)
            if not f.name.endswith("_created")  # not in multiprocess mode
        }
        self.assertLessEqual(single, reported)
        self.assertIn(b"imageserver_quota_refused_total 0.0", body)

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

    async def test_one_fetch_for_concurrent_requests_of_a_new_origin_path(
        self,
    ) -> None:
        web = Served()
        photo = encode(quadrants((640, 480)))
        web.objects[b"/img/a/b.jpg"] = photo
        base = serve(self, web)
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "d"))
        with open(os.path.join(root, "d", "c.jpg"), "wb") as f:
            f.write(photo)
        await self.start_workers(
            "--origin", f"files=file://{root},web={base}/img/",
            "--allow_private_sources",
        )  # fmt: skip
        for path in ("/files/d/c.jpg", "/web/a/b.jpg"):
            requests = [
                Deferred.fromCoroutine(self.call("GET", f"{path}/w{w}.png"))
                for w in (60, 80) * 10
            ]
            answers = await gatherResults(requests)
            self.assertEqual({r.code for r, _ in answers}, {200}, path)
            self.assertEqual(
                {r.headers.getRawHeaders("Content-Location")[0].split("/")[2]
                 for r, _ in answers},
                {hashlib.md5(photo).hexdigest()[:3]},
            )  # fmt: skip
        self.assertEqual(len(web.asked), 1)
        self.assertEqual(await self.metric("imageserver_origin_checks_total"), 2)
        # In each namespace one original stored and each variant made once.
        self.assertEqual(await self.metric("imageserver_originals_total"), 2)
        self.assertEqual(
            await self.metric("imageserver_processing_duration_seconds_count"), 6
        )

    async def test_a_worker_outlives_no_supervisor(self) -> None:
        # A temporary folder of its own: a supervisor started meanwhile by
        # anything else on the host (another test run) would remove the
        # dead supervisor's folder before the one this test starts.
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        env = {"TMPDIR": tmp}
        process, pids = await self.start_workers(env=env)
        supervisor = process.transport.pid  # type: ignore[attr-defined]
        process.transport.signalProcess("KILL")  # type: ignore[attr-defined]
        await process.ended  # type: ignore[attr-defined]
        for _ in range(100):
            if not any(alive(p) for p in pids):
                break
            await deferLater(reactor, 0.1)
        self.assertFalse(any(alive(p) for p in pids))
        # Its metrics folder is left; the next supervisor removes it.
        pattern = f"{tmp}/{workers.METRICS_PREFIX}{supervisor}-*"
        self.assertEqual(len(glob.glob(pattern)), 1)
        await self.start_workers(env=env)
        self.assertEqual(glob.glob(pattern), [])

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

    _single = test_twistd.OperationsTests
    held_upload = _single.held_upload
    until_metric = _single.until_metric
    test_sigterm_drains = _single.test_sigterm_finishes_requests_in_flight_then_exits_0
    test_second_signal = _single.test_second_signal_exits_at_once
    test_render_past_the_budget = (
        _single.test_a_render_past_the_shutdown_budget_is_answered
    )

    async def start_server(self, *extra: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        process = await super().start_server("--workers", "2", *extra, env=env)
        await process.wait_for(rb"worker 1 is ready")
        await process.wait_for(rb"worker 2 is ready")
        return process

    async def test_sigterm_to_every_process_at_once_drains(self) -> None:
        # What systemd does by default (KillMode=control-group), and a kill of
        # the process group: each worker gets SIGTERM from it and is asked to
        # stop by the supervisor too, which is still one request to drain.
        process = await self.start_server("--allow_private_sources")
        source, upload = await self.held_upload()
        supervisor = process.transport.pid  # type: ignore[attr-defined]
        for pid in (supervisor, *children(supervisor)):
            os.kill(pid, signal.SIGTERM)
        await process.wait_for(rb"waiting up to [0-9.]+s for 1 requests in flight")
        source.answer(encode(quadrants((64, 48))))
        response, _ = await upload
        self.assertEqual(response.code, 200)
        self.assertEqual(await process.ended, 0)
        for error in (b"Unhandled Error", b"Traceback", b"exiting now"):
            self.assertNotIn(error, process.output)

    async def test_sigterm_to_the_supervisor_stops_workers_without_errors(
        self,
    ) -> None:
        process = await self.start_server()
        process.transport.signalProcess("TERM")  # type: ignore[attr-defined]
        self.assertEqual(await process.ended, 0)
        self.assertEqual(process.output.count(b"Server Shut Down."), 3)
        for error in (b"Unhandled Error", b"Traceback", b"ReactorNotRunning"):
            self.assertNotIn(error, process.output)


#: Families one process reports after `HostReportsTests.families`'s traffic
#: and workers do not, because nothing happens to count: a worker stores what
#: it renders before answering (the host's single-flight locks), so nothing
#: goes behind. (And ``*_created`` series: prometheus_client's multiprocess
#: mode keeps no creation times.)
ONLY_ALONE = {"imageserver_background_writes", "imageserver_background_writes_pending"}


class HostReportsTests(TwistdCase):
    """What one process reports on its admin port, the supervisor reports for
    the host with ``--workers``: every probe, every metric family, and
    readiness with its reasons (the storage's included)."""

    timeout = 90

    async def server(self, workers: str) -> tuple[int, int, str]:
        """(main port, admin port, store) of a server with ``workers``."""
        store = os.path.abspath(self.mktemp())
        process = await self.start_server(
            "--local_base_path", store, workers=("--workers", workers)
        )
        if workers != "1":
            await process.wait_for(rb"worker 1 is ready")
            await process.wait_for(rb"worker 2 is ready")
            for child in children(process.transport.pid):  # type: ignore[attr-defined]
                self.addCleanup(lambda c=child: alive(c) and os.kill(c, 9))
        return self.port, self.admin_port, store

    async def families(self, port: int, admin_port: int) -> dict[str, int]:
        """Metric families with samples, and how many, after the same traffic."""
        photo = encode(quadrants((64, 48)))
        _, body = await self.call("POST", "/p?outputs=w32.jpg", port, data=photo)
        digest = json.loads(body)["hash"]
        folder = f"/p/{digest[:3]}/{digest[3:6]}/{digest[6:9]}/{digest[9:]}"
        await self.call("GET", f"{folder}/w16.png", port)
        await self.call("GET", "/status_check", port)
        # A worker's gauges reach the supervisor with its next report (every
        # second): read until they have, within a bound.
        for _ in range(100):
            _, body = await self.call("GET", "/metrics", admin_port)
            found = {
                family.name: len(family.samples)
                for family in text_string_to_metric_families(body.decode())
                if family.samples
            }
            if any(name.startswith("imageserver_pool") for name in found):
                return found
            await deferLater(reactor, 0.1)
        return found

    async def probes(self, admin_port: int) -> dict[str, tuple[int, str]]:
        found = {}
        for probe in ("/probe/live", "/probe/ready"):
            response, body = await self.call("GET", probe, admin_port)
            found[probe] = (response.code, json.loads(body)["message"])
        return found

    async def test_every_metric_family_of_one_process(self) -> None:
        one = await self.server("1")
        host = await self.server("2")
        single, supervised = await gatherResults([
            Deferred.fromCoroutine(self.families(*one[:2])),
            Deferred.fromCoroutine(self.families(*host[:2])),
        ])  # fmt: skip
        for family in sorted(single):
            if family.endswith("_created") or family in ONLY_ALONE:
                continue
            self.assertIn(family, supervised)
        self.assertEqual(supervised["imageserver_build_info"], 1)
        for pool in ("workers", "busy_workers", "queued_jobs"):  # summed by pool
            self.assertEqual(
                supervised[f"imageserver_pool_{pool}"],
                single[f"imageserver_pool_{pool}"],
            )
        _, body = await self.call("GET", "/metrics", host[1])
        threads = {
            sample.labels["pool"]: sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
            if sample.name == "imageserver_pool_workers"
        }
        self.assertEqual(threads["imageserver-processing"] % 2, 0)  # both workers

    async def test_readiness_is_every_worker_s_with_its_reasons(self) -> None:
        one = await self.server("1")
        host = await self.server("2")
        for probe, answer in (await self.probes(one[1])).items():
            self.assertEqual((await self.probes(host[1]))[probe], answer, probe)
        # A store that cannot be written (tried every 10 s): both turn 503
        # and say why.
        for _, _, store in (one, host):
            os.rename(store, store + ".away")
            with open(store, "w") as f:
                f.write("not a folder")
        for _ in range(150):
            answers = [await self.probes(admin) for _, admin, _ in (one, host)]
            if all(a["/probe/ready"][0] == 503 for a in answers):
                break
            await deferLater(reactor, 0.1)
        alone, hosted = (a["/probe/ready"] for a in answers)
        self.assertEqual(alone[0], 503)
        self.assertIn("the storage cannot be written", alone[1])
        self.assertEqual(hosted[0], 503)
        self.assertRegex(hosted[1], r"^worker [12]: the storage cannot be written")
        # (Not the same reason word for word: a check that ran between the
        # rename and the file's creation says the folder is missing.)
