"""Command-line options built from `Config`: the server's and the command line's.

Each command shows the options it uses (the ``imageserver`` command leaves out
ports, the manhole and the rest of the server's own); both parse them the
same way and build the same Config.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, ClassVar

from twisted.python import usage

from imageserver import __version__, config
from imageserver.config import Config


def _coerce(field: dataclasses.Field[Any]) -> Any:
    def coerce(text: str) -> Any:
        return config.parse(field, text)

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


def flags(fields: list[dataclasses.Field[Any]]) -> list[list[Any]]:
    return [[f.name, None, f.metadata["help"]] for f in fields if config.is_flag(f)]


def parameters(fields: list[dataclasses.Field[Any]]) -> list[list[Any]]:
    return [
        [f.name, None, config.show(f.default), f.metadata["help"], _coerce(f)]
        for f in fields
        if not config.is_flag(f)
    ]


def server_fields() -> list[dataclasses.Field[Any]]:
    return list(config.fields())


def command_line_fields() -> list[dataclasses.Field[Any]]:
    """The settings a run of the ``imageserver`` command uses."""
    return [f for f in config.fields() if not f.metadata["server_only"]]


class ConfigOptions(usage.Options):
    """Options for some of Config's fields (subclasses list them in
    ``optFlags`` and ``optParameters``); the others keep their defaults.

    ``--name-with-dashes`` works as ``--name_with_dashes``.
    """

    fields: ClassVar[list[dataclasses.Field[Any]]] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        if options is None:
            options = sys.argv[1:]
        super().parseOptions([_underscored(arg) for arg in options])

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"imageserver {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        values: dict[str, Any] = {}
        for f in self.fields:
            value = self[f.name]
            if config.is_flag(f):
                value = bool(value)
            elif isinstance(value, str):
                value = config.parse(f, value)
            values[f.name] = value
        try:
            self.config = Config(**values)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


class ServerOptions(ConfigOptions):
    """Every Config field as an option."""

    synopsis = "[options]"
    longdesc = (
        "On-demand image processing server. Upload originals with "
        "POST /{namespace}; get variants such as w200.jpg, x200.webp, "
        "300x200-q60.jpg or full_size.avif from their folders."
    )
    fields = server_fields()
    optFlags: ClassVar[list[list[Any]]] = flags(fields)
    optParameters: ClassVar[list[list[Any]]] = parameters(fields)


def exit_on_usage_error(command: str, parse: Any, *args: Any) -> None:
    """Run ``parse``; a usage error is one line and a hint, then exit status 2.

    The full help is for ``--help``: printed before an error it buries it.
    """
    try:
        parse(*args)
    except usage.UsageError as e:
        sys.stderr.write(f"{command}: {e}\nRun '{command} --help' for the options.\n")
        sys.exit(2)


def _underscored(arg: str) -> str:
    """``--local-base-path=x`` -> ``--local_base_path=x``; values untouched."""
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg.partition("=")
    return name.replace("-", "_").replace("__", "--", 1) + eq + value
