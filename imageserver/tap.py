"""``twistd imageserver``: the command line, turned into a Config and a service tree."""

from __future__ import annotations

import gc
import os

from twisted.application.service import IService
from twisted.logger import Logger

from imageserver.config import ignored_settings
from imageserver.options import (
    ServerOptions,
    exit_on_usage_error,
    unknown_variable_warning,
    unknown_variables,
)
from imageserver.runtime.allocator import hold_allocator
from imageserver.service import make_service
from imageserver.workers import WORKER_CONFIG, WORKER_ID, config_of_worker

log = Logger()


class Options(ServerOptions):
    """The options as twistd reads them: a usage error is one line, not the help."""

    def parseOptions(self, options: list[str] | None = None) -> None:
        exit_on_usage_error("twistd imageserver", super().parseOptions, options)


def makeService(options: Options) -> IService:
    """The server; in a worker process (started by a supervisor, see
    imageserver.workers), the supervisor's configuration and number.

    Once the reactor runs, the objects made while starting (modules, the
    service tree: most of the heap) are frozen out of the garbage
    collector's view: a full collection then walks only what requests
    made, a pause of microseconds instead of tens of milliseconds in the
    middle of a cache hit (docs/performance.md).
    """
    from twisted.internet import reactor

    hold_allocator()  # before any thread of ours allocates
    reactor.callWhenRunning(gc.freeze)  # type: ignore[attr-defined]
    worker = config_of_worker(os.environ)
    if worker is not None:
        return make_service(worker, worker=int(os.environ[WORKER_ID]))
    # Logged once the log starts (twistd keeps what comes before), by the
    # process that read the variables, not by each worker again.
    internal = frozenset({WORKER_CONFIG, WORKER_ID})
    for variable, nearest in unknown_variables(options.environ, internal):
        log.warn(
            "{message}",
            message=unknown_variable_warning(variable, nearest),
            variable=variable,
            nearest=nearest,
        )
    for name, needed in ignored_settings(options.config):
        log.warn(
            "--{option} is set but does nothing without {needed}",
            option=name,
            needed=needed,
        )
    return make_service(options.config)
