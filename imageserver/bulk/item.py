"""One item of bulk work (a file, a URL, a hash): read, done the one way,
reported.

The command line runs items here in its own process, or sends shards of them
to a Dask cluster (`imageserver.bulk.cluster`), whose workers run them here too:
the same use cases, the same result and error lines either way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from imageserver.bulk.batches import Item, parse_line
from imageserver.errors import ImageServerError, InvalidRequest
from imageserver.images import Images
from imageserver.origin_paths import OriginPaths
from imageserver.sources.origins import is_url


@dataclass(frozen=True, slots=True)
class Outcome:
    """An item's line: a result for standard output, or an error for standard
    error, as ``imageserver process`` prints them."""

    ok: bool
    line: str


class UnreadableFile(ImageServerError):
    """A file named on the command line that cannot be opened."""


async def outcome_of(
    images: Images,
    namespace: str,
    outputs: str,
    item: Item,
    paths: OriginPaths | None = None,
) -> Outcome:
    """Do ``item``; whatever makes it fail, a bug included, is its one line.
    ``paths``: the origins' paths, for items that are paths of an origin."""
    where = f"line {item.line}" if item.path is None else shown(item.path)
    if item.origin_path is not None:
        where = shown(item.origin_path)
    try:
        info = await _process_item(images, namespace, outputs, item, paths)
    except ImageServerError as e:
        return Outcome(False, f"{where}: {e}")
    except Exception as e:
        # A bug, met by this item alone: said in its one line, and the run
        # goes on with the others.
        return Outcome(False, f"{where}: internal error ({type(e).__name__}: {e})")
    return Outcome(
        True,
        f"{info['hash']}\t{shown(item.label)}\t{info['width']}\t{info['height']}",
    )


#: The most characters of a file or path an item's line shows.
SHOWN = 300


def shown(text: str) -> str:
    """``text`` as an item's line shows it: as it is when printable (a
    terminal does nothing with it), else quoted with its escapes, so no
    line break or escape sequence reaches the terminal; long ones cut."""
    if text.isprintable() and len(text) <= SHOWN:
        return text
    return repr(text[:SHOWN]) + ("..." if len(text) > SHOWN else "")


async def _process_item(
    images: Images,
    namespace: str,
    outputs: str,
    item: Item,
    paths: OriginPaths | None,
) -> dict[str, Any]:
    if item.origin_path is not None:
        if paths is None or not paths.serves(namespace):
            raise InvalidRequest(f"namespace {namespace!r} has no origin here")
        if is_url(item.origin_path):
            images.check_uploads(namespace)  # a URL is an upload: refused here
        return await paths.process_item(
            namespace, item.origin_path, outputs or None, tell_why=True
        )
    if item.path is not None:
        try:
            body = open(item.path, "rb")  # noqa: SIM115 (read in the pool)
        except OSError as e:
            raise UnreadableFile(f"cannot read: {e.strerror}") from None
        with body:
            return json.loads(
                await images.upload(
                    namespace, body=body, outputs=outputs or None, body_is="the file"
                )
            )  # type: ignore[no-any-return]
    return await images.process_item(
        namespace, url=item.url, digest=item.digest, outputs=outputs or None
    )


def unique(items: list[Item]) -> tuple[list[Item], int]:
    """``items`` without repeats (a duplicate line is done once), and how many
    repeats there were."""
    seen: set[tuple[str | None, ...]] = set()
    kept = []
    for item in items:
        key = (item.path, item.url, item.digest, item.origin_path)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept, len(items) - len(kept)


def items_from(
    sources: Sequence[str], stdin: IO[str], errors: list[str], by_path: bool = False
) -> list[Item]:
    """The items named on the command line, or read from ``stdin`` with
    ``-``. ``by_path``: they are paths of the namespace's origin (one a
    line), not files, URLs or hashes."""
    if list(sources) != ["-"]:
        if by_path:
            return [Item(n, origin_path=p) for n, p in enumerate(sources, 1)]
        return [Item(n, path=path) for n, path in enumerate(sources, 1)]
    items = []
    for number, line in enumerate(_lines(stdin), 1):
        if line is None:
            errors.append(f"line {number}: longer than {MAX_LINE} characters")
            continue
        if by_path:
            if line.strip("\r\n").strip():
                items.append(Item(number, origin_path=line.rstrip("\r\n")))
            continue
        try:
            item = parse_line(number, line)
        except ValueError as e:
            errors.append(f"line {number}: {e}")
            continue
        if item is not None:
            items.append(item)
    return items


#: The longest line of standard input an item may take (a path is at
#: most 1024 bytes, a URL far less).
MAX_LINE = 64 * 1024


def _lines(stdin: IO[str]) -> Iterator[str | None]:
    """Each line of ``stdin``, or None for one longer than `MAX_LINE`
    (skipped to its end, never held whole)."""
    first = True
    while True:
        line = stdin.readline(MAX_LINE + 1)
        if not line:
            return
        if first:  # a byte order mark is not part of the first item
            line, first = line.removeprefix("\ufeff"), False
        if len(line) > MAX_LINE and not line.endswith("\n"):
            while (rest := stdin.readline(MAX_LINE)) and not rest.endswith("\n"):
                pass
            yield None
            continue
        yield line


class Progress:
    """Result lines to stdout, error lines to stderr, and how far the run is:
    a bar on a terminal, JSON lines on stderr with ``--progress-json``.

    Result and error lines go through the bar's ``write``, which clears it,
    writes the line whole and draws the bar again below it.
    """

    def __init__(
        self, total: int, stdout: IO[str], stderr: IO[str], as_json: bool = False
    ) -> None:
        from tqdm import tqdm  # type: ignore[import-untyped]

        self.total = total
        self.finished = self.failed = 0
        self._stdout, self._stderr = stdout, stderr
        self._json = as_json
        self._bar = tqdm(
            total=total,
            file=stderr,
            unit="image",
            disable=as_json or not stderr.isatty(),
        )

    def report(self, outcome: Outcome) -> None:
        if outcome.ok:
            self._bar.write(outcome.line, file=self._stdout)
            self.done(1)
        else:
            self.error(outcome.line)
            self.done(1)

    def error(self, line: str) -> None:
        """A failure outside any item's count (a malformed input line), or of one."""
        self.failed += 1
        self._bar.write(line, file=self._stderr)

    def done(self, count: int) -> None:
        if not count:
            return
        self.finished += count
        self._bar.update(count)
        if self._json:
            progress = {
                "done": self.finished,
                "total": self.total,
                "failed": self.failed,
            }
            self._stderr.write(json.dumps(progress) + "\n")
            self._stderr.flush()

    def close(self) -> None:
        self._bar.close()
