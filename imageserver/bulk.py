"""One item of bulk work (a file, a URL, a hash), done the one way.

The command line runs items here in its own process, or sends shards of them
to a Dask cluster (`imageserver.cluster`), whose workers run them here too:
the same use cases, the same result and error lines either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from imageserver.batches import Item
from imageserver.errors import ImageServerError
from imageserver.images import Images


@dataclass(frozen=True, slots=True)
class Outcome:
    """An item's line: a result for standard output, or an error for standard
    error, as ``imageserver process`` prints them."""

    ok: bool
    line: str


class UnreadableFile(ImageServerError):
    """A file named on the command line that cannot be opened."""


async def outcome_of(
    images: Images, namespace: str, outputs: str, item: Item
) -> Outcome:
    """Do ``item``; whatever makes it fail, a bug included, is its one line."""
    where = f"line {item.line}" if item.path is None else item.path
    try:
        info = await _process_item(images, namespace, outputs, item)
    except ImageServerError as e:
        return Outcome(False, f"{where}: {e}")
    except Exception as e:
        # A bug, met by this item alone: said in its one line, and the run
        # goes on with the others.
        return Outcome(False, f"{where}: internal error ({type(e).__name__}: {e})")
    return Outcome(
        True, f"{info['hash']}\t{item.label}\t{info['width']}\t{info['height']}"
    )


async def _process_item(
    images: Images, namespace: str, outputs: str, item: Item
) -> dict[str, Any]:
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
    seen: set[tuple[str | None, str | None, str | None]] = set()
    kept = []
    for item in items:
        key = (item.path, item.url, item.digest)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept, len(items) - len(kept)
