"""The ``imageserver`` command: process images without the HTTP server.

    imageserver process --namespace p --outputs x300.jpg,x300.webp photo.jpg ...
    imageserver process --namespace p --outputs x300.jpg - < items.tsv
    imageserver info photo.jpg

It runs the server's own use cases, pools and storage (local or S3, with the
same options), so a command-line run and an HTTP request store the same files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from collections.abc import Sequence
from typing import IO, Any, ClassVar

from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage

from imageserver import __version__
from imageserver.assembly import check_store, make_images, make_origin_paths
from imageserver.bulk.batches import Item
from imageserver.bulk.item import Progress, items_from, outcome_of, unique
from imageserver.config import Config, ignored_settings
from imageserver.errors import ImageServerError, NotAnImage
from imageserver.images import info_json_of
from imageserver.imaging import renderer
from imageserver.metrics.events import Events
from imageserver.options import (
    ENVIRONMENT_HELP,
    ENVIRONMENT_PREFIX,
    ConfigOptions,
    command_line_fields,
    exit_on_usage_error,
    flags,
    parameters,
    unknown_variable_warning,
    unknown_variables,
)
from imageserver.runtime.listening import StartupFailed
from imageserver.runtime.shutdown import Deadline, OrderedMultiService


class ProcessOptions(ConfigOptions):
    synopsis = "[options] FILE... | -"
    longdesc = (
        "Store each FILE (or each line of standard input with '-': a URL "
        "and/or an md5 hash, tab-separated) and make its --outputs. In a "
        "namespace with an --origin, each argument (or line) is a PATH of "
        "the origin instead, fetched if new. Prints hash, source, width and "
        "height, tab-separated, per image. " + ENVIRONMENT_HELP
    )
    fields = command_line_fields()
    optParameters: ClassVar[list[list[Any]]] = [
        [
            "namespace",
            None,
            None,
            "Namespace the images go into [default: p, or the one --origin's].",
        ],
        ["concurrency", None, "0", "Images processed at once; 0: one per CPU.", int],
        *parameters(fields),
    ]
    optFlags: ClassVar[list[list[Any]]] = [
        [
            "progress_json",
            None,
            "Report progress as JSON lines on standard error "
            '({"done": 10, "total": 100, "failed": 1}), for machines.',
        ],
        *flags(fields),
    ]

    def parseArgs(self, *sources: str) -> None:  # type: ignore[override]
        if not sources:
            raise usage.UsageError("give files to process, or - for standard input")
        self.sources = sources

    def postOptions(self) -> None:
        concurrency = int(self["concurrency"])
        if concurrency:
            self["processor_concurrency"] = concurrency
        super().postOptions()
        origins = self.config.origin_specs
        if self["namespace"] is None:
            self["namespace"] = next(iter(origins)) if len(origins) == 1 else "p"

    @property
    def by_path(self) -> bool:
        """The items are paths of the namespace's origin."""
        return self["namespace"] in self.config.origin_specs


class InfoOptions(usage.Options):
    synopsis = "FILE"

    def parseArgs(self, path: str) -> None:  # type: ignore[override]
        self.path = path


