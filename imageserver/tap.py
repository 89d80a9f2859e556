"""``twistd imageserver``: the command line, turned into a Config and a service tree."""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from imageserver import config
from imageserver.config import Config
from imageserver.service import make_service


def _coerce(field: Any) -> Any:
    def coerce(text: str) -> Any:
        return config.parse(field, text)

    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    """Every Config field as ``--name`` (``--name-with-dashes`` works too)."""

    synopsis = "[options]"
    longdesc = (
        "On-demand image processing server. Upload originals with "
        "POST /{namespace}; get variants such as w200.jpg, x200.webp, "
        "300x200-q60.jpg or full_size.avif from their folders."
    )
    optFlags: ClassVar[list[list[Any]]] = [
        [f.name, None, f.metadata["help"]] for f in config.fields() if config.is_flag(f)
    ]
    optParameters: ClassVar[list[list[Any]]] = [
        [f.name, None, config.show(f.default), f.metadata["help"], _coerce(f)]
        for f in config.fields()
        if not config.is_flag(f)
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        if options is not None:
            options = [_underscored(arg) for arg in options]
        super().parseOptions(options)

    def postOptions(self) -> None:
        values: dict[str, Any] = {
            f.name: bool(v)
            if config.is_flag(f)
            else config.parse(f, v)
            if isinstance(v, str)
            else v
            for f in config.fields()
            for v in [self[f.name]]
        }
        try:
            self.config = Config(**values)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def _underscored(arg: str) -> str:
    """``--local-base-path=x`` -> ``--local_base_path=x``; values untouched."""
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg.partition("=")
    return name.replace("-", "_").replace("__", "--", 1) + eq + value


def makeService(options: Options) -> IService:
    return make_service(options.config)
