"""Command-line options built from `Config`: the server's and the command line's.

Each command shows the options it uses (the ``imageserver`` command leaves out
ports, the manhole and the rest of the server's own); both parse them the
same way and build the same Config.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from twisted.python import usage

from imageserver import __version__, config
from imageserver.config import Config
from imageserver.runtime.environment import value_of


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
    return [f for f in config.fields() if not f.metadata["command_only"]]


def command_line_fields() -> list[dataclasses.Field[Any]]:
    """The settings a run of the ``imageserver`` command uses."""
    return [f for f in config.fields() if not f.metadata["server_only"]]


#: Every option can also come from ``IMAGESERVER_<OPTION>``, or from the file
#: ``IMAGESERVER_<OPTION>_FILE`` names (for secrets); the command line wins.
ENVIRONMENT_PREFIX = "IMAGESERVER_"
ENVIRONMENT_HELP = (
    "Every option can also be set in the environment as IMAGESERVER_<OPTION> "
    "(IMAGESERVER_AWS_BUCKET=b), or IMAGESERVER_<OPTION>_FILE naming a file "
    "that holds the value (for secrets); an option on the command line wins. "
    "Flags take 1/true/yes/on or 0/false/no/off."
)
_TRUE, _FALSE = config.TRUE_WORDS, config.FALSE_WORDS | {""}


def from_environment(
    fields: list[dataclasses.Field[Any]], environ: Mapping[str, str]
) -> dict[str, Any]:
    """The values ``environ`` sets, by field name, parsed as on the command
    line. Raises `usage.UsageError` naming a bad variable."""
    found: dict[str, Any] = {}
    for f in fields:
        variable = ENVIRONMENT_PREFIX + f.name.upper()
        try:
            text = value_of(variable, environ)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if text is None:
            continue
        if f.type in ("bool", bool):
            if text.strip().lower() not in _TRUE | _FALSE:
                raise usage.UsageError(
                    f"{variable} must be 1/true/yes/on or 0/false/no/off, not {text!r}"
                )
            found[f.name] = text.strip().lower() in _TRUE
        else:
            try:
                found[f.name] = config.parse(f, text)
            except ValueError:
                raise usage.UsageError(
                    f"{variable}: {text!r} is not a valid value"
                ) from None
    return found


def unknown_variables(
    environ: Mapping[str, str], internal: frozenset[str] = frozenset()
) -> list[tuple[str, str | None]]:
    """Each ``IMAGESERVER_*`` variable in ``environ`` (in any case) that names
    no option, of the server or of the command line, and is not one of
    ``internal`` (set by imageserver itself), with the variable of the
    nearest option, if one is close: a misspelt variable is otherwise
    silently ignored."""
    names = [f.name for f in config.fields()]
    known = {ENVIRONMENT_PREFIX + n.upper() + s for n in names for s in ("", "_FILE")}
    found: list[tuple[str, str | None]] = []
    for variable in sorted(environ):
        if (
            not variable.upper().startswith(ENVIRONMENT_PREFIX)
            or variable in known
            or variable in internal
        ):
            continue
        if variable.upper() in known:
            found.append((variable, variable.upper()))
            continue
        name = variable.upper().removeprefix(ENVIRONMENT_PREFIX).lower()
        suffix = "_FILE" if name.endswith("_file") else ""
        close = difflib.get_close_matches(name.removesuffix("_file"), names, n=1)
        nearest = ENVIRONMENT_PREFIX + close[0].upper() + suffix if close else None
        found.append((variable, nearest))
    return found


def unknown_variable_warning(variable: str, nearest: str | None) -> str:
    """What a user is told of a variable `unknown_variables` found."""
    hint = f"; did you mean {nearest}?" if nearest else ""
    return f"{variable} names no option and is ignored{hint}"


class ConfigOptions(usage.Options):
    """Options for some of Config's fields (subclasses list them in
    ``optFlags`` and ``optParameters``); the others keep their defaults.

    ``--name-with-dashes`` works as ``--name_with_dashes``. Values set in the
    environment (`ENVIRONMENT_HELP`) replace the defaults before the command
    line is read, so an option given there wins.
    """

    fields: ClassVar[list[dataclasses.Field[Any]]] = []
    #: Where IMAGESERVER_* variables are read (tests give their own).
    environ: Mapping[str, str] = os.environ

    def parseOptions(self, options: list[str] | None = None) -> None:
        if options is None:
            options = sys.argv[1:]
        self.update(from_environment(self.fields, self.environ))
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
        if self.config.scheduler and not _importable("distributed"):
            raise usage.UsageError(
                "--scheduler needs Dask: from the project's checkout, "
                "pip install '.[cluster]'"
            )
        if self.config.otlp_endpoint and not _importable(
            "opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"
        ):
            raise usage.UsageError(
                "--otlp_endpoint needs OpenTelemetry: from the project's "
                "checkout, pip install '.[tracing]'"
            )


def _importable(*modules: str) -> bool:
    """Whether every one of ``modules`` is installed (a dotted name whose
    parent package is missing is not: find_spec raises for it)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except ModuleNotFoundError:
        return False


class ServerOptions(ConfigOptions):
    """Every Config field as an option."""

    synopsis = "[options]"
    longdesc = (
        "On-demand image processing server. Upload originals with "
        "POST /{namespace}; get variants such as w200.jpg, x200.webp, "
        "300x200-q60.jpg or full_size.avif from their folders. " + ENVIRONMENT_HELP
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
