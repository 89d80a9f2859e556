"""Worker processes: one port, several processes, each a whole server.

With ``--workers`` above 1 the twistd process is a supervisor: it binds the
main port (so privileges and port errors stay where they are today) but
never accepts on it; it starts the workers, each a twistd process that adopts
a listening socket (inherited as file descriptor `LISTENING_FD`) and runs
the same service tree as a single server, minus the admin port, which the
supervisor keeps. On TCP each worker has a socket of its own on the same
port (``SO_REUSEPORT``, `sockets_for`), so the kernel spreads connections
evenly over the workers; the supervisor holds every socket, so connections
arriving while a worker restarts wait in its backlog. A worker that dies is
started again after a backoff; on stop, each worker is asked to drain
(SIGTERM) and waited for within the shutdown deadline. A worker whose
supervisor is gone (its standard input closes) stops by itself, so no
orphan keeps the port.

The supervisor's admin port answers for the host: each worker sends it,
every `REPORT_SECONDS` over its control pipe, what only the process itself
knows (its readiness with the reason, its thread pools); counters and
histograms come through prometheus_client's files (`WorkerMetrics`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import treq
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectionDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from imageserver import config as configuration
from imageserver.config import Config
from imageserver.metrics import tracing
from imageserver.metrics.events import Events, PoolReading, host_metrics
from imageserver.runtime.listening import Listening
from imageserver.runtime.shutdown import SENDING_SECONDS, Deadline, stop_reactor
from imageserver.runtime.waiting import drained

log = Logger()

#: The environment a worker is started with: its Config (JSON) and its number.
WORKER_CONFIG = "IMAGESERVER_WORKER_CONFIG"
WORKER_ID = "IMAGESERVER_WORKER_ID"
#: The inherited listening socket, and the pipe a worker says it is ready on.
LISTENING_FD = 3
CONTROL_FD = 4
#: Restart delays: doubled after each quick death, back to the first after a
#: worker has lived `STABLE_SECONDS`.
FIRST_BACKOFF, MAX_BACKOFF, STABLE_SECONDS = 0.5, 30.0, 60.0
#: Where the debug worker serves /debug/* for the supervisor to forward to.
DEBUG_ADMIN_PORT = "tcp:0:interface=127.0.0.1"
#: What the supervisor writes to a worker's standard input to have it drain.
STOP = b"stop\n"
#: Seconds between a worker's reports (readiness, pools) to the supervisor.
REPORT_SECONDS = 1.0
_TWISTD = "from twisted.scripts.twistd import run; run()"
_TWISTD_ARGS = ("-n", "--pidfile=", "--logfile=-", "imageserver")


def worker_config(config: Config, number: int) -> str:
    """The Config worker ``number`` runs with, as JSON: the supervisor's, as
    one process, with a share of the memory cache (``--memory_cache_bytes``
    is the host's); only `Config.debug_worker` keeps the manhole and
    ``--profile``, the latter with an admin port of its own on loopback,
    which the supervisor's admin port forwards ``/debug/*`` to.

    Its processing threads are the supervisor's `Config.processor_concurrency`,
    sized for one worker of many (config._threads).
    """
    debug = number == config.debug_worker
    worker = dataclasses.replace(
        config,
        workers=1,
        memory_cache_bytes=config.memory_cache_bytes // config.workers,
        manhole=config.manhole if debug else "",
        profile=config.profile and debug,
        admin_port=DEBUG_ADMIN_PORT if config.profile and debug else "none",
    )
    return json.dumps(dataclasses.asdict(worker))


def sockets_for(
    listening: socket.socket, count: int, backlog: int
) -> list[socket.socket]:
    """One listening socket per worker, all on ``listening``'s address.

    On Linux a TCP socket gets ``count - 1`` siblings bound with
    ``SO_REUSEPORT``, and the kernel hashes each new connection to one of
    them: every worker gets its share. A worker accepting on a shared socket
    instead takes whatever is waiting when it wakes (Twisted accepts up to a
    hundred at a time), so a burst of connections lands on one worker. Where
    that is not available (UNIX sockets, other systems) every worker shares
    ``listening``.
    """
    if (
        count == 1
        or not sys.platform.startswith("linux")
        or listening.family not in (socket.AF_INET, socket.AF_INET6)
    ):
        return [listening] * count
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sockets = [listening]
    for _ in range(count - 1):
        sibling = socket.socket(listening.family, socket.SOCK_STREAM)
        sibling.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sibling.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if listening.family == socket.AF_INET6:
            v6only = listening.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            sibling.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sibling.bind(listening.getsockname())
        sibling.listen(backlog)
        sibling.setblocking(False)  # as the reactor's own are
        sockets.append(sibling)
    return sockets


def config_of_worker(environ: Mapping[str, str]) -> Config | None:
    """The Config of this process when it is a worker, else None."""
    text = environ.get(WORKER_CONFIG)
    if text is None:
        return None
    values: dict[str, Any] = json.loads(text)
    for f in configuration.fields():
        if isinstance(values.get(f.name), list):
            values[f.name] = tuple(values[f.name])
    return Config(**values)


#: Where prometheus_client keeps a process's metrics in files, to be summed.
METRICS_DIRECTORY = "PROMETHEUS_MULTIPROC_DIR"


#: A supervisor's metrics folder is ``{METRICS_PREFIX}{its pid}-{random}``
#: in the temporary folder.
METRICS_PREFIX = "imageserver-metrics-"


def remove_stale_metrics(directory: str) -> list[str]:
    """Remove the metrics folders in ``directory`` whose supervisor is gone
    (killed before it could remove its own); the paths removed.

    A folder is stale only when its name carries a process id and no process
    has that id: a live process, whoever's, keeps its folder.
    """
    removed = []
    for path in glob.glob(os.path.join(directory, METRICS_PREFIX + "*")):
        owner, _, _ = os.path.basename(path)[len(METRICS_PREFIX) :].partition("-")
        if not re.fullmatch("[0-9]{1,10}", owner) or _alive(int(owner)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed {path}, left by a supervisor that is gone", path=path)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


class WorkerMetrics(Collector):
    """Every worker's counters, histograms and gauges, summed over workers
    (prometheus_client's multiprocess mode: each worker writes its values to
    files in `path`; the dead's counters still count, their gauges not).

    A family no worker has written yet is reported as a single process
    reports it (its unlabelled counters at 0, its labelled ones without
    samples), so the same families are there with or without --workers."""

    def __init__(self) -> None:
        self.path: str | None = None
        self._unused: list[Any] | None = None

    def collect(self) -> Iterator[Any]:
        if self.path is None:
            return iter(())
        files = glob.glob(os.path.join(self.path, "*.db"))
        merged = list(MultiProcessCollector.merge(files, accumulate=True))
        written = {family.name for family in merged}
        merged += [f for f in self._fresh() if f.name not in written]
        return iter(merged)

    def _fresh(self) -> list[Any]:
        """The workers' families as a process that has done nothing has them
        (in this process's memory: the supervisor writes no files), but for
        those the supervisor reports itself (`host_metrics`)."""
        if self._unused is None:
            host = CollectorRegistry()
            host_metrics(host, lambda: ())
            own = {f.name for f in host.collect()}
            families = Events().registry.collect()
            self._unused = [f for f in families if f.name not in own]
        return self._unused


@dataclasses.dataclass(frozen=True)
class Report:
    """What a worker tells the supervisor of itself (one line of JSON)."""

    #: Why the worker is not ready (`web.admin.Readiness`), or None.
    problem: str | None
    pools: tuple[PoolReading, ...]

    def encode(self) -> bytes:
        return b"report " + json.dumps(dataclasses.asdict(self)).encode() + b"\n"

    @classmethod
    def decode(cls, text: bytes) -> Report:
        fields = json.loads(text)
        return cls(fields["problem"], tuple(tuple(p) for p in fields["pools"]))


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: Workers, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.ready = False
        #: The port of the worker's own admin site (the debug worker's).
        self.admin_port: int | None = None
        self.done = False
        self.pid: int | None = None
        #: The worker's last report; None until the first.
        self.report: Report | None = None
        self._control = b""
        self._waiting: list[Deferred[None]] = []

    def wait_ended(self) -> Deferred[None]:
        """Fires once the process has ended (at once if it has)."""
        d: Deferred[None] = Deferred()
        if self.done:
            d.callback(None)
        else:
            self._waiting.append(d)
        return d

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != CONTROL_FD:
            return
        self._control += data
        *lines, self._control = self._control.split(b"\n")
        for line in lines:
            kind, _, rest = line.partition(b" ")
            if kind == b"ready" and not self.ready:
                self.ready = True
                self.admin_port = int(rest) if rest else None
                log.info("worker {number} is ready", number=self.number)
            elif kind == b"report":
                self.report = Report.decode(rest)

    def processEnded(self, reason: Failure) -> None:
        self.ready = False
        self.report = None
        self.done = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
        self.supervisor.ended(self, reason)


class Workers(Service):
    """Starts ``count`` workers on ``port``'s socket and keeps them running.

    ``problem`` is None when every worker is ready (for the admin port's
    readiness); ``restarts`` counts workers started again after dying.
    """

    def __init__(
        self,
        reactor: Any,
        config: Config,
        port: Any,
        deadline: Deadline,
    ) -> None:
        self.setName("workers")
        self._reactor = reactor
        self._config = config
        self._port = port
        self._deadline = deadline
        self._workers: dict[int, _Worker] = {}
        self._backoff: dict[int, float] = {}
        self._started: dict[int, float] = {}
        self._pending: dict[int, Any] = {}
        self._sockets: list[socket.socket] = []
        self.restarts = 0
        self.metrics = WorkerMetrics()

    @property
    def problem(self) -> str | None:
        """Why the host is not ready: a worker starting, or one's own reason
        (its storage cannot be written, say)."""
        ready = sum(1 for w in self._workers.values() if w.ready)
        if ready < self._config.workers:
            return f"{ready} of {self._config.workers} workers ready"
        for number, worker in sorted(self._workers.items()):
            if worker.report is not None and worker.report.problem is not None:
                return f"worker {number}: {worker.report.problem}"
        return None

    def pool_readings(self) -> list[PoolReading]:
        """Each pool's threads, busy threads and queued jobs, summed over the
        workers' last reports."""
        sums: dict[str, list[int]] = {}
        for worker in self._workers.values():
            for name, *values in worker.report.pools if worker.report else ():
                total = sums.setdefault(name, [0, 0, 0])
                for i, value in enumerate(values):
                    total[i] += value
        return [(name, *values) for name, values in sums.items()]  # type: ignore[misc]

    def debug(self) -> IResource | None:
        """``/debug/`` of the debug worker, forwarded; None while it starts."""
        worker = self._workers.get(self._config.debug_worker)
        if worker is None or not worker.ready or worker.admin_port is None:
            return None
        return _Forward(f"http://127.0.0.1:{worker.admin_port}")

    def startService(self) -> None:
        super().startService()
        listening: IListeningPort = self._port.port
        # The supervisor holds the sockets for the workers; it never accepts.
        listening.stopReading()  # type: ignore[attr-defined]
        self._sockets = sockets_for(
            listening.socket,  # type: ignore[attr-defined]
            self._config.workers,
            getattr(listening, "backlog", socket.SOMAXCONN),
        )
        remove_stale_metrics(tempfile.gettempdir())
        self.metrics.path = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")
        for number in range(1, self._config.workers + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._pending.pop(number, None)
        worker = _Worker(self, number)
        env = {
            **os.environ,
            WORKER_CONFIG: worker_config(self._config, number),
            WORKER_ID: str(number),
            METRICS_DIRECTORY: self.metrics.path or "",
        }
        self._reactor.spawnProcess(
            worker,
            sys.executable,
            [sys.executable, "-c", _TWISTD, *_TWISTD_ARGS],
            env=env,
            childFDs={
                0: "w",
                1: 1,
                2: 2,
                LISTENING_FD: self._sockets[number - 1].fileno(),
                CONTROL_FD: "r",
            },
        )
        self._workers[number] = worker
        self._started[number] = self._reactor.seconds()
        worker.pid = worker.transport.pid  # type: ignore[union-attr]

    def ended(self, worker: _Worker, reason: Failure) -> None:
        number = worker.number
        if self.metrics.path is not None and worker.pid is not None:
            mark_process_dead(worker.pid, self.metrics.path)  # its gauges go
        if self._workers.get(number) is not worker:
            return
        del self._workers[number]
        if not self.running:
            return
        status = reason.value
        how = (
            f"signal {status.signal}"
            if isinstance(status, ProcessTerminated) and status.signal
            else f"exit status {getattr(status, 'exitCode', '?')}"
        )
        lived = self._reactor.seconds() - self._started[number]
        delay = self._backoff.get(number, FIRST_BACKOFF)
        if lived >= STABLE_SECONDS:
            delay = FIRST_BACKOFF
        self._backoff[number] = min(delay * 2, MAX_BACKOFF)
        self.restarts += 1
        log.warn(
            "worker {number} ended ({how}) after {lived:.1f} s; starting it "
            "again in {delay:.1f} s",
            number=number,
            how=how,
            lived=lived,
            delay=delay,
        )
        self._pending[number] = self._reactor.callLater(delay, self._spawn, number)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # The main port (stopped just before) closes the first socket; with
        # the supervisor's copies gone, each closes with its worker's.
        for sibling in set(self._sockets[1:]) - set(self._sockets[:1]):
            sibling.close()
        for call in self._pending.values():
            call.cancel()
        self._pending.clear()
        return Deferred.fromCoroutine(self._drain())

    def signal_all(self, name: str) -> None:
        """Passes a signal on to every worker (SIGHUP: read files again)."""
        for worker in self._workers.values():
            _signal(worker, name)

    def kill(self) -> None:
        """Ends every worker at once (SIGKILL), for an exit that cannot wait."""
        for worker in self._workers.values():
            _signal(worker, "KILL")

    async def _drain(self) -> None:
        workers = list(self._workers.values())
        for worker in workers:
            _ask_to_stop(worker)
        # A worker's render may outlive the budget (a thread cannot be
        # stopped); its request waits --processing_timeout at most, then its
        # answer leaves: killed only once that has had its time.
        grace = self._config.processing_timeout + SENDING_SECONDS
        if self._config.otlp_endpoint:  # and its last spans their flush
            grace += tracing.FLUSH_SECONDS
        for worker in workers:
            if not await drained(
                worker.wait_ended,
                lambda: self._deadline.remaining() + grace,
                self._reactor,
                f"worker {worker.number}",
            ):
                log.warn(
                    "worker {number} did not stop within --shutdown_timeout and "
                    "--processing_timeout: killed",
                    number=worker.number,
                )
                _signal(worker, "KILL")
                await worker.wait_ended()
        if self.metrics.path is not None:
            shutil.rmtree(self.metrics.path, ignore_errors=True)
            self.metrics.path = None


def _ask_to_stop(worker: _Worker) -> None:
    """Ask a worker to drain and stop, on its standard input, not by SIGTERM:
    under systemd (and a kill of the process group) each worker gets a
    SIGTERM of its own too, and two signals would end it at once."""
    try:
        worker.transport.writeToChild(0, STOP)  # type: ignore[union-attr]
    except (KeyError, OSError):  # its input is closed: a signal, then
        _signal(worker, "TERM")


def _signal(worker: _Worker, name: str) -> None:
    with contextlib.suppress(ProcessExitedAlready, OSError):  # already gone
        worker.transport.signalProcess(name)  # type: ignore[union-attr]


class _Forward(Resource):
    """Answers a GET with what ``base`` answers to the same path and query."""

    isLeaf = True

    def __init__(self, base: str) -> None:
        super().__init__()
        self._base = base

    def render_GET(self, request: IRequest) -> object:
        Deferred.fromCoroutine(self._forward(request))
        return NOT_DONE_YET

    async def _forward(self, request: IRequest) -> None:
        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)  # type: ignore[attr-defined]
        try:
            response = await treq.get(
                self._base + request.uri.decode(), persistent=False
            )
            body = await response.content()
        except Exception as e:  # the worker went away meanwhile
            code, headers = 502, {b"Content-Type": [b"application/json"]}
            error = {"error": f"the debug worker did not answer: {e}"}
            body = json.dumps(error).encode()
        else:
            code, headers = (
                response.code,
                {
                    name: response.headers.getRawHeaders(name, [])
                    for name in (b"Content-Type", b"Content-Disposition")
                },
            )
        if gone:  # the client left
            return
        request.setResponseCode(code)
        for name, values in headers.items():
            for value in values:
                request.setHeader(name, value)
        request.write(body)
        request.finish()


class AdoptedPort(Listening):
    """A worker's main port: the supervisor's listening socket, adopted."""

    def __init__(self, reactor: Any, fd: int, factory: IProtocolFactory) -> None:
        super().__init__(reactor, f"inherited file descriptor {fd}", factory, "main")
        self._fd = fd

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        with socket.socket(fileno=os.dup(self._fd)) as inherited:
            family = inherited.family
        self.port = self._reactor.adoptStreamPort(self._fd, family, self._factory)
        os.close(self._fd)  # the reactor holds its own copy


class Ready(Service):
    """Tells the supervisor this worker is ready, once every service started
    (with the port of its admin site, if it has one), then `report`s every
    `REPORT_SECONDS`; stops the worker when the supervisor is gone (standard
    input closes)."""

    def __init__(
        self,
        reactor: Any,
        admin: Listening | None = None,
        report: Callable[[], Report] | None = None,
    ) -> None:
        self._reactor = reactor
        self._admin = admin
        self._report = report
        self._loop = LoopingCall(self._send_report)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._reactor.addReader(_Orphaned(self._reactor))
        message = b"ready"
        if self._admin is not None and self._admin.port is not None:
            message += b" %d" % self._admin.port.getHost().port  # type: ignore[attr-defined]
        try:
            os.write(CONTROL_FD, message + b"\n")
        except OSError:
            stop_reactor(self._reactor)
            return
        # A supervisor that stops reading must never block this worker: a
        # report that does not fit in the pipe now is dropped.
        os.set_blocking(CONTROL_FD, False)
        if self._report is not None:
            # The first once the services after this one (readiness) started.
            self._loop.start(REPORT_SECONDS, now=False)
            self._reactor.callLater(0, self._send_report)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _send_report(self) -> None:
        if self._report is None:
            return
        with contextlib.suppress(OSError):  # full (dropped), or supervisor gone
            os.write(CONTROL_FD, self._report().encode())


class _Orphaned:
    """Reads standard input: `STOP` asks this worker to drain and stop; its
    end means the supervisor is gone."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._read = b""

    def fileno(self) -> int:
        return 0

    def doRead(self) -> Any:
        data = os.read(0, 512)
        if not data:
            return CONNECTION_DONE  # the reactor calls connectionLost
        self._read += data
        if STOP in self._read:
            log.info("the supervisor asks this worker to stop")
            stop_reactor(self._reactor)
        self._read = self._read[-len(STOP) :]
        return None

    def connectionLost(self, reason: Failure) -> None:
        # The end of the input is ConnectionDone (read, or a hang-up). The
        # reactor also calls this at its own stop, for every reader, with
        # ConnectionLost: the supervisor may well be there.
        if reason.check(ConnectionDone):
            log.warn("the supervisor is gone: stopping")
            stop_reactor(self._reactor)

    def logPrefix(self) -> str:
        return "supervisor"
