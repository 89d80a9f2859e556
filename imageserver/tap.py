"""``twistd imageserver``: the command line, turned into a Config and a service tree."""

from __future__ import annotations

from twisted.application.service import IService

from imageserver.options import ServerOptions, exit_on_usage_error
from imageserver.service import make_service


class Options(ServerOptions):
    """The options as twistd reads them: a usage error is one line, not the help."""

    def parseOptions(self, options: list[str] | None = None) -> None:
        exit_on_usage_error("twistd imageserver", super().parseOptions, options)


def makeService(options: Options) -> IService:
    return make_service(options.config)