class Options(usage.Options):
    def getSynopsis(self) -> str:
        """The usage line, with the program's name; a command's own usage
        (``imageserver process --help``) continues from ``imageserver``."""
        if self.subCommand is not None:
            return "Usage: imageserver"
        return "Usage: imageserver process|info [options] ..."

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"imageserver {__version__}")
        sys.exit(0)

    subCommands: ClassVar[list[list[Any]]] = [
        ["process", None, ProcessOptions, "Store images and make their variants."],
        ["info", None, InfoOptions, "Print an image's info.json, without storing."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("choose a command: process or info")


async def process(
    reactor: Any,
    options: ProcessOptions,
    stdin: IO[str],
    stdout: IO[str],
    stderr: IO[str],
) -> int:
    """Run ``process`` here; the exit status is 1 if any item failed."""
    config: Config = dataclasses.replace(options.config, outputs=())
    outputs = ",".join(options.config.outputs)
    namespace = options["namespace"]
    errors: list[str] = []
    items, repeats = unique(items_from(options.sources, stdin, errors, options.by_path))

    services = OrderedMultiService()
    deadline = Deadline(reactor, config.shutdown_timeout)
    events = Events()
    images, storage, (_, io) = make_images(
        config, reactor, services, events, deadline, long_running=False
    )
    # An origin's failures are said in each item's line, not logged too.
    paths = make_origin_paths(
        config, reactor, services, images, storage, io, events, log_failures=False
    )
    services.startService()
    progress = Progress(len(items) + repeats, stdout, stderr, options["progress_json"])
    for error in errors:
        progress.error(error)
    progress.done(repeats)

    async def one(item: Item) -> None:
        progress.report(await outcome_of(images, namespace, outputs, item, paths))

    def start(item: Item) -> Deferred[None]:
        return Deferred.fromCoroutine(one(item))

    slots = DeferredSemaphore(config.processor_concurrency)
    try:
        await gatherResults([slots.run(start, item) for item in items])
    finally:
        progress.close()
        await services.stopService()
    return 1 if progress.failed else 0


def info(options: InfoOptions, stdout: IO[str], stderr: IO[str]) -> int:
    try:
        with open(options.path, "rb") as f:
            data = f.read()
        details = renderer.probe(data, Config().decode_limits)
    except OSError as e:
        stderr.write(f"{options.path}: {e.strerror}\n")
        return 1
    except NotAnImage as e:
        stderr.write(f"{options.path}: {e.about('the file')}\n")
        return 1
    except ImageServerError as e:
        stderr.write(f"{options.path}: {e}\n")
        return 1
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    stdout.write(info_json_of(digest, details).decode() + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    from twisted.internet import task

    options = Options()
    arguments = list(sys.argv[1:] if argv is None else argv)
    exit_on_usage_error("imageserver", options.parseOptions, arguments)
    _log_warnings_to(sys.stderr)
    if isinstance(options.subOptions, ConfigOptions):
        own = _command_line_only(options.subOptions)
        for variable, nearest in unknown_variables(options.subOptions.environ):
            if variable.upper() in own:
                warning = (
                    f"{variable} is not read: give --{own[variable.upper()]} "
                    "on the command line (only settings come from the environment)"
                )
            else:
                warning = unknown_variable_warning(variable, nearest)
            sys.stderr.write(f"imageserver: {warning}\n")
        for name, needed in ignored_settings(options.subOptions.config):
            sys.stderr.write(
                f"imageserver: --{name} is set but does nothing without {needed}\n"
            )
    if options.subCommand == "info":
        sys.exit(info(options.subOptions, sys.stdout, sys.stderr))
    try:
        config = options.subOptions.config
        check_store(config, local=not config.scheduler)
    except StartupFailed as e:  # nothing can be stored: said once, not per item
        sys.stderr.write(f"{e}\n")
        sys.exit(1)

    if options.subOptions.config.scheduler:
        from imageserver.bulk import cluster  # dask: only when asked

        sys.exit(cluster.process(options.subOptions, sys.stdin, sys.stdout, sys.stderr))

    async def run(reactor: Any) -> None:
        status = await process(
            reactor, options.subOptions, sys.stdin, sys.stdout, sys.stderr
        )
        if status:
            raise SystemExit(status)

    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


def _command_line_only(options: ConfigOptions) -> dict[str, str]:
    """The variables that would name a subcommand's own options (not
    settings, so not read from the environment), to the option."""
    settings = {f.name for f in options.fields}
    declared = (getattr(options, kind, []) for kind in ("optParameters", "optFlags"))
    own = [o[0] for kind in declared for o in kind]
    return {ENVIRONMENT_PREFIX + o.upper(): o for o in own if o not in settings}


def _log_warnings_to(stream: IO[str]) -> None:
    """Standard output carries the results: logs go to stderr, warnings only."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(stream), [predicate])],
        redirectStandardIO=False,
    )
